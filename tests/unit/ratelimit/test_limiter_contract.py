"""One contract for both sliding-window limiters (Redis Lua and in-process)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from clinicguard.ratelimit.interfaces import RateLimiter
from clinicguard.ratelimit.service import (
    MemorySlidingWindowLimiter,
    RedisSlidingWindowLimiter,
    create_rate_limiter,
)
from clinicguard.store.interfaces import KeyValueUnavailable
from tests.services import REDIS_URL, flush_redis, redis_or_skip


@pytest.fixture(
    params=[
        pytest.param("memory", id="memory"),
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
    ]
)
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        yield MemorySlidingWindowLimiter()
        return
    redis_or_skip()
    flush_redis()
    redis_limiter = RedisSlidingWindowLimiter.from_url(REDIS_URL)
    try:
        yield redis_limiter
    finally:
        await redis_limiter.close()
        flush_redis()


def key() -> str:
    return f"test:{secrets.token_hex(6)}"


async def test_admits_up_to_the_limit_then_refuses(limiter: RateLimiter) -> None:
    k = key()
    states = [await limiter.hit(k, limit=3, window=10) for _ in range(5)]
    assert [s.allowed for s in states] == [True, True, True, False, False]
    assert [s.count for s in states] == [1, 2, 3, 3, 3]
    assert states[-1].remaining == 0
    assert 9 < states[-1].reset_after <= 10


async def test_refused_hits_are_not_recorded(limiter: RateLimiter) -> None:
    """A client hammering a closed window does not extend its own punishment."""
    k = key()
    await limiter.hit(k, limit=1, window=0.3)
    for _ in range(5):
        assert not (await limiter.hit(k, limit=1, window=0.3)).allowed
    await asyncio.sleep(0.35)
    assert (await limiter.hit(k, limit=1, window=0.3)).allowed


async def test_window_slides(limiter: RateLimiter) -> None:
    k = key()
    await limiter.hit(k, limit=2, window=0.4)
    await asyncio.sleep(0.2)
    await limiter.hit(k, limit=2, window=0.4)
    assert not (await limiter.hit(k, limit=2, window=0.4)).allowed
    await asyncio.sleep(0.25)  # the first event left the window, the second did not
    state = await limiter.hit(k, limit=2, window=0.4)
    assert state.allowed
    assert state.count == 2


async def test_peek_records_nothing(limiter: RateLimiter) -> None:
    k = key()
    empty = await limiter.peek(k, limit=2, window=10)
    assert (empty.allowed, empty.count, empty.reset_after) == (True, 0, 0.0)
    await limiter.hit(k, limit=2, window=10)
    await limiter.hit(k, limit=2, window=10)
    full = await limiter.peek(k, limit=2, window=10)
    assert (full.allowed, full.count) == (False, 2)
    assert (await limiter.peek(k, limit=2, window=10)).count == 2


async def test_reset_forgets(limiter: RateLimiter) -> None:
    k = key()
    await limiter.hit(k, limit=1, window=10)
    await limiter.reset(k)
    assert (await limiter.hit(k, limit=1, window=10)).allowed


async def test_never_over_the_limit_under_concurrent_clients(limiter: RateLimiter) -> None:
    k = key()
    states = await asyncio.gather(*(limiter.hit(k, limit=10, window=10) for _ in range(60)))
    assert sum(s.allowed for s in states) == 10
    assert (await limiter.peek(k, limit=10, window=10)).count == 10


async def test_keys_are_independent(limiter: RateLimiter) -> None:
    a, b = key(), key()
    await limiter.hit(a, limit=1, window=10)
    assert (await limiter.hit(b, limit=1, window=10)).allowed


async def test_unreachable_redis_raises_instead_of_admitting() -> None:
    """Authentication limits fail closed: a down Redis is an error, never 'allowed'."""
    down = RedisSlidingWindowLimiter.from_url("redis://127.0.0.1:1/0", timeout=0.3)
    try:
        with pytest.raises(KeyValueUnavailable):
            await down.hit("k", limit=5, window=60)
    finally:
        await down.close()


def test_registry_picks_backend() -> None:
    assert isinstance(create_rate_limiter(""), MemorySlidingWindowLimiter)
    assert isinstance(create_rate_limiter(REDIS_URL), RedisSlidingWindowLimiter)


async def test_release_gives_one_admitted_event_back(limiter: RateLimiter) -> None:
    """An attempt counted up-front that turned out fine is taken back, and only it."""
    k = key()
    first = await limiter.hit(k, limit=2, window=10)
    second = await limiter.hit(k, limit=2, window=10)
    assert first.event is not None
    assert second.event is not None
    assert first.event != second.event
    assert not (await limiter.hit(k, limit=2, window=10)).allowed
    await limiter.release(k, first.event)
    assert (await limiter.peek(k, limit=2, window=10)).count == 1
    await limiter.release(k, first.event)  # releasing twice changes nothing
    assert (await limiter.peek(k, limit=2, window=10)).count == 1
    assert (await limiter.hit(k, limit=2, window=10)).allowed


async def test_refused_hits_and_peeks_carry_no_event(limiter: RateLimiter) -> None:
    k = key()
    await limiter.hit(k, limit=1, window=10)
    assert (await limiter.hit(k, limit=1, window=10)).event is None
    assert (await limiter.peek(k, limit=1, window=10)).event is None
