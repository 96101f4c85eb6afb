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
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from clinicguard.core.events import SecurityEvent, SecurityEventType, Severity
from clinicguard.core.masking import mask_cpf, mask_email, mask_phone

GENESIS = "0" * 64
"""The "previous hash" of a clinic's first event."""
PLATFORM = uuid.UUID(int=0)
"""The chain of events that belong to no clinic (a login for an unknown email, a platform
administrator's action): it is kept and verified like a clinic's."""
USER_AGENT_CHARS = 256
DETAIL_CHARS = 4096
"""A detail value longer than this is cut (details carry ids and reasons, not documents)."""


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
    EMERGENCY_GRANT_LIST = "clinic:emergency_grant:list"
    ACCESS_LOG_READ = "clinic:access_log:read"
    TRAIL_QUERY = "audit:trail:query"
    TRAIL_EXPORT = "audit:trail:export"
    TRAIL_VERIFY = "audit:trail:verify"
    REVIEW_LIST = "audit:review:list"
    REVIEW_DECISION = "audit:review:decided"
    RETENTION_RUN = "audit:retention:run"


EventType = AuditEventType | SecurityEventType
"""Every type an audit event may have: data access (above) and the security events of
the other features (:class:`SecurityEventType`), which are recorded in the same trail."""


class RiskLevel(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One event as a service describes it (the recorder adds sequence, time, request
    context and hashes)."""

    event_type: EventType
    action: str
    outcome: str
    resource_type: str
    resource_id: str | None = None
    patient_id: uuid.UUID | None = None
    reason: str | None = None
    details: Mapping[str, str | int | float | bool | None] = field(default_factory=dict)
    requires_review: bool = False
    compliance: bool = False
    floor: RiskLevel = RiskLevel.LOW
    """The lowest risk level the event may have (a security event's severity)."""


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


#: The lowest score of each level.
LEVEL_FLOORS = {RiskLevel.LOW: 0, RiskLevel.MEDIUM: 25, RiskLevel.HIGH: 50, RiskLevel.CRITICAL: 75}


def risk(
    entry: AuditEntry, role: str | None, *, rows: int = 1, emergency: bool = False
) -> tuple[int, RiskLevel]:
    """A 0-100 score and its level: action, resource and role weights, plus bulk (many
    rows), break-glass, denials and compliance relevance; never below the entry's floor."""
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
    score = max(min(score, 100), LEVEL_FLOORS[entry.floor])
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


# --- details masking -----------------------------------------------------------------------

#: Detail names whose values are never written (secrets and clinical content).
SECRET_NAMES = re.compile(
    r"pass(word)?|secret|token|totp|otp|code|key_material|private|kek|cookie|authorization"
    r"|diagnosis|notes?|treatment|medication|allerg|condition|dosage|instructions|content",
    re.IGNORECASE,
)
#: Detail names whose values are our own identifiers (ids, an API key's public prefix, a
#: key id): kept as they are, even when they happen to be all digits.
IDENTIFIER_NAMES = re.compile(r"(^|_)(id|ids|prefix|kid)$")
_UUIDS = re.compile(r"[0-9a-fA-F-]{36}(,[0-9a-fA-F-]{36})*")
_CPF = re.compile(r"(?<![\w.-])\d{3}\.?\d{3}\.?\d{3}-?\d{2}(?![\w-])")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
_PHONE = re.compile(r"(?<![\w+])(\+\d{1,3}[\s-]?)?\(?\d{2}\)?[\s-]?\d{4,5}[\s-]?\d{4}(?![\w])")


def mask_value(value: str) -> str:
    """A detail text with every CPF, e-mail address and phone number in it masked (ids
    written as UUIDs, alone or comma-separated, are kept as they are)."""
    if _UUIDS.fullmatch(value):
        return value
    value = _CPF.sub(lambda m: mask_cpf(m.group()), value)
    value = _EMAIL.sub(lambda m: mask_email(m.group()), value)
    return _PHONE.sub(lambda m: mask_phone(m.group()), value)[:DETAIL_CHARS]


def mask_details(
    details: Mapping[str, str | int | float | bool | None],
) -> dict[str, str | int | float | bool | None]:
    """Details as they may be written: values under secret or clinical names redacted
    (texts and numbers alike: a code may be a number), identifiers in texts masked.
    Services pass ids and reasons; this is the net under them."""
    masked: dict[str, str | int | float | bool | None] = {}
    for name, value in details.items():
        if value is not None and not isinstance(value, bool) and SECRET_NAMES.search(name):
            masked[name] = "[redacted]"
        elif isinstance(value, str) and IDENTIFIER_NAMES.search(name):
            masked[name] = value[:DETAIL_CHARS]
        elif isinstance(value, str):
            masked[name] = mask_value(value)
        else:
            masked[name] = value
    return masked


# --- security events -----------------------------------------------------------------------

SEVERITY_FLOORS = {
    Severity.INFO: RiskLevel.LOW,
    Severity.LOW: RiskLevel.LOW,
    Severity.MEDIUM: RiskLevel.MEDIUM,
    Severity.HIGH: RiskLevel.HIGH,
    Severity.CRITICAL: RiskLevel.CRITICAL,
}
#: Sources whose events a compliance officer answers for.
COMPLIANCE_SOURCES = frozenset({"authz", "crypto", "admin", "audit", "privacy"})


def _uuid(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value is not None else None
    except ValueError:
        return None


def _parts(event_type: str) -> tuple[str, str, str]:
    """``source:subject:action``; the two older two-part names (``auth:lockout``,
    ``auth:unlock``) name an account's subject by their action."""
    source, _, rest = event_type.partition(":")
    subject, _, action = rest.partition(":")
    return source, subject if action else "account", action or subject


def entry_of(event: SecurityEvent) -> AuditEntry:
    """A security event as an audit entry: ``source:subject:action`` gives the resource
    type and the action, the severity is the risk floor, and high or critical events,
    like those that ask for it, go to review."""
    source, subject, action = _parts(str(event.type))
    floor = SEVERITY_FLOORS[event.severity]
    review = event.details.get("review") is True or floor in (RiskLevel.HIGH, RiskLevel.CRITICAL)
    details = {k: v for k, v in event.details.items() if k not in ("review", "reason")}
    reason = event.details.get("reason")
    return AuditEntry(
        event_type=event.type,
        action=action[:16],
        outcome=str(event.outcome),
        resource_type=subject[:32],
        resource_id=None,
        patient_id=_uuid(event.details.get("patient_id")),
        reason=str(reason) if reason is not None else None,
        details=details,
        requires_review=review,
        compliance=source in COMPLIANCE_SOURCES,
        floor=floor,
    )
