"""The audit trail as the issue defines it, through the HTTP API on both backends: the demo
data set used the way a clinic uses it leaves a trail that holds none of its CPFs, phone
numbers, e-mail addresses, diagnoses or passwords, and no key material; an access whose
event cannot be written fails and leaves nothing behind (fail closed); a list names every
patient it returned."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pyotp
import pytest
from sqlalchemy import select, text

from clinicguard.audit.models import AuditEvent, AuditSubject
from clinicguard.audit.recorder import HASHED
from clinicguard.auth.mfa import TotpSeeds
from clinicguard.auth.models import SigningKey
from clinicguard.clinic.demo import _DIAGNOSES, seed_demo
from clinicguard.clinic.models import MedicalRecord
from clinicguard.store.interfaces import TenantContext
from tests.audit_trail import trail_events
from tests.conftest import AuthWorld, Backend

PATIENTS = "/api/v1/patients"
JUSTIFICATION = "Paciente 123.456.789-09 desacordado, telefone (11) 98765-4321 do acompanhante"


@pytest.fixture
async def demo(world: AuthWorld) -> dict[str, Any]:
    services = world.services
    return await seed_demo(
        services.db,
        services.passwords,
        TotpSeeds(services.settings.master_key_bytes()),
        services.fields,
        production=False,
        now=world.clock.now(),
    )


async def sign_in(world: AuthWorld, user: dict[str, Any]) -> dict[str, str]:
    response = await world.client.post(
        "/api/v1/auth/login", json={"email": user["email"], "password": user["password"]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    if body.get("mfa_required"):
        code = pyotp.TOTP(user["totp_secret"]).at(world.clock.now())
        response = await world.client.post(
            "/api/v1/auth/mfa/verify", json={"mfa_token": body["mfa_token"], "code": code}
        )
        assert response.status_code == 200, response.text
        body = response.json()
    return {"authorization": f"Bearer {body['access_token']}"}


def user(clinic: dict[str, Any], role: str, *, care_team: bool | None = None) -> dict[str, Any]:
    return next(
        u
        for u in clinic["users"]
        if u["role"] == role and (care_team is None or u["care_team"] is care_team)
    )


async def use_the_clinic(world: AuthWorld, clinic: dict[str, Any]) -> dict[str, set[str]]:
    """A working day through the API; returns the plaintexts that must not reach the trail."""
    secrets: dict[str, set[str]] = {"cpf": set(), "phone": set(), "email": set(), "text": set()}
    doc = await sign_in(world, user(clinic, "physician", care_team=True))
    front = await sign_in(world, user(clinic, "receptionist"))
    off = await sign_in(world, user(clinic, "physician", care_team=False))
    listed = await world.client.get(f"{PATIENTS}?limit=50", headers=front)
    assert listed.status_code == 200, listed.text
    for patient in clinic["patients"]:
        pid = patient["id"]
        secrets["cpf"].add(patient["cpf"])
        found = await world.client.get(f"{PATIENTS}?cpf={patient['cpf']}", headers=front)
        assert [p["id"] for p in found.json()["items"]] == [pid]
        full = await world.client.get(f"{PATIENTS}/{pid}", headers=doc)
        assert full.status_code == 200, full.text
        body = full.json()
        secrets["phone"].add(body["phone"])
        secrets["email"].add(body["email"])
        secrets["text"] |= {body["address"], body["allergies"], body["medications"]}
        secrets["text"].add(body["medical_conditions"])
        records = await world.client.get(f"{PATIENTS}/{pid}/records", headers=doc)
        assert records.status_code == 200, records.text
        for record in records.json()["items"]:
            secrets["text"] |= {record["diagnosis"], record["notes"], record["treatment"]}
            one = await world.client.get(f"/api/v1/records/{record['id']}", headers=doc)
            assert one.status_code == 200
    target = clinic["patients"][1]["id"]
    wrote = await world.client.post(
        f"{PATIENTS}/{target}/records",
        json={
            "kind": "consultation",
            "diagnosis": "Psoríase em placas (L40.0)",
            "notes": "Refere CPF 529.982.247-25 e e-mail ana.souza@example.com",
            "treatment": "Metotrexato 15 mg semanal",
        },
        headers=doc,
    )
    assert wrote.status_code == 201, wrote.text
    secrets["text"] |= {"Psoríase em placas (L40.0)", "Metotrexato 15 mg semanal"}
    secrets["cpf"].add("529.982.247-25")
    secrets["email"].add("ana.souza@example.com")
    created = await world.client.post(
        PATIENTS,
        json={
            "full_name": "Teste Auditoria",
            "cpf": "111.444.777-35",
            "birth_date": "1980-02-03",
            "phone": "+55 11 91234-5678",
            "email": "teste.auditoria@example.com",
        },
        headers=front,
    )
    assert created.status_code == 201, created.text
    secrets["cpf"].add("111.444.777-35")
    secrets["phone"].add("+5511912345678")
    secrets["email"].add("teste.auditoria@example.com")
    patched = await world.client.patch(
        f"{PATIENTS}/{created.json()['id']}", json={"phone": "+55 21 99876-5432"}, headers=front
    )
    assert patched.status_code == 200, patched.text
    secrets["phone"].add("+5521998765432")
    glass = await world.client.post(
        f"{PATIENTS}/{target}/emergency-access", json={"justification": JUSTIFICATION}, headers=off
    )
    assert glass.status_code == 201, glass.text
    assert (await world.client.get(f"{PATIENTS}/{target}/records", headers=off)).status_code == 200
    secrets["cpf"].add("123.456.789-09")
    secrets["phone"].add("98765-4321")
    # A CPF in a query string and an attack signal carrying one.
    await world.client.get(f"{PATIENTS}?q=' OR 1=1 -- 390.533.447-05", headers=front)
    secrets["cpf"].add("390.533.447-05")
    return secrets


def variants(kind: str, value: str) -> set[str]:
    digits = re.sub(r"\D", "", value)
    if kind == "cpf":
        return {value, digits}
    if kind == "phone":  # a masked phone keeps its last four digits, nothing more
        return {value, digits, digits[-8:]}
    return {value}


async def stored_trail(world: AuthWorld, backend: Backend) -> str:
    """Every column of every event, as stored (read past row-level security)."""
    if backend.postgres is not None:
        with psycopg.connect(backend.postgres.admin_url) as conn:
            rows = conn.execute("SELECT * FROM audit_events").fetchall()
            subjects = conn.execute("SELECT * FROM audit_subjects").fetchall()
        return "\n".join(repr(r) for r in [*rows, *subjects])
    async with world.services.db.transaction() as session:
        rows = (await session.execute(text("SELECT * FROM audit_events"))).all()
    return "\n".join(repr(tuple(r)) for r in rows)


async def key_material(world: AuthWorld, demo: dict[str, Any]) -> set[str]:
    settings = world.services.settings
    raw = [settings.master_key_bytes(), settings.secret_key.get_secret_value().encode()]
    found: set[str] = {"PRIVATE KEY"}
    async with world.services.db.transaction() as session:
        raw += [k.private_sealed for k in (await session.scalars(select(SigningKey))).all()]
    ring = world.services.fields.ring
    for clinic in demo["clinics"]:
        clinic_id = uuid.UUID(clinic["id"])
        for purpose in ("field", "index"):
            raw += [
                await ring.key(clinic_id, purpose, v)
                for v in await ring.versions(clinic_id, purpose)
            ]
    for value in raw:
        found |= {
            value.hex(),
            base64.b64encode(value).decode().rstrip("="),
            base64.urlsafe_b64encode(value).decode().rstrip("="),
        }
    for clinic in demo["clinics"]:
        found |= {u["password"] for u in clinic["users"]}
        found |= {u["totp_secret"] for u in clinic["users"] if u["totp_secret"]}
    return {f for f in found if len(f) >= 8}


async def test_the_trail_holds_no_personal_data_and_no_secrets(
    world: AuthWorld, backend: Backend, demo: dict[str, Any]
) -> None:
    secrets: dict[str, set[str]] = {}
    for clinic in demo["clinics"]:
        for kind, values in (await use_the_clinic(world, clinic)).items():
            secrets.setdefault(kind, set()).update(values)
        # Wrong passwords, for a known and an unknown account.
        for email in (user(clinic, "nurse")["email"], "ninguem@example.com"):
            await world.client.post(
                "/api/v1/auth/login", json={"email": email, "password": "Senha-Errada-9!x"}
            )
    events = await trail_events(world.services.db)
    kinds = {e.event_type for e in events}
    assert {"clinic:patient:read", "clinic:record:create", "auth:login:failure"} <= kinds
    assert any(e.reason and "desacordado" in e.reason for e in events), "the justification"
    stored = await stored_trail(world, backend)
    forbidden = {
        v for kind, values in secrets.items() for s in values if s for v in variants(kind, s)
    }
    forbidden |= set(_DIAGNOSES) | {"Senha-Errada-9!x"}
    forbidden |= await key_material(world, demo)
    leaked = sorted(v for v in forbidden if v and v in stored)
    assert leaked == [], f"found in the audit trail: {leaked}"


async def test_a_list_names_every_patient_it_returned(
    world: AuthWorld, demo: dict[str, Any]
) -> None:
    clinic = demo["clinics"][0]
    front = await sign_in(world, user(clinic, "receptionist"))
    listed = await world.client.get(f"{PATIENTS}?limit=50", headers=front)
    assert listed.status_code == 200
    returned = sorted(p["id"] for p in listed.json()["items"])
    request_id = listed.headers["x-request-id"]
    clinic_id = uuid.UUID(clinic["id"])
    [event] = [
        e
        for e in await trail_events(world.services.db, types="clinic:patient:list")
        if e.request_id == request_id
    ]
    assert sorted(str(event.details["patient_ids"]).split(",")) == returned
    async with world.services.db.transaction(TenantContext.system(clinic_id)) as session:
        indexed = (
            await session.scalars(
                select(AuditSubject.patient_id).where(
                    AuditSubject.clinic_id == clinic_id, AuditSubject.seq == event.seq
                )
            )
        ).all()
    assert sorted(str(p) for p in indexed) == returned


@asynccontextmanager
async def broken_trail(world: AuthWorld, backend: Backend) -> AsyncIterator[None]:
    """Make every append to the trail fail at the database, as a full disk or a revoked
    grant would, and restore it afterwards."""
    if backend.postgres is not None:
        with psycopg.connect(backend.postgres.admin_url, autocommit=True) as conn:
            conn.execute("REVOKE INSERT ON audit_events FROM cg_test_app")
        try:
            yield
        finally:
            with psycopg.connect(backend.postgres.admin_url, autocommit=True) as conn:
                conn.execute("GRANT INSERT ON audit_events TO cg_test_app")
        return
    async with world.services.db.transaction() as session:
        await session.execute(
            text(
                "CREATE TRIGGER audit_down BEFORE INSERT ON audit_events"
                " BEGIN SELECT RAISE(ABORT, 'audit trail unavailable'); END"
            )
        )
    try:
        yield
    finally:
        async with world.services.db.transaction() as session:
            await session.execute(text("DROP TRIGGER audit_down"))


async def test_no_event_no_access(world: AuthWorld, backend: Backend, demo: dict[str, Any]) -> None:
    """Fail closed: when the event cannot be written, the read returns no data and the write
    leaves no row, and a clear problem answer says so."""
    clinic = demo["clinics"][0]
    doc = await sign_in(world, user(clinic, "physician", care_team=True))
    patient = clinic["patients"][0]["id"]
    clinic_id = uuid.UUID(clinic["id"])
    async with world.services.db.transaction(TenantContext.system(clinic_id)) as session:
        before = len((await session.scalars(select(MedicalRecord.id))).all())
    async with broken_trail(world, backend):
        read = await world.client.get(f"{PATIENTS}/{patient}", headers=doc)
        wrote = await world.client.post(
            f"{PATIENTS}/{patient}/records",
            json={"kind": "consultation", "diagnosis": "Acne vulgar (L70.0)"},
            headers=doc,
        )
    for answer in (read, wrote):
        assert answer.status_code >= 500, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        body = answer.json()
        assert "full_name" not in body
        assert "Traceback" not in answer.text
        assert "audit_events" not in answer.text
    async with world.services.db.transaction(TenantContext.system(clinic_id)) as session:
        after = len((await session.scalars(select(MedicalRecord.id))).all())
    assert after == before


def test_hashed_columns_cover_the_whole_event() -> None:
    """Every stored column but the hash is under the hash (a column added later must be
    added to the chain too)."""
    columns = {c.name for c in AuditEvent.__table__.columns}
    assert columns - {"hash"} == set(HASHED)
    assert json.dumps(sorted(HASHED))  # stable, serialisable names
