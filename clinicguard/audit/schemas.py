"""Request and response bodies of the audit API: trail events (every column but the hashes,
which only the export carries), review decisions, chain verification and a patient's
access log."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from clinicguard.core.schemas import PlainText, StrictModel

Decision = Literal["approved", "rejected"]
RiskLevelName = Literal["low", "medium", "high", "critical"]
OutcomeName = Literal["success", "failure", "denied"]
ReviewStatus = Literal["pending", "decided", "all"]
ExportFormat = Literal["jsonl", "fhir"]
NOTE_CHARS = 2000


class ReviewIn(StrictModel):
    decision: Decision
    note: Annotated[PlainText, Field(max_length=NOTE_CHARS)] | None = None


class ReviewOut(BaseModel):
    event_id: uuid.UUID
    event_seq: int
    decision: Decision
    reviewer_id: uuid.UUID
    note: str | None
    decided_at: datetime


class AuditEventOut(BaseModel):
    id: uuid.UUID
    seq: int
    occurred_at: datetime
    actor_id: uuid.UUID | None
    actor_role: str | None
    session_id: str | None
    request_id: str | None
    ip: str | None
    user_agent: str | None
    event_type: str
    resource_type: str
    resource_id: str | None
    patient_id: uuid.UUID | None
    action: str
    outcome: str
    reason: str | None
    details: dict[str, Any]
    risk_score: int
    risk_level: str
    compliance: bool
    requires_review: bool
    review: ReviewOut | None
    """The reviewer's decision, when one was made."""


class EventPage(BaseModel):
    items: list[AuditEventOut]
    next_cursor: str | None = None


class VerificationOut(BaseModel):
    ok: bool
    checked: int
    first_broken_event_id: uuid.UUID | None


class Accessor(BaseModel):
    id: uuid.UUID | None
    """None: the service itself (no one signed in)."""
    name: str | None
    role: str


class AccessWhat(BaseModel):
    event_type: str
    action: str
    resource_type: str
    resource_id: str | None


class AccessLogEntry(BaseModel):
    at: datetime
    who: Accessor
    what: AccessWhat
    why: str | None
    """A break-glass access: the grant's justification; otherwise the relation or duty
    the access was allowed by (``care team``, ``appointment``, ``own data``, …)."""
    emergency: bool
    outcome: str


class AccessLogPage(BaseModel):
    items: list[AccessLogEntry]
    next_cursor: str | None = None
