"""Field encryption as the services use it: seal and open values in their place, blind
indexes for exact-match search, and the loud failure of a value that does not open.

A value that fails to decrypt is never replaced by a placeholder: the request fails with a
problem that says nothing about keys or data, and a critical security event (possible
tampering) names the place.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid
from collections.abc import Mapping

from clinicguard.core.events import (
    Outcome,
    SecurityEvent,
    SecurityEventSink,
    SecurityEventType,
    Severity,
)
from clinicguard.crypto import fields
from clinicguard.crypto.fields import Header, KeyKind, Place
from clinicguard.crypto.interfaces import DecryptionFailed
from clinicguard.crypto.keyring import FIELD, INDEX, DataKeyRing
from clinicguard.crypto.vault import SubjectKeyDestroyed, SubjectKeyVault

#: Blind index digests keep 128 bits of HMAC-SHA256 (exact match, no practical collisions).
INDEX_HEX = 32


class FieldEncryption:
    def __init__(
        self, ring: DataKeyRing, vault: SubjectKeyVault, events: SecurityEventSink
    ) -> None:
        self.ring = ring
        self.vault = vault
        self._events = events

    async def seal(
        self, place: Place, value: str | bytes | None, *, subject: uuid.UUID | None = None
    ) -> bytes | None:
        """``value`` encrypted for ``place``: under the patient's own key when ``subject``
        is given (highly sensitive), else under the clinic's active field key."""
        if value is None:
            return None
        data = value.encode() if isinstance(value, str) else value
        if subject is not None:
            generation, key = await self.vault.current(place.clinic_id, subject)
            return fields.encrypt(key, Header(KeyKind.SUBJECT, generation), place, data)
        version, key = await self.ring.active(place.clinic_id, FIELD)
        blob = fields.encrypt(key, Header(KeyKind.CLINIC, version), place, data)
        await self.ring.count(place.clinic_id, version)
        return blob

    async def open(
        self, place: Place, blob: bytes | None, *, subject: uuid.UUID | None = None
    ) -> str | None:
        """The plaintext of a stored value; None when nothing is stored or the patient's key
        was destroyed (erased). DecryptionFailed (and a critical event) otherwise."""
        opened = await self.open_row(
            place.clinic_id, place.table, place.row_id, {place.column: (blob, subject, False)}
        )
        value = opened[place.column]
        return value if value is None or isinstance(value, str) else None

    async def open_row(
        self,
        clinic_id: uuid.UUID,
        table: str,
        row_id: uuid.UUID,
        values: Mapping[str, tuple[bytes | None, uuid.UUID | None, bool]],
    ) -> dict[str, str | bytes | None]:
        """Several stored values of one row: ``column -> (blob, subject, binary)`` to
        ``column -> plaintext`` (text unless binary; None when nothing is stored or the
        patient's key was destroyed). Each key is looked up once per row."""
        prefix, suffix = f"{clinic_id}|{table}|".encode(), f"|{row_id}".encode()
        keys: dict[tuple[int, int], bytes | None] = {}
        out: dict[str, str | bytes | None] = {}
        for column, (blob, subject, binary) in values.items():
            if blob is None:
                out[column] = None
                continue
            try:
                header = fields.parse_header(blob)
                if header not in keys:
                    keys[header] = await self._key_for(clinic_id, header, subject)
                key = keys[header]
                if key is None:  # the patient's key was destroyed: erased
                    out[column] = None
                    continue
                data = fields.decrypt_at(key, prefix + column.encode() + suffix, blob)
                out[column] = data if binary else data.decode()
            except (DecryptionFailed, UnicodeDecodeError) as exc:
                raise await self._tampered(Place(clinic_id, table, column, row_id)) from exc
        return out

    async def _key_for(
        self, clinic_id: uuid.UUID, header: tuple[int, int], subject: uuid.UUID | None
    ) -> bytes | None:
        kind, version = header
        if kind == KeyKind.SUBJECT:
            if subject is None:
                raise DecryptionFailed()
            try:
                return await self.vault.key(clinic_id, subject, version)
            except SubjectKeyDestroyed:
                return None
        return await self.ring.key(clinic_id, FIELD, version)

    async def _tampered(self, place: Place) -> DecryptionFailed:
        """Record a value that does not open (critical: possible tampering) and return the
        error to raise (a problem that reveals nothing)."""
        await self._events.record(
            SecurityEvent(
                type=SecurityEventType.CRYPTO_DECRYPT_FAILED,
                outcome=Outcome.FAILURE,
                severity=Severity.CRITICAL,
                clinic_id=place.clinic_id,
                details={
                    "table": place.table,
                    "column": place.column,
                    "row_id": str(place.row_id),
                    "reason": "possible tampering: the value did not authenticate",
                },
            )
        )
        return DecryptionFailed()

    async def self_test(self, clinic_id: uuid.UUID | None, data: str) -> str:
        """Encrypt ``data`` and decrypt it again in memory (nothing is stored): under the
        clinic's active field key, or, without a clinic, a throw-away key wrapped and
        unwrapped by the active KEK. Returns the id of the key exercised; DecryptionFailed
        when the round trip does not give ``data`` back."""
        if clinic_id is None:
            provider = self.ring.provider
            kek_id = provider.active_kek_id()
            key = os.urandom(32)
            if (
                provider.unwrap(kek_id, provider.wrap(kek_id, key, b"self-test"), b"self-test")
                != key
            ):
                raise DecryptionFailed()
            return f"kek:{kek_id}"
        version, key = await self.ring.active(clinic_id, FIELD)
        place = Place(clinic_id, "self_test", "data", uuid.uuid4())
        blob = fields.encrypt(key, Header(KeyKind.CLINIC, version), place, data.encode())
        if fields.decrypt(key, place, blob).decode() != data:
            raise DecryptionFailed()
        return f"clinic:{clinic_id}:field:v{version}"

    async def blind_index(self, clinic_id: uuid.UUID, kind: str, normalized: str) -> str:
        """``<version>:<hex>`` under the clinic's active index key."""
        version, key = await self.ring.active(clinic_id, INDEX)
        return blind_index_digest(version, key, kind, normalized)

    async def blind_indexes(self, clinic_id: uuid.UUID, kind: str, normalized: str) -> list[str]:
        """The value's index under every index-key version of the clinic (a lookup finds
        rows not yet re-indexed after a rotation)."""
        await self.ring.active(clinic_id, INDEX)
        out = []
        for version in await self.ring.versions(clinic_id, INDEX):
            key = await self.ring.key(clinic_id, INDEX, version)
            out.append(blind_index_digest(version, key, kind, normalized))
        return out


def blind_index_digest(version: int, key: bytes, kind: str, normalized: str) -> str:
    """HMAC-SHA256 of ``kind|value`` under an index key, truncated, with its version."""
    mac = hmac.new(key, f"{kind}|{normalized}".encode(), hashlib.sha256).hexdigest()
    return f"{version}:{mac[:INDEX_HEX]}"


def index_version(value: str | None) -> int | None:
    if not value or ":" not in value:
        return None
    head = value.split(":", 1)[0]
    return int(head) if head.isdigit() else None
