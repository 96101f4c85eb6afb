"""The review queue: events a person must look at, and their decisions.

An event is in the queue when it asked for review (break-glass, an export, a high-severity
security event), scored high or critical, is compliance-relevant, or deleted or exported
data. Events never change: a decision is a row of ``audit_reviews`` (one per event, the
primary key makes a second one fail), written in the same transaction as the trail event
that records it (``audit:review:decided``). Nobody decides on an event they acted in
(separation of duties).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.exc import IntegrityError

from clinicguard.audit.models import AuditEvent, AuditReview
from clinicguard.audit.queries import (
    decided_by,
    event_out,
    newest_first,
    review_join,
    review_out,
)
from clinicguard.audit.recorder import AuditRecorder
from clinicguard.audit.trail import AuditEntry, AuditEventType, RiskLevel
from clinicguard.authz.interfaces import AccessDenied, Decision, Permission
from clinicguard.authz.service import Authorizer
from clinicguard.core.clock import Clock
from clinicguard.core.errors import Conflict, NotFound
from clinicguard.core.principal import Principal, clinic_of
from clinicguard.store.db import Database
from clinicguard.store.interfaces import tenant_of
from clinicguard.store.paging import split_page

REVIEW_LEVELS = (str(RiskLevel.HIGH), str(RiskLevel.CRITICAL))
REVIEW_ACTIONS = ("delete", "export")
DECISIONS = frozenset({"approved", "rejected"})
SEPARATION_OF_DUTIES = "separation-of-duties"
SELF_REVIEW = "Nobody reviews an event they acted in (separation of duties)."


def in_queue() -> ColumnElement[bool]:
    """The events of the review queue (as SQL; :func:`needs_review` is the same in Python)."""
    return or_(
        AuditEvent.requires_review.is_(True),
        AuditEvent.risk_level.in_(REVIEW_LEVELS),
        AuditEvent.compliance.is_(True),
        AuditEvent.action.in_(REVIEW_ACTIONS),
    )


def needs_review(event: AuditEvent) -> bool:
    return bool(
        event.requires_review
        or event.risk_level in REVIEW_LEVELS
        or event.compliance
        or event.action in REVIEW_ACTIONS
    )


class NotInReviewQueue(Conflict):
    """The event exists but nobody has to review it."""

    default_detail = "This event is not in the review queue."


class AlreadyReviewed(Conflict):
    default_detail = "This event has already been reviewed."


class ReviewQueue:
    def __init__(
        self, db: Database, authorizer: Authorizer, recorder: AuditRecorder, clock: Clock
    ) -> None:
        self._db = db
        self._authz = authorizer
        self._recorder = recorder
        self._clock = clock

    async def list(
        self, principal: Principal, status: str, *, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The clinic's queue, newest first: ``pending`` (no decision yet), ``decided`` or
        ``all``, each with its decision. Raises AccessDenied (403) without
        ``audit:review``. The listing is recorded (``audit:review:list``)."""
        decision = await self._authz.require(principal, Permission.AUDIT_REVIEW)
        clinic = clinic_of(principal)
        query = (
            select(AuditEvent, AuditReview)
            .outerjoin(AuditReview, review_join())
            .where(AuditEvent.clinic_id == clinic, in_queue())
        )
        if status == "pending":
            query = query.where(AuditReview.event_id.is_(None))
        elif status == "decided":
            query = query.where(AuditReview.event_id.is_not(None))
        query = newest_first(query, cursor, limit)
        async with self._db.transaction(tenant_of(principal)) as session:
            rows = (await session.execute(query)).all()
            items, next_cursor = split_page(rows, limit, lambda r: (r[0].occurred_at, r[0].seq))
            entry = AuditEntry(
                event_type=AuditEventType.REVIEW_LIST,
                action="list",
                outcome="success",
                resource_type="audit",
                details={"status": status, "returned": len(items), **decided_by(decision)},
            )
            await self._recorder.record(session, clinic, principal, entry)
        return [event_out(event, review) for event, review in items], next_cursor

    async def decide(
        self, principal: Principal, event_id: uuid.UUID, decision: str, note: str | None
    ) -> dict[str, Any]:
        """Record ``decision`` (approved or rejected) on one event of the principal's
        clinic, and the decision itself in the trail, in one transaction. Raises
        AccessDenied (403) without ``audit:review`` or when the reviewer is the event's
        actor, NotFound (404) for an unknown event or another clinic's, NotInReviewQueue
        (409) for an event nobody has to review, AlreadyReviewed (409) for a second
        decision."""
        if decision not in DECISIONS:
            raise ValueError(f"not a decision: {decision!r}")
        allowed = await self._authz.require(
            principal, Permission.AUDIT_REVIEW, target={"event_id": str(event_id)}
        )
        clinic = clinic_of(principal)
        try:
            async with self._db.transaction(tenant_of(principal)) as session:
                event = await session.scalar(
                    select(AuditEvent)
                    .where(AuditEvent.clinic_id == clinic, AuditEvent.id == event_id)
                    .limit(1)
                )
                if event is None:
                    raise NotFound()
                if not needs_review(event):
                    raise NotInReviewQueue()
                if event.actor_id is not None and event.actor_id == principal.user_id:
                    # Separation of duties: an access, an export or a decision is never
                    # approved by the person who made it. Recorded like any denial.
                    refusal = Decision(
                        False,
                        str(Permission.AUDIT_REVIEW),
                        str(principal.role),
                        SEPARATION_OF_DUTIES,
                        "the reviewer acted in the event under review",
                    )
                    await self._authz.denied(principal, refusal, {"event_id": str(event_id)}, ())
                    raise AccessDenied(SELF_REVIEW)
                taken = await session.scalar(
                    select(AuditReview.event_id).where(
                        AuditReview.clinic_id == clinic, AuditReview.event_id == event_id
                    )
                )
                if taken is not None:
                    raise AlreadyReviewed()
                review = AuditReview(
                    clinic_id=clinic,
                    event_id=event_id,
                    event_seq=event.seq,
                    decision=decision,
                    reviewer_id=principal.user_id,
                    note=note,
                    decided_at=self._clock.now(),
                )
                session.add(review)
                await session.flush()
                entry = AuditEntry(
                    event_type=AuditEventType.REVIEW_DECISION,
                    action="review",
                    outcome="success",
                    resource_type="audit_event",
                    resource_id=str(event_id),
                    details={
                        "decision": decision,
                        "event_seq": event.seq,
                        "event_type": event.event_type,
                        "with_note": note is not None,
                        **decided_by(allowed),
                    },
                )
                await self._recorder.record(session, clinic, principal, entry)
        except IntegrityError as exc:
            # A concurrent decision on the same event committed first (primary key).
            raise AlreadyReviewed() from exc
        return review_out(review)
