"""Input attack signals through the real application (both backends): an injection or a
script in a query, a path or a JSON body gets exactly the answer it would have got, the
data is stored as sent, and one ``input:attack:suspected`` event per request names the
detectors and fields — never the input. Clinical text raises nothing; a scanner cannot
flood the event table; an event store outage never fails a request (ADR 0032)."""

from __future__ import annotations

import json
from typing import Any

import httpx
from structlog.testing import capture_logs

from clinicguard.audit.models import AuditEvent
from clinicguard.audit.trail import PLATFORM
from clinicguard.core.events import SecurityEvent, SecurityEventType
from clinicguard.store.interfaces import DatabaseUnavailable
from tests.audit_trail import trail_events
from tests.conftest import AuthWorld, client_for
from tests.factories.clinical import add_clinic_set

SIGNAL = str(SecurityEventType.INPUT_ATTACK_SUSPECTED)
TAUTOLOGY = "' OR 1=1 --"
SCRIPT = "<script>alert(1)</script>"


async def signals(world: AuthWorld) -> list[AuditEvent]:
    return await trail_events(world.services.db, types=SIGNAL)


def stored(row: AuditEvent) -> str:
    """Everything the row holds that a client could have influenced, as one string."""
    return json.dumps(row.details) + (row.reason or "") + (row.user_agent or "")


def same_problem(a: httpx.Response, b: httpx.Response) -> None:
    assert a.status_code == b.status_code
    first, second = a.json(), b.json()
    for body in (first, second):
        body.pop("request_id", None)
    assert first == second


async def test_an_injection_in_the_query_gets_the_normal_answer_and_one_event(
    world: AuthWorld,
) -> None:
    plain = await world.client.get("/healthz")
    attacked = await world.client.get("/healthz", params={"q": TAUTOLOGY})
    assert attacked.status_code == plain.status_code == 200
    assert attacked.json() == plain.json()
    unauthenticated = await world.client.get("/api/v1/me")
    attacked_me = await world.client.get("/api/v1/me", params={"q": TAUTOLOGY})
    assert attacked_me.status_code == 401
    same_problem(attacked_me, unauthenticated)

    rows = await signals(world)
    assert [r.request_id for r in rows] == [
        attacked.headers["x-request-id"],
        attacked_me.headers["x-request-id"],
    ]
    for row, route in zip(rows, ("/healthz", "/api/v1/me"), strict=True):
        assert (row.outcome, row.ip) == ("failure", "203.0.113.10")
        # Medium severity: at least a medium risk, and not sent to review.
        assert row.risk_level in ("medium", "high", "critical")
        assert row.requires_review is False
        assert row.actor_id is None
        assert row.clinic_id == PLATFORM
        assert row.details == {
            "detectors": "sqli.tautology",
            "where": "query",
            "field": "q",
            "values": 1,
            "method": "GET",
            "route": route,
            "suppressed": 0,
        }
        for fragment in ("1=1", "OR 1", "' OR", "--"):
            assert fragment not in stored(row)


async def test_an_encoded_injection_in_the_path_is_signalled_without_the_path(
    world: AuthWorld,
) -> None:
    a = await add_clinic_set(world)
    headers = await a.headers(world, "physician")
    response = await world.client.get("/api/v1/patients/%27%20OR%201%3D1", headers=headers)
    assert response.status_code == 422  # not a UUID: the same answer as any other garbage id
    [row] = await signals(world)
    assert row.details["where"] == "path"
    assert row.details["field"] == "path"
    assert row.details["route"] == "/api/v1/patients/{patient_id}"
    assert "1=1" not in stored(row)


async def test_a_script_in_a_nested_body_field_names_the_path_and_the_answer_is_unchanged(
    world: AuthWorld,
) -> None:
    def login(extra: Any) -> dict[str, Any]:
        return {"email": "ana@example.com", "password": "x", "extra": {"notes": ["ok", extra]}}

    benign = await world.client.post("/api/v1/auth/login", json=login("Paciente estável"))
    attacked = await world.client.post("/api/v1/auth/login", json=login(SCRIPT))
    assert attacked.status_code == 422  # unknown field, named as ever
    same_problem(attacked, benign)
    scripted = await world.client.post(
        "/api/v1/auth/login", json={"email": SCRIPT, "password": "x"}
    )
    invalid = await world.client.post("/api/v1/auth/login", json={"email": "ana", "password": "x"})
    same_problem(scripted, invalid)

    nested, flat = await signals(world)
    assert nested.details["detectors"] == "xss.script_tag"
    assert nested.details["where"] == "body"
    assert nested.details["field"] == "extra.notes[1]"
    assert nested.details["route"] == "/api/v1/auth/login"
    assert nested.details["method"] == "POST"
    assert flat.details["field"] == "email"
    for row in (nested, flat):
        assert "script" not in json.dumps(row.details).replace("xss.script_tag", "")


async def test_clinical_data_that_looks_like_an_attack_is_stored_exactly_as_sent(
    world: AuthWorld,
) -> None:
    """Signals never sanitize: the text reaches the route byte for byte, parameterized SQL
    stores it as given, and it reads back the same."""
    a = await add_clinic_set(world)
    doc = await a.headers(world, "physician")
    url = f"/api/v1/patients/{a.patients[1].id}"
    change = {
        "allergies": "Dipirona' OR 1=1 --",
        "medical_conditions": "Hipertensão; DROP TABLE patients",
        "address": "Rua <svg/onload=alert(1)>, 10",
    }
    response = await world.client.patch(url, json=change, headers=doc)
    assert response.status_code == 200, response.text
    read = (await world.client.get(url, headers=doc)).json()
    assert {k: read[k] for k in change} == change

    [row] = await signals(world)
    assert row.details["detectors"] == "sqli.tautology,sqli.stacked_query,xss.event_handler"
    assert row.details["field"] == "allergies,medical_conditions,address"
    assert row.details["route"] == "/api/v1/patients/{patient_id}"
    for value in change.values():
        assert value not in stored(row)


async def test_benign_clinical_requests_create_no_event(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    doc = await a.headers(world, "physician")
    url = f"/api/v1/patients/{a.patients[1].id}"
    for text in (
        "Paciente relata dor -- melhora com repouso",
        "Alergia a dipirona; 1=1 dose (O'Brien)",
        "Select the option: 'leve' -- ou 'moderada'",
    ):
        response = await world.client.patch(url, json={"allergies": text}, headers=doc)
        assert response.status_code == 200, response.text
    listed = await world.client.get(
        "/api/v1/patients", params={"name": "João D'Ávila"}, headers=doc
    )
    assert listed.status_code == 200
    await world.client.post(
        "/api/v1/auth/login", json={"email": "o'brien@example.com", "password": "x -- y"}
    )
    assert await signals(world) == []


async def test_events_are_capped_per_address_and_the_suppressed_counted(
    world: AuthWorld,
) -> None:
    for _ in range(15):
        response = await world.client.get("/healthz", params={"q": SCRIPT})
        assert response.status_code == 200  # every request is answered
    async with client_for(world.app, "198.51.100.20") as other:
        assert (await other.get("/healthz", params={"q": SCRIPT})).status_code == 200
    rows = await signals(world)
    assert len(rows) == 11
    assert sorted(r.ip for r in rows).count("203.0.113.10") == 10

    await world.services.limiter.reset("signals:ip:203.0.113.10")  # the minute passes
    await world.client.get("/healthz", params={"q": SCRIPT})
    latest = (await signals(world))[-1]
    assert latest.ip == "203.0.113.10"
    assert latest.details["suppressed"] == 5


class UnavailableSink:
    async def record(self, event: SecurityEvent) -> None:
        raise DatabaseUnavailable()


async def test_an_event_store_outage_never_fails_the_request(world: AuthWorld) -> None:
    """ADR 0032: the signal is logged instead, without the input."""
    world.services.events = UnavailableSink()
    with capture_logs() as logs:
        response = await world.client.get("/healthz", params={"q": TAUTOLOGY})
    assert response.status_code == 200
    [line] = [e for e in logs if e["event"] == "input_signal_not_recorded"]
    assert line["reason"] == "DatabaseUnavailable"
    assert line["detectors"] == "sqli.tautology"
    assert "1=1" not in json.dumps(line, default=str)
