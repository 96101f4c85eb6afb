"""Migration 0004 (field encryption) over a database that already holds patient data, on
SQLite and on PostgreSQL (schema owner and application role as in tests/services.py).

Plaintext patients, records, prescriptions and appointments are written at revision 0003
(on PostgreSQL through row-level security, as maintenance of each clinic). Then:

- with the master key, the upgrade encrypts every value in place: the raw rows hold only
  v1 ciphertext under each clinic's new field key, blind indexes are computed, and the
  application reads every value back decrypted (services and HTTP API, CPF lookup
  included); re-encryption then moves the clinical content to the patients' own keys;
- without a master key the upgrade refuses with a RuntimeError that says what to do, and
  leaves the database exactly at 0003 with its data untouched (nothing half-done).
"""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from psycopg import sql as pgsql
from sqlalchemy import select

from clinicguard.app import create_app
from clinicguard.clinic.cpf import format_cpf
from clinicguard.clinic.maintenance import TABLES, reencrypt, version_counts
from clinicguard.clinic.models import ENCRYPTED
from clinicguard.clinic.protection import open_from
from clinicguard.crypto.fields import KeyKind, header_of
from clinicguard.settings import Settings
from clinicguard.store.base import UTCDateTime
from clinicguard.store.interfaces import TenantContext
from clinicguard.store.migrate import alembic_config, upgrade_to_head
from tests.conftest import client_for
from tests.factories.clinical import new_cpf
from tests.services import (
    OWNER_ROLE,
    PostgresDatabase,
    create_postgres_database,
    drop_postgres_database,
)

PASSWORD = "Ipê-amarelo floresce 7 vezes!"
#: The tables and columns migration 0004 encrypts (later revisions add their own).
ENCRYPTED_COLUMNS = {
    table: tuple(ENCRYPTED[table])
    for table in ("patients", "appointments", "medical_records", "prescriptions")
}


# --- the database under test ----------------------------------------------------------------


@dataclass
class Legacy:
    """A database at revision 0003 and the ways to reach it."""

    owner_url: str  # async, the schema owner (migrations)
    app_url: str  # async, the application's role
    sync_url: str  # sync, the schema owner (writing the old data)
    directory: Path
    postgres: PostgresDatabase | None = None
    expected: dict[str, dict[uuid.UUID, dict[str, Any]]] = field(default_factory=dict)
    clinics: list[uuid.UUID] = field(default_factory=list)
    receptionists: dict[uuid.UUID, str] = field(default_factory=dict)


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def legacy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Legacy]:
    if request.param == "sqlite":
        path = tmp_path / "legacy.db"
        url = f"sqlite+aiosqlite:///{path}"
        db = Legacy(url, url, f"sqlite:///{path}", tmp_path)
    else:
        pg = create_postgres_database()
        db = Legacy(
            pg.owner_url,
            pg.app_url,
            pg.psycopg_url(OWNER_ROLE).replace("postgresql://", "postgresql+psycopg://"),
            tmp_path,
            pg,
        )
    try:
        command.upgrade(alembic_config(db.owner_url, db.app_url), "0003")
        write_plaintext_data(db)
        yield db
    finally:
        if db.postgres is not None:
            drop_postgres_database(db.postgres)


def _column_type(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return sa.Uuid()
    if isinstance(value, datetime):
        return UTCDateTime()
    if isinstance(value, date):
        return sa.Date()
    if isinstance(value, bool):
        return sa.Boolean()
    return None


def insert(conn: sa.Connection, table: str, **values: Any) -> None:
    columns = [sa.column(name, _column_type(value)) for name, value in values.items()]
    conn.execute(sa.table(table, *columns).insert().values(**values))


def as_system(conn: sa.Connection, clinic_id: uuid.UUID) -> None:
    """Maintenance of one clinic, so PostgreSQL's row-level security lets the rows in."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            sa.text(
                "SELECT set_config('app.clinic_id', :c, true),"
                " set_config('app.role', 'system', true)"
            ),
            {"c": str(clinic_id)},
        )


def write_plaintext_data(db: Legacy) -> None:
    """Two clinics, each with a physician and a receptionist, a patient with every field
    and one with only a CPF, records, a prescription and appointments — in plaintext, as
    revision 0003 stored them."""
    tag = uuid.uuid4().hex[:8]
    now = datetime.now(UTC).replace(microsecond=0)
    engine = sa.create_engine(db.sync_url)
    expected: dict[str, dict[uuid.UUID, dict[str, Any]]] = {t: {} for t in ENCRYPTED_COLUMNS}
    try:
        for n in range(2):
            clinic_id = uuid.uuid4()
            people = {role: uuid.uuid4() for role in ("physician", "receptionist")}
            stamps = {"created_at": now, "updated_at": now}
            with engine.begin() as conn:
                insert(
                    conn,
                    "clinics",
                    id=clinic_id,
                    name=f"Clínica Legada {n} {tag}",
                    timezone="America/Sao_Paulo",
                    opens_at_minute=0,
                    closes_at_minute=24 * 60,
                    is_active=True,
                    is_demo=False,
                    **stamps,
                )
                for role, user_id in people.items():
                    email = f"{role}-{n}-{tag}@legada.example.com"
                    insert(
                        conn,
                        "users",
                        id=user_id,
                        email=email,
                        full_name=f"{role.title()} Legado",
                        password_hash="$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA",
                        password_changed_at=now,
                        is_platform_admin=False,
                        is_active=True,
                        mfa_enabled=False,
                        must_change_password=False,
                        **stamps,
                    )
                    if role == "receptionist":
                        db.receptionists[clinic_id] = email
            with engine.begin() as conn:
                as_system(conn, clinic_id)
                for role, user_id in people.items():
                    insert(
                        conn,
                        "clinic_memberships",
                        clinic_id=clinic_id,
                        user_id=user_id,
                        role=role,
                        is_active=True,
                        **stamps,
                    )
                full, bare = uuid.uuid4(), uuid.uuid4()
                patients = {
                    full: {
                        "cpf": new_cpf(),
                        "phone": f"+551198{uuid.uuid4().int % 10**7:07d}",
                        "email": f"paciente-{n}-{tag}@legada.example.com",
                        "address": f"Rua Legada {tag}, {n}",
                        "allergies": f"Alergia legada {tag}-{n}",
                        "medications": f"Medicamento legado {tag}-{n}",
                        "medical_conditions": f"Condição legada {tag}-{n}",
                    },
                    bare: {
                        "cpf": new_cpf(),
                        **dict.fromkeys(
                            (
                                "phone",
                                "email",
                                "address",
                                "allergies",
                                "medications",
                                "medical_conditions",
                            )
                        ),
                    },
                }
                for patient_id, values in patients.items():
                    insert(
                        conn,
                        "patients",
                        clinic_id=clinic_id,
                        id=patient_id,
                        full_name="Paciente Legado",
                        **values,
                        **stamps,
                    )
                    expected["patients"][patient_id] = values
                insert(
                    conn,
                    "care_team",
                    clinic_id=clinic_id,
                    patient_id=full,
                    professional_id=people["physician"],
                    added_at=now,
                )
                records = {
                    uuid.uuid4(): (
                        full,
                        {
                            "diagnosis": f"Diagnóstico legado {tag}-{n}",
                            "notes": f"Nota legada {tag}-{n}",
                            "treatment": f"Tratamento legado {tag}-{n}",
                        },
                    ),
                    uuid.uuid4(): (
                        bare,
                        {"diagnosis": None, "notes": f"Só nota {tag}-{n}", "treatment": None},
                    ),
                }
                for record_id, (patient_id, values) in records.items():
                    insert(
                        conn,
                        "medical_records",
                        clinic_id=clinic_id,
                        id=record_id,
                        patient_id=patient_id,
                        author_id=people["physician"],
                        kind="consultation",
                        created_at=now - timedelta(days=1),
                        **values,
                    )
                    expected["medical_records"][record_id] = values
                prescription_id = uuid.uuid4()
                prescription = {
                    "medication": f"Fármaco legado {tag}-{n}",
                    "dosage": f"Dose legada {tag}-{n}",
                    "instructions": None,
                }
                insert(
                    conn,
                    "prescriptions",
                    clinic_id=clinic_id,
                    id=prescription_id,
                    patient_id=full,
                    prescriber_id=people["physician"],
                    status="active",
                    issued_at=now - timedelta(days=1),
                    **prescription,
                )
                expected["prescriptions"][prescription_id] = prescription
                for patient_id, reason in ((full, f"Motivo legado {tag}-{n}"), (bare, None)):
                    appointment_id = uuid.uuid4()
                    starts = now + timedelta(days=3, hours=n * 2 + (patient_id == bare))
                    insert(
                        conn,
                        "appointments",
                        clinic_id=clinic_id,
                        id=appointment_id,
                        patient_id=patient_id,
                        professional_id=people["physician"],
                        starts_at=starts,
                        ends_at=starts + timedelta(minutes=30),
                        status="scheduled",
                        reason=reason,
                        **stamps,
                    )
                    expected["appointments"][appointment_id] = {"reason": reason}
            db.clinics.append(clinic_id)
    finally:
        engine.dispose()
    db.expected = expected


# --- what the database holds --------------------------------------------------------------------


def plaintexts(db: Legacy) -> list[str]:
    found = []
    for rows in db.expected.values():
        for values in rows.values():
            found += [v for v in values.values() if isinstance(v, str)]
    return found + [format_cpf(v["cpf"]) for v in db.expected["patients"].values()]


def raw_text(db: Legacy) -> tuple[str, bytes]:
    """Every table as text (PostgreSQL, as the superuser: bytea as hex) and every file
    under the test's folder (the SQLite database and its WAL, the key vault)."""
    text = ""
    if db.postgres is not None:
        chunks: list[str] = []
        with psycopg.connect(db.postgres.admin_url, autocommit=True) as conn:
            tables = [
                r[0]
                for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            ]
            for table in tables:
                query = pgsql.SQL("SELECT t::text FROM {} t").format(pgsql.Identifier(table))
                chunks += [row[0] for row in conn.execute(query)]
        text = "\n".join(chunks)
    files = b"".join(p.read_bytes() for p in sorted(db.directory.rglob("*")) if p.is_file())
    return text, files


def schema_state(db: Legacy) -> dict[str, Any]:
    engine = sa.create_engine(db.sync_url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
            state: dict[str, Any] = {
                "version": version,
                "tables": sorted(inspector.get_table_names()),
            }
            for table in ENCRYPTED_COLUMNS:
                state[f"columns:{table}"] = sorted(
                    (c["name"], str(c["type"])) for c in inspector.get_columns(table)
                )
        return state
    finally:
        engine.dispose()


def stored_values(db: Legacy) -> dict[str, list[tuple[Any, ...]]]:
    """Every encrypted column's stored values, table by table (read as the superuser on
    PostgreSQL, so row-level security hides nothing)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    if db.postgres is not None:
        with psycopg.connect(db.postgres.admin_url, autocommit=True) as conn:
            for table, columns in ENCRYPTED_COLUMNS.items():
                query = pgsql.SQL("SELECT id, {} FROM {} ORDER BY id").format(
                    pgsql.SQL(", ").join(pgsql.Identifier(c) for c in columns),
                    pgsql.Identifier(table),
                )
                out[table] = [tuple(r) for r in conn.execute(query)]
        return out
    engine = sa.create_engine(db.sync_url)
    try:
        with engine.connect() as conn:
            for table, columns in ENCRYPTED_COLUMNS.items():
                rows = conn.execute(
                    sa.text(f"SELECT id, {', '.join(columns)} FROM {table} ORDER BY id")  # noqa: S608
                )
                out[table] = [tuple(r) for r in rows]
    finally:
        engine.dispose()
    return out


def settings_for(db: Legacy, master_key: bytes) -> Settings:
    return Settings(
        env="test",
        data_dir=db.directory,
        database_url=db.app_url,
        migration_database_url=db.owner_url,
        redis_url="",
        secret_key=base64.urlsafe_b64encode(os.urandom(48)).decode(),
        master_key=base64.b64encode(master_key).decode(),
    )


# --- with the master key -----------------------------------------------------------------------


def assert_ciphertext_only(legacy: Legacy) -> None:
    """At rest: no plaintext anywhere, every value sealed under its clinic's field key v1."""
    text, files = raw_text(legacy)
    leaked = [
        p
        for p in plaintexts(legacy)
        if p in text or p.encode().hex() in text or p.encode() in files
    ]
    assert leaked == []
    for table, rows in stored_values(legacy).items():
        assert len(rows) == len(legacy.expected[table])
        for row in rows:
            row_id = row[0] if isinstance(row[0], uuid.UUID) else uuid.UUID(str(row[0]))
            for column, blob in zip(ENCRYPTED_COLUMNS[table], row[1:], strict=True):
                if legacy.expected[table][row_id][column] is None:
                    assert blob is None
                    continue
                header = header_of(bytes(blob))
                assert (header.kind, header.version) == (KeyKind.CLINIC, 1)


async def assert_services_read_back(
    services: Any, legacy: Legacy, tables: tuple[str, ...] = tuple(ENCRYPTED_COLUMNS)
) -> None:
    """Every value of ``tables`` decrypts, through the services, to what 0003 held."""
    for clinic_id in legacy.clinics:
        async with services.db.transaction(TenantContext.system(clinic_id)) as session:
            for table in tables:
                model = TABLES[table]
                rows = (
                    await session.scalars(select(model).where(model.clinic_id == clinic_id))
                ).all()
                assert rows
                for row in rows:
                    opened = await open_from(services.fields, table, row, ENCRYPTED_COLUMNS[table])
                    assert opened == legacy.expected[table][row.id], (table, row.id)


async def assert_front_desk_reads(client: Any, services: Any, legacy: Legacy) -> None:
    """The front desk finds each patient by CPF (the migration's blind index is the
    application's) and reads their demographics."""
    for clinic_id, email in legacy.receptionists.items():
        hashed = await services.passwords.hash(PASSWORD)
        async with services.db.transaction() as session:
            await session.execute(
                sa.text("UPDATE users SET password_hash = :h WHERE email = :e"),
                {"h": hashed, "e": email},
            )
        login = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        headers = {"authorization": f"Bearer {login.json()['access_token']}"}
        patients = TABLES["patients"]
        async with services.db.transaction(TenantContext.system(clinic_id)) as session:
            ids = (
                await session.scalars(select(patients.id).where(patients.clinic_id == clinic_id))
            ).all()
        assert len(ids) == 2
        for patient_id in ids:
            values = legacy.expected["patients"][patient_id]
            for cpf in (values["cpf"], format_cpf(values["cpf"])):
                found = await client.get("/api/v1/patients", params={"cpf": cpf}, headers=headers)
                assert found.status_code == 200, found.text
                assert [p["id"] for p in found.json()["items"]] == [str(patient_id)]
            read = await client.get(f"/api/v1/patients/{patient_id}", headers=headers)
            assert read.status_code == 200, read.text
            body = read.json()
            assert {name: body[name] for name in ("phone", "email", "address")} == {
                name: values[name] for name in ("phone", "email", "address")
            }
            assert "allergies" not in body


def upgrade(legacy: Legacy, revision: str, master_key: bytes | None = None) -> None:
    command.upgrade(alembic_config(legacy.owner_url, legacy.app_url, master_key), revision)


async def test_upgrade_encrypts_existing_data_in_place(
    legacy: Legacy,
) -> None:
    master_key = os.urandom(32)
    # Alembic's environment runs its own event loop: off this test's loop.
    await asyncio.to_thread(upgrade, legacy, "0004", master_key)
    assert schema_state(legacy)["version"] == [("0004",)]
    assert_ciphertext_only(legacy)
    await asyncio.to_thread(upgrade_to_head, legacy.owner_url, legacy.app_url, master_key)

    app = create_app(settings_for(legacy, master_key))
    async with app.router.lifespan_context(app), client_for(app) as client:
        services = app.state.services
        await assert_services_read_back(services, legacy)
        for clinic_id in legacy.clinics:
            counts = await version_counts(services.db, clinic_id)
            assert {key for (_t, _c, key) in counts} == {"clinic v1", "index v1"}
        await assert_front_desk_reads(client, services, legacy)

        # Re-encryption then moves the clinical content to the patients' own keys.
        report = await reencrypt(services.db, services.fields, clinics=legacy.clinics)
        assert report.skipped_changed == 0
        for clinic_id in legacy.clinics:
            counts = await version_counts(services.db, clinic_id)
            clinical = {key for (t, _c, key) in counts if t in {"medical_records", "prescriptions"}}
            assert clinical == {"patient"}
        await assert_services_read_back(services, legacy, ("medical_records", "prescriptions"))


# --- without a key -----------------------------------------------------------------------------


def test_upgrade_without_a_master_key_refuses_and_changes_nothing(
    legacy: Legacy,
) -> None:
    before_schema = schema_state(legacy)
    before_values = stored_values(legacy)
    assert before_schema["version"] == [("0003",)]
    assert "data_keys" not in before_schema["tables"]
    with pytest.raises(RuntimeError) as refusal:
        upgrade(legacy, "0004")
    message = str(refusal.value)
    assert "CLINICGUARD_MASTER_KEY" in message
    assert "encrypted" in message
    assert schema_state(legacy) == before_schema
    assert stored_values(legacy) == before_values
    # Given the key afterwards, the same database upgrades.
    upgrade(legacy, "0004", os.urandom(32))
    assert schema_state(legacy)["version"] == [("0004",)]
