"""Reading the audit trail: a clinic's events by filter (newest first, keyset paged), the
export (streamed in chain order as JSON Lines or FHIR AuditEvent resources), verification
of the chain, and a patient's access log.

Every read of the trail is itself appended to the trail, in the transaction of the read
(the export's record is committed before the first byte is sent). The clinic is always the
principal's (from the verified token), never a parameter; transactions are scoped to the
principal, so PostgreSQL's row-level security holds the same line.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import ColumnElement, Select, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from clinicguard.audit.checkpoints import CheckpointKeyRing
from clinicguard.audit.fhir import audit_event
from clinicguard.audit.models import AuditEvent, AuditReview, AuditSubject
from clinicguard.audit.recorder import HASHED, AuditRecorder
from clinicguard.audit.trail import AuditEntry, AuditEventType, RiskLevel
from clinicguard.audit.verify import verify_chain
from clinicguard.auth.models import User
from clinicguard.authz.interfaces import Condition, Decision, Permission
from clinicguard.authz.service import Authorizer
from clinicguard.core.clock import Clock
from clinicguard.core.errors import FieldError, NotFound, ValidationFailed
from clinicguard.core.events import DetailValue, SecurityEventType
from clinicguard.core.principal import Principal, Role, clinic_of
from clinicguard.store.db import Database
from clinicguard.store.interfaces import tenant_of
from clinicguard.store.paging import page_query, split_page

EXPORT_BATCH = 500
DEFAULT_EXPORT_SPAN = timedelta(days=30)
MAX_EXPORT_SPAN = timedelta(days=366)
MAX_SEQ = 2**63 - 1
#: Times outside these bounds are refused (422): far enough from datetime's limits that
#: converting to UTC or moving a window by a year never overflows.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
#: Every event type the trail holds (a filter naming another is a 422, not an empty page).
EVENT_TYPES = frozenset(str(t) for t in AuditEventType) | frozenset(
    str(t) for t in SecurityEventType
)
#: The columns a trail query answers with (never the hashes: the export carries them).
EVENT_OUT = tuple(c for c in HASHED if c not in ("clinic_id", "prev_hash"))
JSONL = "application/x-ndjson"
FHIR_NDJSON = "application/fhir+ndjson"
Query = TypeVar("Query", bound="Select[*tuple[Any, ...]]")


def moment_in_range(moment: datetime) -> bool:
    """Whether an aware time lies within [EARLIEST, LATEST) (without overflowing)."""
    try:
        return EARLIEST <= moment.astimezone(UTC) < LATEST
    except OverflowError:
        return False


def decided_by(decision: Decision) -> dict[str, DetailValue]:
    return {"permission": decision.permission, "rule": decision.rule}


# --- keyset paging over (occurred_at, seq), newest first ------------------------------------


def seq_key(value: object) -> int:
    """A cursor's key: an event's sequence number (ValueError otherwise)."""
    if type(value) is not int or not 0 < value <= MAX_SEQ:
        raise ValueError("not a sequence number")
    return value


def newest_first(query: Query, cursor: str | None, limit: int) -> Query:
    """``query`` over events ordered newest first, after ``cursor``, one row more than
    ``limit`` (to know whether another page exists)."""
    return page_query(
        query,
        AuditEvent.occurred_at,
        AuditEvent.seq,
        cursor,
        limit,
        parse_key=seq_key,
        valid_time=moment_in_range,
        newest_first=True,
    )


def about_patient(clinic_id: uuid.UUID, patient_id: uuid.UUID) -> ColumnElement[bool]:
    """Events about one patient: naming them, or listing them among the patients an
    access returned (``audit_subjects``)."""
    listed = select(AuditSubject.seq).where(
        AuditSubject.clinic_id == clinic_id, AuditSubject.patient_id == patient_id
    )
    return or_(AuditEvent.patient_id == patient_id, AuditEvent.seq.in_(listed))


def review_join() -> ColumnElement[bool]:
    return and_(
        AuditReview.clinic_id == AuditEvent.clinic_id, AuditReview.event_id == AuditEvent.id
    )


def review_out(review: AuditReview) -> dict[str, Any]:
    return {
        "event_id": review.event_id,
        "event_seq": review.event_seq,
        "decision": review.decision,
        "reviewer_id": review.reviewer_id,
        "note": review.note,
        "decided_at": review.decided_at,
    }


def event_out(event: AuditEvent, review: AuditReview | None) -> dict[str, Any]:
    out = {name: getattr(event, name) for name in EVENT_OUT}
    out["review"] = review_out(review) if review is not None else None
    return out


# --- filters -----------------------------------------------------------------------------------


OUT_OF_RANGE = "Must lie between the years 1900 and 9000."


def check_window(start: datetime | None, end: datetime | None) -> None:
    """ValidationFailed (422) naming ``from``/``to`` when outside the times we accept."""
    errors = [
        FieldError(f"query.{name}", OUT_OF_RANGE)
        for name, moment in (("from", start), ("to", end))
        if moment is not None and not moment_in_range(moment)
    ]
    if errors:
        raise ValidationFailed(errors=errors)


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None


@dataclass(frozen=True, slots=True)
class TrailFilters:
    """What a trail query asks for (every filter optional; all given must hold)."""

    user_id: uuid.UUID | None = None
    patient_id: uuid.UUID | None = None
    start: datetime | None = None
    end: datetime | None = None
    event_type: str | None = None
    risk_level: str | None = None
    requires_review: bool | None = None
    outcome: str | None = None

    def check(self) -> None:
        """ValidationFailed (422) naming each impossible filter."""
        check_window(self.start, self.end)
        errors = []
        if self.start is not None and self.end is not None and self.start > self.end:
            errors.append(FieldError("query.from", "Must not be after 'to'."))
        if self.event_type is not None and self.event_type not in EVENT_TYPES:
            errors.append(FieldError("query.event_type", "Not an event type of the trail."))
        if self.risk_level is not None and self.risk_level not in {str(r) for r in RiskLevel}:
            errors.append(FieldError("query.risk_level", "Not a risk level."))
        if errors:
            raise ValidationFailed(errors=errors)

    def conditions(self, clinic_id: uuid.UUID) -> list[ColumnElement[bool]]:
        where = [AuditEvent.clinic_id == clinic_id]
        if self.user_id is not None:
            where.append(AuditEvent.actor_id == self.user_id)
        if self.patient_id is not None:
            where.append(about_patient(clinic_id, self.patient_id))
        if self.start is not None:
            where.append(AuditEvent.occurred_at >= self.start)
        if self.end is not None:
            where.append(AuditEvent.occurred_at <= self.end)
        if self.event_type is not None:
            where.append(AuditEvent.event_type == self.event_type)
        if self.risk_level is not None:
            where.append(AuditEvent.risk_level == self.risk_level)
        if self.requires_review is not None:
            where.append(AuditEvent.requires_review.is_(self.requires_review))
        if self.outcome is not None:
            where.append(AuditEvent.outcome == self.outcome)
        return where

    def details(self) -> dict[str, DetailValue]:
        """The filters as the query's audit event names them (ids and names, no data)."""
        given: dict[str, DetailValue] = {
            "user_id": str(self.user_id) if self.user_id else None,
            "patient_id": str(self.patient_id) if self.patient_id else None,
            "from": _iso(self.start),
            "to": _iso(self.end),
            "event_type": self.event_type,
            "risk_level": self.risk_level,
            "requires_review": self.requires_review,
            "outcome": self.outcome,
        }
        return {k: v for k, v in given.items() if v is not None}


# --- export formats -----------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A column as the chain hashes it (``trail.canonical``): ISO UTC times with
    microseconds, UUIDs as text. Hashing the exported values gives the stored hash."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def jsonl_line(event: AuditEvent) -> bytes:
    """One event with every hashed column, its hash included: an auditor recomputes
    ``chain_hash(prev_hash, columns)`` and follows ``prev_hash`` from line to line."""
    values = {name: _plain(getattr(event, name)) for name in (*HASHED, "hash")}
    return json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def fhir_line(event: AuditEvent) -> bytes:
    resource = audit_event(event)
    return json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


FORMATS: dict[str, tuple[str, str, Callable[[AuditEvent], bytes]]] = {
    "jsonl": (JSONL, "jsonl", jsonl_line),
    "fhir": (FHIR_NDJSON, "ndjson", fhir_line),
}


@dataclass(frozen=True, slots=True)
class Export:
    media_type: str
    filename: str
    lines: AsyncIterator[bytes]
    """Batches of lines, read from the database page by page while they are sent."""


# --- the trail ------------------------------------------------------------------------------------


class AuditTrail:
    """The clinic's trail for its administrators and compliance officers."""

    def __init__(
        self,
        db: Database,
        authorizer: Authorizer,
        recorder: AuditRecorder,
        clock: Clock,
        keys: CheckpointKeyRing,
        *,
        batch: int = EXPORT_BATCH,
    ) -> None:
        self._keys = keys
        self._db = db
        self._authz = authorizer
        self._recorder = recorder
        self._clock = clock
        self._batch = batch

    async def search(
        self, principal: Principal, filters: TrailFilters, *, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The clinic's events matching ``filters``, newest first, with their review
        decisions. Raises AccessDenied (403) without ``audit:read``, ValidationFailed (422)
        for impossible filters or a foreign cursor. The query is recorded
        (``audit:trail:query``, filters in its details) in the same transaction."""
        decision = await self._authz.require(principal, Permission.AUDIT_READ)
        clinic = clinic_of(principal)
        filters.check()
        query = newest_first(
            select(AuditEvent, AuditReview)
            .outerjoin(AuditReview, review_join())
            .where(*filters.conditions(clinic)),
            cursor,
            limit,
        )
        async with self._db.transaction(tenant_of(principal)) as session:
            rows = (await session.execute(query)).all()
            items, next_cursor = split_page(rows, limit, lambda r: (r[0].occurred_at, r[0].seq))
            entry = AuditEntry(
                event_type=AuditEventType.TRAIL_QUERY,
                action="query",
                outcome="success",
                resource_type="audit",
                patient_id=filters.patient_id,
                details={
                    **filters.details(),
                    **decided_by(decision),
                    "returned": len(items),
                    "next_page": cursor is not None,
                },
            )
            # Last in the transaction: the clinic's chain is locked only from here to commit.
            await self._recorder.record(session, clinic, principal, entry)
        return [event_out(event, review) for event, review in items], next_cursor

    def _window(self, start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
        check_window(start, end)
        end = end if end is not None else self._clock.now()
        start = start if start is not None else end - DEFAULT_EXPORT_SPAN
        if start > end:
            raise ValidationFailed(errors=[FieldError("query.from", "Must not be after 'to'.")])
        if end - start > MAX_EXPORT_SPAN:
            raise ValidationFailed(
                errors=[FieldError("query.to", "An export covers at most 366 days.")]
            )
        return start, end

    async def export(
        self,
        principal: Principal,
        fmt: str,
        start: datetime | None,
        end: datetime | None,
    ) -> Export:
        """The clinic's events from ``start`` to ``end`` (default: the last 30 days; at most
        366 days) in chain order, as ``jsonl`` or ``fhir`` lines. The export is recorded
        (compliance-relevant, for review) and committed before anything is read; events
        appended after it are not part of it. Raises AccessDenied (403) without
        ``audit:export``, ValidationFailed (422) for a window that is reversed or too long."""
        decision = await self._authz.require(principal, Permission.AUDIT_EXPORT)
        clinic = clinic_of(principal)
        start, end = self._window(start, end)
        media_type, suffix, encode = FORMATS[fmt]
        entry = AuditEntry(
            event_type=AuditEventType.TRAIL_EXPORT,
            action="export",
            outcome="success",
            resource_type="audit",
            details={"format": fmt, "from": _iso(start), "to": _iso(end), **decided_by(decision)},
            requires_review=True,
            compliance=True,
        )
        async with self._db.transaction(tenant_of(principal)) as session:
            recorded = await self._recorder.record(session, clinic, principal, entry)
            upto = recorded.seq
        stamp = f"{start:%Y%m%d}-{end:%Y%m%d}"
        return Export(
            media_type,
            f"audit-{clinic}-{stamp}.{suffix}",
            self._lines(principal, clinic, (start, end), upto, encode),
        )

    async def _lines(
        self,
        principal: Principal,
        clinic: uuid.UUID,
        window: tuple[datetime, datetime],
        upto: int,
        encode: Callable[[AuditEvent], bytes],
    ) -> AsyncIterator[bytes]:
        start, end = window
        after = 0
        while True:
            # One short transaction per batch: a long download holds no transaction open.
            async with self._db.transaction(tenant_of(principal)) as session:
                rows = (
                    await session.scalars(
                        select(AuditEvent)
                        .where(
                            AuditEvent.clinic_id == clinic,
                            AuditEvent.seq > after,
                            AuditEvent.seq <= upto,
                            AuditEvent.occurred_at >= start,
                            AuditEvent.occurred_at <= end,
                        )
                        .order_by(AuditEvent.seq)
                        .limit(self._batch)
                    )
                ).all()
            if not rows:
                return
            yield b"".join(encode(row) for row in rows)
            if len(rows) < self._batch:
                return
            after = rows[-1].seq

    async def verify(self, principal: Principal) -> dict[str, Any]:
        """Walk the clinic's chain (:func:`verify_chain`) and record the check; a broken
        chain is recorded as a critical event for review. Raises AccessDenied (403)
        without ``audit:verify``."""
        decision = await self._authz.require(principal, Permission.AUDIT_VERIFY)
        clinic = clinic_of(principal)
        # Only keys this deployment made (their sealed halves open under the master key)
        # vouch for checkpoints: a key row slipped into the table does not.
        result = await verify_chain(self._db, clinic, keys=await self._keys.trusted_keys())
        entry = AuditEntry(
            event_type=AuditEventType.TRAIL_VERIFY,
            action="verify",
            outcome="success" if result.ok else "failure",
            resource_type="audit",
            details={
                "ok": result.ok,
                "checked": result.checked,
                "first_broken_seq": result.first_broken_seq,
                **decided_by(decision),
            },
            requires_review=not result.ok,
            compliance=not result.ok,
            floor=RiskLevel.LOW if result.ok else RiskLevel.CRITICAL,
        )
        async with self._db.transaction(tenant_of(principal)) as session:
            await self._recorder.record(session, clinic, principal, entry)
        return {
            "ok": result.ok,
            "checked": result.checked,
            "first_broken_event_id": result.first_broken_event_id,
        }


# --- a patient's access log ---------------------------------------------------------------------


class PatientDirectory(Protocol):
    """What the access log needs to know about patients (the clinic feature answers)."""

    async def facts(
        self, session: AsyncSession, principal: Principal, patient_id: uuid.UUID
    ) -> Mapping[Condition, bool] | None:
        """The policy facts about the principal and the patient (``self`` among them), or
        None when the principal may not know the patient exists: missing, another
        clinic's, or — for a patient — anyone but themselves."""
        ...

    async def care_relations(
        self, clinic_id: uuid.UUID, patient_id: uuid.UUID, professionals: Collection[uuid.UUID]
    ) -> Mapping[uuid.UUID, str]:
        """For each of ``professionals`` who has a care relation with the patient now:
        ``care team`` or ``appointment`` (the others are absent)."""
        ...


CLINICIANS = frozenset({str(Role.PHYSICIAN), str(Role.NURSE)})
EMERGENCY_TYPES = frozenset(
    {str(SecurityEventType.AUTHZ_EMERGENCY_GRANTED), str(SecurityEventType.AUTHZ_EMERGENCY_ACCESS)}
)
#: Why someone of this role touches patient data, when the event does not say more.
ROLE_PURPOSES = {
    str(Role.PATIENT): "own data",
    str(Role.RECEPTIONIST): "front desk",
    str(Role.CLINIC_ADMIN): "clinic administration",
    str(Role.COMPLIANCE_OFFICER): "compliance oversight",
    str(Role.INTEGRATION): "integration",
    str(Role.PLATFORM_ADMIN): "platform administration",
}
_ACCESS_COLUMNS = (
    AuditEvent.occurred_at,
    AuditEvent.seq,
    AuditEvent.actor_id,
    AuditEvent.actor_role,
    AuditEvent.event_type,
    AuditEvent.action,
    AuditEvent.resource_type,
    AuditEvent.resource_id,
    AuditEvent.reason,
    AuditEvent.details,
    AuditEvent.outcome,
    User.full_name,
)


def is_emergency(row: Any) -> bool:
    details = row.details if isinstance(row.details, dict) else {}
    return details.get("emergency") is True or row.event_type in EMERGENCY_TYPES


def purpose(row: Any, relations: Mapping[uuid.UUID, str]) -> str | None:
    """Why the access happened: a break-glass grant's justification; a clinician's care
    relation with the patient (as it stands now: ``care team`` or ``appointment``); the
    duty of the actor's role; for a refused attempt, the refusal's reason."""
    if is_emergency(row):
        return str(row.reason) if row.reason else "break-glass"
    if row.outcome != "success":
        return str(row.reason) if row.reason else None
    if row.actor_id is None:
        return "system"
    if row.actor_role in CLINICIANS:
        return relations.get(row.actor_id, "clinic staff")
    role = str(row.actor_role)
    return ROLE_PURPOSES.get(role, role)


def access_entry(row: Any, relations: Mapping[uuid.UUID, str]) -> dict[str, Any]:
    """One access as the log shows it: never the ip, session, details or other patients."""
    return {
        "at": row.occurred_at,
        "who": {
            "id": row.actor_id,
            "name": row.full_name,
            "role": row.actor_role or "system",
        },
        "what": {
            "event_type": row.event_type,
            "action": row.action,
            "resource_type": row.resource_type,
            "resource_id": row.resource_id,
        },
        "why": purpose(row, relations),
        "emergency": is_emergency(row),
        "outcome": row.outcome,
    }


class AccessLog:
    """Who touched a patient's data, when and why: for the patient themselves and for the
    clinic's administrators and compliance officers."""

    def __init__(
        self,
        db: Database,
        authorizer: Authorizer,
        recorder: AuditRecorder,
        directory: PatientDirectory,
    ) -> None:
        self._db = db
        self._authz = authorizer
        self._recorder = recorder
        self._directory = directory

    async def read(
        self, principal: Principal, patient_id: uuid.UUID, *, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Every access to the patient's data, newest first. Raises AccessDenied (403) for
        a role that may never read access logs (before anything is looked up), NotFound
        (404) for a patient the principal may not know exists (another clinic's; for a
        patient, anyone but themselves). The read is recorded in the same transaction."""
        await self._authz.require_possible(
            principal, Permission.ACCESS_LOG_READ, {"patient_id": str(patient_id)}
        )
        clinic = clinic_of(principal)
        query = newest_first(
            select(*_ACCESS_COLUMNS)
            .outerjoin(User, User.id == AuditEvent.actor_id)
            .where(AuditEvent.clinic_id == clinic, about_patient(clinic, patient_id)),
            cursor,
            limit,
        )
        async with self._db.transaction(tenant_of(principal)) as session:
            facts = await self._directory.facts(session, principal, patient_id)
            if facts is None:
                raise NotFound()
            decision = await self._authz.require(
                principal,
                Permission.ACCESS_LOG_READ,
                facts,
                target={"patient_id": str(patient_id)},
            )
            rows = (await session.execute(query)).all()
            items, next_cursor = split_page(rows, limit, lambda r: (r.occurred_at, r.seq))
            clinicians = {
                r.actor_id for r in items if r.actor_id is not None and r.actor_role in CLINICIANS
            }
            relations = (
                await self._directory.care_relations(clinic, patient_id, clinicians)
                if clinicians
                else {}
            )
            entries = [access_entry(r, relations) for r in items]
            entry = AuditEntry(
                event_type=AuditEventType.ACCESS_LOG_READ,
                action="read",
                outcome="success",
                resource_type="access_log",
                resource_id=str(patient_id),
                patient_id=patient_id,
                details={**decided_by(decision), "returned": len(items)},
            )
            await self._recorder.record(session, clinic, principal, entry)
        return entries, next_cursor
