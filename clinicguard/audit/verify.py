"""Verifying the audit chains: links, hashes, signed checkpoints and the retention anchor.

One chain is walked in sequence order from its start, which is the genesis, or, once
retention has removed the oldest events, the newest signed ``retention`` checkpoint below
the first remaining event (that event must follow it: the next sequence number, and the
checkpoint's hash as its previous hash). Along the way:

- every event's sequence follows the previous one, its ``prev_hash`` is the previous
  event's hash, and its hash matches its columns;
- every checkpoint's signature verifies with its key (retired keys included), and its hash
  is the hash of the event at its sequence; checkpoints below the start (their events were
  removed by retention) are checked for their signature only;
- the walk ends at the head, whose sequence and hash are the last event's.

The head is read first and the walk stops there, so events appended while a chain is
being verified are left for the next verification instead of being taken for a break.
The first failure is reported: the event (id and sequence) where the chain stops being
provably intact, and why.
"""

from __future__ import annotations

import binascii
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from clinicguard.audit.checkpoints import (
    CheckpointKey,
    CheckpointKind,
    chain_ids,
    checkpoint_message,
    public_keys,
)
from clinicguard.audit.models import AuditCheckpoint, AuditEvent, AuditHead
from clinicguard.audit.recorder import HASHED
from clinicguard.audit.trail import GENESIS, chain_hash
from clinicguard.crypto.signing import ed25519_verify
from clinicguard.store.db import Database
from clinicguard.store.interfaces import TenantContext

BATCH = 1000
KINDS = frozenset(str(k) for k in CheckpointKind)


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome of verifying one chain: whether it holds, how many events were walked,
    and where it first broke (the event's id when it still exists, its sequence) and why."""

    ok: bool
    checked: int
    first_broken_event_id: uuid.UUID | None
    first_broken_seq: int | None
    reason: str | None


def _broken(checked: int, event_id: uuid.UUID | None, seq: int, reason: str) -> Verification:
    return Verification(False, checked, event_id, seq, reason)


def signature_problem(
    clinic_id: uuid.UUID, checkpoint: AuditCheckpoint, keys: Mapping[str, CheckpointKey]
) -> str | None:
    """Why a checkpoint's signature does not hold (None when it does)."""
    key = keys.get(checkpoint.key_id)
    if key is None:
        return f"the checkpoint at seq {checkpoint.seq} names an unknown or untrusted key"
    if checkpoint.kind not in KINDS:
        return f"the checkpoint at seq {checkpoint.seq} has an unknown kind"
    try:
        signature = bytes.fromhex(checkpoint.signature)
    except (ValueError, binascii.Error):
        signature = b""
    message = checkpoint_message(
        clinic_id, checkpoint.seq, checkpoint.hash, checkpoint.signed_at, checkpoint.kind
    )
    if not ed25519_verify(key.public_pem, message, signature):
        return (
            f"the checkpoint signed at seq {checkpoint.seq} does not verify"
            f" (key {checkpoint.key_id})"
        )
    return None


@dataclass(frozen=True, slots=True)
class _Start:
    """Where the walk starts: the sequence before the first event walked, and its hash."""

    seq: int
    hash: str


async def _checkpoints(
    session: AsyncSession, clinic_id: uuid.UUID, after: int, through: int, limit: int | None = None
) -> Sequence[AuditCheckpoint]:
    query = (
        select(AuditCheckpoint)
        .where(
            AuditCheckpoint.clinic_id == clinic_id,
            AuditCheckpoint.seq > after,
            AuditCheckpoint.seq <= through,
        )
        .order_by(AuditCheckpoint.seq)
    )
    return (await session.scalars(query.limit(limit))).all()


class _ChainWalk:
    """One verification of one chain (see the module's docstring)."""

    def __init__(
        self,
        db: Database,
        clinic_id: uuid.UUID,
        keys: Mapping[str, CheckpointKey] | None,
        batch: int,
    ) -> None:
        self._db = db
        self._clinic = clinic_id
        self._tenant = TenantContext.system(clinic_id)
        self._keys = keys
        self._batch = batch

    async def run(self, upto: int | None) -> Verification:
        async with self._db.transaction(self._tenant) as session:
            head = (
                await session.execute(
                    select(AuditHead.seq, AuditHead.hash).where(AuditHead.clinic_id == self._clinic)
                )
            ).one_or_none()
            if self._keys is None:
                self._keys = await public_keys(session)
            first = await session.scalar(
                select(AuditEvent)
                .where(AuditEvent.clinic_id == self._clinic)
                .order_by(AuditEvent.seq)
                .limit(1)
            )
        if head is None:
            if first is not None:
                return _broken(0, first.id, first.seq, "the chain's head is missing")
            # No head and no event: a chain never written, unless a checkpoint says otherwise.
            return await self._beyond_head(Verification(True, 0, None, None, None))
        end = head.seq if upto is None else min(upto, head.seq)
        start = await self._start(first, end)
        if isinstance(start, Verification):
            return start
        result = await self._walk(start, end, head.hash if upto is None else None)
        if result.ok and upto is None:
            return await self._beyond_head(result)
        return result

    async def _beyond_head(self, result: Verification) -> Verification:
        """Nothing may lie beyond the head: no event (a head moved back to hide the last
        events) and no checkpoint (events cut off the end, and the head moved back with
        them). Read in one statement with the head, so in one snapshot: an append commits
        its event, its checkpoint and the head's move at once and is never taken for this."""
        head = func.coalesce(
            select(AuditHead.seq).where(AuditHead.clinic_id == self._clinic).scalar_subquery(), 0
        )
        async with self._db.transaction(self._tenant) as session:
            beyond = (
                await session.execute(
                    select(
                        select(func.min(AuditEvent.seq))
                        .where(AuditEvent.clinic_id == self._clinic, AuditEvent.seq > head)
                        .scalar_subquery(),
                        select(func.max(AuditCheckpoint.seq))
                        .where(
                            AuditCheckpoint.clinic_id == self._clinic, AuditCheckpoint.seq > head
                        )
                        .scalar_subquery(),
                        head,
                    )
                )
            ).one()
            event = (
                await session.scalar(
                    select(AuditEvent).where(
                        AuditEvent.clinic_id == self._clinic, AuditEvent.seq == beyond[0]
                    )
                )
                if beyond[0] is not None
                else None
            )
        if event is not None:
            return _broken(
                result.checked, event.id, event.seq, "the event lies beyond the chain's head"
            )
        if beyond[1] is not None:
            first = int(beyond[2]) + 1
            return _broken(
                result.checked,
                None,
                first,
                f"events {first}..{beyond[1]} are missing: a signed checkpoint at seq"
                f" {beyond[1]} vouches for them",
            )
        return result

    async def _start(self, first: AuditEvent | None, end: int) -> _Start | Verification:
        """The genesis, or the retention checkpoint the first remaining event follows;
        every checkpoint below it must carry a good signature."""
        if end == 0 or (first is not None and first.seq == 1):
            return _Start(0, GENESIS)
        below = first.seq if first is not None and first.seq <= end else end + 1
        anchor: AuditCheckpoint | None = None
        after = 0
        while True:
            async with self._db.transaction(self._tenant) as session:
                older = await _checkpoints(session, self._clinic, after, below - 1, self._batch)
            for checkpoint in older:
                problem = signature_problem(self._clinic, checkpoint, self._keys or {})
                if problem is not None:
                    return _broken(0, None, checkpoint.seq, problem)
                if checkpoint.kind == CheckpointKind.RETENTION:
                    anchor = checkpoint
            if len(older) < self._batch:
                break
            after = older[-1].seq
        named = first if first is not None and first.seq <= end else None
        event_id, seq = (named.id, named.seq) if named is not None else (None, below)
        if anchor is None:
            return _broken(
                0, event_id, seq, f"events 1..{below - 1} are missing (no retention checkpoint)"
            )
        if anchor.seq != below - 1:
            return _broken(
                0,
                event_id,
                seq,
                f"events {anchor.seq + 1}..{below - 1} are missing after the retention"
                f" checkpoint at seq {anchor.seq}",
            )
        return _Start(anchor.seq, anchor.hash)

    async def _walk(self, start: _Start, end: int, head_hash: str | None) -> Verification:
        previous, expected, checked, last_id = start.hash, start.seq + 1, 0, None
        after = start.seq
        keys = self._keys or {}
        while after < end:
            async with self._db.transaction(self._tenant) as session:
                rows = (
                    await session.scalars(
                        select(AuditEvent)
                        .where(
                            AuditEvent.clinic_id == self._clinic,
                            AuditEvent.seq > after,
                            AuditEvent.seq <= end,
                        )
                        .order_by(AuditEvent.seq)
                        .limit(self._batch)
                    )
                ).all()
                if not rows:
                    break
                signed = {
                    c.seq: c for c in await _checkpoints(session, self._clinic, after, rows[-1].seq)
                }
            for event in rows:
                problem = None
                if event.seq != expected:
                    problem = f"sequence {expected} is missing (found {event.seq})"
                elif event.prev_hash != previous:
                    problem = "its previous hash is not the previous event's hash"
                elif (
                    chain_hash(event.prev_hash, {c: getattr(event, c) for c in HASHED})
                    != event.hash
                ):
                    problem = "its columns do not match its hash"
                elif (checkpoint := signed.get(event.seq)) is not None:
                    problem = signature_problem(self._clinic, checkpoint, keys)
                    if problem is None and checkpoint.hash != event.hash:
                        problem = (
                            f"the signed checkpoint at seq {event.seq} disagrees with the"
                            " chain (this event or one before it was changed)"
                        )
                if problem is not None:
                    return _broken(checked, event.id, event.seq, problem)
                previous, expected, checked = event.hash, expected + 1, checked + 1
                last_id = event.id
            after = rows[-1].seq
        if after != end:
            return _broken(checked, None, after + 1, f"events {after + 1}..{end} are missing")
        if head_hash is not None and head_hash != previous:
            return _broken(checked, last_id, end, "the head's hash is not the last event's hash")
        return Verification(True, checked, None, None, None)


async def verify_chain(
    db: Database,
    clinic_id: uuid.UUID,
    batch: int = BATCH,
    *,
    upto: int | None = None,
    keys: Mapping[str, CheckpointKey] | None = None,
) -> Verification:
    """Verify one clinic's chain (``PLATFORM`` for the platform's): links, hashes, signed
    checkpoints, the retention anchor and the head; or, with ``upto``, the chain up to
    that sequence only (retention, before it removes events). ``keys``: the keys trusted
    to sign checkpoints (:meth:`CheckpointKeyRing.trusted_keys` where the master key is at
    hand); by default every key stored. Reads in transactions scoped to the clinic as the
    ``system`` role. Raises DatabaseUnavailable."""
    return await _ChainWalk(db, clinic_id, keys, batch).run(upto)


async def verify_all(
    db: Database, batch: int = BATCH, *, keys: Mapping[str, CheckpointKey] | None = None
) -> dict[uuid.UUID, Verification]:
    """:func:`verify_chain` for every chain: the platform's and every clinic's (a clinic
    with no events verifies with nothing checked)."""
    chains = await chain_ids(db)
    if keys is None:
        async with db.transaction() as session:
            keys = await public_keys(session)
    return {c: await verify_chain(db, c, batch, keys=keys) for c in chains}
