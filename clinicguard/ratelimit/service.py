"""Sliding-window limiters: a Redis Lua script (one round trip, server time) and its
in-process twin. Both keep at most ``limit`` timestamps per key."""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from clinicguard.ratelimit.interfaces import RateLimiter, WindowState
from clinicguard.store.interfaces import KeyValueUnavailable

# KEYS[1]: the window; ARGV: window ms, limit, cost (1 = hit, 0 = peek), unique member.
# Server time, so instances with skewed clocks share one notion of "now".
_SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local allowed = 0
if count + 1 <= limit then
  allowed = 1
  if cost > 0 then
    redis.call('ZADD', KEYS[1], now, ARGV[4])
    count = count + 1
  end
end
if count > 0 then
  redis.call('PEXPIRE', KEYS[1], window)
end
local reset = 0
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if oldest[2] then reset = tonumber(oldest[2]) + window - now end
return {allowed, count, reset}
"""


class RedisSlidingWindowLimiter:
    def __init__(self, client: aioredis.Redis, *, prefix: str = "cg:rl:") -> None:
        self._client = client
        self._script = client.register_script(_SLIDING_WINDOW)
        self._prefix = prefix

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 1.0) -> RedisSlidingWindowLimiter:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=64,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        return cls(aioredis.Redis(connection_pool=pool))

    async def _run(self, key: str, limit: int, window: float, cost: int) -> WindowState:
        member = secrets.token_hex(8)
        try:
            result: list[Any] = await self._script(
                keys=[self._prefix + key],
                args=[max(1, round(window * 1000)), limit, cost, member],
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise KeyValueUnavailable() from exc
        allowed, count, reset_ms = (int(v) for v in result)
        recorded = member if allowed and cost else None
        return WindowState(bool(allowed), count, limit, max(0.0, reset_ms / 1000), recorded)

    async def hit(self, key: str, *, limit: int, window: float) -> WindowState:
        return await self._run(key, limit, window, 1)

    async def peek(self, key: str, *, limit: int, window: float) -> WindowState:
        return await self._run(key, limit, window, 0)

    async def release(self, key: str, event: str) -> None:
        try:
            await self._client.zrem(self._prefix + key, event)
        except (RedisError, OSError, TimeoutError) as exc:
            raise KeyValueUnavailable() from exc

    async def reset(self, *keys: str) -> None:
        if not keys:
            return
        try:
            await self._client.delete(*(self._prefix + k for k in keys))
        except (RedisError, OSError, TimeoutError) as exc:
            raise KeyValueUnavailable() from exc

    async def close(self) -> None:
        await self._client.aclose(close_connection_pool=True)


class MemorySlidingWindowLimiter:
    """The in-process twin (single process). Methods do not await, so each is atomic."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._windows: dict[str, deque[tuple[float, str]]] = {}
        self._monotonic = monotonic

    def _window(self, key: str, window: float) -> tuple[deque[tuple[float, str]], float]:
        now = self._monotonic()
        events = self._windows.setdefault(key, deque())
        while events and events[0][0] <= now - window:
            events.popleft()
        return events, now

    def _finish(
        self,
        *,
        key: str,
        events: deque[tuple[float, str]],
        allowed: bool,
        limit: int,
        window: float,
        now: float,
        event: str | None = None,
    ) -> WindowState:
        reset = events[0][0] + window - now if events else 0.0
        if not events:
            del self._windows[key]
        return WindowState(allowed, len(events), limit, max(0.0, reset), event)

    async def hit(self, key: str, *, limit: int, window: float) -> WindowState:
        events, now = self._window(key, window)
        allowed = len(events) + 1 <= limit
        event = secrets.token_hex(8) if allowed else None
        if event is not None:
            events.append((now, event))
        return self._finish(
            key=key,
            events=events,
            allowed=allowed,
            limit=limit,
            window=window,
            now=now,
            event=event,
        )

    async def peek(self, key: str, *, limit: int, window: float) -> WindowState:
        events, now = self._window(key, window)
        return self._finish(
            key=key,
            events=events,
            allowed=len(events) + 1 <= limit,
            limit=limit,
            window=window,
            now=now,
        )

    async def release(self, key: str, event: str) -> None:
        events = self._windows.get(key)
        if events is None:
            return
        for item in events:
            if item[1] == event:
                events.remove(item)
                break
        if not events:
            del self._windows[key]

    async def reset(self, *keys: str) -> None:
        for key in keys:
            self._windows.pop(key, None)

    async def close(self) -> None:
        self._windows.clear()


def create_rate_limiter(redis_url: str, *, timeout: float = 1.0) -> RateLimiter:
    """The registry: Redis when configured, otherwise the in-process twin."""
    if redis_url:
        return RedisSlidingWindowLimiter.from_url(redis_url, timeout=timeout)
    return MemorySlidingWindowLimiter()
