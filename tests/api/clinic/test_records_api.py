"""Clinical records through the HTTP API (both backends): who writes which kind, HTML in
notes reduced to a harmless allowlist, clinic hours for the care team (denials recorded
with the rule and permission), metadata-only reads for compliance, patients who read only
their own records, and another clinic's record indistinguishable from a missing one."""

from __future__ import annotations

import uuid
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import select

from clinicguard.audit.models import AuditEvent
from clinicguard.clinic.models import MedicalRecord
from clinicguard.store.interfaces import TenantContext
from tests.audit_trail import trail_events
from tests.conftest import AuthWorld
from tests.factories.clinical import ClinicSet, add_clinic_set

PATIENTS = "/api/v1/patients"
RECORDS = "/api/v1/records"
PROBLEM = "application/problem+json"
CLINICAL = {"diagnosis", "notes", "treatment"}
XSS_NOTE = '<script>alert(1)</script><p onclick=x>ok</p><a href="javascript:alert(1)">l</a>'


# --- helpers -----------------------------------------------------------------------------------


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def fields_of(response: httpx.Response) -> list[str]:
    return [e["field"] for e in problem(response, 422)["errors"]]


def records_url(a: ClinicSet, n: int) -> str:
    return f"{PATIENTS}/{a.patients[n].id}/records"


async def events(world: AuthWorld, kind: str, user_id: uuid.UUID) -> list[AuditEvent]:
    return await trail_events(world.services.db, types=kind, actor_id=user_id)


def closed_hours(world: AuthWorld) -> tuple[int, int]:
    """Opening hours (minutes of the day) that do not contain now in São Paulo."""
    local = world.clock.now().astimezone(ZoneInfo("America/Sao_Paulo"))
    minute = local.hour * 60 + local.minute
    return (0, 60) if minute >= 12 * 60 else (13 * 60, 14 * 60)


# --- writing -----------------------------------------------------------------------------------


async def test_care_team_physician_writes_a_consultation_and_reads_it(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    doc = await a.headers(world, "physician")
    body = {
        "kind": "consultation",
        "diagnosis": "Faringite aguda",
        "notes": "<p>Repouso e <b>hidratação</b>.</p>",
        "treatment": "Amoxicilina 500mg 8/8h por 7 dias",
    }
    created = await world.client.post(records_url(a, 1), json=body, headers=doc)
    assert created.status_code == 201, created.text
    record = created.json()
    assert record["patient_id"] == str(a.patients[1].id)
    assert record["author_id"] == str(a.people["physician"].id)
    assert {k: record[k] for k in body} == body
    one = await world.client.get(f"{RECORDS}/{record['id']}", headers=doc)
    assert one.status_code == 200, one.text
    assert one.json() == record
    listed = await world.client.get(records_url(a, 1), headers=doc)
    assert [r["id"] for r in listed.json()["items"]] == [record["id"], str(a.records[1].id)]


async def test_record_bodies_are_validated(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    doc = await a.headers(world, "physician")
    url = records_url(a, 1)
    for body, fields in (
        ({"kind": "consultation"}, ["body"]),
        ({"kind": "consultation", "diagnosis": ""}, ["body.diagnosis"]),
        ({"kind": "surgery", "notes": "x"}, ["body.kind"]),
        ({"notes": "x"}, ["body.kind"]),
        (
            {"kind": "consultation", "notes": "x", "author_id": str(uuid.uuid4())},
            ["body.author_id"],
        ),
        (
            {"kind": "consultation", "notes": "x", "patient_id": str(uuid.uuid4())},
            ["body.patient_id"],
        ),
        (
            {"kind": "consultation", "notes": "x", "created_at": "2020-01-01T00:00:00Z"},
            ["body.created_at"],
        ),
        ({"kind": "consultation", "diagnosis": "Gripe\u202e"}, ["body.diagnosis"]),
        ({"kind": "consultation", "notes": "a\x00b"}, ["body.notes"]),
    ):
        response = await world.client.post(url, json=body, headers=doc)
        assert fields_of(response) == fields, (body, response.text)
    listed = await world.client.get(url, headers=doc)
    assert [r["id"] for r in listed.json()["items"]] == [str(a.records[1].id)]


async def test_nurse_writes_nursing_notes_for_her_patient_only(world: AuthWorld) -> None:
    """The nurse has an appointment with patient 0 (her care relation) and none with 1."""
    a = await add_clinic_set(world)
    nurse = await a.headers(world, "nurse")
    for kind in ("consultation", "procedure", "exam", "follow_up"):
        refused = await world.client.post(
            records_url(a, 0), json={"kind": kind, "notes": "Sinais vitais"}, headers=nurse
        )
        problem(refused, 403)
    note = await world.client.post(
        records_url(a, 0),
        json={"kind": "nursing_note", "notes": "PA 120x80, curativo trocado."},
        headers=nurse,
    )
    assert note.status_code == 201, note.text
    assert note.json()["kind"] == "nursing_note"
    assert note.json()["author_id"] == str(a.people["nurse"].id)
    readable = await world.client.get(f"{RECORDS}/{note.json()['id']}", headers=nurse)
    assert readable.status_code == 200
    stranger = await world.client.post(
        records_url(a, 1), json={"kind": "nursing_note", "notes": "PA 120x80"}, headers=nurse
    )
    problem(stranger, 403)
    doc_view = await world.client.get(
        records_url(a, 1), headers=await a.headers(world, "physician")
    )
    assert [r["id"] for r in doc_view.json()["items"]] == [str(a.records[1].id)]


async def test_html_in_notes_is_reduced_to_the_allowlist(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    doc = await a.headers(world, "physician")
    attacks = [
        XSS_NOTE,
        '<img src=x onerror="alert(1)">ok',
        "<svg onload=alert(1)><p>ok</p></svg>",
        '<iframe src="https://evil.example"></iframe><p>ok</p>',
        '<a href="JaVaScRiPt:alert(1)">ok</a>',
        '<a href="&#106;avascript:alert(1)">ok</a>',
        '<a href="data:text/html;base64,PHNjcmlwdD4=">ok</a>',
        '<p style="background:url(javascript:alert(1))">ok</p>',
        "<scr<script>ipt>alert(1)</script>ok",
        '<math><mi xlink:href="javascript:alert(1)">x</mi></math><p>ok</p>',
    ]
    for note in attacks:
        created = await world.client.post(
            records_url(a, 1), json={"kind": "consultation", "notes": note}, headers=doc
        )
        assert created.status_code == 201, created.text
        stored = (await world.client.get(f"{RECORDS}/{created.json()['id']}", headers=doc)).json()
        for notes in (created.json()["notes"], stored["notes"]):
            lowered = notes.lower()
            for bad in (
                "<script",
                "onclick",
                "onerror",
                "onload",
                "javascript:",
                "<iframe",
                "<svg",
                "<img",
                "style=",
                "data:",
                "<style",
                "&#106;",
            ):
                assert bad not in lowered, (note, notes)
            assert "ok" in notes
    first = await world.client.post(
        records_url(a, 1), json={"kind": "consultation", "notes": XSS_NOTE}, headers=doc
    )
    assert "<p>ok</p>" in first.json()["notes"]
    link = await world.client.post(
        records_url(a, 1),
        json={"kind": "consultation", "notes": '<a href="https://bula.example/x">bula</a>'},
        headers=doc,
    )
    assert 'href="https://bula.example/x"' in link.json()["notes"]
    assert "noopener" in link.json()["notes"]


# --- clinic hours ------------------------------------------------------------------------------


async def test_outside_clinic_hours_the_care_team_is_refused_and_the_denial_recorded(
    world: AuthWorld,
) -> None:
    opens, closes = closed_hours(world)
    a = await add_clinic_set(world, opens=opens, closes=closes)
    doc = await a.headers(world, "physician")
    listed = await world.client.get(records_url(a, 1), headers=doc)
    problem(listed, 403)
    one = await world.client.get(f"{RECORDS}/{a.records[1].id}", headers=doc)
    problem(one, 403)
    write = await world.client.post(
        records_url(a, 1), json={"kind": "consultation", "notes": "Fora de hora"}, headers=doc
    )
    problem(write, 403)
    # Demographics stay readable, without the clinical fields.
    patient = await world.client.get(f"{PATIENTS}/{a.patients[1].id}", headers=doc)
    assert patient.status_code == 200
    assert "allergies" not in patient.json()
    denials = await events(world, "authz:access:denied", a.people["physician"].id)
    reads = [e for e in denials if e.details.get("permission") == "records:read"]
    assert len(reads) == 2
    for event in reads:
        assert event.details["rule"] == "default-deny"
        assert event.details["role"] == "physician"
        assert event.details["patient_id"] == str(a.patients[1].id)
        assert event.clinic_id == a.clinic_id
        assert event.outcome == "denied"
    assert reads[0].details.get("record_id") == str(a.records[1].id) or reads[1].details.get(
        "record_id"
    ) == str(a.records[1].id)
    writes = [e for e in denials if e.details.get("permission") == "records:create"]
    assert len(writes) == 1
    assert writes[0].details["rule"] == "default-deny"
    # Nothing was written.
    async with world.services.db.transaction(TenantContext.system(a.clinic_id)) as session:
        written = await session.scalars(
            select(MedicalRecord.id).where(
                MedicalRecord.clinic_id == a.clinic_id,
                MedicalRecord.patient_id == a.patients[1].id,
            )
        )
        assert list(written.all()) == [a.records[1].id]


async def test_denials_by_a_deny_rule_name_that_rule(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    admin = await a.headers(world, "clinic_admin")
    problem(await world.client.get(records_url(a, 1), headers=admin), 403)
    problem(await world.client.get(f"{RECORDS}/{a.records[1].id}", headers=admin), 403)
    front = await a.headers(world, "receptionist")
    problem(await world.client.get(records_url(a, 1), headers=front), 403)
    denials = await events(world, "authz:access:denied", a.people["clinic_admin"].id)
    assert {e.details["rule"] for e in denials} == {"clinic-admin-no-clinical-records"}
    assert {e.details["permission"] for e in denials} == {"records:read"}
    front_denials = await events(world, "authz:access:denied", a.people["receptionist"].id)
    assert [e.details["rule"] for e in front_denials] == ["default-deny"]


# --- other readers -----------------------------------------------------------------------------


async def test_compliance_officer_reads_record_metadata_without_clinical_content(
    world: AuthWorld,
) -> None:
    a = await add_clinic_set(world)
    officer = await a.headers(world, "compliance_officer")
    listed = await world.client.get(records_url(a, 2), headers=officer)
    assert listed.status_code == 200, listed.text
    one = await world.client.get(f"{RECORDS}/{a.records[2].id}", headers=officer)
    assert one.status_code == 200, one.text
    for record in (*listed.json()["items"], one.json()):
        assert not CLINICAL & set(record), record
        assert record["id"] == str(a.records[2].id)
        assert record["kind"] == "consultation"
        assert record["author_id"] == str(a.people["physician"].id)
        assert "Dermatite" not in str(record)
    problem(
        await world.client.post(
            records_url(a, 2), json={"kind": "consultation", "notes": "x"}, headers=officer
        ),
        403,
    )


async def test_a_patient_reads_only_their_own_records(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    patient = await a.headers(world, "patient")
    own = await world.client.get(records_url(a, 0), headers=patient)
    assert own.status_code == 200, own.text
    assert [r["id"] for r in own.json()["items"]] == [str(a.records[0].id)]
    assert own.json()["items"][0]["diagnosis"] == "Dermatite de contato"
    single = await world.client.get(f"{RECORDS}/{a.records[0].id}", headers=patient)
    assert single.status_code == 200
    others = await world.client.get(records_url(a, 1), headers=patient)
    problem(others, 404)
    problem(await world.client.get(f"{RECORDS}/{a.records[1].id}", headers=patient), 404)
    problem(
        await world.client.post(
            records_url(a, 0), json={"kind": "consultation", "notes": "Auto"}, headers=patient
        ),
        403,
    )


async def test_another_clinics_record_is_404_like_a_missing_one(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    b = await add_clinic_set(world)
    for who in ("physician", "compliance_officer", "patient"):
        headers = await b.headers(world, who)
        spoof = {**headers, "X-Clinic-ID": str(a.clinic_id)}
        foreign = await world.client.get(f"{RECORDS}/{a.records[0].id}", headers=spoof)
        missing = await world.client.get(f"{RECORDS}/{uuid.uuid4()}", headers=headers)
        problem(foreign, 404)
        problem(missing, 404)
        assert foreign.json()["detail"] == missing.json()["detail"]
        problem(await world.client.get(records_url(a, 0), headers=headers), 404)
    problem(
        await world.client.post(
            records_url(a, 0),
            json={"kind": "consultation", "notes": "Intruso"},
            headers=await b.headers(world, "physician"),
        ),
        404,
    )
    own = await world.client.get(records_url(a, 0), headers=await a.headers(world, "physician"))
    assert [r["id"] for r in own.json()["items"]] == [str(a.records[0].id)]


async def test_records_list_pages_newest_first(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    doc = await a.headers(world, "physician")
    made = []
    for n in range(3):
        world.clock.advance(1)
        response = await world.client.post(
            records_url(a, 2), json={"kind": "follow_up", "notes": f"Retorno {n}"}, headers=doc
        )
        assert response.status_code == 201
        made.append(response.json()["id"])
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = (await world.client.get(records_url(a, 2), params=params, headers=doc)).json()
        seen.extend(r["id"] for r in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [*reversed(made), str(a.records[2].id)]
