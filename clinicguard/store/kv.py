"""Key-value store implementations and the one place that picks between them."""

from __future__ import annotations

import builtins
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from clinicguard.store.interfaces import KeyValueStore, KeyValueTypeError, KeyValueUnavailable

_Entry = tuple[bytes | set[bytes], float | None]


class MemoryKeyValueStore:
    """The in-process store: real semantics (expiry, atomicity), one process only.

    Every method runs without awaiting in between its reads and writes, so each is atomic on
    the event loop, as the Redis commands are on the server.
    """

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._data: dict[str, _Entry] = {}
        self._monotonic = monotonic

    def _live(self, key: str) -> bytes | set[bytes] | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at is not None and expires_at <= self._monotonic():
            del self._data[key]
            return None
        return value

    def _deadline(self, ttl: float | None) -> float | None:
        return None if ttl is None else self._monotonic() + ttl

    def _bytes(self, key: str) -> bytes | None:
        value = self._live(key)
        if isinstance(value, set):
            raise KeyValueTypeError(f"key {key!r} holds a set")
        return value

    def _set(self, key: str) -> set[bytes] | None:
        value = self._live(key)
        if isinstance(value, bytes):
            raise KeyValueTypeError(f"key {key!r} holds a value, not a set")
        return value

    async def get(self, key: str) -> bytes | None:
        return self._bytes(key)

    async def set(
        self,
        key: str,
        value: bytes,
        *,
        ttl: float | None = None,
        only_if_absent: bool = False,
        only_if_present: bool = False,
    ) -> bool:
        live = self._live(key) is not None
        if (only_if_absent and live) or (only_if_present and not live):
            return False
        self._data[key] = (bytes(value), self._deadline(ttl))
        return True

    async def get_and_expire(self, key: str, ttl: float) -> bytes | None:
        value = self._bytes(key)
        if value is not None:
            self._data[key] = (value, self._deadline(ttl))
        return value

    async def take(self, key: str) -> bytes | None:
        value = self._bytes(key)
        if value is not None:
            del self._data[key]
        return value

    async def delete(self, *keys: str) -> int:
        count = 0
        for key in keys:
            if self._live(key) is not None:
                del self._data[key]
                count += 1
        return count

    async def increment(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        current = self._bytes(key)
        if current is None:
            new, deadline = amount, self._deadline(ttl)
        else:
            try:
                new = int(current) + amount
            except ValueError as exc:
                raise KeyValueTypeError(f"key {key!r} is not an integer") from exc
            deadline = self._data[key][1]
        self._data[key] = (str(new).encode(), deadline)
        return new

    async def expire(self, key: str, ttl: float) -> bool:
        value = self._live(key)
        if value is None:
            return False
        self._data[key] = (value, self._deadline(ttl))
        return True

    async def ttl(self, key: str) -> float | None:
        if self._live(key) is None:
            return None
        deadline = self._data[key][1]
        return None if deadline is None else max(0.0, deadline - self._monotonic())

    async def set_add(self, key: str, *members: bytes, ttl: float | None = None) -> int:
        current = self._set(key)
        if current is None:
            current = set()
            deadline = self._deadline(ttl)
        else:
            deadline = self._deadline(ttl) if ttl is not None else self._data[key][1]
        before = len(current)
        current.update(bytes(m) for m in members)
        self._data[key] = (current, deadline)
        return len(current) - before

    async def set_remove(self, key: str, *members: bytes) -> int:
        current = self._set(key)
        if not current:
            return 0
        before = len(current)
        current.difference_update(members)
        if not current:
            del self._data[key]
        return before - len(current)

    async def set_members(self, key: str) -> builtins.set[bytes]:
        return set(self._set(key) or ())

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._data.clear()


def _as_bytes(value: bytes | str) -> bytes:
    """The client is built with decode_responses=False, so values are bytes; its type
    hints also allow str."""
    return value.encode() if isinstance(value, str) else bytes(value)


def _ms(ttl: float) -> int:
    return max(1, round(ttl * 1000))


class RedisKeyValueStore:
    """Redis (or any RESP server with Redis 7 semantics). Every call has a timeout; every
    failure becomes :class:`KeyValueUnavailable`."""

    def __init__(self, url: str, *, timeout: float = 1.0, max_connections: int = 64) -> None:
        # A blocking pool: under a burst, callers wait (at most ``timeout``) for a free
        # connection instead of failing at once or opening connections without bound.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
            decode_responses=False,
        )
        self._redis: aioredis.Redis = aioredis.Redis(connection_pool=pool)

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[aioredis.Redis]:
        try:
            yield self._redis
        except ResponseError as exc:
            if "WRONGTYPE" in str(exc) or "not an integer" in str(exc):
                raise KeyValueTypeError(str(exc)) from exc
            raise KeyValueUnavailable() from exc
        except (TimeoutError, RedisError, OSError) as exc:
            raise KeyValueUnavailable() from exc

    async def get(self, key: str) -> bytes | None:
        async with self._guard() as r:
            value = await r.get(key)
            return None if value is None else _as_bytes(value)

    async def set(
        self,
        key: str,
        value: bytes,
        *,
        ttl: float | None = None,
        only_if_absent: bool = False,
        only_if_present: bool = False,
    ) -> bool:
        async with self._guard() as r:
            done = await r.set(
                key,
                value,
                px=_ms(ttl) if ttl is not None else None,
                nx=only_if_absent,
                xx=only_if_present,
            )
            return bool(done)

    async def get_and_expire(self, key: str, ttl: float) -> bytes | None:
        async with self._guard() as r:
            value = await r.getex(key, px=_ms(ttl))
            return None if value is None else _as_bytes(value)

    async def take(self, key: str) -> bytes | None:
        async with self._guard() as r:
            value = await r.getdel(key)
            return None if value is None else _as_bytes(value)

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        async with self._guard() as r:
            return int(await r.delete(*keys))

    async def increment(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        async with self._guard() as r:
            if ttl is None:
                return int(await r.incrby(key, amount))
            pipe = r.pipeline(transaction=True)
            pipe.incrby(key, amount)
            pipe.pexpire(key, _ms(ttl), nx=True)
            results: list[Any] = await pipe.execute()
            return int(results[0])

    async def expire(self, key: str, ttl: float) -> bool:
        async with self._guard() as r:
            return bool(await r.pexpire(key, _ms(ttl)))

    async def ttl(self, key: str) -> float | None:
        async with self._guard() as r:
            ms = int(await r.pttl(key))
            return None if ms < 0 else ms / 1000

    async def set_add(self, key: str, *members: bytes, ttl: float | None = None) -> int:
        async with self._guard() as r:
            pipe = r.pipeline(transaction=True)
            pipe.sadd(key, *members)
            if ttl is not None:
                pipe.pexpire(key, _ms(ttl))
            results: list[Any] = await pipe.execute()
            return int(results[0])

    async def set_remove(self, key: str, *members: bytes) -> int:
        async with self._guard() as r:
            return int(await r.srem(key, *members))

    async def set_members(self, key: str) -> builtins.set[bytes]:
        async with self._guard() as r:
            members = await r.smembers(key)
            return {_as_bytes(m) for m in members}

    async def ping(self) -> None:
        async with self._guard() as r:
            await r.ping()

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)


def create_kv_store(redis_url: str, *, timeout: float = 1.0) -> KeyValueStore:
    """The registry: Redis when a URL is configured, otherwise the in-process store."""
    if redis_url:
        return RedisKeyValueStore(redis_url, timeout=timeout)
    return MemoryKeyValueStore()
