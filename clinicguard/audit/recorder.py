"""Recording and verifying the audit trail.

:meth:`AuditRecorder.record` writes an event in the caller's transaction: if the event
cannot be written, the transaction — and so the access it records — fails (fail closed).
Ordering under concurrency: the clinic's head row (``audit_heads``) is locked for the rest
of the transaction (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite serializes writers), the
next sequence number and the previous hash are read from it, and the head moves on. Two
requests of one clinic therefore append one after the other, in commit order; requests
of different clinics do not wait for each other.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from clinicguard.audit.models import AuditEvent, AuditHead
from clinicguard.audit.trail import (
    GENESIS,
    USER_AGENT_CHARS,
    AuditEntry,
    chain_hash,
    risk,
)
from clinicguard.core.clock import Clock
from clinicguard.core.context import current_request
from clinicguard.core.principal import Principal
from clinicguard.store.db import Database
from clinicguard.store.interfaces import TenantContext

#: Every column of an event that its hash covers (all but the hash itself).
HASHED = (
    "clinic_id",
    "seq",
    "id",
    "occurred_at",
    "actor_id",
    "actor_role",
    "session_id",
    "request_id",
    "ip",
    "user_agent",
    "event_type",
    "resource_type",
    "resource_id",
    "patient_id",
    "action",
    "outcome",
    "reason",
    "details",
    "risk_score",
    "risk_level",
    "compliance",
    "requires_review",
    "prev_hash",
)


class AuditRecorder:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def record(
        self,
        session: AsyncSession,
        clinic_id: uuid.UUID,
        principal: Principal | None,
        entry: AuditEntry,
        *,
        rows: int = 1,
        emergency: bool = False,
    ) -> AuditEvent:
        """Append ``entry`` to the clinic's chain inside ``session``'s transaction."""
        seq, previous = await self._advance(session, clinic_id)
        ctx = current_request()
        role = str(principal.role) if principal else None
        score, level = risk(entry, role, rows=rows, emergency=emergency)
        values: dict[str, Any] = {
            "clinic_id": clinic_id,
            "seq": seq,
            "id": uuid.uuid4(),
            "occurred_at": self._clock.now(),
            "actor_id": principal.user_id if principal else None,
            "actor_role": role,
            "session_id": principal.session_id if principal else None,
            "request_id": ctx.request_id if ctx else None,
            "ip": ctx.client_ip if ctx else None,
            "user_agent": (ctx.user_agent or "")[:USER_AGENT_CHARS] if ctx else None,
            "event_type": str(entry.event_type),
            "resource_type": entry.resource_type,
            "resource_id": entry.resource_id,
            "patient_id": entry.patient_id,
            "action": entry.action,
            "outcome": entry.outcome,
            "reason": entry.reason,
            "details": dict(entry.details),
            "risk_score": score,
            "risk_level": str(level),
            "compliance": entry.compliance,
            "requires_review": entry.requires_review,
            "prev_hash": previous,
        }
        digest = chain_hash(previous, values)
        event = AuditEvent(**values, hash=digest)
        session.add(event)
        await session.execute(
            update(AuditHead).where(AuditHead.clinic_id == clinic_id).values(seq=seq, hash=digest)
        )
        await session.flush()
        return event

    async def _advance(self, session: AsyncSession, clinic_id: uuid.UUID) -> tuple[int, str]:
        """Lock the clinic's head (creating it at the genesis) and return the next sequence
        number and the previous hash."""
        dialect = self._db.dialect
        make = pg_insert if dialect == "postgresql" else sqlite_insert
        await session.execute(
            make(AuditHead)
            .values(clinic_id=clinic_id, seq=0, hash=GENESIS)
            .on_conflict_do_nothing(index_elements=["clinic_id"])
        )
        query = select(AuditHead.seq, AuditHead.hash).where(AuditHead.clinic_id == clinic_id)
        if dialect == "postgresql":
            query = query.with_for_update()
        head = (await session.execute(query)).one()
        return int(head.seq) + 1, str(head.hash)


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    checked: int
    first_broken_event_id: uuid.UUID | None
    first_broken_seq: int | None
    reason: str | None


async def verify_chain(db: Database, clinic_id: uuid.UUID, batch: int = 1000) -> Verification:
    """Walk the clinic's chain in sequence order: every event's ``prev_hash`` must be the
    previous event's hash, its hash must match its columns, and the numbers must follow
    each other without gaps. The first event that does not is named."""
    previous, expected_seq, checked = GENESIS, 1, 0
    after = 0
    while True:
        async with db.transaction(TenantContext.system(clinic_id)) as session:
            rows = (
                await session.scalars(
                    select(AuditEvent)
                    .where(AuditEvent.clinic_id == clinic_id, AuditEvent.seq > after)
                    .order_by(AuditEvent.seq)
                    .limit(batch)
                )
            ).all()
        if not rows:
            return await _check_tail(db, clinic_id, checked)
        for event in rows:
            problem = None
            if event.seq != expected_seq:
                problem = f"sequence {expected_seq} is missing (found {event.seq})"
            elif event.prev_hash != previous:
                problem = "its previous hash is not the previous event's hash"
            elif chain_hash(event.prev_hash, {c: getattr(event, c) for c in HASHED}) != event.hash:
                problem = "its columns do not match its hash"
            if problem is not None:
                return Verification(False, checked, event.id, event.seq, problem)
            previous, expected_seq, checked = event.hash, expected_seq + 1, checked + 1
        after = rows[-1].seq


async def _check_tail(db: Database, clinic_id: uuid.UUID, checked: int) -> Verification:
    """The walk ended: the head must name the last event walked (events cut off the end
    of the chain leave the head ahead of it)."""
    async with db.transaction(TenantContext.system(clinic_id)) as session:
        head = await session.scalar(select(AuditHead.seq).where(AuditHead.clinic_id == clinic_id))
    if (head or 0) != checked:
        return Verification(
            False, checked, None, checked + 1, f"events {checked + 1}..{head} are missing"
        )
    return Verification(True, checked, None, None, None)
