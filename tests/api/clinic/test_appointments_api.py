"""Appointments through the HTTP API (both backends): time rules, who may be the
professional, another clinic's patient, a professional's schedule that never double-books
(also under concurrent requests), cancellation that frees the slot and ends the
appointment's life, patients who see only their own, and list filters."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx

from tests.conftest import AuthWorld
from tests.factories.clinical import ClinicSet, add_clinic_set

APPOINTMENTS = "/api/v1/appointments"
PROBLEM = "application/problem+json"


# --- helpers -----------------------------------------------------------------------------------


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def fields_of(response: httpx.Response) -> list[str]:
    return [e["field"] for e in problem(response, 422)["errors"]]


def at(world: AuthWorld, *, days: int = 5, minutes: int = 0) -> datetime:
    """A moment ``days`` ahead of the test clock, at 10:00 UTC plus ``minutes``."""
    base = (world.clock.now() + timedelta(days=days)).replace(
        hour=10, minute=0, second=0, microsecond=0
    )
    return base + timedelta(minutes=minutes)


def booking(
    a: ClinicSet,
    starts: datetime,
    ends: datetime,
    *,
    professional: str = "physician",
    patient: int = 1,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "patient_id": str(a.patients[patient].id),
        "professional_id": str(a.people[professional].id),
        "starts_at": starts.isoformat(),
        "ends_at": ends.isoformat(),
        **extra,
    }


async def book(world: AuthWorld, headers: dict[str, str], body: dict[str, Any]) -> httpx.Response:
    return await world.client.post(APPOINTMENTS, json=body, headers=headers)


async def listed(world: AuthWorld, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    query = {k: v.isoformat() if isinstance(v, datetime) else str(v) for k, v in params.items()}
    response = await world.client.get(APPOINTMENTS, params={"limit": 200, **query}, headers=headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


# --- booking -----------------------------------------------------------------------------------


async def test_receptionist_books_an_appointment(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    starts = at(world)
    response = await book(
        world, front, booking(a, starts, starts + timedelta(minutes=30), reason="Retorno")
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["status"] == "scheduled"
    assert created["patient_id"] == str(a.patients[1].id)
    assert created["professional_id"] == str(a.people["physician"].id)
    assert datetime.fromisoformat(created["starts_at"]) == starts
    assert datetime.fromisoformat(created["ends_at"]) == starts + timedelta(minutes=30)
    assert created["reason"] == "Retorno"
    assert created["id"] in {x["id"] for x in await listed(world, front)}


async def test_times_are_validated_and_nothing_is_stored(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    before = await listed(world, front)
    now = world.clock.now()
    starts = at(world)
    naive = starts.replace(tzinfo=None).isoformat()
    cases: list[tuple[dict[str, Any], list[str]]] = [
        (booking(a, now - timedelta(hours=1), now + timedelta(minutes=30)), ["body.starts_at"]),
        (booking(a, now, now + timedelta(minutes=30)), ["body.starts_at"]),
        (booking(a, starts, starts - timedelta(minutes=30)), ["body.ends_at"]),
        (booking(a, starts, starts), ["body.ends_at"]),
        (booking(a, starts, starts + timedelta(hours=12, seconds=1)), ["body.ends_at"]),
        (booking(a, starts, starts + timedelta(days=3)), ["body.ends_at"]),
        (
            {**booking(a, starts, starts + timedelta(minutes=30)), "starts_at": naive},
            ["body.starts_at"],
        ),
        (
            {
                **booking(a, starts, starts + timedelta(minutes=30)),
                "ends_at": (starts + timedelta(minutes=30)).replace(tzinfo=None).isoformat(),
            },
            ["body.ends_at"],
        ),
        ({**booking(a, starts, starts), "starts_at": "amanhã às 10h"}, ["body.starts_at"]),
        (
            {**booking(a, starts, starts + timedelta(minutes=30)), "status": "completed"},
            ["body.status"],
        ),
        (
            {**booking(a, starts, starts + timedelta(minutes=30)), "clinic_id": "x"},
            ["body.clinic_id"],
        ),
    ]
    for body, expected in cases:
        response = await book(world, front, body)
        assert fields_of(response) == expected, (body, response.text)
    assert len(await listed(world, front)) == len(before)
    twelve_hours = await book(world, front, booking(a, starts, starts + timedelta(hours=12)))
    assert twelve_hours.status_code == 201, "exactly 12 hours is allowed"


async def test_the_professional_must_be_a_clinician_of_this_clinic(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    b = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    starts = at(world)
    ends = starts + timedelta(minutes=30)
    for professional_id in (
        a.people["receptionist"].id,
        a.people["clinic_admin"].id,
        a.people["compliance_officer"].id,
        a.people["patient"].id,
        b.people["physician"].id,
        b.people["nurse"].id,
        uuid.uuid4(),
    ):
        body = {**booking(a, starts, ends), "professional_id": str(professional_id)}
        response = await book(world, front, body)
        assert fields_of(response) == ["body.professional_id"], professional_id
    assert await listed(world, front, patient_id=a.patients[1].id) == []
    nurse = await book(world, front, booking(a, starts, ends, professional="nurse"))
    assert nurse.status_code == 201, nurse.text


async def test_another_clinics_patient_is_404(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    b = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    starts = at(world)
    body = {
        **booking(a, starts, starts + timedelta(minutes=30)),
        "patient_id": str(b.patients[0].id),
    }
    foreign = await book(world, front, body)
    missing = await book(world, front, {**body, "patient_id": str(uuid.uuid4())})
    problem(foreign, 404)
    problem(missing, 404)
    assert foreign.json()["detail"] == missing.json()["detail"]
    # Another clinic's appointment cannot be changed either.
    other = await world.client.patch(
        f"{APPOINTMENTS}/{b.appointments[0].id}", json={"status": "cancelled"}, headers=front
    )
    problem(other, 404)
    b_view = await listed(world, await b.headers(world, "receptionist"))
    assert [x["status"] for x in b_view] == ["scheduled"]


# --- the professional's schedule ---------------------------------------------------------------


async def test_overlaps_are_409_and_adjacent_slots_are_fine(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    ten = at(world)
    first = await book(world, front, booking(a, ten, ten + timedelta(minutes=30)))
    assert first.status_code == 201, first.text
    for starts, ends in (
        (ten, ten + timedelta(minutes=30)),
        (ten + timedelta(minutes=15), ten + timedelta(minutes=45)),
        (ten - timedelta(minutes=15), ten + timedelta(minutes=15)),
        (ten - timedelta(hours=1), ten + timedelta(hours=1)),
        (ten + timedelta(minutes=5), ten + timedelta(minutes=10)),
    ):
        clash = await book(world, front, booking(a, starts, ends, patient=2))
        problem(clash, 409)
    after = await book(
        world, front, booking(a, ten + timedelta(minutes=30), ten + timedelta(minutes=60))
    )
    assert after.status_code == 201, after.text
    before = await book(world, front, booking(a, ten - timedelta(minutes=30), ten, patient=2))
    assert before.status_code == 201, before.text
    other_professional = await book(
        world, front, booking(a, ten, ten + timedelta(minutes=30), professional="physician_off")
    )
    assert other_professional.status_code == 201, other_professional.text
    # The same slot given in another UTC offset is the same instant: still a clash.
    shifted = booking(a, ten, ten + timedelta(minutes=30), patient=2)
    shifted["starts_at"] = (ten - timedelta(hours=3)).replace(tzinfo=None).isoformat() + "-03:00"
    shifted["ends_at"] = (ten - timedelta(hours=2, minutes=30)).replace(
        tzinfo=None
    ).isoformat() + "-03:00"
    problem(await book(world, front, shifted), 409)
    mine = await listed(world, front, professional_id=a.people["physician"].id)
    assert len(mine) == 3


async def test_moving_into_an_occupied_slot_is_409(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    ten = at(world)
    first = await book(world, front, booking(a, ten, ten + timedelta(minutes=30)))
    second = await book(
        world, front, booking(a, ten + timedelta(hours=1), ten + timedelta(hours=1, minutes=30))
    )
    assert first.status_code == second.status_code == 201
    url = f"{APPOINTMENTS}/{second.json()['id']}"
    moved = await world.client.patch(
        url,
        json={
            "starts_at": (ten + timedelta(minutes=20)).isoformat(),
            "ends_at": (ten + timedelta(minutes=50)).isoformat(),
        },
        headers=front,
    )
    problem(moved, 409)
    past = await world.client.patch(
        url,
        json={"starts_at": (world.clock.now() - timedelta(hours=1)).isoformat()},
        headers=front,
    )
    assert "body.starts_at" in fields_of(past)
    inverted = await world.client.patch(
        url, json={"ends_at": (ten + timedelta(minutes=50)).isoformat()}, headers=front
    )
    assert fields_of(inverted) == ["body.ends_at"]
    ok = await world.client.patch(
        url,
        json={
            "starts_at": (ten + timedelta(minutes=30)).isoformat(),
            "ends_at": (ten + timedelta(minutes=60)).isoformat(),
        },
        headers=front,
    )
    assert ok.status_code == 200, ok.text
    assert datetime.fromisoformat(ok.json()["starts_at"]) == ten + timedelta(minutes=30)


async def test_cancelling_frees_the_slot_and_ends_the_appointment(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    ten = at(world)
    slot = booking(a, ten, ten + timedelta(minutes=30))
    first = await book(world, front, slot)
    assert first.status_code == 201
    problem(await book(world, front, {**slot, "patient_id": str(a.patients[2].id)}), 409)
    url = f"{APPOINTMENTS}/{first.json()['id']}"
    empty = await world.client.patch(url, json={}, headers=front)
    assert fields_of(empty) == ["body"]
    unknown = await world.client.patch(url, json={"status": "deleted"}, headers=front)
    assert fields_of(unknown) == ["body.status"]
    cancelled = await world.client.patch(url, json={"status": "cancelled"}, headers=front)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    rebooked = await book(world, front, {**slot, "patient_id": str(a.patients[2].id)})
    assert rebooked.status_code == 201, rebooked.text
    for change in (
        {"status": "scheduled"},
        {"status": "confirmed"},
        {"status": "cancelled"},
        {"reason": "Reagendar"},
        {
            "starts_at": (ten + timedelta(days=1)).isoformat(),
            "ends_at": (ten + timedelta(days=1, minutes=30)).isoformat(),
        },
    ):
        again = await world.client.patch(url, json=change, headers=front)
        problem(again, 409)
    statuses = {
        x["id"]: x["status"]
        for x in await listed(world, front, professional_id=a.people["physician"].id)
    }
    assert statuses == {first.json()["id"]: "cancelled", rebooked.json()["id"]: "scheduled"}


async def test_concurrent_bookings_of_one_slot_give_exactly_one_201(world: AuthWorld) -> None:
    """Ten simultaneous requests for overlapping times with one professional: one wins,
    nine are 409, and the schedule holds one appointment."""
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    ten = at(world)
    bodies = [
        booking(
            a,
            ten + timedelta(minutes=n),
            ten + timedelta(minutes=30 + n),
            patient=n % 3,
        )
        for n in range(10)
    ]
    responses = await asyncio.gather(*(book(world, front, body) for body in bodies))
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] + [409] * 9, [r.text for r in responses if r.status_code != 409]
    booked = await listed(
        world,
        front,
        professional_id=a.people["physician"].id,
        **{"from": ten - timedelta(hours=1), "to": ten + timedelta(hours=1)},
    )
    assert len(booked) == 1


async def test_concurrent_moves_into_one_slot_give_exactly_one_200(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    ten = at(world)
    ids = []
    for n in range(4):
        starts = ten + timedelta(hours=n + 1)
        response = await book(
            world, front, booking(a, starts, starts + timedelta(minutes=30), patient=n % 3)
        )
        assert response.status_code == 201
        ids.append(response.json()["id"])
    target = {
        "starts_at": ten.isoformat(),
        "ends_at": (ten + timedelta(minutes=30)).isoformat(),
    }
    responses = await asyncio.gather(
        *(world.client.patch(f"{APPOINTMENTS}/{x}", json=target, headers=front) for x in ids)
    )
    assert sorted(r.status_code for r in responses) == [200, 409, 409, 409]
    at_ten = await listed(
        world,
        front,
        professional_id=a.people["physician"].id,
        **{"from": ten, "to": ten + timedelta(minutes=1)},
    )
    assert len(at_ten) == 1


# --- reading -----------------------------------------------------------------------------------


async def test_a_patient_lists_only_their_own_appointments(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    b = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    ten = at(world)
    others = await book(world, front, booking(a, ten, ten + timedelta(minutes=30), patient=1))
    own = await book(
        world, front, booking(a, ten + timedelta(hours=2), ten + timedelta(hours=3), patient=0)
    )
    assert others.status_code == own.status_code == 201
    patient = await a.headers(world, "patient")
    mine = await listed(world, patient)
    assert {x["id"] for x in mine} == {str(a.appointments[0].id), own.json()["id"]}
    assert {x["patient_id"] for x in mine} == {str(a.patients[0].id)}
    assert await listed(world, patient, patient_id=a.patients[1].id) == []
    assert await listed(world, patient, professional_id=a.people["physician"].id) == [
        x for x in mine if x["id"] == own.json()["id"]
    ]
    spoof = {**patient, "X-Clinic-ID": str(b.clinic_id)}
    assert {x["id"] for x in await listed(world, spoof)} == {x["id"] for x in mine}
    # A patient does not book or change appointments.
    problem(
        await book(
            world,
            patient,
            booking(a, ten + timedelta(days=1), ten + timedelta(days=1, minutes=30), patient=0),
        ),
        403,
    )
    problem(
        await world.client.patch(
            f"{APPOINTMENTS}/{own.json()['id']}", json={"status": "cancelled"}, headers=patient
        ),
        403,
    )


async def test_list_filters_by_time_window_and_professional(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    b = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    ten = at(world, days=10)
    made = {}
    for name, starts, professional in (
        ("early", ten, "physician"),
        ("late", ten + timedelta(hours=4), "physician"),
        ("next_day", ten + timedelta(days=1), "physician"),
        ("off", ten + timedelta(hours=1), "physician_off"),
    ):
        response = await book(
            world,
            front,
            booking(a, starts, starts + timedelta(minutes=30), professional=professional),
        )
        assert response.status_code == 201, response.text
        made[name] = response.json()["id"]

    async def ids(**params: Any) -> list[str]:
        return [x["id"] for x in await listed(world, front, **params)]

    window = {"from": ten, "to": ten + timedelta(hours=5)}
    assert await ids(**window) == [made["early"], made["off"], made["late"]]
    assert await ids(**window, professional_id=a.people["physician"].id) == [
        made["early"],
        made["late"],
    ]
    # "from" is inclusive, "to" exclusive.
    assert await ids(**{"from": ten + timedelta(hours=4), "to": ten + timedelta(days=1)}) == [
        made["late"]
    ]
    assert await ids(**{"from": ten + timedelta(days=1)}) == [made["next_day"]]
    assert await ids(professional_id=a.people["physician_off"].id) == [made["off"]]
    assert await ids(professional_id=b.people["physician"].id) == []
    assert await ids(**{"to": ten}) == [str(a.appointments[0].id)]
    naive = await world.client.get(
        APPOINTMENTS, params={"from": ten.replace(tzinfo=None).isoformat()}, headers=front
    )
    assert fields_of(naive) == ["query.from"]
    bad_id = await world.client.get(
        APPOINTMENTS, params={"professional_id": "' OR 1=1 --"}, headers=front
    )
    assert fields_of(bad_id) == ["query.professional_id"]
    # Walking the list one by one sees each appointment once, in start order.
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = (await world.client.get(APPOINTMENTS, params=params, headers=front)).json()
        seen.extend(x["id"] for x in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [
        str(a.appointments[0].id),
        made["early"],
        made["off"],
        made["late"],
        made["next_day"],
    ]
