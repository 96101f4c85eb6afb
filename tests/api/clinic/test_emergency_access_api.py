"""Break-glass access through the HTTP API (both backends): a justification that means
something, a 60-minute grant for the caller only, a high-risk event at once and, in the
trail, every access under it marked for review with the justification as its reason,
expiry, who may ask and who may list."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx

from clinicguard.audit.models import AuditEvent
from tests.audit_trail import trail_events
from tests.conftest import AuthWorld
from tests.factories.clinical import ClinicSet, add_clinic_set, add_grant

PATIENTS = "/api/v1/patients"
GRANTS = "/api/v1/emergency-access"
PROBLEM = "application/problem+json"
REASON = "Paciente inconsciente no pronto atendimento, sem acompanhante"


# --- helpers -----------------------------------------------------------------------------------


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def fields_of(response: httpx.Response) -> list[str]:
    return [e["field"] for e in problem(response, 422)["errors"]]


def url(a: ClinicSet, n: int, suffix: str = "/emergency-access") -> str:
    return f"{PATIENTS}/{a.patients[n].id}{suffix}"


async def ask(
    world: AuthWorld, headers: dict[str, str], where: str, justification: Any = REASON
) -> httpx.Response:
    return await world.client.post(where, json={"justification": justification}, headers=headers)


async def events(world: AuthWorld, kind: str, user_id: uuid.UUID) -> list[AuditEvent]:
    return await trail_events(world.services.db, types=kind, actor_id=user_id)


async def accesses(world: AuthWorld, user_id: uuid.UUID) -> list[AuditEvent]:
    """The caller's accesses to patient data, as the trail recorded them."""
    found = await trail_events(world.services.db, actor_id=user_id)
    return [e for e in found if e.event_type.startswith("clinic:")]


async def grants(
    world: AuthWorld, headers: dict[str, str], status: str = "all"
) -> list[dict[str, Any]]:
    response = await world.client.get(GRANTS, params={"status": status}, headers=headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


# --- asking ------------------------------------------------------------------------------------


async def test_a_justification_must_mean_something(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    doc = await a.headers(world, "physician_off")
    where = url(a, 1)
    for justification, fields in (
        ("Urgente", ["body.justification"]),
        ("x" * 19, ["body.justification"]),
        (None, ["body.justification"]),
        (12345678901234567890, ["body.justification"]),
        ("Paciente\x00inconsciente no PA", ["body.justification"]),
        ("Paciente\u202einconsciente no PA", ["body.justification"]),
        ("x" * 2001, ["body.justification"]),
        # Long enough only with its padding, or long but junk: refused as a whole.
        ("          Urgente!          ", None),
        ("\n\n\n\n\n\n\n\n\nUrgente agora\n\n\n\n\n\n", None),
        ("a" * 40, None),
        ("ab" * 20, None),
        ("!?" * 15, None),
        (".... .... .... .... .... ....", None),
    ):
        response = await ask(world, doc, where, justification)
        got = fields_of(response)
        if fields is not None:
            assert got == fields, (justification, response.text)
        else:
            assert got, justification
    missing = await world.client.post(where, json={}, headers=doc)
    assert fields_of(missing) == ["body.justification"]
    longer = await world.client.post(
        where, json={"justification": REASON, "minutes": 600}, headers=doc
    )
    assert fields_of(longer) == ["body.minutes"]
    forged = await world.client.post(
        where,
        json={"justification": REASON, "expires_at": "2099-01-01T00:00:00Z"},
        headers=doc,
    )
    assert fields_of(forged) == ["body.expires_at"]
    assert await grants(world, await a.headers(world, "compliance_officer")) == []
    assert await events(world, "authz:emergency:granted", a.people["physician_off"].id) == []


async def test_break_glass_grants_60_minutes_and_is_recorded_at_once(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    doc = await a.headers(world, "physician_off")
    target = a.patients[1]
    problem(await world.client.get(url(a, 1, "/records"), headers=doc), 403)
    now = world.clock.now()
    response = await ask(world, doc, url(a, 1), f"   {REASON}   ")
    assert response.status_code == 201, response.text
    grant = response.json()
    assert grant["patient_id"] == str(target.id)
    assert grant["grantee_id"] == str(a.people["physician_off"].id)
    assert grant["justification"] == REASON
    assert grant["active"] is True
    assert grant["revoked_at"] is None
    assert datetime.fromisoformat(grant["granted_at"]) == now
    assert datetime.fromisoformat(grant["expires_at"]) == now + timedelta(minutes=60)
    granted = await events(world, "authz:emergency:granted", a.people["physician_off"].id)
    assert len(granted) == 1
    event = granted[0]
    assert event.risk_level in ("high", "critical")
    assert event.outcome == "success"
    assert event.clinic_id == a.clinic_id
    assert event.resource_id == grant["id"]
    assert event.patient_id == target.id
    assert event.requires_review is True
    assert event.compliance is True
    assert event.reason == REASON, "the justification is the event's reason"
    assert REASON not in str(event.details)


async def test_every_access_under_a_grant_is_marked_for_review(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    doc = await a.headers(world, "physician_off")
    person = a.people["physician_off"].id
    assert (await ask(world, doc, url(a, 1))).status_code == 201

    def reviewed(rows: list[AuditEvent]) -> list[AuditEvent]:
        return [e for e in rows if e.requires_review]

    assert reviewed(await accesses(world, person)) == []
    records = await world.client.get(url(a, 1, "/records"), headers=doc)
    assert records.status_code == 200, records.text
    assert records.json()["items"][0]["diagnosis"] == "Dermatite de contato"
    one = await world.client.get(f"/api/v1/records/{a.records[1].id}", headers=doc)
    assert one.status_code == 200, one.text
    patient = await world.client.get(url(a, 1, ""), headers=doc)
    assert patient.status_code == 200
    assert patient.json()["allergies"] == "Dipirona"
    again = await world.client.get(url(a, 1, "/records"), headers=doc)
    assert again.status_code == 200
    marked = reviewed(await accesses(world, person))
    assert len(marked) == 4, [e.details for e in marked]
    everything = await accesses(world, person)
    assert [e.id for e in marked] == [e.id for e in everything], "every access is marked"
    for event in marked:
        assert event.risk_level in ("high", "critical")
        assert event.patient_id == a.patients[1].id
        assert event.details["rule"] == "clinician-clinical-emergency"
        assert event.details["emergency"] is True
        assert event.reason == REASON
    assert [e.event_type for e in marked] == [
        "clinic:record:list",
        "clinic:record:read",
        "clinic:patient:read",
        "clinic:record:list",
    ]
    assert [e.resource_id for e in marked].count(str(a.records[1].id)) == 1
    # The grant covers that patient only.
    problem(await world.client.get(url(a, 2, "/records"), headers=doc), 403)
    problem(await world.client.get(f"/api/v1/records/{a.records[2].id}", headers=doc), 404)


async def test_a_grant_ends_after_60_minutes(world: AuthWorld) -> None:
    """One second before the hour the grant still works; one second after it the same
    requests are refused (one new sign-in: access tokens live 15 minutes)."""
    a = await add_clinic_set(world)
    doc = await a.headers(world, "physician_off")
    assert (await ask(world, doc, url(a, 1))).status_code == 201
    assert (await world.client.get(url(a, 1, "/records"), headers=doc)).status_code == 200
    world.clock.advance(3599)
    fresh = world.bearer(await world.login(a.people["physician_off"]))
    assert (await world.client.get(url(a, 1, "/records"), headers=fresh)).status_code == 200
    world.clock.advance(2)
    late = fresh
    problem(await world.client.get(url(a, 1, "/records"), headers=late), 403)
    problem(await world.client.get(f"/api/v1/records/{a.records[1].id}", headers=late), 404)
    patient = await world.client.get(url(a, 1, ""), headers=late)
    assert patient.status_code == 200
    assert "allergies" not in patient.json()
    officer = await a.headers(world, "compliance_officer")
    assert await grants(world, officer, "open") == []
    [past] = await grants(world, officer, "past")
    assert past["active"] is False


async def test_an_expired_grant_gives_nothing(world: AuthWorld) -> None:
    """A grant that expired five minutes ago (both layers agree: on PostgreSQL the row
    policies compare with the database's own clock)."""
    a = await add_clinic_set(world)
    await add_grant(world, a, "physician_off", a.patients[1], minutes=-5)
    doc = await a.headers(world, "physician_off")
    problem(await world.client.get(url(a, 1, "/records"), headers=doc), 403)
    problem(await world.client.get(f"/api/v1/records/{a.records[1].id}", headers=doc), 404)
    problem(
        await world.client.post(
            url(a, 1, "/records"), json={"kind": "consultation", "notes": "x"}, headers=doc
        ),
        403,
    )
    assert "allergies" not in (await world.client.get(url(a, 1, ""), headers=doc)).json()
    denied = await events(world, "authz:access:denied", a.people["physician_off"].id)
    assert {e.details["permission"] for e in denied} >= {"records:read", "records:create"}


# --- who may ask -------------------------------------------------------------------------------


async def test_only_clinicians_may_break_the_glass(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    for who in ("receptionist", "clinic_admin", "compliance_officer", "patient"):
        response = await ask(world, await a.headers(world, who), url(a, 1))
        problem(response, 403)
        denied = await events(world, "authz:access:denied", a.people[who].id)
        assert [e.details["permission"] for e in denied] == ["emergency:request"]
    nurse = await ask(world, await a.headers(world, "nurse"), url(a, 2))
    assert nurse.status_code == 201, nurse.text
    assert [
        g["grantee_id"] for g in await grants(world, await a.headers(world, "clinic_admin"))
    ] == [str(a.people["nurse"].id)]


async def test_another_clinics_patient_is_404(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    b = await add_clinic_set(world)
    doc = await a.headers(world, "physician_off")
    foreign = await ask(world, doc, url(b, 1))
    missing = await ask(world, doc, f"{PATIENTS}/{uuid.uuid4()}/emergency-access")
    problem(foreign, 404)
    problem(missing, 404)
    assert foreign.json()["detail"] == missing.json()["detail"]
    spoofed = await ask(world, {**doc, "X-Clinic-ID": str(b.clinic_id)}, url(b, 1))
    problem(spoofed, 404)
    assert await grants(world, await b.headers(world, "clinic_admin")) == []
    assert await grants(world, await a.headers(world, "clinic_admin")) == []
    assert await events(world, "authz:emergency:granted", a.people["physician_off"].id) == []


# --- who may list ------------------------------------------------------------------------------


async def test_admins_and_compliance_list_grants_by_status(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    b = await add_clinic_set(world)
    expired = await add_grant(world, a, "physician_off", a.patients[2], minutes=-5)
    opened = await ask(world, await a.headers(world, "physician_off"), url(a, 1))
    assert opened.status_code == 201
    await add_grant(world, b, "physician_off", b.patients[1])
    for who in ("clinic_admin", "compliance_officer"):
        headers = await a.headers(world, who)
        open_now = await grants(world, headers, "open")
        assert [(g["id"], g["active"]) for g in open_now] == [(opened.json()["id"], True)]
        past = await grants(world, headers, "past")
        assert [(g["id"], g["active"]) for g in past] == [(str(expired.id), False)]
        every = await grants(world, headers, "all")
        assert [g["id"] for g in every] == [opened.json()["id"], str(expired.id)]
        default = await world.client.get(GRANTS, headers=headers)
        assert [g["id"] for g in default.json()["items"]] == [g["id"] for g in every]
        bogus = await world.client.get(GRANTS, params={"status": "everything"}, headers=headers)
        assert fields_of(bogus) == ["query.status"]
    for who in ("physician", "physician_off", "nurse", "receptionist", "patient"):
        response = await world.client.get(GRANTS, headers=await a.headers(world, who))
        problem(response, 403)
