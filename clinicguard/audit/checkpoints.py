"""Signed checkpoints of the audit chains: the keys, the signed message, the signer the
recorder calls, and the sealer of idle chains.

A checkpoint is an Ed25519 signature over one link of a clinic's chain (clinic, sequence,
hash, time, kind). The hash of an event covers every event before it, so a checkpoint
vouches for the whole chain up to its sequence: rewriting events and re-hashing the chain
behind the application's back (which a database superuser can do) no longer verifies
unless the checkpoints are forged too, and that needs the signing key, which is stored
sealed under the master key, never in the clear.

Keys: one active key at a time in ``audit_signing_keys``, created on first use; a rotation
retires it (retired keys keep verifying what they signed). The active key is looked up in
the signing transaction itself, so every process signs with the new key as soon as a
rotation commits; unsealed private keys are cached per key id.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import Row, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from clinicguard.audit.models import AuditCheckpoint, AuditHead, AuditSigningKey
from clinicguard.audit.trail import PLATFORM, canonical
from clinicguard.core.clock import Clock
from clinicguard.core.logging import get_logger
from clinicguard.crypto.interfaces import DecryptionFailed
from clinicguard.crypto.secretbox import SecretBox
from clinicguard.crypto.signing import ed25519_private_pem, ed25519_sign, public_pem
from clinicguard.store.db import Database
from clinicguard.store.interfaces import TenantContext
from clinicguard.store.tenancy import Clinic

log = get_logger("clinicguard.audit")

#: Domain separation: a checkpoint signature can never be taken for another message signed
#: by the same key, nor for a later version of this one.
CHECKPOINT_CONTEXT = b"clinicguard:audit-checkpoint:v1|"
SEALED_PURPOSE = "audit-checkpoint-key"


class CheckpointKind(StrEnum):
    PERIODIC = "periodic"
    """Every N events or minutes (and at idle heads): vouches for the chain up to it."""
    RETENTION = "retention"
    """At the last event retention removed: where verification starts afterwards."""


def checkpoint_message(
    clinic_id: uuid.UUID, seq: int, digest: str, signed_at: datetime, kind: CheckpointKind | str
) -> bytes:
    """The bytes a checkpoint signs: the canonical encoding of (clinic, sequence, hash,
    time, kind) after a context label. The kind is signed so that a periodic checkpoint
    cannot be relabelled as a retention one (which would let events before it be
    deleted unnoticed)."""
    return CHECKPOINT_CONTEXT + canonical(
        {
            "clinic_id": clinic_id,
            "seq": seq,
            "hash": digest,
            "signed_at": signed_at,
            "kind": str(kind),
        }
    )


@dataclass(frozen=True, slots=True)
class CheckpointKey:
    """A checkpoint signing key as verification sees it (public part only)."""

    key_id: str
    public_pem: bytes
    created_at: datetime
    retired_at: datetime | None


class CheckpointKeyRing:
    """The checkpoint signing keys, shared by every process through the database."""

    def __init__(self, db: Database, *, master_key: bytes, clock: Clock) -> None:
        self._db = db
        self._box = SecretBox(master_key, SEALED_PURPOSE)
        self._clock = clock
        self._private: dict[str, bytes] = {}

    async def signing_key(self, session: AsyncSession) -> tuple[str, bytes]:
        """The active key (id and private PEM), created in ``session`` when there is none.
        Raises DecryptionFailed when the key was sealed under another master key."""
        active = (
            await session.execute(
                select(AuditSigningKey.key_id, AuditSigningKey.private_sealed)
                .where(AuditSigningKey.retired_at.is_(None))
                .order_by(AuditSigningKey.created_at.desc(), AuditSigningKey.key_id.desc())
                .limit(1)
            )
        ).one_or_none()
        if active is None:
            return await self._create(session)
        key_id = active.key_id
        private = self._private.get(key_id)
        if private is None:
            private = self._box.open(active.private_sealed, key_id)
            self._private[key_id] = private
        return key_id, private

    async def _create(self, session: AsyncSession) -> tuple[str, bytes]:
        now = self._clock.now()
        key_id = f"audit-{now:%Y%m%d}-{secrets.token_hex(4)}"
        private = ed25519_private_pem()
        session.add(
            AuditSigningKey(
                key_id=key_id,
                public_pem=public_pem(private).decode(),
                private_sealed=self._box.seal(private, key_id),
                created_at=now,
            )
        )
        await session.flush()
        # Cached by id only: if this transaction rolls back, no stored key has that id and
        # the cache entry is never used.
        self._private[key_id] = private
        return key_id, private

    async def rotate(self) -> str:
        """Retire the active key and create its successor, which signs from now on
        (in every process: the active key is read in each signing transaction). Returns
        the new key's id."""
        async with self._db.transaction() as session:
            await session.execute(
                update(AuditSigningKey)
                .where(AuditSigningKey.retired_at.is_(None))
                .values(retired_at=self._clock.now())
            )
            key_id, _ = await self._create(session)
        return key_id

    async def trusted_keys(self) -> dict[str, CheckpointKey]:
        """Every key this deployment made, retired ones included: those whose sealed
        private key opens under the master key and matches the stored public key. A key
        row added behind the application's back (by whoever can write the table but does
        not hold the master key) is not among them, so checkpoints it signed fail."""
        async with self._db.transaction() as session:
            rows = (await session.scalars(select(AuditSigningKey))).all()
        trusted = {}
        for row in rows:
            try:
                private = self._box.open(row.private_sealed, row.key_id)
            except DecryptionFailed:
                continue
            if public_pem(private) != row.public_pem.encode():
                continue
            trusted[row.key_id] = CheckpointKey(
                row.key_id, row.public_pem.encode(), row.created_at, row.retired_at
            )
        return trusted


async def public_keys(session: AsyncSession) -> dict[str, CheckpointKey]:
    """Every checkpoint key as stored, retired ones included (they verify what they
    signed). Without the master key at hand this is all a verifier has; with it,
    :meth:`CheckpointKeyRing.trusted_keys` also refuses keys added behind our back."""
    rows = (await session.scalars(select(AuditSigningKey))).all()
    return {
        r.key_id: CheckpointKey(r.key_id, r.public_pem.encode(), r.created_at, r.retired_at)
        for r in rows
    }


class Ed25519CheckpointSigner:
    """The recorder's :class:`~clinicguard.audit.recorder.CheckpointSigner`: writes an
    ``audit_checkpoints`` row signed with the active key, in the caller's transaction."""

    def __init__(self, keys: CheckpointKeyRing) -> None:
        self.keys = keys

    async def sign(
        self, session: AsyncSession, clinic_id: uuid.UUID, seq: int, digest: str, at: datetime
    ) -> None:
        """A periodic checkpoint of ``clinic_id``'s chain at (``seq``, ``digest``)."""
        await self.write(session, clinic_id, seq, digest, at, kind=CheckpointKind.PERIODIC)

    async def write(
        self,
        session: AsyncSession,
        clinic_id: uuid.UUID,
        seq: int,
        digest: str,
        at: datetime,
        *,
        kind: CheckpointKind,
    ) -> AuditCheckpoint:
        """Sign and add one checkpoint (the caller's transaction commits it). Raises an
        integrity error at flush when a checkpoint at ``seq`` exists already."""
        key_id, private = await self.keys.signing_key(session)
        signature = ed25519_sign(private, checkpoint_message(clinic_id, seq, digest, at, kind))
        checkpoint = AuditCheckpoint(
            clinic_id=clinic_id,
            seq=seq,
            hash=digest,
            signed_at=at,
            kind=str(kind),
            key_id=key_id,
            signature=signature.hex(),
        )
        session.add(checkpoint)
        await session.flush()
        return checkpoint

    async def anchor(
        self, session: AsyncSession, clinic_id: uuid.UUID, seq: int, digest: str, at: datetime
    ) -> bool:
        """Make the checkpoint at ``seq`` a signed retention checkpoint of ``digest``
        (retention, before it removes the events up to ``seq``). A retention checkpoint
        already there is kept; a periodic one at the same place is re-signed as a
        retention one (it vouched for the same hash). Returns whether anything was written.
        Needs UPDATE on ``audit_checkpoints`` in that last case: the owner's connection."""
        existing = await session.get(AuditCheckpoint, (clinic_id, seq))
        if existing is not None and existing.kind == CheckpointKind.RETENTION:
            return False
        if existing is None:
            await self.write(session, clinic_id, seq, digest, at, kind=CheckpointKind.RETENTION)
            return True
        key_id, private = await self.keys.signing_key(session)
        message = checkpoint_message(clinic_id, seq, digest, at, CheckpointKind.RETENTION)
        await session.execute(
            update(AuditCheckpoint)
            .where(AuditCheckpoint.clinic_id == clinic_id, AuditCheckpoint.seq == seq)
            .values(
                hash=digest,
                signed_at=at,
                kind=str(CheckpointKind.RETENTION),
                key_id=key_id,
                signature=ed25519_sign(private, message).hex(),
            )
        )
        return True


async def chain_ids(db: Database) -> list[uuid.UUID]:
    """Every chain there may be: each clinic's, the platform's, and (where row-level
    security does not hide them, i.e. SQLite or the owner) any other head's."""
    async with db.transaction() as session:
        ids = set((await session.scalars(select(Clinic.id))).all())
        if not db.has_row_level_security:
            ids |= set((await session.scalars(select(AuditHead.clinic_id))).all())
    ids.discard(PLATFORM)
    return [PLATFORM, *sorted(ids)]


def _due(head: Row[int, str, int, datetime | None], now: datetime, every: timedelta | None) -> bool:
    if head.seq <= head.checkpoint_seq:
        return False
    return every is None or head.checkpoint_at is None or now - head.checkpoint_at >= every


async def seal_chain(
    db: Database,
    signer: Ed25519CheckpointSigner,
    clinic_id: uuid.UUID,
    now: datetime,
    every: timedelta | None,
) -> int | None:
    """Sign a checkpoint at the chain's head when events follow its last checkpoint and
    that checkpoint is at least ``every`` old (``None``: however recent). Under the locked
    head, so it never races an append or another sealer. Returns the sequence signed."""
    tenant = TenantContext.system(clinic_id)
    columns = (AuditHead.seq, AuditHead.hash, AuditHead.checkpoint_seq, AuditHead.checkpoint_at)
    async with db.transaction(tenant) as session:
        # A look without the lock first: most heads are not due, and they are not held up.
        head = (
            await session.execute(select(*columns).where(AuditHead.clinic_id == clinic_id))
        ).one_or_none()
    if head is None or not _due(head, now, every):
        return None
    async with db.transaction(tenant) as session:
        query = select(*columns).where(AuditHead.clinic_id == clinic_id)
        if db.dialect == "postgresql":
            query = query.with_for_update()
        head = (await session.execute(query)).one()
        if not _due(head, now, every):
            return None
        await signer.sign(session, clinic_id, head.seq, head.hash, now)
        await session.execute(
            update(AuditHead)
            .where(AuditHead.clinic_id == clinic_id)
            .values(checkpoint_seq=head.seq, checkpoint_at=now)
        )
    return int(head.seq)


async def seal_chains(
    db: Database,
    signer: Ed25519CheckpointSigner,
    clock: Clock,
    every: timedelta | None,
    chains: Iterable[uuid.UUID] | None = None,
) -> dict[uuid.UUID, int]:
    """:func:`seal_chain` for every chain (or those given): the idle sealer's sweep, and
    with ``every=None`` the operator's "checkpoint every head now". Returns the sequence
    signed per chain that got a checkpoint."""
    signed: dict[uuid.UUID, int] = {}
    for clinic_id in chains if chains is not None else await chain_ids(db):
        seq = await seal_chain(db, signer, clinic_id, clock.now(), every)
        if seq is not None:
            signed[clinic_id] = seq
    return signed


class IdleChainSealer:
    """A background task that signs the heads of chains that went quiet: the recorder
    signs only when an event arrives, so without this the last events of a chain that
    stops receiving them would stay unsigned indefinitely. With it, every event is under a
    signature at most ``every`` plus one sweep period after it was written."""

    def __init__(
        self,
        db: Database,
        signer: Ed25519CheckpointSigner,
        clock: Clock,
        every: timedelta,
        period: float | None = None,
    ) -> None:
        self._db = db
        self.signer = signer
        self._clock = clock
        self._every = every
        self._period = period if period is not None else max(every.total_seconds() / 2, 1.0)
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> dict[uuid.UUID, int]:
        """One pass over every chain (see :func:`seal_chains`)."""
        return await seal_chains(self._db, self.signer, self._clock, self._every)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._period)
            try:
                signed = await self.sweep()
            except Exception:
                # A sweep that fails (database away) is retried at the next period; the
                # recorder keeps signing busy chains meanwhile.
                log.exception("audit_idle_sealer_failed")
            else:
                if signed:
                    log.info("audit_idle_chains_sealed", chains=len(signed))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
