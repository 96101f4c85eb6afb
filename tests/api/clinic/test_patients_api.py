"""Patients through the HTTP API (both backends): validation and normalization of every
field, one CPF per clinic, exact CPF lookup, name search with literal wildcards, keyset
paging that survives ties and refuses forged cursors, a tenant that no header or query
parameter can change, and field-level write rules (receptionists never touch clinical
fields) with masked answers for administrators."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from clinicguard.clinic.cpf import format_cpf
from tests.conftest import AuthWorld
from tests.factories.clinical import ClinicSet, add_clinic_set, new_cpf

PATIENTS = "/api/v1/patients"
PROBLEM = "application/problem+json"
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
DEVANAGARI = str.maketrans("0123456789", "०१२३४५६७८९")


# --- helpers -----------------------------------------------------------------------------------


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "request_id"} <= set(body)
    return body


def fields_of(response: httpx.Response) -> list[str]:
    return [e["field"] for e in problem(response, 422)["errors"]]


def cursor_of(payload: Any) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def wrong_check_digit(cpf: str) -> str:
    return cpf[:10] + str((int(cpf[10]) + 1) % 10)


def new_patient(**overrides: Any) -> dict[str, Any]:
    return {"full_name": "Paciente Novo", "cpf": new_cpf(), **overrides}


async def all_patients(world: AuthWorld, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = await world.client.get(PATIENTS, params={"limit": 200}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["next_cursor"] is None
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def create(world: AuthWorld, headers: dict[str, str], **overrides: Any) -> dict[str, Any]:
    response = await world.client.post(PATIENTS, json=new_patient(**overrides), headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def read(world: AuthWorld, a: ClinicSet, patient_id: Any, who: str) -> dict[str, Any]:
    response = await world.client.get(
        f"{PATIENTS}/{patient_id}", headers=await a.headers(world, who)
    )
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


# --- creating: normalization -------------------------------------------------------------------


async def test_create_stores_normalized_cpf_phone_and_email(world: AuthWorld) -> None:
    """A formatted CPF and a bare one are both stored as 11 digits; a Brazilian phone as
    typed becomes E.164; an email is stored lower-case."""
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    bare, formatted = new_cpf(), new_cpf()
    first = await world.client.post(
        PATIENTS,
        json={
            "full_name": "Joana Prado",
            "cpf": format_cpf(formatted),
            "birth_date": "1985-03-14",
            "phone": "(11) 98765-4321",
            "email": "Joana.Prado@Exemplo.COM.br",
            "address": "Rua Augusta, 1500",
        },
        headers=front,
    )
    assert first.status_code == 201, first.text
    second = await world.client.post(
        PATIENTS, json={"full_name": "Otávio Lima", "cpf": bare}, headers=front
    )
    assert second.status_code == 201, second.text
    # A physician (not on their care team) reads demographics unmasked.
    joana = await read(world, a, first.json()["id"], "physician")
    assert joana["cpf"] == formatted
    assert joana["phone"] == "+5511987654321"
    assert joana["email"] == "joana.prado@exemplo.com.br"
    assert joana["birth_date"] == "1985-03-14"
    assert "allergies" not in joana
    assert (await read(world, a, second.json()["id"], "physician"))["cpf"] == bare


async def test_receptionist_cannot_create_a_patient_with_clinical_fields(
    world: AuthWorld,
) -> None:
    """Clinical fields on a new patient are the clinicians' to write: 403 naming them, and
    no patient is stored."""
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    before = len(await all_patients(world, front))
    response = await world.client.post(
        PATIENTS, json=new_patient(allergies="Penicilina", phone="11987654321"), headers=front
    )
    body = problem(response, 403)
    assert "allergies" in body["detail"]
    assert [e["field"] for e in body["errors"]] == ["body.allergies"]
    assert len(await all_patients(world, front)) == before


# --- creating: validation ----------------------------------------------------------------------


async def test_each_invalid_field_is_a_422_naming_it_and_nothing_is_stored(
    world: AuthWorld,
) -> None:
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    before = await all_patients(world, front)
    valid = new_cpf()
    future = (datetime.now(UTC).date() + timedelta(days=30)).isoformat()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"cpf": wrong_check_digit(valid)}, "body.cpf"),
        ({"cpf": format_cpf(wrong_check_digit(valid))}, "body.cpf"),
        ({"cpf": "111.111.111-11"}, "body.cpf"),
        ({"cpf": valid.translate(FULLWIDTH)}, "body.cpf"),
        ({"cpf": valid.translate(ARABIC_INDIC)}, "body.cpf"),
        ({"cpf": format_cpf(valid).translate(DEVANAGARI)}, "body.cpf"),
        ({"cpf": valid[:9] + "a" + valid[10]}, "body.cpf"),
        ({"cpf": valid + "0"}, "body.cpf"),
        ({"birth_date": future}, "body.birth_date"),
        ({"birth_date": "1850-01-01"}, "body.birth_date"),
        ({"birth_date": "2020-02-30"}, "body.birth_date"),
        ({"phone": "12345678"}, "body.phone"),
        ({"phone": "(11) 1234"}, "body.phone"),
        ({"phone": "not a phone"}, "body.phone"),
        ({"email": "joana@"}, "body.email"),
        ({"email": "joana at exemplo.com"}, "body.email"),
        ({"email": "joana@exemplo..com"}, "body.email"),
        ({"clinic_id": str(uuid.uuid4())}, "body.clinic_id"),
        ({"id": str(uuid.uuid4())}, "body.id"),
        ({"user_id": str(a.people["patient"].id)}, "body.user_id"),
        ({"full_name": "Joana\x00Prado"}, "body.full_name"),
        ({"full_name": "Joana\x1b[2JPrado"}, "body.full_name"),
        ({"full_name": "Joana\u202ePrado"}, "body.full_name"),
        ({"full_name": "Joana\u200bPrado"}, "body.full_name"),
        ({"full_name": "J"}, "body.full_name"),
    ]
    for change, field in cases:
        response = await world.client.post(PATIENTS, json=new_patient(**change), headers=front)
        assert fields_of(response) == [field], (change, response.text)
    missing = await world.client.post(PATIENTS, json={"full_name": "Sem CPF"}, headers=front)
    assert fields_of(missing) == ["body.cpf"]
    assert len(await all_patients(world, front)) == len(before)


async def test_patch_validation_names_the_field_and_changes_nothing(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    url = f"{PATIENTS}/{a.patients[1].id}"
    empty = await world.client.patch(url, json={}, headers=front)
    assert fields_of(empty) == ["body"]
    for change, field in [
        ({"phone": "123"}, "body.phone"),
        ({"email": "no-at-sign"}, "body.email"),
        ({"cpf": wrong_check_digit(a.patients[1].cpf)}, "body.cpf"),
        ({"full_name": "Bruno\x07Costa"}, "body.full_name"),
        ({"nickname": "Bru"}, "body.nickname"),
        ({"clinic_id": str(uuid.uuid4())}, "body.clinic_id"),
    ]:
        response = await world.client.patch(url, json=change, headers=front)
        assert fields_of(response) == [field], (change, response.text)
    unchanged = await read(world, a, a.patients[1].id, "physician")
    assert unchanged["full_name"] == "Bruno Costa"
    assert unchanged["phone"] == "+5511987654321"


async def test_patch_removing_a_required_field_names_it(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    url = f"{PATIENTS}/{a.patients[1].id}"
    response = await world.client.patch(url, json={"full_name": None}, headers=front)
    assert fields_of(response) == ["body.full_name"]
    response = await world.client.patch(url, json={"cpf": None}, headers=front)
    assert fields_of(response) == ["body.cpf"]


async def test_patch_removing_a_required_field_is_refused(world: AuthWorld) -> None:
    """The status half of the rule above, which holds today: 422 and nothing changes."""
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    url = f"{PATIENTS}/{a.patients[1].id}"
    for change in ({"full_name": None}, {"cpf": None}):
        response = await world.client.patch(url, json=change, headers=front)
        problem(response, 422)
    after = await read(world, a, a.patients[1].id, "physician")
    assert after["full_name"] == "Bruno Costa"
    assert after["cpf"] == a.patients[1].cpf


# --- one CPF per clinic ------------------------------------------------------------------------


async def test_a_cpf_is_unique_within_a_clinic_only(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    b = await add_clinic_set(world)
    front_a = await a.headers(world, "receptionist")
    cpf = new_cpf()
    await create(world, front_a, cpf=cpf)
    for spelling in (cpf, format_cpf(cpf)):
        again = await world.client.post(PATIENTS, json=new_patient(cpf=spelling), headers=front_a)
        problem(again, 409)
    # The same person may be a patient of another clinic.
    elsewhere = await world.client.post(
        PATIENTS, json=new_patient(cpf=cpf), headers=await b.headers(world, "receptionist")
    )
    assert elsewhere.status_code == 201, elsewhere.text
    # Changing a patient's CPF to one already used in the clinic is a conflict too.
    taken = await world.client.patch(
        f"{PATIENTS}/{a.patients[1].id}", json={"cpf": format_cpf(cpf)}, headers=front_a
    )
    problem(taken, 409)
    assert (await read(world, a, a.patients[1].id, "physician"))["cpf"] == a.patients[1].cpf
    matches = await world.client.get(PATIENTS, params={"cpf": cpf}, headers=front_a)
    assert len(matches.json()["items"]) == 1


# --- finding patients --------------------------------------------------------------------------


async def test_cpf_lookup_is_an_exact_match_formatted_or_bare(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    doc = await a.headers(world, "physician")
    target = a.patients[2]
    for spelling in (target.cpf, format_cpf(target.cpf)):
        response = await world.client.get(PATIENTS, params={"cpf": spelling}, headers=doc)
        assert response.status_code == 200, response.text
        assert [p["id"] for p in response.json()["items"]] == [str(target.id)]
    unknown = await world.client.get(PATIENTS, params={"cpf": new_cpf()}, headers=doc)
    assert unknown.json()["items"] == []
    for bad in (
        wrong_check_digit(target.cpf),
        target.cpf[:10],
        target.cpf.translate(FULLWIDTH),
        f"{target.cpf[:3]}%{target.cpf[4:]}",
        "' OR 1=1 --",
    ):
        response = await world.client.get(PATIENTS, params={"cpf": bad}, headers=doc)
        assert fields_of(response) == ["query.cpf"], bad


async def test_name_search_is_case_insensitive_with_literal_wildcards(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    percent = await create(world, front, full_name="Taxa 50% Moreira")
    plain = await create(world, front, full_name="Taxa 500 Moreira")
    underscore = await create(world, front, full_name="Maria_Souza")
    lookalike = await create(world, front, full_name="MariaXSouza")

    async def names(q: str) -> set[str]:
        response = await world.client.get(PATIENTS, params={"q": q}, headers=front)
        assert response.status_code == 200, response.text
        return {p["full_name"] for p in response.json()["items"]}

    assert await names("ana paciente") == {"Ana Paciente"}
    assert await names("BRUNO") == {"Bruno Costa"}
    assert await names("cOsTa") == {"Bruno Costa"}
    assert await names("50%") == {percent["full_name"]}
    assert await names("taxa 50") == {percent["full_name"], plain["full_name"]}
    assert await names("%%") == set()
    assert await names("a_s") == {underscore["full_name"]}
    assert await names("maria") == {underscore["full_name"], lookalike["full_name"]}
    assert await names("__") == set()
    assert await names("\\%") == set()
    assert await names("' OR '1'='1") == set()
    too_short = await world.client.get(PATIENTS, params={"q": "a"}, headers=front)
    assert fields_of(too_short) == ["query.q"]
    control = await world.client.get(PATIENTS, params={"q": "An\x00a"}, headers=front)
    assert fields_of(control) == ["query.q"]


async def test_name_search_ignores_case_of_accented_letters(
    world: AuthWorld, request: pytest.FixtureRequest
) -> None:
    """Brazilian names carry accents: 'JOÃO ÉRICO' is found by 'joão' and by 'érico'."""
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    await create(world, front, full_name="JOÃO ÉRICO")
    for q in ("joão", "JOÃO", "érico", "João Érico"):
        response = await world.client.get(PATIENTS, params={"q": q}, headers=front)
        assert [p["full_name"] for p in response.json()["items"]] == ["JOÃO ÉRICO"], q


# --- paging --------------------------------------------------------------------------------------


async def test_paging_with_limit_one_visits_every_patient_once(world: AuthWorld) -> None:
    """Patients created in the same instant (ties on created_at) are each seen exactly once."""
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    created = [await create(world, front, full_name=f"Empate {n}") for n in range(4)]
    expected = {str(p.id) for p in a.patients} | {p["id"] for p in created}
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(len(expected) + 2):
        params: dict[str, Any] = {"limit": 1}
        if cursor:
            params["cursor"] = cursor
        response = await world.client.get(PATIENTS, params=params, headers=front)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 1
        seen.extend(p["id"] for p in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert cursor is None, "paging ended"
    assert len(seen) == len(set(seen)) == len(expected)
    assert set(seen) == expected


async def test_limits_outside_1_to_200_are_422(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    for limit in ("0", "-1", "201", "1000", "ten", "1.5"):
        response = await world.client.get(PATIENTS, params={"limit": limit}, headers=front)
        assert fields_of(response) == ["query.limit"], limit
    ok = await world.client.get(PATIENTS, params={"limit": 200}, headers=front)
    assert ok.status_code == 200


async def test_garbage_and_tampered_cursors_are_422_not_500(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    first = await world.client.get(PATIENTS, params={"limit": 1}, headers=front)
    issued = first.json()["next_cursor"]
    assert issued
    some_id = str(uuid.uuid4())
    garbage = [
        "x",
        "!!!!",
        "%%%%",
        "not-a-cursor",
        issued[:-3],
        issued[::-1],
        "é" * 8,
        base64.urlsafe_b64encode(b"\xff\xfe\xfd\xfc").decode(),
        cursor_of({"a": 1}),
        cursor_of(5),
        cursor_of("text"),
        cursor_of([]),
        cursor_of([1, 2]),
        cursor_of([None, None]),
        cursor_of(["2025-01-01T00:00:00+00:00"]),
        cursor_of(["2025-01-01T00:00:00+00:00", some_id, "extra"]),
        cursor_of(["yesterday", some_id]),
        cursor_of(["2025-01-01T00:00:00+00:00", "not-a-uuid"]),
        cursor_of([["2025"], some_id]),
        "A" * 200,
    ]
    for cursor in garbage:
        response = await world.client.get(
            PATIENTS, params={"limit": 1, "cursor": cursor}, headers=front
        )
        assert fields_of(response) == ["query.cursor"], (cursor, response.text)
    too_long = await world.client.get(PATIENTS, params={"cursor": "A" * 201}, headers=front)
    assert fields_of(too_long) == ["query.cursor"]
    empty = await world.client.get(PATIENTS, params={"cursor": ""}, headers=front)
    assert fields_of(empty) == ["query.cursor"]


async def test_a_cursor_with_a_naive_timestamp_is_422(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    for moment in ("2025-01-01T00:00:00", "2025-01-01"):
        cursor = cursor_of([moment, str(uuid.uuid4())])
        response = await world.client.get(
            PATIENTS, params={"limit": 1, "cursor": cursor}, headers=front
        )
        assert fields_of(response) == ["query.cursor"], response.text


async def test_a_cursor_with_a_non_string_id_is_422(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    for row_id in (12, ["x"], {"id": 1}):
        cursor = cursor_of(["2025-01-01T00:00:00+00:00", row_id])
        response = await world.client.get(
            PATIENTS, params={"limit": 1, "cursor": cursor}, headers=front
        )
        assert fields_of(response) == ["query.cursor"], response.text


async def test_a_cursor_from_a_shifted_timezone_still_pages_correctly(world: AuthWorld) -> None:
    """A well-formed cursor with another UTC offset names the same instant (no 500, no
    skipped rows)."""
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    first = a.patients[0]
    moment = first.created_at.astimezone(UTC) - timedelta(hours=3)
    shifted = moment.replace(tzinfo=None).isoformat() + "-03:00"
    cursor = cursor_of([shifted, str(first.id)])
    response = await world.client.get(PATIENTS, params={"cursor": cursor}, headers=front)
    assert response.status_code == 200, response.text
    assert [p["id"] for p in response.json()["items"]] == [str(p.id) for p in a.patients[1:]]


# --- tenant isolation ----------------------------------------------------------------------------


async def test_no_header_or_parameter_changes_the_clinic(world: AuthWorld) -> None:
    """X-Clinic-ID and ?clinic_id= naming another clinic are ignored: the caller still sees
    their own clinic's patients, the other clinic's patient is still a 404, and a patient
    created with them lands in the caller's clinic."""
    a = await add_clinic_set(world)
    b = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    spoof = {**front, "X-Clinic-ID": str(b.clinic_id)}
    own_ids = {str(p.id) for p in a.patients}
    other_ids = {str(p.id) for p in b.patients}
    for headers, params in (
        (spoof, {}),
        (front, {"clinic_id": str(b.clinic_id)}),
        (spoof, {"clinic_id": str(b.clinic_id)}),
    ):
        listed = await world.client.get(PATIENTS, params=params, headers=headers)
        assert listed.status_code == 200
        assert {p["id"] for p in listed.json()["items"]} == own_ids
        foreign = b.patients[1]
        one = await world.client.get(f"{PATIENTS}/{foreign.id}", params=params, headers=headers)
        assert one.status_code == 404
        patch = await world.client.patch(
            f"{PATIENTS}/{foreign.id}",
            params=params,
            json={"phone": "11912345678"},
            headers=headers,
        )
        assert patch.status_code == 404
        by_cpf = await world.client.get(
            PATIENTS, params={**params, "cpf": foreign.cpf}, headers=headers
        )
        assert by_cpf.json()["items"] == []
    created = await world.client.post(
        PATIENTS, params={"clinic_id": str(b.clinic_id)}, json=new_patient(), headers=spoof
    )
    assert created.status_code == 201
    assert created.json()["id"] in {p["id"] for p in await all_patients(world, front)}
    b_ids = {p["id"] for p in await all_patients(world, await b.headers(world, "receptionist"))}
    assert b_ids == other_ids
    # A missing patient and another clinic's patient answer alike.
    missing = await world.client.get(f"{PATIENTS}/{uuid.uuid4()}", headers=front)
    foreign_one = await world.client.get(f"{PATIENTS}/{b.patients[0].id}", headers=front)
    problem(missing, 404)
    problem(foreign_one, 404)
    strip = ("request_id",)
    assert {k: v for k, v in missing.json().items() if k not in strip} == {
        k: v for k, v in foreign_one.json().items() if k not in strip
    }


# --- field-level rules and masking ---------------------------------------------------------------


async def test_receptionist_may_change_basic_fields_but_not_clinical_ones(
    world: AuthWorld,
) -> None:
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    target = a.patients[1]
    url = f"{PATIENTS}/{target.id}"
    refused = await world.client.patch(url, json={"allergies": "Nenhuma"}, headers=front)
    body = problem(refused, 403)
    assert "allergies" in body["detail"]
    assert [e["field"] for e in body["errors"]] == ["body.allergies"]
    # A mixed change is refused whole: the phone does not change either.
    mixed = await world.client.patch(
        url,
        json={"phone": "(21) 99876-5432", "medications": "Nenhuma", "allergies": None},
        headers=front,
    )
    body = problem(mixed, 403)
    assert {e["field"] for e in body["errors"]} == {"body.allergies", "body.medications"}
    assert "phone" not in body["detail"]
    doc_view = await read(world, a, target.id, "physician")
    assert doc_view["allergies"] == "Dipirona"
    assert doc_view["medications"] == "Losartana 50mg"
    assert doc_view["phone"] == "+5511987654321"
    changed = await world.client.patch(url, json={"phone": "(21) 99876-5432"}, headers=front)
    assert changed.status_code == 200, changed.text
    assert changed.json()["phone"] == "+5521998765432"
    assert "allergies" not in changed.json()
    assert changed.json()["cpf"].startswith("***.")
    assert (await read(world, a, target.id, "physician"))["phone"] == "+5521998765432"


async def test_care_team_physician_may_change_clinical_fields(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    url = f"{PATIENTS}/{a.patients[1].id}"
    response = await world.client.patch(
        url, json={"allergies": "Nenhuma conhecida"}, headers=await a.headers(world, "physician")
    )
    assert response.status_code == 200, response.text
    assert response.json()["allergies"] == "Nenhuma conhecida"
    off = await world.client.patch(
        url, json={"allergies": "Dipirona"}, headers=await a.headers(world, "physician_off")
    )
    assert [e["field"] for e in problem(off, 403)["errors"]] == ["body.allergies"]


async def test_clinic_admin_sees_masked_identifiers_and_no_clinical_fields(
    world: AuthWorld,
) -> None:
    a = await add_clinic_set(world)
    admin = await a.headers(world, "clinic_admin")
    target = a.patients[1]
    one = await world.client.get(f"{PATIENTS}/{target.id}", headers=admin)
    assert one.status_code == 200, one.text
    listed = await world.client.get(PATIENTS, params={"cpf": target.cpf}, headers=admin)
    assert listed.status_code == 200
    for view in (one.json(), listed.json()["items"][0]):
        assert view["full_name"] == "Bruno Costa"
        assert view["cpf"] == f"***.{target.cpf[3:6]}.{target.cpf[6:9]}-**"
        assert view["phone"] == "(**) *****-4321"
        assert view["email"] == f"p***@{target.email.split('@')[1]}"
        assert not {"allergies", "medications", "medical_conditions"} & set(view)
        assert target.cpf not in json.dumps(view)


async def test_birth_date_today_is_accepted(world: AuthWorld) -> None:
    """A newborn registered on the day of birth (the edge of 'not in the future')."""
    a = await add_clinic_set(world)
    today = datetime.now(UTC).date()
    created = await create(
        world, await a.headers(world, "receptionist"), birth_date=today.isoformat()
    )
    assert date.fromisoformat(created["birth_date"]) == today
