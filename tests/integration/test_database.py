"""The data layer on SQLite and PostgreSQL: schema integrity across clinics, the tenant
context per transaction, and (PostgreSQL) an application role that cannot bypass RLS."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from clinicguard.clinic.models import Patient
from clinicguard.store.db import Database, connection_role_problems
from clinicguard.store.interfaces import DatabaseUnavailable, TenantContext
from tests.conftest import Backend
from tests.factories import clinic as f
from tests.services import APP_ROLE, OWNER_ROLE


@pytest.fixture
async def database(backend: Backend) -> AsyncIterator[Database]:
    db = Database.from_url(backend.database_url, hide_parameters=True)
    try:
        yield db
    finally:
        await db.dispose()


async def seed_two_clinics(db: Database) -> dict[str, uuid.UUID]:
    a, b = f.clinic(), f.clinic()
    doctor_a, doctor_b = f.user(), f.user()
    async with db.transaction() as s:
        s.add_all([a, b, doctor_a, doctor_b])
    async with db.transaction(TenantContext.system(b.id)) as s:
        s.add(f.membership(b.id, doctor_b.id, "physician"))
    async with db.transaction(TenantContext.system(a.id)) as s:
        s.add(f.membership(a.id, doctor_a.id, "physician"))
        await s.flush()
        patient_a = f.patient(a.id)
        s.add(patient_a)
    return {
        "clinic_a": a.id,
        "clinic_b": b.id,
        "doctor_a": doctor_a.id,
        "doctor_b": doctor_b.id,
        "patient_a": patient_a.id,
    }


async def test_a_record_cannot_point_at_another_clinics_patient(database: Database) -> None:
    """clinic_id leads every foreign key: the database itself refuses a clinic-B record
    about a clinic-A patient, whatever the application does."""
    ids = await seed_two_clinics(database)
    # (as maintenance in the writing clinic, so row-level security lets the rows through
    # and the foreign keys are what refuses them)
    with pytest.raises(IntegrityError):
        async with database.transaction(TenantContext.system(ids["clinic_b"])) as s:
            s.add(f.medical_record(ids["clinic_b"], ids["patient_a"], ids["doctor_b"]))
    with pytest.raises(IntegrityError):
        async with database.transaction(TenantContext.system(ids["clinic_a"])) as s:
            s.add(f.medical_record(ids["clinic_a"], ids["patient_a"], ids["doctor_b"]))
    async with database.transaction(TenantContext.system(ids["clinic_a"])) as s:
        s.add(f.medical_record(ids["clinic_a"], ids["patient_a"], ids["doctor_a"]))


async def test_cpf_is_unique_within_a_clinic_only(database: Database) -> None:
    ids = await seed_two_clinics(database)
    async with database.transaction(TenantContext.system(ids["clinic_a"])) as s:
        first = await s.get(Patient, (ids["clinic_a"], ids["patient_a"]))
        assert first is not None
        cpf_index = first.cpf_index
    # the same person at another clinic is fine
    async with database.transaction(TenantContext.system(ids["clinic_b"])) as s:
        s.add(f.patient(ids["clinic_b"], cpf_index=cpf_index))
    with pytest.raises(IntegrityError):
        async with database.transaction(TenantContext.system(ids["clinic_a"])) as s:
            s.add(f.patient(ids["clinic_a"], cpf_index=cpf_index))


async def test_failed_transaction_leaves_nothing_half_written(database: Database) -> None:
    ids = await seed_two_clinics(database)
    new_clinic = f.clinic()

    async def write_clinic_then_break_a_constraint() -> None:
        async with database.transaction(TenantContext.system(ids["clinic_b"])) as s:
            s.add(new_clinic)
            await s.flush()
            s.add(f.medical_record(ids["clinic_b"], ids["patient_a"], ids["doctor_b"]))

    with pytest.raises(IntegrityError):
        await write_clinic_then_break_a_constraint()
    async with database.transaction() as s:
        found = await s.scalar(
            text("SELECT count(*) FROM clinics WHERE name = :n"), {"n": new_clinic.name}
        )
    assert found == 0


@pytest.mark.postgres
async def test_tenant_context_is_scoped_to_its_transaction(postgres_backend: Backend) -> None:
    """set_config(..., true) lasts one transaction: a pooled connection never carries the
    previous request's clinic into the next one."""
    database = Database.from_url(postgres_backend.database_url, pool_size=1)
    clinic_id, user_id = uuid.uuid4(), uuid.uuid4()
    query = text(
        "SELECT current_setting('app.clinic_id', true), current_setting('app.user_id', true),"
        " current_setting('app.role', true), pg_backend_pid()"
    )
    async with database.transaction(TenantContext(clinic_id, user_id, "physician")) as s:
        row = (await s.execute(query)).one()
    assert row[:3] == (str(clinic_id), str(user_id), "physician")
    try:
        for _ in range(5):  # the same pooled connection, new transactions
            async with database.transaction() as s:
                after = (await s.execute(query)).one()
            assert after[3] == row[3], "expected the same pooled connection"
            assert after[0] in (None, ""), "tenant leaked into a later transaction"
    finally:
        await database.dispose()


@pytest.mark.postgres
async def test_application_role_owns_nothing_and_cannot_bypass_rls(
    postgres_backend: Backend,
) -> None:
    backend = postgres_backend
    db = Database.from_url(backend.database_url)
    try:
        assert await connection_role_problems(db) == []
        async with db.transaction() as s:
            who = (
                await s.execute(
                    text(
                        "SELECT current_user, rolsuper, rolbypassrls FROM pg_roles"
                        " WHERE rolname = current_user"
                    )
                )
            ).one()
            owners = set(
                (
                    await s.execute(
                        text(
                            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
                        )
                    )
                ).scalars()
            )
    finally:
        await db.dispose()
    assert who == (APP_ROLE, False, False)
    assert owners == {OWNER_ROLE}


@pytest.mark.postgres
@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE stolen (x int)",
        "DROP TABLE patients",
        "ALTER TABLE patients DISABLE ROW LEVEL SECURITY",
        "TRUNCATE patients",
        "CREATE ROLE intruder",
        f"ALTER TABLE patients OWNER TO {APP_ROLE}",
    ],
)
def test_application_role_cannot_change_the_schema(
    postgres_backend: Backend, statement: str
) -> None:
    backend = postgres_backend
    assert backend.postgres is not None
    with (
        psycopg.connect(backend.postgres.psycopg_url(APP_ROLE), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(statement)


@pytest.mark.postgres
async def test_superuser_connection_is_reported(postgres_backend: Backend) -> None:
    """Production refuses to start when the application would bypass row-level security."""
    backend = postgres_backend
    assert backend.postgres is not None
    db = Database.from_url(backend.postgres.url("postgres"))
    owner = Database.from_url(backend.migration_url)
    try:
        assert (
            "the application connects to PostgreSQL as a superuser"
            in await connection_role_problems(db)
        )
        problems = await connection_role_problems(owner)
        assert any("owns" in p for p in problems)
    finally:
        await db.dispose()
        await owner.dispose()


async def test_unreachable_database_is_a_typed_503() -> None:
    db = Database.from_url("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    try:
        with pytest.raises(DatabaseUnavailable):
            async with db.transaction() as s:
                await s.execute(text("SELECT 1"))
    finally:
        await db.dispose()
