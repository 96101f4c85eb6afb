"""Recording the audit trail (verification: :mod:`clinicguard.audit.verify`).

:meth:`AuditRecorder.record` writes an event in the caller's transaction: if the event
cannot be written, the transaction — and so the access it records — fails (fail closed).
Ordering under concurrency: the clinic's head row (``audit_heads``) is advanced with
``UPDATE … RETURNING``, which locks it for the rest of the transaction (SQLite serializes
writers) and returns the next sequence number and the previous hash; the event is written
and the head's hash moved on (in one statement on PostgreSQL). Two
requests of one clinic therefore append one after the other, in commit order; requests
of different clinics do not wait for each other.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import Table, bindparam, insert, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from clinicguard.audit.models import AuditEvent, AuditHead, AuditSubject
from clinicguard.audit.trail import (
    GENESIS,
    USER_AGENT_CHARS,
    AuditEntry,
    chain_hash,
    mask_details,
    mask_value,
    risk,
)
from clinicguard.core.clock import Clock
from clinicguard.core.context import current_request
from clinicguard.store.db import Database

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


def event_values(
    *,
    clinic_id: uuid.UUID,
    seq: int,
    previous: str,
    entry: AuditEntry,
    occurred_at: datetime,
    actor_id: uuid.UUID | None,
    actor_role: str | None,
    session_id: str | None,
    request_id: str | None,
    ip: str | None,
    user_agent: str | None,
    rows: int = 1,
    emergency: bool = False,
) -> dict[str, Any]:
    """Every hashed column of one event: details, reason and user agent masked (no CPF,
    e-mail address or phone number reaches the trail), risk scored."""
    score, level = risk(entry, actor_role, rows=rows, emergency=emergency)
    return {
        "clinic_id": clinic_id,
        "seq": seq,
        "id": uuid.uuid4(),
        "occurred_at": occurred_at,
        "actor_id": actor_id,
        "actor_role": actor_role,
        "session_id": session_id,
        "request_id": request_id,
        "ip": ip,
        "user_agent": mask_value(user_agent[:USER_AGENT_CHARS]) if user_agent else user_agent,
        "event_type": str(entry.event_type),
        "resource_type": entry.resource_type,
        "resource_id": entry.resource_id,
        "patient_id": entry.patient_id,
        "action": entry.action,
        "outcome": entry.outcome,
        "reason": mask_value(entry.reason) if entry.reason else entry.reason,
        "details": mask_details(entry.details),
        "risk_score": score,
        "risk_level": str(level),
        "compliance": entry.compliance,
        "requires_review": entry.requires_review or emergency,
        "prev_hash": previous,
    }


class Actor(Protocol):
    """Who acted: a request's principal, or the actor a security event names."""

    @property
    def user_id(self) -> uuid.UUID | None: ...
    @property
    def role(self) -> object: ...
    @property
    def session_id(self) -> str | None: ...


class CheckpointSigner(Protocol):
    async def sign(
        self, session: AsyncSession, clinic_id: uuid.UUID, seq: int, digest: str, at: datetime
    ) -> None:
        """Write a signed checkpoint of the chain up to ``seq`` in ``session``."""
        ...


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """A checkpoint is signed after ``every_events`` events or ``every`` time, whichever
    comes first (checked at each append)."""

    every_events: int = 1000
    every: timedelta = timedelta(minutes=10)

    def due(self, seq: int, last_seq: int, last_at: datetime | None, now: datetime) -> bool:
        if seq - last_seq >= self.every_events:
            return True
        return last_at is None or now - last_at >= self.every


#: The recorder's statements, built once over the trail's Core tables with bound
#: parameters: they run in every audited request, so they skip the ORM's per-statement work
#: and are compiled once (the ORM classes stay for reading).
EVENTS = cast(Table, AuditEvent.__table__)
SUBJECTS = cast(Table, AuditSubject.__table__)
HEADS = cast(Table, AuditHead.__table__)
ADVANCE = (
    update(HEADS)
    .where(HEADS.c.clinic_id == bindparam("clinic"))
    .values(seq=HEADS.c.seq + 1)
    .returning(HEADS.c.seq, HEADS.c.hash, HEADS.c.checkpoint_seq, HEADS.c.checkpoint_at)
)
INSERT_EVENT = insert(EVENTS).values(
    {c.name: bindparam(f"e_{c.name}", type_=c.type) for c in EVENTS.c}
)
MOVE_HEAD = (
    update(HEADS)
    .where(HEADS.c.clinic_id == bindparam("h_clinic_id"))
    .values(
        hash=bindparam("h_hash"),
        checkpoint_seq=bindparam("h_checkpoint_seq"),
        checkpoint_at=bindparam("h_checkpoint_at", type_=HEADS.c.checkpoint_at.type),
    )
)
APPEND = MOVE_HEAD.add_cte(INSERT_EVENT.cte("audit_event"))


class AuditRecorder:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        signer: CheckpointSigner | None = None,
        checkpoints: CheckpointPolicy | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._signer = signer
        self._checkpoints = checkpoints or CheckpointPolicy()

    async def record(
        self,
        session: AsyncSession,
        clinic_id: uuid.UUID,
        actor: Actor | None,
        entry: AuditEntry,
        *,
        rows: int = 1,
        emergency: bool = False,
        patients: Sequence[uuid.UUID] = (),
    ) -> AuditEvent:
        """Append ``entry`` to the clinic's chain inside ``session``'s transaction.
        ``patients``: every patient whose data the access returned (a list or a search);
        they are named in the details and indexed for their access logs."""
        head = await self._advance(session, clinic_id)
        seq = head.seq
        ctx = current_request()
        now = self._clock.now()
        if patients:
            entry = replace(
                entry, details={**entry.details, "patient_ids": ",".join(map(str, patients))}
            )
        values = event_values(
            clinic_id=clinic_id,
            seq=seq,
            previous=head.hash,
            entry=entry,
            occurred_at=now,
            actor_id=actor.user_id if actor else None,
            actor_role=str(actor.role) if actor and actor.role else None,
            session_id=actor.session_id if actor else None,
            request_id=ctx.request_id if ctx else None,
            ip=ctx.client_ip if ctx else None,
            user_agent=ctx.user_agent if ctx else None,
            rows=rows,
            emergency=emergency,
        )
        digest = chain_hash(head.hash, values)
        params = {f"e_{name}": value for name, value in values.items()} | {
            "e_hash": digest,
            "h_clinic_id": clinic_id,
            "h_hash": digest,
            "h_checkpoint_seq": head.checkpoint_seq,
            "h_checkpoint_at": head.checkpoint_at,
        }
        if self._signer is not None and self._checkpoints.due(
            seq, head.checkpoint_seq, head.checkpoint_at, now
        ):
            await self._signer.sign(session, clinic_id, seq, digest, now)
            params |= {"h_checkpoint_seq": seq, "h_checkpoint_at": now}
        if patients:
            await session.execute(
                insert(SUBJECTS).values(
                    [
                        {"clinic_id": clinic_id, "patient_id": p, "seq": seq, "occurred_at": now}
                        for p in dict.fromkeys(patients)
                    ]
                )
            )
        if self._db.dialect == "postgresql":
            # One round trip while the head is locked: the head's UPDATE writes the event
            # in its common table expression.
            await session.execute(APPEND, params)
        else:
            await session.execute(INSERT_EVENT, params)
            await session.execute(MOVE_HEAD, params)
        return AuditEvent(**values, hash=digest)

    async def _advance(self, session: AsyncSession, clinic_id: uuid.UUID) -> Any:
        """Take the clinic's next sequence number: the head's ``UPDATE`` locks its row until
        the transaction ends (creating the head at the genesis the first time) and returns
        the new number with the previous hash and the last checkpoint."""
        head = (await session.execute(ADVANCE, {"clinic": clinic_id})).one_or_none()
        if head is not None:
            return head
        make = pg_insert if self._db.dialect == "postgresql" else sqlite_insert
        await session.execute(
            make(HEADS)
            .values(clinic_id=clinic_id, seq=0, hash=GENESIS, checkpoint_seq=0)
            .on_conflict_do_nothing(index_elements=["clinic_id"])
        )
        return (await session.execute(ADVANCE, {"clinic": clinic_id})).one()
