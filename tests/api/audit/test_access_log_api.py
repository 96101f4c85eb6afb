"""A patient's access log through the HTTP API (both backends): every access to the
patient's data (named, or listed among others) with who, what, why and whether it was
break-glass, newest first; readable by the patient themselves and the clinic's overseers
only; another patient's or clinic's a 404; never the IP, session or other patients; and
each reading recorded."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from clinicguard.audit.trail import AuditEventType
from clinicguard.core.principal import Role
from tests.api.audit.trail_helpers import (
    JUSTIFICATION,
    emergency_read,
    entry,
    fields_of,
    get_all,
    problem,
    record,
)
from tests.conftest import AuthWorld
from tests.factories.clinical import ClinicSet, add_clinic_set
from tests.factories.people import add_person

ENTRY_FIELDS = {"at", "who", "what", "why", "emergency", "outcome"}
STAFF_NAME = "Maria Silva Teste"


def log_url(patient_id: Any) -> str:
    return f"/api/v1/patients/{patient_id}/access-log"


async def read_log(
    world: AuthWorld, headers: dict[str, str], patient_id: Any
) -> tuple[httpx.Response, list[dict[str, Any]]]:
    response = await world.client.get(log_url(patient_id), params={"limit": 200}, headers=headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return response, items


async def accesses(world: AuthWorld, a: ClinicSet) -> dict[str, Any]:
    """Accesses to patient 0 (and one to patient 1 only), a minute apart."""
    p0, p1 = a.patients[0].id, a.patients[1].id
    people = a.people
    beatriz = await add_person(
        world.services, a.clinic_id, Role.PHYSICIAN, full_name="Dra. Beatriz Lima"
    )
    steps = [
        (
            "care",
            people["physician"],
            entry(patient_id=p0, resource_id=str(p0), details={"rule": "clinician-clinical"}),
            (),
        ),
        ("listed", people["receptionist"], entry(AuditEventType.PATIENT_LIST), (p0, p1)),
        ("booked", people["nurse"], entry(AuditEventType.RECORD_READ, patient_id=p0), ()),
        ("staff", people["physician_off"], entry(patient_id=p0), ()),
        ("other", people["physician"], entry(patient_id=p1), ()),
        (
            "denied",
            people["receptionist"],
            entry(
                AuditEventType.PATIENT_UPDATE,
                patient_id=p0,
                outcome="denied",
                reason="no rule allows it (deny by default)",
            ),
            (),
        ),
        ("system", None, entry(AuditEventType.PATIENT_UPDATE, patient_id=p0), ()),
    ]
    written: dict[str, Any] = {}
    for name, who, what, patients in steps:
        written[name] = await record(world, a.clinic_id, who, what, patients=patients)
        world.clock.advance(60)
    written["glass"] = await emergency_read(world, a.clinic_id, beatriz, p0)
    world.clock.advance(60)
    written["beatriz"] = beatriz
    return written


async def test_the_patient_sees_who_touched_their_data_and_why(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    w = await accesses(world, a)
    patient = await a.headers(world, "patient")
    p0 = a.patients[0].id
    response, items = await read_log(world, patient, p0)
    assert response.json()["next_cursor"] is None
    for item in items:
        assert set(item) == ENTRY_FIELDS
        assert set(item["who"]) == {"id", "name", "role"}
        assert set(item["what"]) == {"event_type", "action", "resource_type", "resource_id"}
    # Newest first; the access to patient 1 alone is not theirs to see.
    assert [i["what"]["event_type"] for i in items] == [
        "clinic:record:read",
        "clinic:patient:update",
        "clinic:patient:update",
        "clinic:patient:read",
        "clinic:record:read",
        "clinic:patient:list",
        "clinic:patient:read",
    ]
    glass, system, denied, staff, booked, listed, care = items
    assert glass["emergency"] is True
    assert glass["why"] == JUSTIFICATION
    assert glass["who"] == {
        "id": str(w["beatriz"].id),
        "name": "Dra. Beatriz Lima",
        "role": "physician",
    }
    assert system["who"] == {"id": None, "name": None, "role": "system"}
    assert system["why"] == "system"
    assert denied["outcome"] == "denied"
    assert denied["why"] == "no rule allows it (deny by default)"
    assert staff["why"] == "clinic staff"  # no care relation with the patient
    assert booked["why"] == "appointment"  # the nurse has an appointment with them
    assert booked["who"]["name"] == STAFF_NAME
    assert listed["why"] == "front desk"
    assert listed["who"]["role"] == "receptionist"
    assert care["why"] == "care team"
    assert care["what"] == {
        "event_type": "clinic:patient:read",
        "action": "read",
        "resource_type": "patient",
        "resource_id": str(p0),
    }
    assert all(i["emergency"] is False for i in items[1:])
    # Never another patient, a session or the details of an event.
    text = response.text
    assert str(a.patients[1].id) not in text
    assert "sid-test" not in text
    assert "patient_ids" not in text

    # Reading the log is an access too: recorded, and shown the next time.
    _, again = await read_log(world, patient, p0)
    mine = again[0]
    assert mine["what"]["event_type"] == "clinic:access_log:read"
    assert mine["who"] == {
        "id": str(a.people["patient"].id),
        "name": "Ana Paciente",
        "role": "patient",
    }
    assert mine["why"] == "own data"
    assert again[1:] == items


async def test_accesses_through_the_api_appear(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    p0 = a.patients[0].id
    doc = await a.headers(world, "physician")
    assert (await world.client.get(f"/api/v1/patients/{p0}", headers=doc)).status_code == 200
    officer = await a.headers(world, "compliance_officer")
    response, items = await read_log(world, officer, p0)
    reads = [i for i in items if i["what"]["event_type"] == "clinic:patient:read"]
    assert reads, items
    assert reads[0]["who"]["id"] == str(a.people["physician"].id)
    assert reads[0]["why"] == "care team"
    assert "203.0.113.10" not in response.text  # the client's IP, recorded on the event
    # The officer's reading is recorded in the trail, naming the patient.
    logs = await get_all(
        world,
        "/api/v1/security/audit-logs",
        officer,
        event_type="clinic:access_log:read",
    )
    assert logs[0]["patient_id"] == str(p0)
    assert logs[0]["actor_id"] == str(a.people["compliance_officer"].id)


async def test_overseers_read_any_patients_log_of_their_clinic(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    b = await add_clinic_set(world)
    w = await accesses(world, a)
    p1 = a.patients[1].id
    for name in ("compliance_officer", "clinic_admin"):
        _, items = await read_log(world, await a.headers(world, name), p1)
        types = [i["what"]["event_type"] for i in items]
        assert "clinic:patient:list" in types
        assert any(i["who"]["id"] == str(a.people["physician"].id) for i in items)
        assert not any(i["emergency"] for i in items)
    del w
    theirs = await b.headers(world, "compliance_officer")
    foreign = problem(await world.client.get(log_url(p1), headers=theirs), 404)
    missing = problem(await world.client.get(log_url(uuid.uuid4()), headers=theirs), 404)
    assert {k: v for k, v in foreign.items() if k != "request_id"} == {
        k: v for k, v in missing.items() if k != "request_id"
    }


async def test_a_patient_reads_only_their_own_log(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    b = await add_clinic_set(world)
    await accesses(world, a)
    patient = await a.headers(world, "patient")
    others = [a.patients[1].id, a.patients[2].id, b.patients[0].id, uuid.uuid4()]
    bodies = [problem(await world.client.get(log_url(p), headers=patient), 404) for p in others]
    assert len({(b["type"], b["title"], b["detail"]) for b in bodies}) == 1
    # B's patient user cannot read A's patient's log either.
    problem(
        await world.client.get(
            log_url(a.patients[0].id), headers=await b.headers(world, "patient")
        ),
        404,
    )


async def test_care_roles_may_not_read_access_logs(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    for name in ("physician", "physician_off", "nurse", "receptionist"):
        headers = await a.headers(world, name)
        # Refused before anything is looked up: an unknown id is a 403 as well.
        for patient_id in (a.patients[0].id, uuid.uuid4()):
            problem(await world.client.get(log_url(patient_id), headers=headers), 403)
    problem(await world.client.get(log_url(a.patients[0].id)), 401)


async def test_paging_and_bad_input(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    await accesses(world, a)
    p0 = a.patients[0].id
    officer = await a.headers(world, "compliance_officer")
    _, full = await read_log(world, officer, p0)
    paged = await get_all(world, log_url(p0), officer, limit=2)
    assert paged[0]["what"]["event_type"] == "clinic:access_log:read"
    assert paged[1:] == full
    for params, field in (
        ({"limit": 0}, "query.limit"),
        ({"limit": 201}, "query.limit"),
        ({"cursor": "bm90IGEgY3Vyc29y"}, "query.cursor"),
        ({"cursor": ""}, "query.cursor"),
        # ["0001-01-01T00:00:00+14:00",1]: a time no database takes
        ({"cursor": "WyIwMDAxLTAxLTAxVDAwOjAwOjAwKzE0OjAwIiwxXQ"}, "query.cursor"),
    ):
        response = await world.client.get(log_url(p0), params=params, headers=officer)
        assert fields_of(response) == [field], (params, response.text)
    assert fields_of(await world.client.get(log_url("p0"), headers=officer)) == ["path.patient_id"]
