"""Shared steps of the audit API tests: events appended straight to a clinic's chain (as the
services do, in a transaction of the clinic), problem answers, paging, and tampering."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
from sqlalchemy import text

from clinicguard.audit.trail import AuditEntry, AuditEventType, EventType, RiskLevel
from clinicguard.store.interfaces import TenantContext
from tests.conftest import AuthWorld, Backend
from tests.factories.people import Person

LOGS = "/api/v1/security/audit-logs"
EXPORT = "/api/v1/security/audit-logs/export"
REVIEWS = "/api/v1/security/reviews"
VERIFY = "/api/v1/security/audit/verify"
PROBLEM = "application/problem+json"
JUSTIFICATION = "Paciente inconsciente no pronto atendimento, sem acompanhante"


@dataclass(frozen=True)
class Actor:
    """Who acted, as the recorder reads it."""

    user_id: uuid.UUID | None
    role: str | None
    session_id: str | None = None


def actor(person: Person | None) -> Actor | None:
    return Actor(person.id, str(person.role), "sid-test") if person is not None else None


def entry(
    event_type: EventType = AuditEventType.PATIENT_READ,
    *,
    action: str | None = None,
    resource_type: str | None = None,
    **values: Any,
) -> AuditEntry:
    """An entry shaped like the services' (``clinic:<resource>:<action>``)."""
    _, subject, verb = str(event_type).split(":", 2)
    return AuditEntry(
        event_type=event_type,
        action=action or verb,
        outcome=values.pop("outcome", "success"),
        resource_type=resource_type or subject,
        **values,
    )


async def record(
    world: AuthWorld,
    clinic_id: uuid.UUID,
    who: Person | None,
    what: AuditEntry,
    *,
    patients: Sequence[uuid.UUID] = (),
    emergency: bool = False,
) -> dict[str, Any]:
    """Append one event to the clinic's chain; returns its id, seq and type."""
    services = world.services
    async with services.db.transaction(TenantContext.system(clinic_id)) as session:
        event = await services.audit.record(
            session, clinic_id, actor(who), what, patients=patients, emergency=emergency
        )
        return {"id": str(event.id), "seq": event.seq, "event_type": event.event_type}


async def emergency_read(
    world: AuthWorld, clinic_id: uuid.UUID, who: Person, patient_id: uuid.UUID
) -> dict[str, Any]:
    """A break-glass read as the clinic services record it."""
    return await record(
        world,
        clinic_id,
        who,
        entry(
            AuditEventType.RECORD_READ,
            patient_id=patient_id,
            reason=JUSTIFICATION,
            details={"emergency": True, "rule": "clinician-clinical-emergency"},
            requires_review=True,
            compliance=True,
        ),
        emergency=True,
    )


def high_risk() -> AuditEntry:
    return entry(AuditEventType.PATIENT_READ, floor=RiskLevel.HIGH)


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "request_id"} <= set(body)
    return body


def fields_of(response: httpx.Response) -> list[str]:
    return [e["field"] for e in problem(response, 422)["errors"]]


async def get_all(
    world: AuthWorld, url: str, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    """Every item of a paged listing, following ``next_cursor``."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await world.client.get(url, params=query, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("paging never ended")


def ids(items: Sequence[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


async def tamper(world: AuthWorld, backend: Backend, clinic_id: uuid.UUID, seq: int) -> None:
    """Change one stored event behind the application's back: as the superuser past the
    triggers on PostgreSQL, directly in the file on SQLite."""
    sql = "UPDATE audit_events SET reason = 'edited' WHERE clinic_id = {c} AND seq = {s}"
    if backend.postgres is not None:
        with psycopg.connect(backend.postgres.admin_url, autocommit=True) as conn:
            conn.execute("SET clinicguard.audit_maintenance = 'on'")
            conn.execute(sql.format(c="%(c)s", s="%(s)s"), {"c": clinic_id, "s": seq})
        return
    async with world.services.db.transaction() as session:
        await session.execute(text(sql.format(c=":c", s=":s")), {"c": clinic_id.hex, "s": seq})
