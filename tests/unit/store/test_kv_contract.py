"""One contract for every KeyValueStore implementation (memory and Redis).

Sessions, revocations, single-use codes and rate limits rely on exactly these semantics, so
both implementations must pass the same suite: a memory store that is laxer than Redis would
let tests pass that production fails.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest

from clinicguard.store.interfaces import KeyValueStore, KeyValueTypeError, KeyValueUnavailable
from clinicguard.store.kv import MemoryKeyValueStore, RedisKeyValueStore, create_kv_store


def key(name: str) -> str:
    return f"cg:test:{secrets.token_hex(4)}:{name}"


async def test_get_of_missing_key_is_none(kv_store: KeyValueStore) -> None:
    assert await kv_store.get(key("missing")) is None


async def test_set_then_get_round_trips_bytes(kv_store: KeyValueStore) -> None:
    k = key("value")
    payload = bytes(range(256))
    assert await kv_store.set(k, payload) is True
    assert await kv_store.get(k) == payload


async def test_set_overwrites(kv_store: KeyValueStore) -> None:
    k = key("value")
    await kv_store.set(k, b"one")
    await kv_store.set(k, b"two")
    assert await kv_store.get(k) == b"two"


async def test_only_if_absent_does_not_overwrite(kv_store: KeyValueStore) -> None:
    k = key("nx")
    assert await kv_store.set(k, b"first", only_if_absent=True) is True
    assert await kv_store.set(k, b"second", only_if_absent=True) is False
    assert await kv_store.get(k) == b"first"


async def test_only_if_present_never_brings_back_a_deleted_key(kv_store: KeyValueStore) -> None:
    """An update racing a delete (a refresh racing a logout) must not resurrect the key."""
    k = key("xx")
    assert await kv_store.set(k, b"update", only_if_present=True) is False
    assert await kv_store.get(k) is None
    await kv_store.set(k, b"v1")
    assert await kv_store.set(k, b"v2", ttl=5, only_if_present=True) is True
    assert await kv_store.get(k) == b"v2"
    await kv_store.delete(k)
    assert await kv_store.set(k, b"v3", only_if_present=True) is False
    assert await kv_store.get(k) is None


async def test_only_if_absent_is_atomic_under_concurrency(kv_store: KeyValueStore) -> None:
    """Of many concurrent claims (a replayed TOTP code, say), exactly one wins."""
    k = key("claim")
    results = await asyncio.gather(
        *(kv_store.set(k, str(i).encode(), ttl=5, only_if_absent=True) for i in range(50))
    )
    assert results.count(True) == 1


async def test_value_expires_after_ttl(kv_store: KeyValueStore) -> None:
    k = key("ttl")
    await kv_store.set(k, b"v", ttl=0.15)
    remaining = await kv_store.ttl(k)
    assert remaining is not None
    assert 0 < remaining <= 0.15
    await asyncio.sleep(0.3)
    assert await kv_store.get(k) is None
    assert await kv_store.ttl(k) is None
    # An expired key counts as absent for only_if_absent.
    assert await kv_store.set(k, b"again", only_if_absent=True) is True


async def test_get_and_expire_slides_the_expiry(kv_store: KeyValueStore) -> None:
    """A session's idle timeout restarts on each use, in the same round trip as the read."""
    k = key("sliding")
    assert await kv_store.get_and_expire(k, 1) is None
    await kv_store.set(k, b"session", ttl=0.2)
    await asyncio.sleep(0.12)
    assert await kv_store.get_and_expire(k, 0.2) == b"session"
    await asyncio.sleep(0.12)  # past the first deadline, within the renewed one
    assert await kv_store.get(k) == b"session"
    await asyncio.sleep(0.2)
    assert await kv_store.get_and_expire(k, 0.2) is None


async def test_ttl_is_none_without_expiry(kv_store: KeyValueStore) -> None:
    k = key("persistent")
    await kv_store.set(k, b"v")
    assert await kv_store.ttl(k) is None


async def test_take_returns_and_removes_once(kv_store: KeyValueStore) -> None:
    k = key("take")
    await kv_store.set(k, b"token")
    assert await kv_store.take(k) == b"token"
    assert await kv_store.take(k) is None
    assert await kv_store.get(k) is None


async def test_take_is_single_winner_under_concurrency(kv_store: KeyValueStore) -> None:
    """A single-use token presented twice at once is spent by exactly one request."""
    k = key("race")
    await kv_store.set(k, b"refresh-token")
    results = await asyncio.gather(*(kv_store.take(k) for _ in range(50)))
    assert [r for r in results if r is not None] == [b"refresh-token"]


async def test_delete_counts_existing_keys(kv_store: KeyValueStore) -> None:
    a, b, c = key("a"), key("b"), key("c")
    await kv_store.set(a, b"1")
    await kv_store.set(b, b"2")
    assert await kv_store.delete(a, b, c) == 2
    assert await kv_store.get(a) is None
    assert await kv_store.delete() == 0


async def test_increment_counts_from_zero(kv_store: KeyValueStore) -> None:
    k = key("counter")
    assert await kv_store.increment(k) == 1
    assert await kv_store.increment(k, 5) == 6
    assert await kv_store.increment(k, -2) == 4
    assert await kv_store.get(k) == b"4"


async def test_increment_ttl_applies_only_on_creation(kv_store: KeyValueStore) -> None:
    """A fixed window is not stretched by later hits."""
    k = key("window")
    await kv_store.increment(k, ttl=0.3)
    first = await kv_store.ttl(k)
    await asyncio.sleep(0.1)
    await kv_store.increment(k, ttl=10)
    second = await kv_store.ttl(k)
    assert first is not None
    assert second is not None
    assert second < first
    await asyncio.sleep(0.3)
    assert await kv_store.get(k) is None


async def test_increment_is_atomic_under_concurrency(kv_store: KeyValueStore) -> None:
    k = key("atomic")
    await asyncio.gather(*(kv_store.increment(k, ttl=5) for _ in range(100)))
    assert await kv_store.get(k) == b"100"


async def test_increment_of_non_integer_is_a_type_error(kv_store: KeyValueStore) -> None:
    k = key("text")
    await kv_store.set(k, b"not a number")
    with pytest.raises(KeyValueTypeError):
        await kv_store.increment(k)


async def test_expire_sets_ttl_on_existing_key_only(kv_store: KeyValueStore) -> None:
    k = key("expire")
    assert await kv_store.expire(k, 5) is False
    await kv_store.set(k, b"v")
    assert await kv_store.expire(k, 0.1) is True
    await asyncio.sleep(0.25)
    assert await kv_store.get(k) is None


async def test_sets_add_remove_and_list(kv_store: KeyValueStore) -> None:
    k = key("set")
    assert await kv_store.set_members(k) == set()
    assert await kv_store.set_add(k, b"s1", b"s2") == 2
    assert await kv_store.set_add(k, b"s2", b"s3") == 1
    assert await kv_store.set_members(k) == {b"s1", b"s2", b"s3"}
    assert await kv_store.set_remove(k, b"s1", b"nope") == 1
    assert await kv_store.set_members(k) == {b"s2", b"s3"}
    assert await kv_store.set_remove(k, b"s2", b"s3") == 2
    assert await kv_store.set_members(k) == set()


async def test_set_ttl_expires_whole_set(kv_store: KeyValueStore) -> None:
    k = key("set-ttl")
    await kv_store.set_add(k, b"a", ttl=0.15)
    await asyncio.sleep(0.3)
    assert await kv_store.set_members(k) == set()


async def test_set_operations_on_a_value_are_type_errors(kv_store: KeyValueStore) -> None:
    k = key("value-not-set")
    await kv_store.set(k, b"v")
    with pytest.raises(KeyValueTypeError):
        await kv_store.set_add(k, b"m")
    with pytest.raises(KeyValueTypeError):
        await kv_store.set_members(k)


async def test_value_operations_on_a_set_are_type_errors(kv_store: KeyValueStore) -> None:
    k = key("set-not-value")
    await kv_store.set_add(k, b"m")
    with pytest.raises(KeyValueTypeError):
        await kv_store.get(k)


async def test_ping_answers(kv_store: KeyValueStore) -> None:
    await kv_store.ping()


async def test_unreachable_redis_fails_closed_with_typed_error() -> None:
    """A down Redis is never read as 'no session' or 'not revoked': every call raises."""
    store = RedisKeyValueStore("redis://127.0.0.1:1/0", timeout=0.3)
    try:
        for call in (
            store.get("k"),
            store.set("k", b"v"),
            store.take("k"),
            store.increment("k", ttl=1),
            store.set_members("k"),
            store.ping(),
        ):
            with pytest.raises(KeyValueUnavailable):
                await call
    finally:
        await store.close()


def test_registry_picks_backend_from_settings_value() -> None:
    assert isinstance(create_kv_store(""), MemoryKeyValueStore)
    assert isinstance(create_kv_store("redis://127.0.0.1:6379/15"), RedisKeyValueStore)
