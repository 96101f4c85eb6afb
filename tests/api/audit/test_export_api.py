"""The trail's export through the HTTP API (both backends): streamed JSON Lines an auditor
re-verifies (hash by hash, link by link, with the columns of the chain), FHIR R4
AuditEvent lines, a window that is checked, the export itself recorded for review before
the first line, and nothing of another clinic."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx

from clinicguard.audit.queries import AuditTrail
from clinicguard.audit.recorder import HASHED
from clinicguard.audit.trail import GENESIS, AuditEventType, chain_hash
from tests.api.audit.trail_helpers import (
    EXPORT,
    LOGS,
    emergency_read,
    entry,
    fields_of,
    get_all,
    problem,
    record,
)
from tests.conftest import AuthWorld
from tests.factories.clinical import ClinicSet, add_clinic_set

FHIR_ACTIONS = {"C", "R", "U", "D", "E"}
FHIR_OUTCOMES = {"0", "4", "8", "12"}
FHIR_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


def lines(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    body = response.text
    assert body.endswith("\n")
    return [json.loads(line) for line in body.splitlines()]


async def export(
    world: AuthWorld, headers: dict[str, str], **params: Any
) -> tuple[httpx.Response, list[dict[str, Any]]]:
    response = await world.client.get(EXPORT, params=params, headers=headers)
    return response, lines(response)


async def some_history(world: AuthWorld, a: ClinicSet) -> list[dict[str, Any]]:
    p0, p1 = a.patients[0].id, a.patients[1].id
    return [
        await record(world, a.clinic_id, a.people["physician"], entry(patient_id=p0)),
        await record(
            world,
            a.clinic_id,
            a.people["receptionist"],
            entry(AuditEventType.PATIENT_LIST),
            patients=[p0, p1],
        ),
        await emergency_read(world, a.clinic_id, a.people["physician_off"], p1),
        await record(world, a.clinic_id, None, entry(AuditEventType.RETENTION_RUN)),
        await record(
            world,
            a.clinic_id,
            a.people["nurse"],
            entry(AuditEventType.PATIENT_UPDATE, patient_id=p1, outcome="denied"),
        ),
    ]


def verify_lines(events: list[dict[str, Any]]) -> None:
    """What an auditor does with the file: every hash recomputed from the chain's columns,
    every event linked to the one before it."""
    previous = None
    for event in events:
        assert chain_hash(event["prev_hash"], {c: event[c] for c in HASHED}) == event["hash"]
        if previous is not None:
            assert event["seq"] == previous["seq"] + 1
            assert event["prev_hash"] == previous["hash"]
        previous = event


async def test_json_lines_reverify_and_the_export_is_recorded_first(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    written = await some_history(world, a)
    officer = await a.headers(world, "compliance_officer")
    # Reads of the trail in between are part of it too.
    assert (await world.client.get(LOGS, headers=officer)).status_code == 200
    response, events = await export(world, officer)
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert response.headers["content-disposition"].startswith("attachment;")
    assert response.headers["cache-control"] == "no-store"
    assert events[0]["seq"] == 1
    assert events[0]["prev_hash"] == GENESIS
    verify_lines(events)
    assert {w["id"] for w in written} <= {e["id"] for e in events}
    assert {e["clinic_id"] for e in events} == {str(a.clinic_id)}
    assert set(events[0]) == {*HASHED, "hash"}
    # The export was recorded (for review) before it read: it is the file's last line.
    last = events[-1]
    assert last["event_type"] == "audit:trail:export"
    assert last["actor_id"] == str(a.people["compliance_officer"].id)
    assert last["requires_review"] is True
    assert last["compliance"] is True
    assert last["details"]["format"] == "jsonl"
    assert last["risk_level"] in ("high", "critical")
    # The server's own verification agrees with the file.
    check = (await world.client.get("/api/v1/security/audit/verify", headers=officer)).json()
    assert check["ok"] is True
    assert check["checked"] >= len(events)


async def test_the_export_pages_through_the_database(world: AuthWorld) -> None:
    """Batches of two rows: the file is still every event once, in chain order."""
    services = world.services
    services.audit_trail = AuditTrail(
        services.db,
        services.authorizer,
        services.audit,
        services.clock,
        services.audit_keys,
        batch=2,
    )
    a = await add_clinic_set(world)
    for _ in range(6):
        await record(world, a.clinic_id, a.people["nurse"], entry())
    admin = await a.headers(world, "clinic_admin")
    _, events = await export(world, admin)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert len(events) >= 7
    verify_lines(events)
    # Events written after the export began are not part of it.
    await record(world, a.clinic_id, a.people["nurse"], entry())
    _, again = await export(world, admin)
    assert len(again) == len(events) + 2  # the new event and the second export


async def test_fhir_lines_are_r4_audit_events(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    written = await some_history(world, a)
    admin = await a.headers(world, "clinic_admin")
    response, resources = await export(world, admin, format="fhir")
    assert response.headers["content-type"].startswith("application/fhir+ndjson")
    _, plain = await export(world, admin)
    by_id = {e["id"]: e for e in plain}
    for resource in resources:
        assert resource["resourceType"] == "AuditEvent"
        assert uuid.UUID(resource["id"])
        assert {"system", "code"} <= set(resource["type"])
        assert resource["subtype"][0]["code"] == by_id[resource["id"]]["event_type"]
        assert resource["action"] in FHIR_ACTIONS
        assert FHIR_INSTANT.fullmatch(resource["recorded"])
        assert resource["outcome"] in FHIR_OUTCOMES
        assert resource["agent"]
        for agent in resource["agent"]:
            assert isinstance(agent["requestor"], bool)
            assert agent["role"][0]["text"]
        assert resource["source"]["observer"]["display"] == "clinicguard"
        assert resource["source"]["site"] == str(a.clinic_id)
        [chain] = [x for x in resource["extension"] if x["url"].endswith("audit-chain")]
        parts = {x["url"]: next(v for k, v in x.items() if k != "url") for x in chain["extension"]}
        event = by_id[resource["id"]]
        assert parts["seq"] == event["seq"]
        assert parts["hash"] == event["hash"]
        assert parts["previousHash"] == event["prev_hash"]
        recorded = datetime.fromisoformat(resource["recorded"])
        assert recorded == datetime.fromisoformat(event["occurred_at"])
    fhir = {r["id"]: r for r in resources}
    read, listed, glass, retention, denied = (fhir[w["id"]] for w in written)

    assert read["action"] == "R"
    assert read["outcome"] == "0"
    assert read["type"]["code"] == "rest"
    assert {"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}.items() <= (
        read["subtype"][1].items()
    )
    [agent] = read["agent"]
    assert agent["who"]["reference"] == f"Practitioner/{a.people['physician'].id}"
    assert agent["requestor"] is True
    assert agent["role"][0]["coding"][0]["code"] == "physician"
    assert read["entity"][0]["what"]["reference"] == f"Patient/{a.patients[0].id}"
    assert read["entity"][0]["role"]["code"] == "1"

    listed_patients = {e["what"]["reference"] for e in listed["entity"]}
    assert listed_patients == {f"Patient/{a.patients[0].id}", f"Patient/{a.patients[1].id}"}

    [purpose] = glass["purposeOfEvent"]
    assert {c["code"] for c in purpose["coding"]} == {"BTG", "ETREAT"}
    assert purpose["text"].startswith("Paciente inconsciente")

    assert retention["agent"][0]["requestor"] is False
    assert "reference" not in retention["agent"][0]["who"]
    assert retention["type"]["code"] == "110101"  # DICOM: audit log used
    assert denied["outcome"] == "4"
    assert denied["action"] == "U"
    logins = [r for r in resources if r["subtype"][0]["code"].startswith("auth:")]
    assert logins
    assert {r["type"]["code"] for r in logins} == {"110114"}  # DICOM: user authentication
    export_event = resources[-1]
    assert export_event["subtype"][0]["code"] == "audit:trail:export"
    assert export_event["action"] == "R"


async def test_the_window_is_checked_and_applied(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    old = await record(world, a.clinic_id, a.people["nurse"], entry())
    world.clock.advance(int(timedelta(days=40).total_seconds()))
    recent = await record(world, a.clinic_id, a.people["nurse"], entry())
    now = world.clock.now()
    officer = await a.headers(world, "compliance_officer")

    _, default = await export(world, officer)  # the last 30 days
    assert recent["id"] in {e["id"] for e in default}
    assert old["id"] not in {e["id"] for e in default}
    since = (now - timedelta(days=41)).isoformat()
    _, wide = await export(world, officer, **{"from": since, "to": now.isoformat()})
    assert [e["id"] for e in wide][:2] == [old["id"], recent["id"]]
    _, early = await export(
        world, officer, **{"from": since, "to": (now - timedelta(days=1)).isoformat()}
    )
    assert [e["id"] for e in early] == [old["id"]]  # the export event is later than "to"

    for params, field in (
        ({"from": now.isoformat(), "to": (now - timedelta(seconds=1)).isoformat()}, "query.from"),
        ({"from": (now - timedelta(days=367)).isoformat(), "to": now.isoformat()}, "query.to"),
        ({"from": (now - timedelta(days=400)).isoformat()}, "query.to"),
        ({"from": "2024-01-01T00:00:00"}, "query.from"),
        ({"to": "soon"}, "query.to"),
        ({"format": "xml"}, "query.format"),
        ({"format": ""}, "query.format"),
        ({"from": "0001-01-01T00:00:00+14:00"}, "query.from"),
        ({"to": "9999-12-31T23:59:59-14:00"}, "query.to"),
        ({"to": "0001-01-05T00:00:00Z"}, "query.to"),
    ):
        response = await world.client.get(EXPORT, params=params, headers=officer)
        assert fields_of(response) == [field], (params, response.text)
    # Refused exports are not recorded as exports.
    exports = await get_all(world, LOGS, officer, event_type="audit:trail:export")
    assert len(exports) == 3


async def test_an_export_holds_only_the_callers_clinic(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    b = await add_clinic_set(world)
    written = await some_history(world, a)
    _, events = await export(world, await b.headers(world, "clinic_admin"))
    assert {e["clinic_id"] for e in events} == {str(b.clinic_id)}
    assert not {w["id"] for w in written} & {e["id"] for e in events}
    verify_lines(events)
    for name in ("physician", "nurse", "receptionist", "patient"):
        problem(await world.client.get(EXPORT, headers=await a.headers(world, name)), 403)
