"""API keys for integrations: created by a clinic administrator, shown once, stored as a
keyed hash, found by their public prefix, scoped, expiring and revocable.

Format: ``cgk_<12 hex prefix>_<43 url-safe secret>``. The prefix identifies the key in logs
and lists; only the whole key authenticates.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update

from clinicguard.auth.interfaces import TokenInvalid
from clinicguard.auth.models import ApiKey
from clinicguard.core.clock import Clock
from clinicguard.core.context import current_request
from clinicguard.core.errors import (
    FieldError,
    Forbidden,
    NotFound,
    TooManyRequests,
    ValidationFailed,
)
from clinicguard.core.events import Outcome, SecurityEvent, SecurityEventSink, SecurityEventType
from clinicguard.core.principal import Principal, Role
from clinicguard.crypto.secretbox import Hasher
from clinicguard.ratelimit.interfaces import RateLimiter
from clinicguard.store.db import Database
from clinicguard.store.interfaces import TenantContext, tenant_of
from clinicguard.store.tenancy import Clinic

KEY_PREFIX = "cgk_"
_KEY = re.compile(r"^cgk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_SCOPE = re.compile(r"^[a-z_]+:[a-z_]+$")
LAST_USED_RESOLUTION = timedelta(minutes=1)
MAX_KEY_LIFETIME = timedelta(days=730)
FAILURES_PER_IP = 20
FAILURE_WINDOW = 900
#: The one prefix a lookup may read before the key's clinic is known (row-level security).
PREFIX_SETTING = "app.api_key_prefix"


def looks_like_api_key(value: str) -> bool:
    return value.startswith(KEY_PREFIX)


class ApiKeyService:
    def __init__(
        self,
        db: Database,
        hasher: Hasher,
        clock: Clock,
        events: SecurityEventSink,
        limiter: RateLimiter,
        *,
        scopes: frozenset[str],
    ) -> None:
        self._scopes = scopes
        """The permissions a key may carry (the authorization policy's, given at wiring:
        authentication sits below authorization and does not import it)."""
        self._db = db
        self._limiter = limiter
        self._hasher = hasher
        self._clock = clock
        self._events = events

    @staticmethod
    def _require_admin(principal: Principal) -> uuid.UUID:
        if (
            principal.role is not Role.CLINIC_ADMIN
            or principal.clinic_id is None
            or not principal.is_fully_authenticated
        ):
            raise Forbidden("Only a clinic administrator manages API keys.")
        return principal.clinic_id

    async def create(
        self, principal: Principal, name: str, scopes: Sequence[str], expires_at: datetime | None
    ) -> tuple[ApiKey, str]:
        clinic_id = self._require_admin(principal)
        errors = [
            FieldError("body.scopes", f"Unknown scope: {s[:60]!r}.")
            for s in scopes
            if not _SCOPE.fullmatch(s) or s not in self._scopes
        ]
        if expires_at is not None and expires_at <= self._clock.now():
            errors.append(FieldError("body.expires_at", "Must be in the future."))
        elif expires_at is not None and expires_at > self._clock.now() + MAX_KEY_LIFETIME:
            errors.append(FieldError("body.expires_at", "Must be at most two years ahead."))
        if errors:
            raise ValidationFailed(errors=errors)
        prefix = secrets.token_hex(6)
        plaintext = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
        key = ApiKey(
            clinic_id=clinic_id,
            id=uuid.uuid4(),
            prefix=prefix,
            secret_hash=self._hasher.hexdigest(plaintext),
            name=name,
            scopes=sorted(set(scopes)),
            created_by=principal.user_id,
            created_at=self._clock.now(),
            expires_at=expires_at,
        )
        async with self._db.transaction(tenant_of(principal)) as session:
            session.add(key)
        await self._events.record(
            SecurityEvent(
                type=SecurityEventType.AUTH_API_KEY_CREATED,
                outcome=Outcome.SUCCESS,
                user_id=principal.user_id,
                clinic_id=clinic_id,
                details={"key_id": str(key.id), "prefix": prefix, "scopes": ",".join(key.scopes)},
            )
        )
        return key, plaintext

    async def list(self, principal: Principal) -> list[ApiKey]:
        clinic_id = self._require_admin(principal)
        async with self._db.transaction(tenant_of(principal)) as session:
            rows = await session.scalars(
                select(ApiKey).where(ApiKey.clinic_id == clinic_id).order_by(ApiKey.created_at)
            )
            return list(rows.all())

    async def revoke(self, principal: Principal, key_id: uuid.UUID) -> None:
        clinic_id = self._require_admin(principal)
        async with self._db.transaction(tenant_of(principal)) as session:
            key = await session.get(ApiKey, (clinic_id, key_id))
            if key is None:
                raise NotFound()  # another clinic's key looks exactly like a missing one
            if key.revoked_at is None:
                key.revoked_at = self._clock.now()
        await self._events.record(
            SecurityEvent(
                type=SecurityEventType.AUTH_API_KEY_REVOKED,
                outcome=Outcome.SUCCESS,
                user_id=principal.user_id,
                clinic_id=clinic_id,
                details={"key_id": str(key_id), "prefix": key.prefix},
            )
        )

    async def authenticate(self, presented: str) -> Principal:
        """The key's principal; TokenInvalid for anything else. Only failed attempts are
        counted per client IP (a key carries 256 random bits, so the limit is against noise
        and load, not guessing); past the limit that address is refused (429) until the
        window passes, whatever key it sends. Check-then-count is not atomic: a burst of bad
        keys may slightly exceed the limit."""
        ctx = current_request()
        window = f"apikey:fail:{ctx.client_ip if ctx else 'unknown'}"
        state = await self._limiter.peek(window, limit=FAILURES_PER_IP, window=FAILURE_WINDOW)
        if not state.allowed:
            raise TooManyRequests(int(state.reset_after) + 1)
        match = _KEY.fullmatch(presented)
        if match is None:
            await self._limiter.hit(window, limit=FAILURES_PER_IP, window=FAILURE_WINDOW)
            raise TokenInvalid()
        now = self._clock.now()
        async with self._db.transaction() as session:
            await self._db.set_setting(session, PREFIX_SETTING, match.group(1))
            key = await session.scalar(select(ApiKey).where(ApiKey.prefix == match.group(1)))
            if key is not None:
                # Marking the key used is maintenance of that one clinic: requests made
                # with a key cannot change keys (row-level security).
                await self._db.set_tenant(session, TenantContext.system(key.clinic_id))
            clinic_active = key is not None and bool(
                await session.scalar(select(Clinic.is_active).where(Clinic.id == key.clinic_id))
            )
            valid = (
                key is not None
                and clinic_active
                and self._hasher.matches(presented, key.secret_hash)
                and key.revoked_at is None
                and (key.expires_at is None or key.expires_at > now)
            )
            if valid and key is not None:
                await session.execute(
                    update(ApiKey)
                    .where(
                        ApiKey.clinic_id == key.clinic_id,
                        ApiKey.id == key.id,
                        or_(
                            ApiKey.last_used_at.is_(None),
                            ApiKey.last_used_at < now - LAST_USED_RESOLUTION,
                        ),
                    )
                    .values(last_used_at=now)
                )
        if not valid or key is None:
            await self._limiter.hit(window, limit=FAILURES_PER_IP, window=FAILURE_WINDOW)
            await self._events.record(
                SecurityEvent(
                    type=SecurityEventType.AUTH_API_KEY_REJECTED,
                    outcome=Outcome.DENIED,
                    clinic_id=key.clinic_id if key else None,
                    details={"prefix": match.group(1)},
                )
            )
            raise TokenInvalid()
        return Principal(
            user_id=key.id,
            role=Role.INTEGRATION,
            clinic_id=key.clinic_id,
            scopes=frozenset(key.scopes),
            auth_method="api_key",
        )
