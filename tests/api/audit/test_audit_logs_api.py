"""The clinic's audit trail through the HTTP API (both backends): filters by actor, patient
(named or listed), time, type, risk and review; keyset paging newest first that survives
ties; every query recorded; another clinic's events never visible; roles without
``audit:read`` refused; bad input a 422 problem; and the chain's verification."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

from clinicguard.audit.trail import AuditEventType
from tests.api.audit.trail_helpers import (
    EXPORT,
    LOGS,
    REVIEWS,
    VERIFY,
    emergency_read,
    entry,
    fields_of,
    get_all,
    ids,
    problem,
    record,
    tamper,
)
from tests.conftest import AuthWorld, Backend
from tests.factories.clinical import ClinicSet, add_clinic_set

EVENT_FIELDS = {
    "id",
    "seq",
    "occurred_at",
    "actor_id",
    "actor_role",
    "session_id",
    "request_id",
    "ip",
    "user_agent",
    "event_type",
    "resource_type",
    "resource_id",
    "patient_id",
    "action",
    "outcome",
    "reason",
    "details",
    "risk_score",
    "risk_level",
    "compliance",
    "requires_review",
    "review",
}


def cursor_of(payload: Any) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def logs(world: AuthWorld, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    response = await world.client.get(LOGS, params=params, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["next_cursor"] is None
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def history(world: AuthWorld, a: ClinicSet) -> dict[str, Any]:
    """Four accesses a minute apart: a read of patient 0, a list of patients 0 and 1, a
    nurse's read of patient 1's record, and a break-glass read of patient 1."""
    p0, p1 = a.patients[0].id, a.patients[1].id
    start = world.clock.now()
    read0 = await record(
        world,
        a.clinic_id,
        a.people["physician"],
        entry(patient_id=p0, resource_id=str(p0)),
    )
    world.clock.advance(60)
    listed = await record(
        world,
        a.clinic_id,
        a.people["receptionist"],
        entry(AuditEventType.PATIENT_LIST),
        patients=[p0, p1],
    )
    world.clock.advance(60)
    read1 = await record(
        world, a.clinic_id, a.people["nurse"], entry(AuditEventType.RECORD_READ, patient_id=p1)
    )
    world.clock.advance(60)
    glass = await emergency_read(world, a.clinic_id, a.people["physician_off"], p1)
    world.clock.advance(60)
    return {"start": start, "read0": read0, "listed": listed, "read1": read1, "glass": glass}


async def test_filters_select_events(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    h = await history(world, a)
    p0, p1 = a.patients[0].id, a.patients[1].id
    admin = await a.headers(world, "clinic_admin")
    people = a.people

    # A patient is found where an event names them and where a list returned them.
    assert ids(await logs(world, admin, patient_id=p0)) == [h["listed"]["id"], h["read0"]["id"]]
    assert ids(await logs(world, admin, patient_id=p1)) == [
        h["glass"]["id"],
        h["read1"]["id"],
        h["listed"]["id"],
    ]
    assert ids(await logs(world, admin, user_id=people["physician"].id)) == [h["read0"]["id"]]
    assert ids(await logs(world, admin, user_id=people["nurse"].id, patient_id=p1)) == [
        h["read1"]["id"]
    ]
    assert ids(await logs(world, admin, user_id=people["nurse"].id, patient_id=p0)) == []
    window = {
        "from": (h["start"] + timedelta(seconds=30)).isoformat(),
        "to": (h["start"] + timedelta(seconds=150)).isoformat(),
    }
    assert ids(await logs(world, admin, **window)) == [h["read1"]["id"], h["listed"]["id"]]
    assert ids(await logs(world, admin, event_type="clinic:patient:list")) == [h["listed"]["id"]]
    high = await logs(world, admin, risk_level="high")
    assert h["glass"]["id"] in ids(high)
    assert {e["risk_level"] for e in high} == {"high"}
    reviewed = await logs(world, admin, requires_review="true")
    assert h["glass"]["id"] in ids(reviewed)
    assert all(e["requires_review"] for e in reviewed)
    assert h["read0"]["id"] in ids(await logs(world, admin, requires_review="false"))
    succeeded = await logs(world, admin, outcome="success", user_id=people["physician"].id)
    assert ids(succeeded) == [h["read0"]["id"]]

    # Every column but the hashes, and the review decision (none yet).
    [glass] = await logs(world, admin, user_id=people["physician_off"].id)
    assert set(glass) == EVENT_FIELDS
    assert glass["review"] is None
    assert glass["patient_id"] == str(p1)
    assert glass["actor_role"] == "physician"
    assert glass["details"]["emergency"] is True
    assert glass["reason"].startswith("Paciente inconsciente")
    assert glass["requires_review"] is True


async def test_paging_is_newest_first_and_survives_ties(world: AuthWorld) -> None:
    """Events of the same instant (the clock does not move) page by sequence number: no
    event twice, none skipped, and events written while paging do not shift pages."""
    a = await add_clinic_set(world)
    doc = a.people["physician"]
    written = [
        await record(world, a.clinic_id, doc, entry(patient_id=a.patients[i % 3].id))
        for i in range(7)
    ]
    officer = await a.headers(world, "compliance_officer")
    first = await world.client.get(LOGS, params={"user_id": doc.id, "limit": 3}, headers=officer)
    assert first.status_code == 200
    assert len(first.json()["items"]) == 3
    assert first.json()["next_cursor"]
    # Written after the first page: newer than the cursor, so never on a later page.
    await record(world, a.clinic_id, doc, entry(patient_id=a.patients[0].id))
    rest = await get_all(
        world, LOGS, officer, user_id=doc.id, limit=3, cursor=first.json()["next_cursor"]
    )
    seen = ids(first.json()["items"]) + ids(rest)
    assert seen == [w["id"] for w in reversed(written)]
    assert len(set(seen)) == 7
    every = await get_all(world, LOGS, officer, limit=200)
    assert [e["seq"] for e in every] == sorted((e["seq"] for e in every), reverse=True)


async def test_each_query_is_recorded_with_its_filters(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    b = await add_clinic_set(world)
    p0 = a.patients[0].id
    admin = a.people["clinic_admin"]
    headers = await a.headers(world, "clinic_admin")
    since = world.clock.now() - timedelta(days=1)
    assert await logs(world, headers, patient_id=p0, **{"from": since.isoformat()}) == []
    [query] = await logs(world, headers, event_type="audit:trail:query", user_id=admin.id)
    assert query["actor_role"] == "clinic_admin"
    assert query["patient_id"] == str(p0)
    assert query["resource_type"] == "audit"
    assert query["action"] == "query"
    assert query["details"]["patient_id"] == str(p0)
    assert query["details"]["from"].startswith(since.date().isoformat())
    assert query["details"]["returned"] == 0
    assert query["details"]["permission"] == "audit:read"
    assert query["request_id"]
    # The next query about that patient shows the first (a query touches the patient).
    assert ids(await logs(world, headers, patient_id=p0)) == [query["id"]]
    # Clinic B's trail holds none of it.
    other = await get_all(world, LOGS, await b.headers(world, "clinic_admin"), limit=200)
    assert query["id"] not in ids(other)


async def test_another_clinics_events_are_never_visible(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    b = await add_clinic_set(world)
    h = await history(world, a)
    ours = {h[k]["id"] for k in ("read0", "listed", "read1", "glass")}
    for name in ("clinic_admin", "compliance_officer"):
        headers = await b.headers(world, name)
        everything = await get_all(world, LOGS, headers, limit=200)
        assert ours.isdisjoint(ids(everything))
        # Only clinic B's own queries about that id (they are B's events).
        about = await logs(world, headers, patient_id=a.patients[1].id)
        assert {e["event_type"] for e in about} <= {"audit:trail:query"}
        assert {e["actor_id"] for e in about} <= {str(p.id) for p in b.people.values()}
        assert await logs(world, headers, user_id=a.people["physician"].id) == []
        # No header or parameter moves the caller to another clinic.
        forged = await world.client.get(
            LOGS,
            params={"clinic_id": a.clinic_id, "limit": 200},
            headers={**headers, "X-Clinic-ID": str(a.clinic_id)},
        )
        assert ours.isdisjoint(ids(forged.json()["items"]))
    mine = await get_all(world, LOGS, await a.headers(world, "compliance_officer"), limit=200)
    assert ours <= set(ids(mine))


async def test_roles_without_audit_permissions_are_refused(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    event = await record(world, a.clinic_id, a.people["physician"], entry())
    for name in ("physician", "physician_off", "nurse", "receptionist", "patient"):
        headers = await a.headers(world, name)
        for response in (
            await world.client.get(LOGS, headers=headers),
            await world.client.get(EXPORT, headers=headers),
            await world.client.get(REVIEWS, headers=headers),
            await world.client.get(VERIFY, headers=headers),
            await world.client.post(
                f"{REVIEWS}/{event['id']}", json={"decision": "approved"}, headers=headers
            ),
        ):
            problem(response, 403)
    problem(await world.client.get(LOGS), 401)
    denied = await logs(
        world,
        await a.headers(world, "compliance_officer"),
        event_type="authz:access:denied",
        user_id=a.people["nurse"].id,
    )
    assert {e["details"]["permission"] for e in denied} == {
        "audit:read",
        "audit:export",
        "audit:review",
        "audit:verify",
    }


async def test_bad_input_is_a_422_problem(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    headers = await a.headers(world, "compliance_officer")
    now = world.clock.now()
    for params, field in (
        ({"limit": 0}, "query.limit"),
        ({"limit": 201}, "query.limit"),
        ({"limit": "ten"}, "query.limit"),
        ({"user_id": "not-a-uuid"}, "query.user_id"),
        ({"patient_id": "1 OR 1=1"}, "query.patient_id"),
        ({"from": "yesterday"}, "query.from"),
        ({"from": "2024-01-01T00:00:00"}, "query.from"),  # no offset: not RFC 3339
        ({"to": "2024-13-01T00:00:00Z"}, "query.to"),
        ({"from": now.isoformat(), "to": (now - timedelta(hours=1)).isoformat()}, "query.from"),
        ({"event_type": "clinic:patient:steal"}, "query.event_type"),
        ({"event_type": "x" * 65}, "query.event_type"),
        ({"risk_level": "extreme"}, "query.risk_level"),
        ({"requires_review": "maybe"}, "query.requires_review"),
        ({"outcome": "won"}, "query.outcome"),
        ({"cursor": "not-a-cursor"}, "query.cursor"),
        ({"cursor": cursor_of([])}, "query.cursor"),
        ({"cursor": cursor_of({"a": 1, "b": 2})}, "query.cursor"),
        ({"cursor": cursor_of(["x", 1])}, "query.cursor"),
        ({"cursor": cursor_of(["2024-01-01T00:00:00", 1])}, "query.cursor"),
        ({"cursor": cursor_of(["2024-01-01T00:00:00+00:00", 1.5])}, "query.cursor"),
        ({"cursor": cursor_of(["2024-01-01T00:00:00+00:00", True])}, "query.cursor"),
        ({"cursor": cursor_of(["2024-01-01T00:00:00+00:00", 2**64])}, "query.cursor"),
        ({"cursor": cursor_of(["2024-01-01T00:00:00+00:00", -1])}, "query.cursor"),
        ({"cursor": "x" * 201}, "query.cursor"),
        ({"cursor": cursor_of(["0001-01-01T00:00:00+14:00", 1])}, "query.cursor"),
        ({"from": "0001-01-01T00:00:00+14:00"}, "query.from"),
        ({"to": "9999-12-31T23:59:59-14:00"}, "query.to"),
        ({"from": "1899-12-31T23:59:59Z"}, "query.from"),
    ):
        response = await world.client.get(LOGS, params=params, headers=headers)
        assert fields_of(response) == [field], (params, response.text)


async def test_verification_names_the_first_broken_event(
    world: AuthWorld, backend: Backend
) -> None:
    a = await add_clinic_set(world)
    written = [await record(world, a.clinic_id, a.people["nurse"], entry()) for _ in range(3)]
    officer = await a.headers(world, "compliance_officer")
    response = await world.client.get(VERIFY, headers=officer)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["ok"] is True
    assert result["first_broken_event_id"] is None
    assert result["checked"] >= 3
    [check] = await logs(world, officer, event_type="audit:trail:verify")
    assert check["details"]["ok"] is True
    assert check["requires_review"] is False

    await tamper(world, backend, a.clinic_id, written[1]["seq"])
    admin = await a.headers(world, "clinic_admin")
    broken = (await world.client.get(VERIFY, headers=admin)).json()
    assert broken == {
        "ok": False,
        "checked": written[1]["seq"] - 1,
        "first_broken_event_id": written[1]["id"],
    }
    # A broken chain is a critical event in the review queue.
    pending = await get_all(world, REVIEWS, officer, status="pending")
    [alarm] = [e for e in pending if e["event_type"] == "audit:trail:verify"]
    assert alarm["details"]["ok"] is False
    assert alarm["risk_level"] == "critical"
    assert alarm["actor_id"] == str(a.people["clinic_admin"].id)
    # Clinic B's chain is untouched.
    b = await add_clinic_set(world)
    other = (await world.client.get(VERIFY, headers=await b.headers(world, "clinic_admin"))).json()
    assert other["ok"] is True
