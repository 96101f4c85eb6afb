"""The storage seams: the key-value store Protocol and storage failures."""

from __future__ import annotations

import builtins
import uuid
from dataclasses import dataclass
from typing import Protocol

from clinicguard.core.errors import ServiceUnavailable
from clinicguard.core.principal import Principal


class DatabaseUnavailable(ServiceUnavailable):
    """The database cannot be reached or timed out; the transaction was rolled back."""


class KeyValueUnavailable(ServiceUnavailable):
    """The key-value store cannot be reached or timed out. Callers that guard sessions,
    revocations or authentication limits must let this propagate (fail closed)."""


class KeyValueTypeError(Exception):
    """A key holds a value of another kind than the operation needs (a programming error)."""


#: The role row-level security gives maintenance work inside one clinic.
SYSTEM_ROLE = "system"


@dataclass(frozen=True, slots=True)
class TenantContext:
    """What a transaction is scoped to. On PostgreSQL it is set with ``set_config(..., true)``
    per transaction, so row-level security sees the same clinic as the application."""

    clinic_id: uuid.UUID | None
    user_id: uuid.UUID | None = None
    role: str | None = None

    @classmethod
    def system(cls, clinic_id: uuid.UUID) -> TenantContext:
        """Maintenance work (seeding, re-encryption) for one clinic: all of that clinic's
        rows, never another clinic's."""
        return cls(clinic_id, None, SYSTEM_ROLE)

    @classmethod
    def person(cls, user_id: uuid.UUID) -> TenantContext:
        """A person before a clinic is chosen (sign-in): their own memberships only."""
        return cls(None, user_id, None)


def tenant_of(principal: Principal) -> TenantContext:
    """The transaction scope of an authenticated request: the clinic of its verified token
    (or API key), the actor and their role in that clinic."""
    return TenantContext(principal.clinic_id, principal.user_id, str(principal.role))


class KeyValueStore(Protocol):
    """Shared, expiring key-value state (sessions, revocations, rate limits, single-use codes).

    Keys are plain strings; callers own their prefixes (and Redis Cluster hash tags). Every
    method raises :class:`KeyValueUnavailable` when the backend cannot answer in time; none
    of them silently does nothing. TTLs are in seconds (fractions allowed, millisecond
    precision).
    """

    async def get(self, key: str) -> bytes | None:
        """The value, or None when the key is absent or expired."""
        ...

    async def set(
        self,
        key: str,
        value: bytes,
        *,
        ttl: float | None = None,
        only_if_absent: bool = False,
        only_if_present: bool = False,
    ) -> bool:
        """Store ``value``; with ``only_if_absent`` only when no live value exists, with
        ``only_if_present`` only when one does (both atomic: an update never brings back a
        key another request deleted). Returns whether it was stored."""
        ...

    async def get_and_expire(self, key: str, ttl: float) -> bytes | None:
        """The value, and its time to live reset to ``ttl`` (sliding expiry) in the same
        atomic step; None when absent or expired."""
        ...

    async def take(self, key: str) -> bytes | None:
        """Return and delete the value in one atomic step (single-use tokens): of two
        concurrent takers, exactly one gets the value."""
        ...

    async def delete(self, *keys: str) -> int:
        """Delete keys; returns how many existed."""
        ...

    async def increment(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """Add ``amount`` to an integer counter (absent counts as 0) and return the new value.
        ``ttl`` is applied only when this call creates the key, so a window is not stretched
        by later increments."""
        ...

    async def expire(self, key: str, ttl: float) -> bool:
        """Set the key's time to live; False when the key does not exist."""
        ...

    async def ttl(self, key: str) -> float | None:
        """Seconds left to live; None when the key is absent or never expires."""
        ...

    async def set_add(self, key: str, *members: bytes, ttl: float | None = None) -> int:
        """Add members to a set (``ttl``, when given, is reset on the whole set); returns how
        many were new."""
        ...

    async def set_remove(self, key: str, *members: bytes) -> int:
        """Remove members from a set; returns how many were present."""
        ...

    async def set_members(self, key: str) -> builtins.set[bytes]:
        """All members of a set (empty when absent)."""
        ...

    async def ping(self) -> None:
        """Return when the backend answers; raise KeyValueUnavailable otherwise."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
