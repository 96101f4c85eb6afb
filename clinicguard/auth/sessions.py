"""Server-side sessions in the shared key-value store.

A session is one login: its record says who, which clinic and role, how strongly
authenticated, from where, and which refresh token is current. Every request reads it with
one round trip (``GETEX``: the read also restarts the idle timeout), so logout, logout-all,
an administrator's revoke or a password change take effect at once on every instance.
Keys carry a per-user hash tag (``{u:<id>}``) so a user's keys share a Redis Cluster slot.
"""

from __future__ import annotations

import builtins
import json
import secrets
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from clinicguard.core.clock import Clock
from clinicguard.crypto.secretbox import Hasher
from clinicguard.store.interfaces import KeyValueStore

MAX_RECORD_BYTES = 512
LAST_SEEN_RESOLUTION = 60.0
"""The stored last-seen time is rewritten at most this often (seconds)."""


def _user_tag(user_id: uuid.UUID | str) -> str:
    return f"cg:{{u:{user_id}}}"


def session_key(user_id: uuid.UUID | str, sid: str) -> str:
    return f"{_user_tag(user_id)}:s:{sid}"


def refresh_key(user_id: uuid.UUID | str, jti: str) -> str:
    return f"{_user_tag(user_id)}:rt:{jti}"


def _index_key(user_id: uuid.UUID | str) -> str:
    return f"{_user_tag(user_id)}:ss"


@dataclass(frozen=True, slots=True)
class Session:
    """The stored record (short field names keep it well under 512 bytes)."""

    sid: str
    u: str  # user id
    c: str | None  # active clinic id
    r: str  # role at that clinic
    m: int  # MFA level (0 none, 1 second factor)
    sc: str  # scope: full | mfa:enroll | password:change
    ca: float  # created (epoch seconds)
    ls: float  # last seen
    ax: float  # absolute expiry
    ip: str
    d: str  # device label
    rt: str = ""  # current refresh token id
    ck: str = ""  # keyed hash of the console cookie secret ("" for token sessions)
    cs: str = ""  # keyed hash of the CSRF token (console sessions)
    su: float = 0.0  # step-up valid until
    n: int = 0  # creation order among the user's sessions (store-wide sequence)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def user_id(self) -> uuid.UUID:
        return uuid.UUID(self.u)

    @property
    def clinic_id(self) -> uuid.UUID | None:
        return uuid.UUID(self.c) if self.c else None

    def encode(self) -> bytes:
        data = {k: v for k, v in asdict(self).items() if k not in ("sid", "extra") and v != ""}
        raw = json.dumps(data, separators=(",", ":")).encode()
        if len(raw) > MAX_RECORD_BYTES:
            raise ValueError("session record over 512 bytes")
        return raw

    @classmethod
    def decode(cls, sid: str, raw: bytes) -> Session:
        data = json.loads(raw)
        return cls(sid=sid, **data)


class SessionStore:
    def __init__(
        self,
        kv: KeyValueStore,
        clock: Clock,
        *,
        idle_timeout: int,
        absolute_timeout: int,
        max_per_user: int,
        hasher: Hasher,
    ) -> None:
        self._kv = kv
        self._clock = clock
        self._idle = idle_timeout
        self._absolute = absolute_timeout
        self._max = max_per_user
        self._hasher = hasher

    def _ttl(self, session: Session, now: float) -> float:
        return max(0.001, min(self._idle, session.ax - now))

    async def create(
        self,
        *,
        user_id: uuid.UUID,
        clinic_id: uuid.UUID | None,
        role: str,
        mfa_level: int,
        scope: str,
        ip: str,
        device: str,
        cookie_secret: str | None = None,
        csrf_token: str | None = None,
    ) -> tuple[Session, builtins.list[str]]:
        """Store a new session; returns it and the ids of sessions ended to stay within the
        per-user limit. The new session is stored first and the oldest beyond the limit are
        ended after, so concurrent sign-ins converge on the newest N (every creator trims
        the same oldest sessions, in the store-wide creation order)."""
        now = self._clock.now().timestamp()
        # Renewed on every sign-in, so it outlives every session it orders (it can restart
        # only once all of the user's sessions have ended).
        sequence_key = f"{_user_tag(user_id)}:seq"
        sequence = await self._kv.increment(sequence_key)
        await self._kv.expire(sequence_key, self._absolute + 60)
        session = Session(
            sid=secrets.token_urlsafe(16),
            u=str(user_id),
            c=str(clinic_id) if clinic_id else None,
            r=role,
            m=mfa_level,
            sc=scope,
            ca=now,
            ls=now,
            ax=now + self._absolute,
            ip=ip[:45],
            d=device[:48],
            n=sequence,
            ck=self._hasher.hexdigest(cookie_secret, 32) if cookie_secret else "",
            cs=self._hasher.hexdigest(csrf_token, 32) if csrf_token else "",
        )
        await self._kv.set(
            session_key(user_id, session.sid), session.encode(), ttl=self._ttl(session, now)
        )
        await self._kv.set_add(_index_key(user_id), session.sid.encode(), ttl=self._absolute)
        live = await self.list(user_id)
        ended = []
        for old in live[: max(0, len(live) - self._max)]:
            await self.revoke(old)
            ended.append(old.sid)
        return session, ended

    async def touch(self, user_id: uuid.UUID | str, sid: str) -> Session | None:
        """The live session (restarting its idle timeout), or None when it ended, idled out
        or passed its absolute lifetime. One key-value round trip, plus one write a minute
        to keep the last-seen time."""
        key = session_key(user_id, sid)
        raw = await self._kv.get_and_expire(key, self._idle)
        if raw is None:
            return None
        session = Session.decode(sid, raw)
        now = self._clock.now().timestamp()
        if session.ax <= now or session.u != str(user_id):
            await self.revoke(session)
            return None
        if now - session.ls >= LAST_SEEN_RESOLUTION:
            session = replace(session, ls=now)
            if not await self.save(session):
                return None  # ended while this request was reading it
        return session

    async def get(self, user_id: uuid.UUID | str, sid: str) -> Session | None:
        """The session without touching it (listing, refresh)."""
        raw = await self._kv.get(session_key(user_id, sid))
        if raw is None:
            return None
        session = Session.decode(sid, raw)
        if session.ax <= self._clock.now().timestamp():
            return None
        return session

    async def save(self, session: Session) -> bool:
        """Update a live session; False (and nothing written) when it has ended meanwhile,
        so a racing update never brings back a session that a logout or revoke ended."""
        now = self._clock.now().timestamp()
        return await self._kv.set(
            session_key(session.u, session.sid),
            session.encode(),
            ttl=self._ttl(session, now),
            only_if_present=True,
        )

    async def list(self, user_id: uuid.UUID) -> builtins.list[Session]:
        """The user's live sessions (dead ids are pruned from the index)."""
        ids = await self._kv.set_members(_index_key(user_id))
        live: list[Session] = []
        dead: list[bytes] = []
        for raw_sid in ids:
            sid = raw_sid.decode()
            session = await self.get(user_id, sid)
            if session is None:
                dead.append(raw_sid)
            else:
                live.append(session)
        if dead:
            await self._kv.set_remove(_index_key(user_id), *dead)
        return sorted(live, key=lambda s: (s.n, s.ca))

    async def revoke(self, session: Session) -> None:
        """End one session and its current refresh token."""
        keys = [session_key(session.u, session.sid)]
        if session.rt:
            keys.append(refresh_key(session.u, session.rt))
        await self._kv.delete(*keys)
        await self._kv.set_remove(_index_key(session.u), session.sid.encode())

    async def revoke_all(
        self,
        user_id: uuid.UUID,
        *,
        except_sid: str | None = None,
        clinic_id: uuid.UUID | None = None,
    ) -> builtins.list[str]:
        """End the user's sessions (only those active in ``clinic_id`` when given)."""
        ended = []
        for session in await self.list(user_id):
            if clinic_id is not None and session.c != str(clinic_id):
                continue
            if session.sid != except_sid:
                await self.revoke(session)
                ended.append(session.sid)
        return ended

    def cookie_matches(self, session: Session, secret: str) -> bool:
        return bool(session.ck) and self._hasher.matches(secret, session.ck)

    def csrf_matches(self, session: Session, token: str) -> bool:
        return bool(session.cs) and self._hasher.matches(token, session.cs)


@dataclass(frozen=True, slots=True)
class TrustedDevice:
    user_id: str
    mfa: bool


class DeviceTrust:
    """Devices that completed a sign-in: they keep their own failure counter, so an attacker
    who only knows a clinician's email cannot lock that clinician's own device out."""

    def __init__(self, kv: KeyValueStore, hasher: Hasher, *, days: int) -> None:
        self._kv = kv
        self._hasher = hasher
        self._ttl = days * 86400

    def _key(self, token: str) -> str:
        return f"cg:dev:{self._hasher.hexdigest(token, 40)}"

    def fingerprint(self, token: str) -> str:
        """A short stable id for counters (never the token itself)."""
        return self._hasher.hexdigest(token, 24)

    async def issue(self, user_id: uuid.UUID, *, mfa: bool) -> str:
        token = secrets.token_urlsafe(32)
        record = json.dumps({"u": str(user_id), "m": mfa}).encode()
        await self._kv.set(self._key(token), record, ttl=self._ttl)
        return token

    async def lookup(self, token: str | None) -> TrustedDevice | None:
        if not token or len(token) > 128:
            return None
        raw = await self._kv.get(self._key(token))
        if raw is None:
            return None
        data = json.loads(raw)
        return TrustedDevice(user_id=str(data["u"]), mfa=bool(data["m"]))
