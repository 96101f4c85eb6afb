"""Login throttling and progressive lockout.

Counters (all in the shared store, all failing closed when it is down):

* per identifier (a keyed hash of the normalized email, whether or not the account
  exists): N failures in the lock window lock the identifier; repeated locks within 24 h
  escalate (15 min -> 30 min -> 1 h -> 6 h by default);
* per trusted device: a device that already completed a sign-in (with MFA for accounts
  that have it) is counted and locked on its own, and the identifier lock does not apply to
  it — so knowing a clinician's email is not enough to keep the clinician out;
* per client IP: failures in a sliding window;
* a global ceiling on failures per minute across the deployment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from clinicguard.auth.interfaces import LoginThrottled
from clinicguard.crypto.secretbox import Hasher
from clinicguard.ratelimit.interfaces import RateLimiter
from clinicguard.store.interfaces import KeyValueStore

DAY = 86400


@dataclass(frozen=True, slots=True)
class LoginLimits:
    failures_per_identifier: int
    lock_minutes: tuple[int, ...]
    failures_per_ip: int
    ip_window: int
    global_failures_per_minute: int

    @property
    def identifier_window(self) -> int:
        return self.lock_minutes[0] * 60


@dataclass(frozen=True, slots=True)
class Attempt:
    """Who is trying: the identifier's keyed hash, the client IP, and (when the client
    presented one for this very account) its trusted-device fingerprint."""

    identifier: str
    ip: str
    device: str | None = None

    @property
    def scope(self) -> str:
        return f"{self.identifier}:d:{self.device}" if self.device else self.identifier


@dataclass(frozen=True, slots=True)
class LockResult:
    locked: bool
    minutes: int = 0


class LoginGuard:
    def __init__(
        self, kv: KeyValueStore, limiter: RateLimiter, hasher: Hasher, limits: LoginLimits
    ) -> None:
        self._kv = kv
        self._limiter = limiter
        self._hasher = hasher
        self.limits = limits

    def identifier(self, email: str) -> str:
        return self._hasher.hexdigest(email.strip().lower(), 32)

    @staticmethod
    def _lock_key(scope: str) -> str:
        return f"cg:login:lock:{scope}"

    async def check(self, attempt: Attempt) -> None:
        """Raise LoginThrottled (with Retry-After) when this attempt may not be tried."""
        ttl = await self._kv.ttl(self._lock_key(attempt.scope))
        if ttl is not None:
            raise LoginThrottled(math.ceil(ttl))
        ip = await self._limiter.peek(
            f"login:ip:{attempt.ip}",
            limit=self.limits.failures_per_ip,
            window=self.limits.ip_window,
        )
        if not ip.allowed:
            raise LoginThrottled(math.ceil(ip.reset_after))
        overall = await self._limiter.peek(
            "login:global", limit=self.limits.global_failures_per_minute, window=60
        )
        if not overall.allowed:
            raise LoginThrottled(math.ceil(overall.reset_after))

    async def record_failure(self, attempt: Attempt) -> LockResult:
        """Count a failed attempt everywhere; lock the identifier (or the device) when it
        reached its limit. Returns whether this failure caused a lock."""
        await self._limiter.hit(
            f"login:ip:{attempt.ip}",
            limit=self.limits.failures_per_ip,
            window=self.limits.ip_window,
        )
        await self._limiter.hit(
            "login:global", limit=self.limits.global_failures_per_minute, window=60
        )
        state = await self._limiter.hit(
            f"login:fail:{attempt.scope}",
            limit=self.limits.failures_per_identifier,
            window=self.limits.identifier_window,
        )
        if state.count < self.limits.failures_per_identifier:
            return LockResult(locked=False)
        level = await self._kv.increment(f"cg:login:locks24:{attempt.scope}", ttl=DAY)
        minutes = self.limits.lock_minutes[min(level, len(self.limits.lock_minutes)) - 1]
        await self._kv.set(self._lock_key(attempt.scope), b"1", ttl=minutes * 60)
        await self._limiter.reset(f"login:fail:{attempt.scope}")
        return LockResult(locked=True, minutes=minutes)

    async def record_success(self, attempt: Attempt) -> None:
        await self._limiter.reset(f"login:fail:{attempt.scope}")

    async def unlock(self, email: str) -> None:
        """Clear the identifier's lock, failures and escalation (an administrator's unlock).
        Device-scoped locks expire on their own."""
        scope = self.identifier(email)
        await self._kv.delete(self._lock_key(scope), f"cg:login:locks24:{scope}")
        await self._limiter.reset(f"login:fail:{scope}")
