"""The audit trail's vocabulary: event types, one entry, its canonical encoding and hash,
and the risk score.

The chain: each clinic's events are numbered 1, 2, 3, … and each event's hash is
SHA-256 over the previous event's hash and the canonical encoding of the event (every
column but the hash itself). Editing, deleting, inserting or reordering any event breaks
the hash of that event or of the next one, which ``audit verify`` names.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

GENESIS = "0" * 64
"""The "previous hash" of a clinic's first event."""
USER_AGENT_CHARS = 256


class AuditEventType(StrEnum):
    """``source:subject:action``; every access to patient data has one."""

    PATIENT_LIST = "clinic:patient:list"
    PATIENT_SEARCH = "clinic:patient:search"
    PATIENT_READ = "clinic:patient:read"
    PATIENT_CREATE = "clinic:patient:create"
    PATIENT_UPDATE = "clinic:patient:update"
    RECORD_LIST = "clinic:record:list"
    RECORD_READ = "clinic:record:read"
    RECORD_CREATE = "clinic:record:create"
    PRESCRIPTION_LIST = "clinic:prescription:list"
    PRESCRIPTION_CREATE = "clinic:prescription:create"
    APPOINTMENT_LIST = "clinic:appointment:list"
    APPOINTMENT_CREATE = "clinic:appointment:create"
    APPOINTMENT_UPDATE = "clinic:appointment:update"
    FILE_UPLOAD = "clinic:file:upload"
    FILE_LIST = "clinic:file:list"
    FILE_DOWNLOAD = "clinic:file:download"
    EMERGENCY_GRANT = "authz:emergency:granted"
    EMERGENCY_ACCESS = "authz:emergency:access"
    ACCESS_DENIED = "authz:access:denied"
    DATA_EXPORT = "audit:trail:export"
    REVIEW_DECISION = "audit:review:decided"
    KEY_ROTATED = "crypto:key:rotated"
    KEY_SHREDDED = "crypto:key:shredded"
    CONFIG_CHANGED = "admin:config:changed"


class RiskLevel(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One event as a service describes it (the recorder adds sequence, time, request
    context and hashes)."""

    event_type: AuditEventType
    action: str
    outcome: str
    resource_type: str
    resource_id: str | None = None
    patient_id: uuid.UUID | None = None
    reason: str | None = None
    details: Mapping[str, str | int | float | bool | None] = field(default_factory=dict)
    requires_review: bool = False
    compliance: bool = False


def _text(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def canonical(values: Mapping[str, Any]) -> bytes:
    """The stable byte form of an event's columns (sorted keys, no spaces, ISO UTC times,
    UTF-8): the same on every backend and every process."""
    return json.dumps(
        {k: _text(v) for k, v in values.items()},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=_text,
    ).encode()


def chain_hash(previous: str, values: Mapping[str, Any]) -> str:
    return hashlib.sha256(previous.encode() + b"|" + canonical(values)).hexdigest()


#: Our specification's baseline weights.
ACTION_WEIGHTS = {"read": 1, "list": 2, "search": 2, "create": 2, "update": 3, "download": 3}
ACTION_WEIGHTS |= {"upload": 2, "grant": 6, "export": 7, "delete": 8, "deny": 4, "shred": 8}
RESOURCE_WEIGHTS = {"patient": 2, "appointment": 1, "record": 4, "prescription": 4, "file": 4}
RESOURCE_WEIGHTS |= {"audit": 3, "key": 5, "config": 4}
ROLE_WEIGHTS = {"patient": 0, "physician": 1, "nurse": 1, "receptionist": 2, "integration": 2}
ROLE_WEIGHTS |= {"compliance_officer": 1, "clinic_admin": 2, "platform_admin": 3, "system": 1}


def risk(
    entry: AuditEntry, role: str | None, *, rows: int = 1, emergency: bool = False
) -> tuple[int, RiskLevel]:
    """A 0-100 score and its level: action, resource and role weights, plus bulk (many
    rows), break-glass, denials and compliance relevance."""
    score = 5 * ACTION_WEIGHTS.get(entry.action, 3)
    score += 4 * RESOURCE_WEIGHTS.get(entry.resource_type, 2)
    score += 5 * ROLE_WEIGHTS.get(role or "", 3)
    if rows > 20:
        score += 15 if rows <= 100 else 30
    if emergency:
        score += 25
    if entry.outcome == "denied":
        score += 10
    if entry.compliance:
        score += 5
    score = min(score, 100)
    level = (
        RiskLevel.CRITICAL
        if score >= 75
        else RiskLevel.HIGH
        if score >= 50
        else RiskLevel.MEDIUM
        if score >= 25
        else RiskLevel.LOW
    )
    return score, level
