"""Audit events as FHIR R4 ``AuditEvent`` resources (for the export's ``fhir`` format).

One resource per event: ``type`` and ``subtype`` from the event type, ``action`` (C/R/U/D/E)
from its action, ``recorded``, ``outcome`` (0/4/8), the acting ``agent`` (a person's user
account, or the system itself), ``source`` (this service, at the clinic), the patients and
the resource it touched as ``entity``, break-glass as ``purposeOfEvent``, and our own chain
position (event id, sequence number, hash and previous hash) and risk as extensions, so a
FHIR consumer can still tie each resource to the verifiable chain.

Pure functions over an event's columns: no I/O, no FastAPI.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Protocol

AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SECURITY_ROLE_TYPE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
#: Our own code systems and extensions (URNs: nothing to resolve, nothing to squat).
EVENT_TYPES = "urn:clinicguard:audit-event-type"
ROLES = "urn:clinicguard:role"
CHAIN_EXTENSION = "urn:clinicguard:fhir:extension:audit-chain"
RISK_EXTENSION = "urn:clinicguard:fhir:extension:audit-risk"
OBSERVER = "clinicguard"
FHIR_INTEGER_MAX = 2**31 - 1
HUMAN = ("humanuser", "human user")

#: Event source (first part of ``source:subject:action``) -> AuditEvent.type.
_TYPES: dict[str, tuple[str, str, str]] = {
    "clinic": (AUDIT_EVENT_TYPE, "rest", "RESTful Operation"),
    "auth": (DICOM, "110114", "User Authentication"),
    "audit": (DICOM, "110101", "Audit Log Used"),
    "authz": (DICOM, "110113", "Security Alert"),
    "input": (DICOM, "110113", "Security Alert"),
}
_APPLICATION_ACTIVITY = (DICOM, "110100", "Application Activity")
#: Our actions -> FHIR's restful interactions (data access events only).
_INTERACTIONS = {
    "read": "read",
    "download": "read",
    "list": "search-type",
    "search": "search-type",
    "create": "create",
    "upload": "create",
    "update": "update",
    "delete": "delete",
}
_ACTIONS = {
    "create": "C",
    "upload": "C",
    "grant": "C",
    "read": "R",
    "list": "R",
    "search": "R",
    "download": "R",
    "query": "R",
    "export": "R",
    "update": "U",
    "delete": "D",
    "shred": "D",
}
#: 0 success, 4 minor failure (a refused or failed request), 8 serious failure.
_OUTCOMES = {"success": "0", "failure": "4", "denied": "4"}
_ROLE_NAMES = {
    "platform_admin": "Platform administrator",
    "clinic_admin": "Clinic administrator",
    "physician": "Physician",
    "nurse": "Nurse",
    "receptionist": "Receptionist",
    "compliance_officer": "Compliance officer",
    "patient": "Patient",
    "integration": "Integration (API key)",
    "system": "System",
}
_STAFF = frozenset(
    {"platform_admin", "clinic_admin", "physician", "nurse", "receptionist", "compliance_officer"}
)


class EventColumns(Protocol):
    """The columns of one stored audit event (:class:`~clinicguard.audit.models.AuditEvent`)."""

    clinic_id: uuid.UUID
    seq: int
    id: uuid.UUID
    occurred_at: datetime
    actor_id: uuid.UUID | None
    actor_role: str | None
    ip: str | None
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
    prev_hash: str
    hash: str


def instant(moment: datetime) -> str:
    """A FHIR ``instant`` (UTC, with the microseconds the trail keeps)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    coding = {"system": system, "code": code}
    if display is not None:
        coding["display"] = display
    return coding


def _agent(event: EventColumns) -> dict[str, Any]:
    role = event.actor_role or "system"
    name = _ROLE_NAMES.get(role, role)
    agent: dict[str, Any] = {
        "role": [{"coding": [_coding(ROLES, role, name)], "text": name}],
    }
    if event.actor_id is None:
        # Nobody signed in acted: the service itself (a maintenance job, an unknown login).
        agent["type"] = {"coding": [_coding(SECURITY_ROLE_TYPE, "dataprocessor", "data processor")]}
        agent["who"] = {"identifier": {"system": "urn:clinicguard:service", "value": OBSERVER}}
        agent["requestor"] = False
    else:
        # Staff are practitioners; an API key is a device; a patient's own account is a
        # Person (the user, not the Patient resource the clinic keeps about them).
        kind = "Practitioner" if role in _STAFF else "Device" if role == "integration" else "Person"
        code, display = ("dataprocessor", "data processor") if kind == "Device" else HUMAN
        agent["type"] = {"coding": [_coding(SECURITY_ROLE_TYPE, code, display)]}
        agent["who"] = {
            "reference": f"{kind}/{event.actor_id}",
            "identifier": {"system": "urn:clinicguard:user", "value": str(event.actor_id)},
        }
        agent["requestor"] = True
    if event.ip:
        agent["network"] = {"address": event.ip, "type": "2"}
    return agent


def _patient_entity(patient_id: str) -> dict[str, Any]:
    return {
        "what": {"reference": f"Patient/{patient_id}"},
        "type": _coding(ENTITY_TYPE, "1", "Person"),
        "role": _coding(OBJECT_ROLE, "1", "Patient"),
    }


def _entities(event: EventColumns) -> list[dict[str, Any]]:
    patients: list[str] = []
    if event.patient_id is not None:
        patients.append(str(event.patient_id))
    listed = event.details.get("patient_ids")
    if isinstance(listed, str) and listed:
        patients.extend(p for p in listed.split(",") if p not in patients)
    entities = [_patient_entity(p) for p in patients]
    if event.resource_id is not None and not (
        event.resource_type == "patient" and event.resource_id in patients
    ):
        entities.append(
            {
                "what": {
                    "identifier": {
                        "system": f"urn:clinicguard:{event.resource_type}",
                        "value": event.resource_id,
                    }
                },
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": _coding(OBJECT_ROLE, "4", "Domain Resource"),
                "name": event.resource_type,
            }
        )
    return entities


def _integer(url: str, value: int) -> dict[str, Any]:
    # FHIR R4's integer is 32-bit; a longer chain's numbers travel as strings.
    if abs(value) <= FHIR_INTEGER_MAX:
        return {"url": url, "valueInteger": value}
    return {"url": url, "valueString": str(value)}


def audit_event(event: EventColumns) -> dict[str, Any]:
    """The FHIR R4 AuditEvent resource of one stored event."""
    source, _, _ = event.event_type.partition(":")
    system, code, display = _TYPES.get(source, _APPLICATION_ACTIVITY)
    subtype = [_coding(EVENT_TYPES, event.event_type, event.event_type)]
    if source == "clinic" and event.action in _INTERACTIONS:
        interaction = _INTERACTIONS[event.action]
        subtype.append(_coding(RESTFUL_INTERACTION, interaction, interaction))
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(event.id),
        "extension": [
            {
                "url": CHAIN_EXTENSION,
                "extension": [
                    {"url": "clinic", "valueString": str(event.clinic_id)},
                    {"url": "event", "valueString": str(event.id)},
                    _integer("seq", event.seq),
                    {"url": "hash", "valueString": event.hash},
                    {"url": "previousHash", "valueString": event.prev_hash},
                ],
            },
            {
                "url": RISK_EXTENSION,
                "extension": [
                    {"url": "score", "valueInteger": event.risk_score},
                    {"url": "level", "valueCode": event.risk_level},
                    {"url": "requiresReview", "valueBoolean": event.requires_review},
                    {"url": "compliance", "valueBoolean": event.compliance},
                ],
            },
        ],
        "type": _coding(system, code, display),
        "subtype": subtype,
        "action": _ACTIONS.get(event.action, "E"),
        "recorded": instant(event.occurred_at),
        "outcome": _OUTCOMES.get(event.outcome, "8"),
        "outcomeDesc": event.outcome,
        "agent": [_agent(event)],
        "source": {
            "site": str(event.clinic_id),
            "observer": {"display": OBSERVER},
            "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
        },
    }
    if event.details.get("emergency") is True:
        purpose: dict[str, Any] = {
            "coding": [
                _coding(ACT_REASON, "BTG", "break the glass"),
                _coding(ACT_REASON, "ETREAT", "Emergency Treatment"),
            ]
        }
        if event.reason:
            purpose["text"] = event.reason
        resource["purposeOfEvent"] = [purpose]
    entities = _entities(event)
    if entities:
        resource["entity"] = entities
    return resource
