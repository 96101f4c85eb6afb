"""The review queue through the HTTP API (both backends): what lands in it, one decision per
event recorded in the trail with it, nobody reviewing their own event, another clinic's
event a 404 like a missing one, and bad bodies a 422 problem."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from clinicguard.audit.models import AuditReview
from clinicguard.audit.trail import AuditEventType
from clinicguard.store.interfaces import TenantContext
from tests.api.audit.trail_helpers import (
    EXPORT,
    LOGS,
    REVIEWS,
    emergency_read,
    entry,
    fields_of,
    get_all,
    high_risk,
    ids,
    problem,
    record,
)
from tests.conftest import AuthWorld
from tests.factories.clinical import ClinicSet, add_clinic_set


async def decide(
    world: AuthWorld, headers: dict[str, str], event_id: str, body: Any
) -> dict[str, Any]:
    response = await world.client.post(f"{REVIEWS}/{event_id}", json=body, headers=headers)
    assert response.status_code == 201, response.text
    decided: dict[str, Any] = response.json()
    return decided


async def queue(world: AuthWorld, a: ClinicSet) -> dict[str, dict[str, Any]]:
    """One event of each kind that needs review, and one that does not."""
    doc, p = a.people["physician"], a.patients[1].id
    return {
        "glass": await emergency_read(world, a.clinic_id, a.people["physician_off"], p),
        "high": await record(world, a.clinic_id, doc, high_risk()),
        "compliance": await record(world, a.clinic_id, doc, entry(compliance=True)),
        "asked": await record(world, a.clinic_id, doc, entry(requires_review=True)),
        "delete": await record(world, a.clinic_id, doc, entry(action="delete", patient_id=p)),
        "plain": await record(world, a.clinic_id, doc, entry(patient_id=p)),
    }


async def test_the_queue_holds_what_needs_review(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    events = await queue(world, a)
    officer = await a.headers(world, "compliance_officer")
    pending = await get_all(world, REVIEWS, officer, limit=2)
    wanted = [events[k]["id"] for k in ("glass", "high", "compliance", "asked", "delete")]
    assert set(wanted) <= set(ids(pending))
    assert events["plain"]["id"] not in ids(pending)
    ours = [i for i in ids(pending) if i in wanted]
    assert ours == list(reversed(wanted)), "newest first"
    for item in pending:
        assert item["review"] is None
        assert (
            item["requires_review"]
            or item["compliance"]
            or item["risk_level"] in ("high", "critical")
            or item["action"] in ("delete", "export")
        ), item
    assert await get_all(world, REVIEWS, officer, status="decided") == []
    everything = await get_all(world, REVIEWS, officer, status="all")
    assert set(ids(pending)) <= set(ids(everything))
    # An export is reviewed: the officer's own export lands in the queue at once.
    assert (await world.client.get(EXPORT, headers=officer)).status_code == 200
    exports = [
        e for e in await get_all(world, REVIEWS, officer) if e["event_type"] == "audit:trail:export"
    ]
    assert len(exports) == 1
    assert exports[0]["actor_id"] == str(a.people["compliance_officer"].id)
    # Listing the queue is itself recorded.
    listed = await get_all(world, LOGS, officer, event_type="audit:review:list")
    assert len(listed) >= 3
    assert {e["actor_id"] for e in listed} == {str(a.people["compliance_officer"].id)}


async def test_a_decision_is_made_once_and_recorded_with_it(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    events = await queue(world, a)
    officer = await a.headers(world, "compliance_officer")
    glass = events["glass"]["id"]
    decided = await decide(
        world, officer, glass, {"decision": "approved", "note": "Emergência confirmada no PA."}
    )
    assert decided["event_id"] == glass
    assert decided["event_seq"] == events["glass"]["seq"]
    assert decided["decision"] == "approved"
    assert decided["reviewer_id"] == str(a.people["compliance_officer"].id)
    assert decided["note"] == "Emergência confirmada no PA."
    assert decided["decided_at"]

    pending = await get_all(world, REVIEWS, officer)
    assert glass not in ids(pending)
    [done] = await get_all(world, REVIEWS, officer, status="decided")
    assert done["id"] == glass
    assert done["review"] == decided
    [logged] = await get_all(world, LOGS, officer, user_id=a.people["physician_off"].id)
    assert logged["review"] == decided

    # The trail records the decision (not the note), naming the event it decided.
    [trail] = await get_all(world, LOGS, officer, event_type=str(AuditEventType.REVIEW_DECISION))
    assert trail["resource_id"] == glass
    assert trail["resource_type"] == "audit_event"
    assert trail["actor_id"] == str(a.people["compliance_officer"].id)
    assert trail["details"]["decision"] == "approved"
    assert trail["details"]["event_seq"] == events["glass"]["seq"]
    assert "Emergência" not in str(trail["details"])
    assert trail["requires_review"] is False
    assert trail["id"] not in ids(await get_all(world, REVIEWS, officer, status="all"))

    # A second decision, by anyone, is a conflict; the first stands.
    admin = await a.headers(world, "clinic_admin")
    for headers, body in ((officer, {"decision": "rejected"}), (admin, {"decision": "approved"})):
        again = await world.client.post(f"{REVIEWS}/{glass}", json=body, headers=headers)
        problem(again, 409)
    async with world.services.db.transaction(TenantContext.system(a.clinic_id)) as session:
        rows = (await session.scalars(select(AuditReview))).all()
    assert [(str(r.event_id), r.decision) for r in rows] == [(glass, "approved")]
    decisions = await get_all(world, LOGS, officer, event_type="audit:review:decided")
    assert len(decisions) == 1

    rejected = await decide(world, admin, events["delete"]["id"], {"decision": "rejected"})
    assert rejected["note"] is None
    assert rejected["reviewer_id"] == str(a.people["clinic_admin"].id)


async def test_nobody_reviews_their_own_event(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    officer = await a.headers(world, "compliance_officer")
    own = await record(world, a.clinic_id, a.people["compliance_officer"], high_risk())
    refused = await world.client.post(
        f"{REVIEWS}/{own['id']}", json={"decision": "approved"}, headers=officer
    )
    assert "separation of duties" in problem(refused, 403)["detail"]
    assert own["id"] in ids(await get_all(world, REVIEWS, officer))
    denied = await get_all(
        world,
        LOGS,
        officer,
        event_type="authz:access:denied",
        user_id=a.people["compliance_officer"].id,
    )
    assert [e["details"]["rule"] for e in denied] == ["separation-of-duties"]
    assert denied[0]["details"]["event_id"] == own["id"]
    # Another reviewer may.
    admin = await a.headers(world, "clinic_admin")
    assert (await decide(world, admin, own["id"], {"decision": "approved"}))["decision"]
    # The administrator's own export goes to someone else too.
    assert (await world.client.get(EXPORT, headers=admin)).status_code == 200
    [export] = [
        e for e in await get_all(world, REVIEWS, admin) if e["event_type"] == "audit:trail:export"
    ]
    problem(
        await world.client.post(
            f"{REVIEWS}/{export['id']}", json={"decision": "approved"}, headers=admin
        ),
        403,
    )
    assert (await decide(world, officer, export["id"], {"decision": "approved"}))["decision"]


async def test_unknown_and_other_clinics_events_are_the_same_404(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    b = await add_clinic_set(world)
    theirs = await emergency_read(world, a.clinic_id, a.people["physician_off"], a.patients[0].id)
    headers = await b.headers(world, "compliance_officer")
    body = {"decision": "approved"}
    foreign = problem(
        await world.client.post(f"{REVIEWS}/{theirs['id']}", json=body, headers=headers), 404
    )
    missing = problem(
        await world.client.post(
            f"{REVIEWS}/00000000-0000-4000-8000-000000000000", json=body, headers=headers
        ),
        404,
    )
    assert {k: v for k, v in foreign.items() if k != "request_id"} == {
        k: v for k, v in missing.items() if k != "request_id"
    }
    assert theirs["id"] not in ids(await get_all(world, REVIEWS, headers, status="all"))
    officer = await a.headers(world, "compliance_officer")
    assert theirs["id"] in ids(await get_all(world, REVIEWS, officer))


async def test_an_event_outside_the_queue_is_a_conflict(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    plain = await record(world, a.clinic_id, a.people["nurse"], entry())
    officer = await a.headers(world, "compliance_officer")
    response = await world.client.post(
        f"{REVIEWS}/{plain['id']}", json={"decision": "approved"}, headers=officer
    )
    assert "not in the review queue" in problem(response, 409)["detail"]
    assert await get_all(world, REVIEWS, officer, status="decided") == []


async def test_bad_bodies_and_parameters_are_a_422_problem(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    event = await record(world, a.clinic_id, a.people["nurse"], high_risk())
    officer = await a.headers(world, "compliance_officer")
    where = f"{REVIEWS}/{event['id']}"
    for body, field in (
        ({}, "body.decision"),
        ({"decision": "maybe"}, "body.decision"),
        ({"decision": "APPROVED"}, "body.decision"),
        ({"decision": None}, "body.decision"),
        ({"decision": "approved", "note": "x" * 2001}, "body.note"),
        ({"decision": "approved", "note": "ok\x00"}, "body.note"),
        ({"decision": "approved", "note": "ok\u202edesserts"}, "body.note"),
        ({"decision": "approved", "note": 12}, "body.note"),
        (
            {"decision": "approved", "reviewer_id": str(a.people["clinic_admin"].id)},
            "body.reviewer_id",
        ),
    ):
        response = await world.client.post(where, json=body, headers=officer)
        assert fields_of(response) == [field], (body, response.text)
    assert fields_of(
        await world.client.post(f"{REVIEWS}/42", json={"decision": "approved"}, headers=officer)
    ) == ["path.event_id"]
    bad_json = await world.client.post(
        where, content=b"{", headers={**officer, "content-type": "application/json"}
    )
    problem(bad_json, 400)
    for params, field in (
        ({"status": "open"}, "query.status"),
        ({"limit": 0}, "query.limit"),
        ({"cursor": "%%%"}, "query.cursor"),
    ):
        response = await world.client.get(REVIEWS, params=params, headers=officer)
        assert fields_of(response) == [field], (params, response.text)
    assert await get_all(world, REVIEWS, officer, status="decided") == []
    assert (
        await decide(world, officer, event["id"], {"decision": "approved", "note": "x" * 2000})
    )["note"] == "x" * 2000
