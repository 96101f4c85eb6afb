"""Patients' own keys, kept in a database of their own (the key vault).

Highly sensitive values (diagnoses, notes, prescriptions, files) are sealed under a key of
their patient. That key is stored wrapped by the clinic's field data key — but in the
vault, not in the clinical database: destroying it (crypto-shredding) then makes those
values unrecoverable everywhere, including in copies and backups of the clinical database
taken before, which hold only ciphertext. The vault's own backups must be kept short (see
docs/operations.md): a shredded key lives on in a vault backup until that backup expires.

A destroyed key leaves a tombstone, so "erased" is told apart from "missing" (which is
tampering or a lost vault, and fails loudly).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Uuid,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from clinicguard.core.clock import Clock
from clinicguard.crypto.interfaces import DecryptionFailed
from clinicguard.crypto.keyring import FIELD, DataKeyRing
from clinicguard.crypto.secretbox import KEY_BYTES, open_sealed, seal
from clinicguard.store.db import Database

metadata = MetaData()
subject_keys = Table(
    "subject_keys",
    metadata,
    Column("clinic_id", Uuid(), primary_key=True),
    Column("subject_id", Uuid(), primary_key=True),
    Column("generation", Integer(), primary_key=True),
    Column("dek_version", Integer(), nullable=False),
    Column("wrapped", LargeBinary(), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("destroyed_at", DateTime(timezone=True), nullable=True),
)
CACHE_SIZE = 4096
CACHE_SECONDS = 60.0


class SubjectKeyDestroyed(Exception):
    """The patient's key was destroyed (crypto-shredded): their values are gone."""


def _context(
    clinic_id: uuid.UUID, subject_id: uuid.UUID, generation: int, dek_version: int
) -> bytes:
    return f"subject-key|{clinic_id}|{subject_id}|{generation}|{dek_version}".encode()


class SubjectKeyVault:
    def __init__(self, db: Database, ring: DataKeyRing, clock: Clock) -> None:
        self.db = db
        self._ring = ring
        self._clock = clock
        self._cache: OrderedDict[tuple[uuid.UUID, uuid.UUID, int], tuple[float, bytes]] = (
            OrderedDict()
        )
        self._created = False
        self._create_lock = asyncio.Lock()

    async def _ready(self) -> None:
        """Create the vault's one table when it is missing, once per process (the vault has
        no migrations: its schema is this one table)."""
        if self._created:
            return
        async with self._create_lock:
            if not self._created:
                url = self.db.engine.url
                if url.get_backend_name() == "sqlite" and url.database:
                    Path(url.database).parent.mkdir(parents=True, exist_ok=True)
                async with self.db.engine.begin() as conn:
                    await conn.run_sync(metadata.create_all)
                self._created = True

    def _remember(self, where: tuple[uuid.UUID, uuid.UUID, int], key: bytes) -> None:
        self._cache[where] = (time.monotonic() + CACHE_SECONDS, key)
        self._cache.move_to_end(where)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    async def _rows(self, clinic_id: uuid.UUID, subject_id: uuid.UUID) -> list[Any]:
        await self._ready()
        async with self.db.transaction() as session:
            result = await session.execute(
                select(subject_keys)
                .where(
                    subject_keys.c.clinic_id == clinic_id,
                    subject_keys.c.subject_id == subject_id,
                )
                .order_by(subject_keys.c.generation)
            )
            return list(result.all())

    async def _open(self, row: Any) -> bytes:
        dek = await self._ring.key(row.clinic_id, FIELD, row.dek_version)
        context = _context(row.clinic_id, row.subject_id, row.generation, row.dek_version)
        key = open_sealed(dek, row.wrapped, context)
        self._remember((row.clinic_id, row.subject_id, row.generation), key)
        return key

    async def key(self, clinic_id: uuid.UUID, subject_id: uuid.UUID, generation: int) -> bytes:
        """The patient's key of that generation (values name it in their header).
        SubjectKeyDestroyed after shredding; DecryptionFailed when it is missing (a lost
        vault, or a forged header) or does not unwrap."""
        cached = self._cache.get((clinic_id, subject_id, generation))
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        row = next(
            (r for r in await self._rows(clinic_id, subject_id) if r.generation == generation),
            None,
        )
        if row is None:
            raise DecryptionFailed()
        if row.wrapped is None:
            raise SubjectKeyDestroyed()
        return await self._open(row)

    async def current(self, clinic_id: uuid.UUID, subject_id: uuid.UUID) -> tuple[int, bytes]:
        """The generation and key new values of the patient are sealed with: the newest
        live key, or a new generation when there is none (first write, or the first write
        after a shredding — the erased values keep naming their destroyed generation)."""
        rows = await self._rows(clinic_id, subject_id)
        if rows and rows[-1].wrapped is not None:
            newest = rows[-1]
            cached = self._cache.get((clinic_id, subject_id, newest.generation))
            if cached is not None and cached[0] > time.monotonic():
                return newest.generation, cached[1]
            return newest.generation, await self._open(newest)
        generation = rows[-1].generation + 1 if rows else 1
        version, dek = await self._ring.active(clinic_id, FIELD)
        key = os.urandom(KEY_BYTES)
        try:
            async with self.db.transaction() as session:
                await session.execute(
                    insert(subject_keys).values(
                        clinic_id=clinic_id,
                        subject_id=subject_id,
                        generation=generation,
                        dek_version=version,
                        wrapped=seal(
                            dek, key, _context(clinic_id, subject_id, generation, version)
                        ),
                        created_at=self._clock.now(),
                        destroyed_at=None,
                    )
                )
        except IntegrityError:
            # A concurrent request created this generation first: use that one.
            return await self.current(clinic_id, subject_id)
        self._remember((clinic_id, subject_id, generation), key)
        return generation, key

    async def destroy(self, clinic_id: uuid.UUID, subject_id: uuid.UUID) -> bool:
        """Crypto-shred: every live key of the patient is erased and a tombstone kept.
        True when a key existed."""
        for where in [w for w in self._cache if w[:2] == (clinic_id, subject_id)]:
            self._cache.pop(where, None)
        await self._ready()
        async with self.db.transaction() as session:
            result = await session.execute(
                update(subject_keys)
                .where(
                    subject_keys.c.clinic_id == clinic_id,
                    subject_keys.c.subject_id == subject_id,
                    subject_keys.c.wrapped.is_not(None),
                )
                .values(wrapped=None, destroyed_at=self._clock.now())
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def rewrap(self, clinic_id: uuid.UUID) -> int:
        """Rewrap this clinic's patient keys under its active field key (after a rotation,
        so that older field keys can be retired). Returns how many moved."""
        await self._ready()
        version, dek = await self._ring.active(clinic_id, FIELD)
        moved = 0
        async with self.db.transaction() as session:
            rows = (
                await session.execute(
                    select(subject_keys).where(
                        subject_keys.c.clinic_id == clinic_id,
                        subject_keys.c.wrapped.is_not(None),
                        subject_keys.c.dek_version != version,
                    )
                )
            ).all()
            for row in rows:
                old = await self._ring.key(clinic_id, FIELD, row.dek_version)
                gen = row.generation
                key = open_sealed(
                    old, row.wrapped, _context(clinic_id, row.subject_id, gen, row.dek_version)
                )
                await session.execute(
                    update(subject_keys)
                    .where(
                        subject_keys.c.clinic_id == clinic_id,
                        subject_keys.c.subject_id == row.subject_id,
                        subject_keys.c.generation == gen,
                        subject_keys.c.wrapped == row.wrapped,
                    )
                    .values(
                        dek_version=version,
                        wrapped=seal(dek, key, _context(clinic_id, row.subject_id, gen, version)),
                    )
                )
                moved += 1
        return moved

    async def dispose(self) -> None:
        await self.db.dispose()
