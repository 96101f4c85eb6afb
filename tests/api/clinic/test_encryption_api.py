"""Field encryption as the HTTP API shows it (both backends).

- A stored value that does not authenticate (a flipped byte, or another patient's
  ciphertext copied in) is never answered with a placeholder or with the other patient's
  data: the read is a 500 problem of type ``decryption-failed`` that carries no key id, no
  ciphertext and no plaintext, and a critical ``crypto:decrypt:failed`` event names the
  table, column and row. A caller for whom the field is hidden still reads the patient
  (hidden fields are never decrypted).
- The CPF blind index finds a patient by formatted and bare CPF, before and after an
  index-key rotation and after re-indexing; one CPF per clinic still holds.
- ``POST /api/v1/security/encryption/test``: who may call it, what it answers, what it
  refuses, and that the submitted data is found nowhere afterwards (events, tables, files,
  logs).
"""

from __future__ import annotations

import base64
import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import structlog
from psycopg import sql as pgsql
from sqlalchemy import select, update

from clinicguard.audit.models import AuditEvent
from clinicguard.clinic.cpf import format_cpf
from clinicguard.clinic.maintenance import TABLES, reencrypt
from clinicguard.core.principal import Role
from clinicguard.crypto.keyring import FIELD, INDEX
from clinicguard.crypto.service import index_version
from clinicguard.store.interfaces import TenantContext
from tests.audit_trail import trail_events
from tests.conftest import AuthWorld, Backend
from tests.factories.clinical import add_clinic_set, new_cpf
from tests.factories.people import add_person

PATIENTS = "/api/v1/patients"
SELF_TEST = "/api/v1/security/encryption/test"
PROBLEM = "application/problem+json"
DECRYPTION_FAILED = "urn:clinicguard:problem:decryption-failed"


# --- helpers -----------------------------------------------------------------------------------


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


async def stored(
    world: AuthWorld, table: str, clinic_id: uuid.UUID, row_id: uuid.UUID, column: str
) -> Any:
    """The stored (ciphertext) value of one column, read as maintenance."""
    model = TABLES[table]
    async with world.services.db.transaction(TenantContext.system(clinic_id)) as session:
        return await session.scalar(
            select(getattr(model, column)).where(model.clinic_id == clinic_id, model.id == row_id)
        )


async def overwrite(  # noqa: PLR0917 (one cell's full address)
    world: AuthWorld,
    backend: Backend,
    table: str,
    clinic_id: uuid.UUID,
    row_id: uuid.UUID,
    column: str,
    value: bytes,
) -> None:
    """Tamper with one stored value behind the application's back: as the PostgreSQL
    superuser (no row-level security, no application code), or on SQLite through the
    application's database handle as maintenance."""
    if backend.postgres is not None:
        with psycopg.connect(backend.postgres.admin_url, autocommit=True) as conn:
            changed = conn.execute(
                pgsql.SQL("UPDATE {} SET {} = %s WHERE clinic_id = %s AND id = %s").format(
                    pgsql.Identifier(table), pgsql.Identifier(column)
                ),
                (value, clinic_id, row_id),
            ).rowcount
    else:
        model = TABLES[table]
        async with world.services.db.transaction(TenantContext.system(clinic_id)) as session:
            result = await session.execute(
                update(model)
                .where(model.clinic_id == clinic_id, model.id == row_id)
                .values({column: value})
                .execution_options(synchronize_session=False)
            )
            changed = result.rowcount  # type: ignore[attr-defined]
    assert changed == 1


def flip_byte(blob: bytes, position: int) -> bytes:
    tampered = bytearray(blob)
    tampered[position] ^= 0x40
    return bytes(tampered)


async def decrypt_failures(world: AuthWorld, clinic_id: uuid.UUID) -> list[AuditEvent]:
    return await trail_events(world.services.db, types="crypto:decrypt:failed", clinic_id=clinic_id)


async def key_ids(world: AuthWorld, clinic_id: uuid.UUID) -> list[str]:
    """Every id a key of this clinic could be shown by, and the key bytes themselves."""
    ring = world.services.fields.ring
    out = [ring.provider.active_kek_id(), f"clinic:{clinic_id}", ":field:v", "kek:"]
    for purpose in (FIELD, INDEX):
        for version in await ring.versions(clinic_id, purpose):
            key = await ring.key(clinic_id, purpose, version)
            out += [key.hex(), base64.b64encode(key).decode()]
    return out


def assert_reveals_nothing(text: str, secrets: list[str]) -> None:
    leaked = [s for s in secrets if s and s.lower() in text.lower()]
    assert leaked == [], text


def ciphertext_forms(blob: bytes) -> list[str]:
    return [blob.hex(), blob[6:].hex(), base64.b64encode(blob).decode(), blob[6:18].hex()]


async def patient_by_cpf(world: AuthWorld, headers: dict[str, str], cpf: str) -> list[str]:
    response = await world.client.get(PATIENTS, params={"cpf": cpf}, headers=headers)
    assert response.status_code == 200, response.text
    return [p["id"] for p in response.json()["items"]]


# --- tampering ---------------------------------------------------------------------------------


async def test_flipped_byte_in_allergies_is_a_loud_failure(
    world: AuthWorld, backend: Backend
) -> None:
    """One byte of a patient's stored allergies changed in the database: the care-team
    physician's read is a 500 decryption-failed problem (never the value, never a
    placeholder) saying nothing about keys or data; a critical event names the place."""
    a = await add_clinic_set(world)
    patient = a.patients[1]
    doctor = await a.headers(world, "physician")
    before = await world.client.get(f"{PATIENTS}/{patient.id}", headers=doctor)
    assert before.status_code == 200, before.text
    assert before.json()["allergies"] == patient.allergies
    original = await stored(world, "patients", a.clinic_id, patient.id, "allergies")
    # The last byte of the tag: the header still names a valid key.
    await overwrite(
        world,
        backend,
        "patients",
        a.clinic_id,
        patient.id,
        "allergies",
        flip_byte(original, len(original) - 1),
    )

    response = await world.client.get(f"{PATIENTS}/{patient.id}", headers=doctor)
    body = problem(response, 500)
    assert body["type"] == DECRYPTION_FAILED
    secrets = [
        patient.allergies,
        patient.cpf,
        patient.medications,
        *ciphertext_forms(original),
        *await key_ids(world, a.clinic_id),
    ]
    assert_reveals_nothing(response.text, secrets)
    assert set(body) <= {"type", "title", "status", "detail", "instance", "request_id"}

    (event,) = await decrypt_failures(world, a.clinic_id)
    assert (event.risk_level, event.requires_review) == ("critical", True)
    assert event.outcome == "failure"
    assert event.details["table"] == "patients"
    assert event.details["column"] == "allergies"
    assert event.details["row_id"] == str(patient.id)
    assert_reveals_nothing(repr((event.details, event.reason)), secrets)

    # The neighbours are untouched.
    other = await world.client.get(f"{PATIENTS}/{a.patients[2].id}", headers=doctor)
    assert other.status_code == 200, other.text
    assert other.json()["allergies"] == a.patients[2].allergies


@pytest.mark.parametrize("position", [0, 1, 2, 5, 6, 17, 18, -17], ids=lambda p: f"byte{p}")
async def test_flip_anywhere_in_the_stored_value_fails_the_read(
    world: AuthWorld, backend: Backend, position: int
) -> None:
    """Header (format, kind, version), nonce, ciphertext or tag: every flip is a 500."""
    a = await add_clinic_set(world)
    patient = a.patients[0]
    original = await stored(world, "patients", a.clinic_id, patient.id, "allergies")
    await overwrite(
        world,
        backend,
        "patients",
        a.clinic_id,
        patient.id,
        "allergies",
        flip_byte(original, position % len(original)),
    )
    response = await world.client.get(
        f"{PATIENTS}/{patient.id}", headers=await a.headers(world, "physician")
    )
    assert problem(response, 500)["type"] == DECRYPTION_FAILED
    assert patient.allergies not in response.text
    assert len(await decrypt_failures(world, a.clinic_id)) == 1


async def test_another_patients_ciphertext_copied_in_does_not_open(
    world: AuthWorld, backend: Backend
) -> None:
    """Patient A's CPF ciphertext copied into patient B's row: reading B fails exactly like
    tampering (A's CPF is never shown as B's), for the physician and the front desk."""
    a = await add_clinic_set(world)
    first, second = a.patients[0], a.patients[1]
    stolen = await stored(world, "patients", a.clinic_id, first.id, "cpf")
    await overwrite(world, backend, "patients", a.clinic_id, second.id, "cpf", stolen)

    for who in ("physician", "receptionist"):
        response = await world.client.get(
            f"{PATIENTS}/{second.id}", headers=await a.headers(world, who)
        )
        body = problem(response, 500)
        assert body["type"] == DECRYPTION_FAILED
        assert_reveals_nothing(
            response.text,
            [
                first.cpf,
                format_cpf(first.cpf),
                second.cpf,
                first.cpf[-4:],
                *ciphertext_forms(stolen),
            ],
        )
    events = await decrypt_failures(world, a.clinic_id)
    assert len(events) == 2
    assert {(e.details["table"], e.details["column"], e.details["row_id"]) for e in events} == {
        ("patients", "cpf", str(second.id))
    }
    assert {(e.risk_level, e.requires_review) for e in events} == {("critical", True)}
    # A itself still reads; the listing that includes B fails rather than skip or blank it.
    first_read = await world.client.get(
        f"{PATIENTS}/{first.id}", headers=await a.headers(world, "physician")
    )
    assert first_read.status_code == 200, first_read.text
    assert first_read.json()["cpf"] == first.cpf
    listing = await world.client.get(
        PATIENTS, params={"limit": 50}, headers=await a.headers(world, "receptionist")
    )
    assert problem(listing, 500)["type"] == DECRYPTION_FAILED


@pytest.mark.parametrize("who", ["receptionist", "physician_off"])
async def test_caller_with_allergies_hidden_still_reads_the_tampered_patient(
    world: AuthWorld, backend: Backend, who: str
) -> None:
    """Hidden fields are never decrypted: a corrupted allergies value does not stop the
    front desk (or a physician outside the care team) from reading the demographics, and
    nothing is recorded as a decryption failure for them."""
    a = await add_clinic_set(world)
    patient = a.patients[2]
    original = await stored(world, "patients", a.clinic_id, patient.id, "allergies")
    await overwrite(
        world, backend, "patients", a.clinic_id, patient.id, "allergies", flip_byte(original, 20)
    )
    response = await world.client.get(
        f"{PATIENTS}/{patient.id}", headers=await a.headers(world, who)
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "allergies" not in body
    assert body["full_name"] == patient.full_name
    assert body["cpf"]  # masked or not, it was decrypted: it is intact
    assert await decrypt_failures(world, a.clinic_id) == []


# --- blind index -------------------------------------------------------------------------------


async def test_cpf_lookup_survives_index_rotation_and_reindexing(world: AuthWorld) -> None:
    """``?cpf=`` finds a patient by formatted and bare CPF; after the index key rotates
    old rows are still found (every version is tried) and new rows use the new version;
    after re-encryption every row carries the new index version and is still found."""
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    for patient in a.patients:
        assert await patient_by_cpf(world, front, patient.cpf) == [str(patient.id)]
        assert await patient_by_cpf(world, front, format_cpf(patient.cpf)) == [str(patient.id)]
    assert await patient_by_cpf(world, front, new_cpf()) == []

    fields = world.services.fields
    assert await fields.ring.rotate(a.clinic_id, INDEX) == 2
    newcomer_cpf = new_cpf()
    created = await world.client.post(
        PATIENTS,
        json={"full_name": "Nova Pessoa", "cpf": format_cpf(newcomer_cpf)},
        headers=front,
    )
    assert created.status_code == 201, created.text
    newcomer = uuid.UUID(created.json()["id"])
    assert index_version(await stored(world, "patients", a.clinic_id, newcomer, "cpf_index")) == 2
    for patient in a.patients:
        index = await stored(world, "patients", a.clinic_id, patient.id, "cpf_index")
        assert index_version(index) == 1
        assert await patient_by_cpf(world, front, format_cpf(patient.cpf)) == [str(patient.id)]
        assert await patient_by_cpf(world, front, patient.cpf) == [str(patient.id)]
    assert await patient_by_cpf(world, front, newcomer_cpf) == [str(newcomer)]

    report = await reencrypt(world.services.db, fields, clinics=[a.clinic_id])
    assert report.skipped_changed == 0
    for patient in a.patients:
        assert (
            index_version(await stored(world, "patients", a.clinic_id, patient.id, "cpf_index"))
            == 2
        )
        assert (
            index_version(await stored(world, "patients", a.clinic_id, patient.id, "email_index"))
            == 2
        )
        assert await patient_by_cpf(world, front, patient.cpf) == [str(patient.id)]
        assert await patient_by_cpf(world, front, format_cpf(patient.cpf)) == [str(patient.id)]
    assert await patient_by_cpf(world, front, newcomer_cpf) == [str(newcomer)]


async def test_cpf_stays_unique_after_index_rotation_and_reindexing(world: AuthWorld) -> None:
    """One CPF per clinic: a second patient with a CPF already indexed under the new key
    (re-indexed, or written after the rotation) is a 409."""
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    await world.services.fields.ring.rotate(a.clinic_id, INDEX)
    after_rotation = new_cpf()
    first = await world.client.post(
        PATIENTS, json={"full_name": "Primeira", "cpf": after_rotation}, headers=front
    )
    assert first.status_code == 201, first.text
    again = await world.client.post(
        PATIENTS, json={"full_name": "Segunda", "cpf": format_cpf(after_rotation)}, headers=front
    )
    problem(again, 409)
    await reencrypt(world.services.db, world.services.fields, clinics=[a.clinic_id])
    for cpf in (a.patients[0].cpf, format_cpf(a.patients[1].cpf)):
        problem(
            await world.client.post(
                PATIENTS, json={"full_name": "Duplicada", "cpf": cpf}, headers=front
            ),
            409,
        )


async def test_cpf_stays_unique_between_index_rotation_and_reindexing(
    world: AuthWorld,
) -> None:
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    await world.services.fields.ring.rotate(a.clinic_id, INDEX)
    duplicate = await world.client.post(
        PATIENTS, json={"full_name": "Duplicada", "cpf": a.patients[0].cpf}, headers=front
    )
    problem(duplicate, 409)


async def test_cpf_change_to_a_taken_cpf_is_refused_after_index_rotation(
    world: AuthWorld,
) -> None:
    a = await add_clinic_set(world)
    front = await a.headers(world, "receptionist")
    await world.services.fields.ring.rotate(a.clinic_id, INDEX)
    response = await world.client.patch(
        f"{PATIENTS}/{a.patients[1].id}", json={"cpf": a.patients[0].cpf}, headers=front
    )
    problem(response, 409)


# --- POST /api/v1/security/encryption/test -----------------------------------------------------


async def test_clinic_admin_self_test_names_the_clinic_field_key(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    admin = await a.headers(world, "clinic_admin")
    response = await world.client.post(SELF_TEST, json={"data": "ping"}, headers=admin)
    assert response.status_code == 200, response.text
    assert response.json() == {"ok": True, "key_id": f"clinic:{a.clinic_id}:field:v1"}
    # After a rotation the active key is the new version.
    await world.services.fields.ring.rotate(a.clinic_id, FIELD)
    response = await world.client.post(SELF_TEST, json={"data": "ping"}, headers=admin)
    assert response.status_code == 200, response.text
    assert response.json() == {"ok": True, "key_id": f"clinic:{a.clinic_id}:field:v2"}


async def test_platform_admin_self_test_names_the_kek(world: AuthWorld) -> None:
    platform = await add_person(world.services, None, Role.PLATFORM_ADMIN)
    headers = world.bearer(await world.login(platform))
    response = await world.client.post(SELF_TEST, json={"data": "ping"}, headers=headers)
    assert response.status_code == 200, response.text
    kek = world.services.fields.ring.provider.active_kek_id()
    assert response.json() == {"ok": True, "key_id": f"kek:{kek}"}


@pytest.mark.parametrize(
    "who", ["physician", "physician_off", "nurse", "receptionist", "compliance_officer", "patient"]
)
async def test_other_roles_may_not_run_the_self_test(world: AuthWorld, who: str) -> None:
    a = await add_clinic_set(world)
    response = await world.client.post(
        SELF_TEST, json={"data": "ping"}, headers=await a.headers(world, who)
    )
    problem(response, 403)


async def test_self_test_needs_a_signed_in_caller(world: AuthWorld) -> None:
    problem(await world.client.post(SELF_TEST, json={"data": "ping"}), 401)
    problem(
        await world.client.post(
            SELF_TEST, json={"data": "ping"}, headers={"authorization": "Bearer not-a-token"}
        ),
        401,
    )


@pytest.mark.parametrize(
    "body",
    [
        {"data": ""},
        {},
        {"data": None},
        {"data": 12345},
        {"data": ["x"]},
        {"data": "x" * 10_001},
        {"data": "ok", "key": "v1"},
        {"payload": "ok"},
    ],
    ids=["empty", "missing", "null", "number", "list", "too-long", "unknown-field", "wrong-name"],
)
async def test_self_test_refuses_malformed_bodies(world: AuthWorld, body: dict[str, Any]) -> None:
    a = await add_clinic_set(world)
    response = await world.client.post(
        SELF_TEST, json=body, headers=await a.headers(world, "clinic_admin")
    )
    problem(response, 422)


def files_under(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def postgres_text(backend: Backend) -> str:
    """Every row of every table as text, read as the superuser (bytea as hex)."""
    assert backend.postgres is not None
    chunks: list[str] = []
    with psycopg.connect(backend.postgres.admin_url, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ]
        assert "audit_events" in tables
        for table in tables:
            query = pgsql.SQL("SELECT t::text FROM {} t").format(pgsql.Identifier(table))
            chunks += [row[0] for row in conn.execute(query)]
    return "\n".join(chunks)


async def test_self_test_data_is_found_nowhere_afterwards(
    world: AuthWorld,
    backend: Backend,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The data sent to the self-test (accepted, refused by policy, or refused as invalid)
    is not in any answer, any security event, any table or database file, the key vault,
    the mail folder, or any log line."""
    caplog.set_level(logging.DEBUG)
    marker = f"SELFTEST-MARKER-{uuid.uuid4().hex}"
    unicode_marker = f"Açúcar-ß-{uuid.uuid4().hex[:12]}"
    attack_marker = f"<script>alert('{uuid.uuid4().hex}')</script>' OR 1=1 --"
    markers = [marker, unicode_marker, attack_marker]
    a = await add_clinic_set(world)
    admin = await a.headers(world, "clinic_admin")
    doctor = await a.headers(world, "physician")
    platform = await add_person(world.services, None, Role.PLATFORM_ADMIN)
    platform_headers = world.bearer(await world.login(platform))

    answers: list[httpx.Response] = []
    with structlog.testing.capture_logs() as logs:
        for data in markers:
            for headers, status in ((admin, 200), (platform_headers, 200), (doctor, 403)):
                response = await world.client.post(SELF_TEST, json={"data": data}, headers=headers)
                assert response.status_code == status, response.text
                answers.append(response)
            invalid = await world.client.post(
                SELF_TEST, json={"data": "ok", "extra": data}, headers=admin
            )
            assert invalid.status_code == 422, invalid.text
            answers.append(invalid)
            anonymous = await world.client.post(SELF_TEST, json={"data": data})
            assert anonymous.status_code == 401
            answers.append(anonymous)
        await world.services.fields.ring.flush()

    forms = [m for marker_ in markers for m in (marker_, marker_.encode().hex())]
    forms += [base64.b64encode(m.encode()).decode() for m in markers]
    for response in answers:
        assert_reveals_nothing(response.text, markers)

    events = await trail_events(world.services.db)
    assert events, "the 403s at least are recorded"
    for event in events:
        assert_reveals_nothing(repr(vars(event)), forms)

    if backend.postgres is not None:
        assert_reveals_nothing(postgres_text(backend), forms)
    data_dir = world.services.settings.data_dir
    raw = files_under(data_dir)
    assert raw, "the SQLite files and the key vault live under the data dir"
    for m in markers:
        for encoding in ("utf-8", "utf-16-le"):
            assert m.encode(encoding) not in raw

    captured = capfd.readouterr()
    log_text = "\n".join(
        [repr(logs), caplog.text, captured.out, captured.err]
        + [repr(r.__dict__) for r in caplog.records]
    )
    assert_reveals_nothing(log_text, forms)
