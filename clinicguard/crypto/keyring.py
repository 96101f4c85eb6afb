"""The data-key ring: each clinic's field and index keys, created on first use, cached
unwrapped in memory, rotated on command or when a field key nears its encryption budget.

The active version of a (clinic, purpose) is the newest; a rotation takes effect for writes
at once in the process that rotates and within ``ACTIVE_CACHE_SECONDS`` elsewhere. Older
versions stay readable until ``keys reencrypt`` has moved every value off them.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from clinicguard.core.clock import Clock
from clinicguard.core.logging import get_logger
from clinicguard.crypto.interfaces import DecryptionFailed
from clinicguard.crypto.keys import KeyProvider
from clinicguard.crypto.models import DataKey
from clinicguard.crypto.secretbox import KEY_BYTES
from clinicguard.store.db import Database
from clinicguard.store.interfaces import TenantContext

FIELD = "field"
INDEX = "index"
PURPOSES = (FIELD, INDEX)
ACTIVE_CACHE_SECONDS = 30.0
#: NIST SP 800-38D: at most 2^32 invocations of GCM with random 96-bit nonces per key; we
#: rotate at a quarter of that.
DEFAULT_MAX_ENCRYPTIONS = 2**30
FLUSH_EVERY = 1000
log = get_logger("clinicguard.crypto")


@dataclass(frozen=True, slots=True)
class KeyStatus:
    clinic_id: uuid.UUID
    purpose: str
    version: int
    kek_id: str
    created_at: datetime
    encryptions: int
    active: bool
    due: bool


def _context(clinic_id: uuid.UUID, purpose: str, version: int) -> bytes:
    return f"{clinic_id}|{purpose}|{version}".encode()


class DataKeyRing:
    def __init__(
        self,
        db: Database,
        provider: KeyProvider,
        clock: Clock,
        *,
        rotation_days: int = 90,
        max_encryptions: int = DEFAULT_MAX_ENCRYPTIONS,
    ) -> None:
        self._db = db
        self.provider = provider
        self._provider = provider
        self._clock = clock
        self._rotation = timedelta(days=rotation_days)
        self._max_encryptions = max_encryptions
        self._keys: dict[tuple[uuid.UUID, str, int], bytes] = {}
        self._active: dict[tuple[uuid.UUID, str], tuple[float, int]] = {}
        self._pending: Counter[tuple[uuid.UUID, int]] = Counter()
        self._flushing: asyncio.Task[None] | None = None

    # --- reading ---------------------------------------------------------------------------

    async def active(self, clinic_id: uuid.UUID, purpose: str) -> tuple[int, bytes]:
        """The version and key that new values of this clinic and purpose use."""
        cached = self._active.get((clinic_id, purpose))
        if cached is not None and cached[0] > time.monotonic():
            version = cached[1]
        else:
            newest = await self._newest(clinic_id, purpose)
            if newest is None:
                newest = await self._create(clinic_id, purpose, only_if_none=True)
            version = newest
            self._active[(clinic_id, purpose)] = (time.monotonic() + ACTIVE_CACHE_SECONDS, version)
        return version, await self.key(clinic_id, purpose, version)

    async def versions(self, clinic_id: uuid.UUID, purpose: str) -> list[int]:
        async with self._db.transaction(TenantContext.system(clinic_id)) as session:
            rows = await session.scalars(
                select(DataKey.version).where(
                    DataKey.clinic_id == clinic_id, DataKey.purpose == purpose
                )
            )
            return sorted(rows.all())

    async def key(self, clinic_id: uuid.UUID, purpose: str, version: int) -> bytes:
        """A key by version; DecryptionFailed when it does not exist or does not unwrap."""
        cached = self._keys.get((clinic_id, purpose, version))
        if cached is not None:
            return cached
        async with self._db.transaction(TenantContext.system(clinic_id)) as session:
            row = await session.get(DataKey, (clinic_id, purpose, version))
        if row is None:
            raise DecryptionFailed()
        key = self._provider.unwrap(row.kek_id, row.wrapped, _context(clinic_id, purpose, version))
        self._keys[(clinic_id, purpose, version)] = key
        return key

    async def _newest(self, clinic_id: uuid.UUID, purpose: str) -> int | None:
        async with self._db.transaction(TenantContext.system(clinic_id)) as session:
            newest: int | None = await session.scalar(
                select(func.max(DataKey.version)).where(
                    DataKey.clinic_id == clinic_id, DataKey.purpose == purpose
                )
            )
            return newest

    # --- writing ---------------------------------------------------------------------------

    async def _create(self, clinic_id: uuid.UUID, purpose: str, *, only_if_none: bool) -> int:
        """A new version (serialized per clinic and purpose, so concurrent first uses agree)."""
        tenant = TenantContext.system(clinic_id)
        async with self._db.serialized(f"data-keys:{clinic_id}:{purpose}", tenant) as session:
            newest = await session.scalar(
                select(func.max(DataKey.version)).where(
                    DataKey.clinic_id == clinic_id, DataKey.purpose == purpose
                )
            )
            if newest is not None and only_if_none:
                return int(newest)
            version = (newest or 0) + 1
            key = os.urandom(KEY_BYTES)
            kek_id = self._provider.active_kek_id()
            session.add(
                DataKey(
                    clinic_id=clinic_id,
                    purpose=purpose,
                    version=version,
                    kek_id=kek_id,
                    wrapped=self._provider.wrap(kek_id, key, _context(clinic_id, purpose, version)),
                    created_at=self._clock.now(),
                    encryptions=0,
                )
            )
        self._keys[(clinic_id, purpose, version)] = key
        self._active[(clinic_id, purpose)] = (time.monotonic() + ACTIVE_CACHE_SECONDS, version)
        return version

    async def rotate(self, clinic_id: uuid.UUID, purpose: str) -> int:
        """A new active version for writes, at once (older versions stay readable)."""
        await self.flush()
        return await self._create(clinic_id, purpose, only_if_none=False)

    async def create_initial(self, session: AsyncSession, clinic_id: uuid.UUID) -> None:
        """A new clinic's first keys, written in the transaction that creates the clinic
        (which must be scoped to it as maintenance: ``TenantContext.system``)."""
        kek_id = self._provider.active_kek_id()
        for purpose in PURPOSES:
            key = os.urandom(KEY_BYTES)
            session.add(
                DataKey(
                    clinic_id=clinic_id,
                    purpose=purpose,
                    version=1,
                    kek_id=kek_id,
                    wrapped=self._provider.wrap(kek_id, key, _context(clinic_id, purpose, 1)),
                    created_at=self._clock.now(),
                    encryptions=0,
                )
            )
            self._keys[(clinic_id, purpose, 1)] = key
            self._active[(clinic_id, purpose)] = (time.monotonic() + ACTIVE_CACHE_SECONDS, 1)

    async def count(self, clinic_id: uuid.UUID, version: int, encryptions: int = 1) -> None:
        """Count values sealed under a field key. The counts are written every
        ``FLUSH_EVERY`` encryptions by a background task (never inside the caller's
        transaction) and on :meth:`flush`; a key whose budget is spent is rotated."""
        self._pending[(clinic_id, version)] += encryptions
        busy = self._flushing is not None and not self._flushing.done()
        if self._pending[(clinic_id, version)] >= FLUSH_EVERY and not busy:
            self._flushing = asyncio.create_task(self._flush_in_background())

    async def _flush_in_background(self) -> None:
        try:
            await self.flush()
        except Exception:  # the counts are kept for the next flush; a count is not a secret
            log.warning("data_key_count_flush_failed", exc_info=True)

    async def flush(self) -> None:
        pending, self._pending = self._pending, Counter()
        try:
            await self._write_counts(pending)
        except BaseException:
            self._pending.update(pending)
            raise

    async def _write_counts(self, pending: Counter[tuple[uuid.UUID, int]]) -> None:
        for (clinic_id, version), n in pending.items():
            async with self._db.transaction(TenantContext.system(clinic_id)) as session:
                await session.execute(
                    update(DataKey)
                    .where(
                        DataKey.clinic_id == clinic_id,
                        DataKey.purpose == FIELD,
                        DataKey.version == version,
                    )
                    .values(encryptions=DataKey.encryptions + n)
                )
                spent = await session.scalar(
                    select(DataKey.encryptions).where(
                        DataKey.clinic_id == clinic_id,
                        DataKey.purpose == FIELD,
                        DataKey.version == version,
                    )
                )
            newest = await self._newest(clinic_id, FIELD)
            if spent is not None and spent >= self._max_encryptions and newest == version:
                await self._create(clinic_id, FIELD, only_if_none=False)

    async def rewrap(self, clinics: list[uuid.UUID]) -> int:
        """KEK rotation: every data key of these clinics not under the active KEK is
        rewrapped under it (no value is re-encrypted). Returns how many were rewrapped."""
        target = self._provider.active_kek_id()
        done = 0
        for clinic_id in clinics:
            async with self._db.transaction(TenantContext.system(clinic_id)) as session:
                rows = (
                    await session.scalars(
                        select(DataKey).where(
                            DataKey.clinic_id == clinic_id, DataKey.kek_id != target
                        )
                    )
                ).all()
                for row in rows:
                    context = _context(clinic_id, row.purpose, row.version)
                    key = self._provider.unwrap(row.kek_id, row.wrapped, context)
                    row.wrapped = self._provider.wrap(target, key, context)
                    row.kek_id = target
                    done += 1
        return done

    async def status(self, clinics: list[uuid.UUID]) -> list[KeyStatus]:
        await self.flush()
        now = self._clock.now()
        out: list[KeyStatus] = []
        for clinic_id in clinics:
            async with self._db.transaction(TenantContext.system(clinic_id)) as session:
                rows = (
                    await session.scalars(
                        select(DataKey)
                        .where(DataKey.clinic_id == clinic_id)
                        .order_by(DataKey.purpose, DataKey.version)
                    )
                ).all()
            newest = {
                r.purpose: max(x.version for x in rows if x.purpose == r.purpose) for r in rows
            }
            for row in rows:
                active = row.version == newest[row.purpose]
                due = active and (
                    now - row.created_at >= self._rotation
                    or row.encryptions >= self._max_encryptions
                )
                out.append(
                    KeyStatus(
                        clinic_id,
                        row.purpose,
                        row.version,
                        row.kek_id,
                        row.created_at,
                        row.encryptions,
                        active,
                        due,
                    )
                )
        return out
