"""Login throttling and progressive lockout.

Every attempt is counted *before* its password is checked (one atomic sliding-window hit
per counter), so a burst of concurrent guesses gets no more tries than a sequence would;
a successful sign-in gives its slots back. Counters (shared store, failing closed):

* per identifier (a keyed hash of the normalized email, whether or not the account
  exists): N attempts without a success lock the identifier; repeated locks within 24 h
  escalate (15 min -> 30 min -> 1 h -> 6 h by default);
* per trusted device: a device that already completed a sign-in (with MFA for accounts
  that have it) is counted and locked on its own, and neither the identifier lock nor the
  per-IP and global ceilings apply to it — so knowing a clinician's email (or flooding the
  clinic's network address) is not enough to keep the clinician out;
* per client IP: failed attempts in a sliding window;
* a global ceiling on failed attempts per minute across the deployment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from clinicguard.auth.interfaces import LoginThrottled
from clinicguard.crypto.secretbox import Hasher
from clinicguard.ratelimit.interfaces import RateLimiter
from clinicguard.store.interfaces import KeyValueStore

DAY = 86400
GLOBAL_KEY = "login:global"


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


@dataclass
class Admission:
    """The slots an admitted attempt holds in each window."""

    attempt: Attempt
    slots: dict[str, str] = field(default_factory=dict)
    count: int = 0


@dataclass(frozen=True, slots=True)
class LockResult:
    locked: bool
    minutes: int = 0


def _tag(scope: str) -> str:
    # One hash tag per scope: a scope's keys live in one Redis Cluster slot.
    return f"cg:{{login:{scope}}}"


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

    async def admit(self, attempt: Attempt) -> Admission:
        """Take a slot in every window that applies, or raise LoginThrottled (with the
        Retry-After of the window that refused). Slots taken before a refusal are given
        back, so a refused attempt costs nothing."""
        ttl = await self._kv.ttl(f"{_tag(attempt.scope)}:lock")
        if ttl is not None:
            raise LoginThrottled(math.ceil(ttl))
        admission = Admission(attempt)
        windows = [
            (
                f"login:attempts:{attempt.scope}",
                self.limits.failures_per_identifier,
                self.limits.identifier_window,
            )
        ]
        if attempt.device is None:
            windows += [
                (f"login:ip:{attempt.ip}", self.limits.failures_per_ip, self.limits.ip_window),
                (GLOBAL_KEY, self.limits.global_failures_per_minute, 60),
            ]
        for key, limit, window in windows:
            state = await self._limiter.hit(key, limit=limit, window=window)
            if not state.allowed or state.event is None:
                await self._give_back(admission)
                raise LoginThrottled(math.ceil(state.reset_after))
            admission.slots[key] = state.event
            if key.startswith("login:attempts:"):
                admission.count = state.count
        return admission

    async def _give_back(self, admission: Admission) -> None:
        for key, event in admission.slots.items():
            await self._limiter.release(key, event)

    async def failed(self, admission: Admission) -> LockResult:
        """The attempt failed: its slots stay counted; the identifier (or device) is locked
        when it has used up its attempts."""
        if admission.count < self.limits.failures_per_identifier:
            return LockResult(locked=False)
        scope = admission.attempt.scope
        level = await self._kv.increment(f"{_tag(scope)}:locks24", ttl=DAY)
        minutes = self.limits.lock_minutes[min(level, len(self.limits.lock_minutes)) - 1]
        await self._kv.set(f"{_tag(scope)}:lock", b"1", ttl=minutes * 60)
        await self._limiter.reset(f"login:attempts:{scope}")
        return LockResult(locked=True, minutes=minutes)

    async def succeeded(self, admission: Admission) -> None:
        """The password was right: the attempt was not a failure anywhere."""
        await self._give_back(admission)
        await self._limiter.reset(f"login:attempts:{admission.attempt.scope}")

    async def unlock(self, email: str) -> None:
        """Clear the identifier's lock, attempts and escalation (an administrator's unlock).
        Device-scoped locks expire on their own."""
        scope = self.identifier(email)
        await self._kv.delete(f"{_tag(scope)}:lock", f"{_tag(scope)}:locks24")
        await self._limiter.reset(f"login:attempts:{scope}")
