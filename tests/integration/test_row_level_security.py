"""PostgreSQL row-level security, proven in the database itself.

Every query here is raw SQL sent as the application role (owns no tables, not a superuser,
no BYPASSRLS), through the same ``Database.transaction(TenantContext(...))`` the services
use; no ORM filter or service rule takes part. What is proven:

- a clinic's transaction sees, updates, deletes and inserts only its own clinic's rows in
  every tenant table, even when a statement names the other clinic explicitly;
- a transaction with no tenant context sees, and can write, no tenant row at all; nor does
  one that names a clinic but no role (or a role outside the allowlist);
- each role sees, inserts and updates exactly the tables its policies allow: organisation
  tables (care team, treatments, certifications, memberships) are written by
  administrators only, patients and appointments by the front desk and clinicians, and
  patients and compliance officers write nothing; an integration key updates only itself;
- a break-glass grant is opened only by its own physician or nurse grantee and seen only by
  them and oversight (administrator, compliance);
- a clinical record is written only by its author with clinical access (a nurse: nursing
  notes only), a prescription only by its prescribing physician, never in a colleague's name;
- clinical records, prescriptions and grants are append-only: no DELETE reaches them;
- medical records and prescriptions are visible only to the clinical relationships of
  ``cg_clinical_access`` (care team, a non-cancelled appointment, an open break-glass grant,
  the patient themselves; maintenance and compliance), and an unrelated clinician cannot
  write one either;
- a patient sees only their own patients row, appointments and membership, and nothing of
  the care team, grants or treatments;
- before a clinic is chosen a person sees only their own memberships, and an API-key
  lookup sees only the key whose prefix it names;
- the catalogue (as the superuser): every tenant table, and every table with a
  ``clinic_id`` column, has row-level security enabled and forced, so a new tenant table
  without policies fails here; each has exactly one policy per command (no DELETE policy
  on the append-only tables). The audit trail's tables are under row-level security too,
  with exactly their own policies, and the application only reads and appends to them;
  the monthly partitions of ``audit_events`` are reached only through it (the application
  role holds no privilege on a partition itself).

Rows meant to be append-only (grants, records, prescriptions) change only as maintenance;
a request made with an API key cannot change any key, its own included.
"""

from __future__ import annotations

import random
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import TextClause

from clinicguard.auth.models import ApiKey
from clinicguard.clinic.cpf import generate_cpf
from clinicguard.clinic.models import (
    Appointment,
    CareTeamMember,
    EmergencyGrant,
    Prescription,
    Treatment,
    TreatmentCertification,
)
from clinicguard.store.db import Database
from clinicguard.store.interfaces import TenantContext
from tests.conftest import Backend
from tests.factories import clinic as f
from tests.services import APP_ROLE

pytestmark = pytest.mark.postgres

#: Every table the RLS migration puts under a tenant policy.
TENANT_TABLES = (
    "patients",
    "appointments",
    "care_team",
    "treatments",
    "treatment_certifications",
    "emergency_grants",
    "medical_records",
    "prescriptions",
    "clinic_memberships",
    "api_keys",
)
CLINICAL_TABLES = ("medical_records", "prescriptions")
#: The audit trail's tables with a clinic_id (events with no clinic are in the platform
#: chain, clinic ``00000000-…``): under row-level security with policies of their own
#: (migrations 0006 and 0007). Its signing keys (``audit_signing_keys``), like the token
#: ``signing_keys``, are platform-wide and have no clinic_id.
TRAIL_TABLES = (
    "audit_events",
    "audit_heads",
    "audit_subjects",
    "audit_reviews",
    "audit_checkpoints",
)
#: ``{table: {(policy, command)}}`` of the trail, exactly.
TRAIL_POLICIES = {
    "audit_events": {("audit_events_read", "SELECT"), ("audit_events_insert", "INSERT")},
    "audit_heads": {("audit_heads_all", "ALL")},
    "audit_subjects": {
        ("audit_subjects_read", "SELECT"),
        ("audit_subjects_insert", "INSERT"),
        ("audit_subjects_update", "UPDATE"),
        ("audit_subjects_delete", "DELETE"),
    },
    "audit_reviews": {
        ("audit_reviews_read", "SELECT"),
        ("audit_reviews_insert", "INSERT"),
        ("audit_reviews_update", "UPDATE"),
    },
    "audit_checkpoints": {
        ("audit_checkpoints_read", "SELECT"),
        ("audit_checkpoints_insert", "INSERT"),
        ("audit_checkpoints_update", "UPDATE"),
    },
}
#: What the application role may do to each trail table: read and append; only a chain's
#: head moves (and a signing key is retired).
TRAIL_PRIVILEGES = {
    "audit_events": {"SELECT", "INSERT"},
    "audit_heads": {"SELECT", "INSERT", "UPDATE"},
    "audit_subjects": {"SELECT", "INSERT"},
    "audit_reviews": {"SELECT", "INSERT"},
    "audit_checkpoints": {"SELECT", "INSERT"},
    "audit_signing_keys": {"SELECT", "INSERT", "UPDATE"},
}
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")

RLS_VIOLATION = "row-level security"
_cpfs = random.Random(20260301)

#: A valid row for each tenant table, written into ``:clinic`` with that clinic's
#: ``:patient``, ``:professional`` (a member not yet on the care team nor certified),
#: ``:treatment`` and ``:user`` (a person not yet a member); only the policy can refuse it.
INSERT_ROW = {
    "patients": (
        "INSERT INTO patients (clinic_id, id, full_name, cpf, cpf_index, created_at,"
        " updated_at) VALUES (:clinic, :id, 'Paciente Intruso', convert_to(:cpf, 'UTF8'),"
        " :cpf, now(), now())"
    ),
    "appointments": (
        "INSERT INTO appointments (clinic_id, id, patient_id, professional_id, starts_at,"
        " ends_at, status, created_at, updated_at) VALUES (:clinic, :id, :patient,"
        " :professional, now() + interval '1 day', now() + interval '1 day 30 minutes',"
        " 'scheduled', now(), now())"
    ),
    "care_team": (
        "INSERT INTO care_team (clinic_id, patient_id, professional_id, added_at)"
        " VALUES (:clinic, :patient, :professional, now())"
    ),
    "treatments": (
        "INSERT INTO treatments (clinic_id, id, name, duration_minutes,"
        " requires_certification, is_active, created_at, updated_at)"
        " VALUES (:clinic, :id, :name, 30, false, true, now(), now())"
    ),
    "treatment_certifications": (
        "INSERT INTO treatment_certifications (clinic_id, treatment_id, professional_id,"
        " certified_at) VALUES (:clinic, :treatment, :professional, now())"
    ),
    "emergency_grants": (
        "INSERT INTO emergency_grants (clinic_id, id, patient_id, grantee_id, justification,"
        " granted_at, expires_at) VALUES (:clinic, :id, :patient, :professional,"
        " 'Paciente inconsciente no pronto-socorro', now(), now() + interval '1 hour')"
    ),
    "medical_records": (
        "INSERT INTO medical_records (clinic_id, id, patient_id, author_id, kind, notes,"
        " created_at) VALUES (:clinic, :id, :patient, :professional, 'consultation',"
        " convert_to('Sem queixas.', 'UTF8'), now())"
    ),
    "prescriptions": (
        "INSERT INTO prescriptions (clinic_id, id, patient_id, prescriber_id, medication,"
        " dosage, status, issued_at) VALUES (:clinic, :id, :patient, :professional,"
        " convert_to('Dipirona 500 mg', 'UTF8'),"
        " convert_to('1 comprimido a cada 6 horas', 'UTF8'), 'active', now())"
    ),
    "clinic_memberships": (
        "INSERT INTO clinic_memberships (clinic_id, user_id, role, is_active, created_at,"
        " updated_at) VALUES (:clinic, :user, 'receptionist', true, now(), now())"
    ),
    "api_keys": (
        "INSERT INTO api_keys (clinic_id, id, prefix, secret_hash, name, scopes, created_at)"
        " VALUES (:clinic, :id, :prefix, :secret_hash, 'intruder', '[]', now())"
    ),
}


@dataclass(frozen=True)
class ClinicRows:
    """One seeded clinic: at least one row in every tenant table."""

    clinic_id: uuid.UUID
    physician_id: uuid.UUID
    nurse_id: uuid.UUID
    outsider_id: uuid.UUID
    patient_id: uuid.UUID
    treatment_id: uuid.UUID
    api_key_id: uuid.UUID
    api_key_prefix: str

    def insert_params(self) -> dict[str, Any]:
        """Parameters for :data:`INSERT_ROW` that make a valid new row in this clinic."""
        return {
            "clinic": self.clinic_id,
            "id": uuid.uuid4(),
            "patient": self.patient_id,
            "professional": self.nurse_id,
            "treatment": self.treatment_id,
            "user": self.outsider_id,
            "cpf": generate_cpf(_cpfs),
            "name": f"Tratamento {secrets.token_hex(4)}",
            "prefix": secrets.token_hex(6),
            "secret_hash": secrets.token_hex(32),
        }


@dataclass(frozen=True)
class TwoClinics:
    a: ClinicRows
    b: ClinicRows
    shared_user_id: uuid.UUID
    """A person who is a member of both clinics."""


@pytest.fixture
async def db(postgres_backend: Backend) -> AsyncIterator[Database]:
    """The database as the application role, the one row-level security binds (PostgreSQL
    only: SQLite has no row-level security to prove)."""
    database = Database.from_url(postgres_backend.database_url, hide_parameters=True)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
def admin(postgres_backend: Backend) -> Iterator[psycopg.Connection[Any]]:
    """A superuser connection (bypasses RLS), to check what really is in the tables."""
    assert postgres_backend.postgres is not None
    with psycopg.connect(postgres_backend.postgres.admin_url, autocommit=True) as conn:
        yield conn


def on(table: str, template: str) -> TextClause:
    """``template`` with ``{table}`` replaced by one of the tenant tables above (constants,
    never input: an unknown name is refused)."""
    if table not in TENANT_TABLES:
        raise ValueError(f"not a tenant table: {table}")
    return text(template.format(table=table))


def statement_params(sql: str, params: dict[str, Any]) -> dict[str, Any]:
    """Only the parameters ``sql`` names."""
    return {k: v for k, v in params.items() if f":{k}" in sql}


def admin_count(admin: psycopg.Connection[Any], table: str, clinic_id: uuid.UUID) -> int:
    query = pgsql.SQL("SELECT count(*) FROM {} WHERE clinic_id = %s").format(
        pgsql.Identifier(table)
    )
    row = admin.execute(query, (clinic_id,)).fetchone()
    assert row is not None
    return int(row[0])


async def attempt(
    db: Database,
    tenant: TenantContext | None,
    statement: str | TextClause,
    params: dict[str, Any] | None = None,
) -> int | None:
    """Run one statement in its own transaction: how many rows it affected, or None when
    row-level security refused it (any other error is raised: the row must be valid)."""
    query = text(statement) if isinstance(statement, str) else statement
    try:
        async with db.transaction(tenant) as s:
            result = await s.execute(query, params or {})
    except DBAPIError as exc:
        if RLS_VIOLATION not in str(exc):
            raise
        return None
    return int(result.rowcount)  # type: ignore[attr-defined]


async def seed_clinic(db: Database, shared_user_id: uuid.UUID) -> ClinicRows:
    """A clinic with a row in every tenant table, written as its own maintenance context."""
    clinic = f.clinic()
    physician, nurse, outsider = f.user(), f.user(), f.user()
    async with db.transaction() as s:
        s.add_all([clinic, physician, nurse, outsider])
    now = datetime.now(UTC)
    patient = f.patient(clinic.id)
    treatment = Treatment(clinic_id=clinic.id, name="Consulta")
    api_key = ApiKey(
        clinic_id=clinic.id,
        prefix=secrets.token_hex(6),
        secret_hash=secrets.token_hex(32),
        name="integração",
        scopes=[],
    )
    async with db.transaction(TenantContext.system(clinic.id)) as s:
        s.add_all(
            [
                f.membership(clinic.id, physician.id, "physician"),
                f.membership(clinic.id, nurse.id, "nurse"),
                f.membership(clinic.id, shared_user_id, "receptionist"),
                patient,
                treatment,
                api_key,
            ]
        )
        await s.flush()
        record = f.medical_record(clinic.id, patient.id, physician.id)
        s.add_all(
            [
                CareTeamMember(
                    clinic_id=clinic.id, patient_id=patient.id, professional_id=physician.id
                ),
                TreatmentCertification(
                    clinic_id=clinic.id, treatment_id=treatment.id, professional_id=physician.id
                ),
                Appointment(
                    clinic_id=clinic.id,
                    patient_id=patient.id,
                    professional_id=physician.id,
                    treatment_id=treatment.id,
                    starts_at=now + timedelta(days=1),
                    ends_at=now + timedelta(days=1, minutes=30),
                ),
                EmergencyGrant(
                    clinic_id=clinic.id,
                    patient_id=patient.id,
                    grantee_id=physician.id,
                    justification="Paciente inconsciente no pronto-socorro",
                    expires_at=now + timedelta(hours=1),
                ),
                record,
            ]
        )
        await s.flush()
        s.add(
            Prescription(
                clinic_id=clinic.id,
                patient_id=patient.id,
                prescriber_id=physician.id,
                record_id=record.id,
                medication=b"Dipirona 500 mg",
                dosage=b"1 comprimido a cada 6 horas",
            )
        )
    return ClinicRows(
        clinic_id=clinic.id,
        physician_id=physician.id,
        nurse_id=nurse.id,
        outsider_id=outsider.id,
        patient_id=patient.id,
        treatment_id=treatment.id,
        api_key_id=api_key.id,
        api_key_prefix=api_key.prefix,
    )


async def seed_two_clinics(db: Database) -> TwoClinics:
    shared = f.user()
    async with db.transaction() as s:
        s.add(shared)
    return TwoClinics(
        a=await seed_clinic(db, shared.id),
        b=await seed_clinic(db, shared.id),
        shared_user_id=shared.id,
    )


@pytest.fixture
async def clinics(db: Database, admin: psycopg.Connection[Any]) -> TwoClinics:
    """Two fully seeded clinics, checked (as the superuser) to have rows in every table."""
    seeded = await seed_two_clinics(db)
    for table in TENANT_TABLES:
        for rows in (seeded.a, seeded.b):
            assert admin_count(admin, table, rows.clinic_id) > 0, table
    return seeded


# -- one clinic's context never reaches another clinic --------------------------------------


@pytest.mark.parametrize("table", TENANT_TABLES)
async def test_clinic_context_sees_only_its_own_rows(
    db: Database, clinics: TwoClinics, table: str
) -> None:
    """SELECT * in clinic A's maintenance context returns A's rows and none of B's."""
    async with db.transaction(TenantContext.system(clinics.a.clinic_id)) as s:
        rows = (await s.execute(on(table, "SELECT * FROM {table}"))).mappings().all()
    assert rows, f"clinic A should see its own {table}"
    assert {row["clinic_id"] for row in rows} == {clinics.a.clinic_id}


@pytest.mark.parametrize("table", TENANT_TABLES)
async def test_naming_another_clinic_finds_nothing(
    db: Database, clinics: TwoClinics, table: str
) -> None:
    """WHERE clinic_id = B in clinic A's context finds no row."""
    async with db.transaction(TenantContext.system(clinics.a.clinic_id)) as s:
        found = await s.scalar(
            on(table, "SELECT count(*) FROM {table} WHERE clinic_id = :b"),
            {"b": clinics.b.clinic_id},
        )
    assert found == 0


@pytest.mark.parametrize("table", TENANT_TABLES)
async def test_update_and_delete_cannot_reach_another_clinic(
    db: Database, clinics: TwoClinics, admin: psycopg.Connection[Any], table: str
) -> None:
    """UPDATE and DELETE of clinic B's rows in clinic A's context affect no row."""
    a, b = clinics.a.clinic_id, clinics.b.clinic_id
    before = admin_count(admin, table, b)
    touch = on(table, "UPDATE {table} SET clinic_id = clinic_id WHERE clinic_id = :c")
    async with db.transaction(TenantContext.system(a)) as s:
        assert (await s.execute(touch, {"c": b})).rowcount == 0  # type: ignore[attr-defined]
        deleted = await s.execute(on(table, "DELETE FROM {table} WHERE clinic_id = :c"), {"c": b})
        assert deleted.rowcount == 0  # type: ignore[attr-defined]
        # the same UPDATE does reach the clinic's own rows
        assert (await s.execute(touch, {"c": a})).rowcount > 0  # type: ignore[attr-defined]
    assert admin_count(admin, table, b) == before


@pytest.mark.parametrize("table", TENANT_TABLES)
async def test_insert_into_another_clinic_is_refused(
    db: Database, clinics: TwoClinics, admin: psycopg.Connection[Any], table: str
) -> None:
    """A row for clinic B written in clinic A's context is a row-level security violation
    (and the very same row is accepted in clinic B's own context)."""
    sql = INSERT_ROW[table]
    params = statement_params(sql, clinics.b.insert_params())
    before = admin_count(admin, table, clinics.b.clinic_id)
    with pytest.raises(DBAPIError, match=RLS_VIOLATION):
        async with db.transaction(TenantContext.system(clinics.a.clinic_id)) as s:
            await s.execute(text(sql), params)
    assert admin_count(admin, table, clinics.b.clinic_id) == before
    async with db.transaction(TenantContext.system(clinics.b.clinic_id)) as s:
        await s.execute(text(sql), params)
    assert admin_count(admin, table, clinics.b.clinic_id) == before + 1


@pytest.mark.parametrize("table", TENANT_TABLES)
async def test_own_rows_cannot_be_moved_into_another_clinic(
    db: Database, clinics: TwoClinics, table: str
) -> None:
    """UPDATE ... SET clinic_id = B of clinic A's own rows fails the policy's WITH CHECK."""
    with pytest.raises(DBAPIError, match=RLS_VIOLATION):
        async with db.transaction(TenantContext.system(clinics.a.clinic_id)) as s:
            await s.execute(
                on(table, "UPDATE {table} SET clinic_id = :b WHERE clinic_id = :a"),
                {"a": clinics.a.clinic_id, "b": clinics.b.clinic_id},
            )


# -- no tenant context: nothing ------------------------------------------------------------


@pytest.mark.parametrize("table", TENANT_TABLES)
async def test_transaction_without_tenant_sees_nothing(
    db: Database, clinics: TwoClinics, table: str
) -> None:
    """A transaction that sets no tenant sees zero rows of any clinic."""
    async with db.transaction() as s:
        assert await s.scalar(on(table, "SELECT count(*) FROM {table}")) == 0


@pytest.mark.parametrize("table", TENANT_TABLES)
async def test_transaction_without_tenant_cannot_write(
    db: Database, clinics: TwoClinics, admin: psycopg.Connection[Any], table: str
) -> None:
    """Without a tenant, INSERT is refused and UPDATE/DELETE reach no row."""
    sql = INSERT_ROW[table]
    with pytest.raises(DBAPIError, match=RLS_VIOLATION):
        async with db.transaction() as s:
            await s.execute(text(sql), statement_params(sql, clinics.b.insert_params()))
    before = admin_count(admin, table, clinics.a.clinic_id)
    async with db.transaction() as s:
        updated = await s.execute(on(table, "UPDATE {table} SET clinic_id = clinic_id"))
        deleted = await s.execute(on(table, "DELETE FROM {table}"))
    assert (updated.rowcount, deleted.rowcount) == (0, 0)  # type: ignore[attr-defined]
    assert admin_count(admin, table, clinics.a.clinic_id) == before


@pytest.mark.parametrize("table", [t for t in TENANT_TABLES if t != "clinic_memberships"])
async def test_person_without_clinic_sees_no_tenant_rows(
    db: Database, clinics: TwoClinics, table: str
) -> None:
    """Before a clinic is chosen a member of both clinics sees none of either's rows."""
    async with db.transaction(TenantContext.person(clinics.shared_user_id)) as s:
        assert await s.scalar(on(table, "SELECT count(*) FROM {table}")) == 0


# -- clinical rows follow the care relationship ---------------------------------------------


@dataclass(frozen=True)
class ClinicalWorld:
    clinic_id: uuid.UUID
    other_clinic_id: uuid.UUID
    patient_id: uuid.UUID
    other_patient_id: uuid.UUID
    users: dict[str, uuid.UUID]
    """Seeded people by their relationship to ``patient_id`` (see :func:`seed_clinical`)."""

    def ctx(self, who: str, role: str | None = None) -> TenantContext:
        """``who``'s transaction in clinic A, with their own role unless ``role`` is given."""
        return TenantContext(self.clinic_id, self.users[who], role or ROLE_OF[who])

    def row(self, sql: str, **values: Any) -> dict[str, Any]:
        """Parameters for ``sql``: a new row of clinic A about ``patient_id``; ``values``
        name people (by their key in :attr:`users`) or give other parameters."""
        params: dict[str, Any] = {
            "clinic": self.clinic_id,
            "id": uuid.uuid4(),
            "patient": self.patient_id,
            "other": self.other_patient_id,
        }
        for key, value in values.items():
            params[key] = self.users.get(value, value)
        return statement_params(sql, params)


#: Clinic A's people and their role there. Only ``patient`` is linked to a patients row
#: (the patient the cases are about); ``other_patient`` is the login of a second patient.
CLINICAL_STAFF = {
    "physician_off_team": "physician",
    "physician_on_care_team": "physician",
    "physician_with_appointment": "physician",
    "physician_with_completed_appointment": "physician",
    "physician_with_cancelled_appointment": "physician",
    "physician_with_grant": "physician",
    "physician_with_expired_grant": "physician",
    "physician_with_revoked_grant": "physician",
    "physician_of_other_patient": "physician",
    "nurse_on_care_team": "nurse",
    "nurse_off_team": "nurse",
    "receptionist": "receptionist",
    "clinic_admin": "clinic_admin",
    "compliance_officer": "compliance_officer",
}
#: Everyone's role in clinic A: the two patients are members with the patient role.
ROLE_OF = {**CLINICAL_STAFF, "patient": "patient", "other_patient": "patient"}


async def seed_clinical(db: Database) -> ClinicalWorld:
    """Clinic A with a patient, a second patient, one clinical record and one prescription
    each, one person per kind of relationship to the first patient, and a treatment the
    care-team nurse is certified for. Clinic B has the care-team physician as a member too
    (to prove their access does not travel)."""
    a, b = f.clinic(), f.clinic()
    users = {name: f.user() for name in [*CLINICAL_STAFF, "patient", "other_patient"]}
    async with db.transaction() as s:
        s.add_all([a, b, *users.values()])
    ids = {name: u.id for name, u in users.items()}
    now = datetime.now(UTC)
    patient = f.patient(a.id, user_id=ids["patient"])
    other = f.patient(a.id, user_id=ids["other_patient"])
    async with db.transaction(TenantContext.system(b.id)) as s:
        s.add(f.membership(b.id, ids["physician_on_care_team"], "physician"))
    treatment = Treatment(clinic_id=a.id, name="Curativo")
    async with db.transaction(TenantContext.system(a.id)) as s:
        s.add_all([f.membership(a.id, ids[name], role) for name, role in ROLE_OF.items()])
        s.add_all([patient, other, treatment])
        await s.flush()

        def appointment(who: str, patient_id: uuid.UUID, status: str) -> Appointment:
            return Appointment(
                clinic_id=a.id,
                patient_id=patient_id,
                professional_id=ids[who],
                starts_at=now + timedelta(days=1),
                ends_at=now + timedelta(days=1, minutes=30),
                status=status,
            )

        def grant(who: str, *, expires_in: timedelta, revoked: bool = False) -> EmergencyGrant:
            return EmergencyGrant(
                clinic_id=a.id,
                patient_id=patient.id,
                grantee_id=ids[who],
                justification="Paciente inconsciente no pronto-socorro",
                granted_at=now - timedelta(hours=2),
                expires_at=now + expires_in,
                revoked_at=now - timedelta(minutes=5) if revoked else None,
            )

        records = {
            pid: f.medical_record(a.id, pid, ids["physician_on_care_team"])
            for pid in (patient.id, other.id)
        }
        s.add_all(
            [
                CareTeamMember(
                    clinic_id=a.id,
                    patient_id=patient.id,
                    professional_id=ids["physician_on_care_team"],
                ),
                CareTeamMember(
                    clinic_id=a.id,
                    patient_id=patient.id,
                    professional_id=ids["nurse_on_care_team"],
                ),
                appointment("physician_with_appointment", patient.id, "scheduled"),
                appointment("physician_with_completed_appointment", patient.id, "completed"),
                appointment("physician_with_cancelled_appointment", patient.id, "cancelled"),
                appointment("physician_of_other_patient", other.id, "confirmed"),
                grant("physician_with_grant", expires_in=timedelta(hours=1)),
                grant("physician_with_expired_grant", expires_in=-timedelta(hours=1)),
                grant("physician_with_revoked_grant", expires_in=timedelta(hours=1), revoked=True),
                *records.values(),
                TreatmentCertification(
                    clinic_id=a.id,
                    treatment_id=treatment.id,
                    professional_id=ids["nurse_on_care_team"],
                ),
            ]
        )
        await s.flush()
        s.add_all(
            [
                Prescription(
                    clinic_id=a.id,
                    patient_id=pid,
                    prescriber_id=ids["physician_on_care_team"],
                    record_id=record.id,
                    medication=b"Amoxicilina 500 mg",
                    dosage="1 cápsula a cada 8 horas".encode(),
                )
                for pid, record in records.items()
            ]
        )
    return ClinicalWorld(
        clinic_id=a.id,
        other_clinic_id=b.id,
        patient_id=patient.id,
        other_patient_id=other.id,
        users=ids,
    )


@pytest.fixture
async def clinical(db: Database) -> ClinicalWorld:
    return await seed_clinical(db)


THE_PATIENT, BOTH_PATIENTS, OTHER_PATIENT, NO_PATIENT = "the", "both", "other", "none"

#: (who, role in the transaction, which patients' clinical rows they see)
CLINICAL_CASES = [
    ("physician_off_team", "physician", NO_PATIENT),
    ("physician_on_care_team", "physician", THE_PATIENT),
    ("physician_with_appointment", "physician", THE_PATIENT),
    ("physician_with_completed_appointment", "physician", THE_PATIENT),
    ("physician_with_cancelled_appointment", "physician", NO_PATIENT),
    ("physician_with_grant", "physician", THE_PATIENT),
    ("physician_with_expired_grant", "physician", NO_PATIENT),
    ("physician_with_revoked_grant", "physician", NO_PATIENT),
    ("physician_of_other_patient", "physician", OTHER_PATIENT),
    ("nurse_on_care_team", "nurse", THE_PATIENT),
    ("nurse_off_team", "nurse", NO_PATIENT),
    ("receptionist", "receptionist", NO_PATIENT),
    ("clinic_admin", "clinic_admin", NO_PATIENT),
    # compliance sees the rows; the application hides their clinical content
    ("compliance_officer", "compliance_officer", BOTH_PATIENTS),
    ("patient", "patient", THE_PATIENT),
    ("other_patient", "patient", OTHER_PATIENT),
    # the relationship is the user's, not the role's: a care-team member's id with a
    # receptionist role in the transaction sees nothing
    ("physician_on_care_team", "receptionist", NO_PATIENT),
]


def expected_patients(world: ClinicalWorld, which: str) -> set[uuid.UUID]:
    return {
        THE_PATIENT: {world.patient_id},
        OTHER_PATIENT: {world.other_patient_id},
        BOTH_PATIENTS: {world.patient_id, world.other_patient_id},
        NO_PATIENT: set(),
    }[which]


@pytest.mark.parametrize("table", CLINICAL_TABLES)
@pytest.mark.parametrize("case", CLINICAL_CASES, ids=[f"{w}-as-{r}" for w, r, _ in CLINICAL_CASES])
async def test_clinical_rows_follow_the_care_relationship(
    db: Database, clinical: ClinicalWorld, table: str, case: tuple[str, str, str]
) -> None:
    """Each relationship to a patient sees exactly the clinical rows the policy allows."""
    who, role, sees = case
    tenant = TenantContext(clinical.clinic_id, clinical.users[who], role)
    async with db.transaction(tenant) as s:
        found = set((await s.execute(on(table, "SELECT patient_id FROM {table}"))).scalars())
    assert found == expected_patients(clinical, sees)


@pytest.mark.parametrize("table", CLINICAL_TABLES)
async def test_maintenance_context_sees_all_clinical_rows_of_its_clinic(
    db: Database, clinical: ClinicalWorld, table: str
) -> None:
    """The system role sees every clinical row of its own clinic."""
    async with db.transaction(TenantContext.system(clinical.clinic_id)) as s:
        found = set((await s.execute(on(table, "SELECT patient_id FROM {table}"))).scalars())
    assert found == {clinical.patient_id, clinical.other_patient_id}


@pytest.mark.parametrize("table", CLINICAL_TABLES)
async def test_care_team_access_does_not_travel_to_another_clinic(
    db: Database, clinical: ClinicalWorld, table: str
) -> None:
    """A clinic-A care-team physician working in clinic B sees none of A's clinical rows."""
    tenant = TenantContext(
        clinical.other_clinic_id, clinical.users["physician_on_care_team"], "physician"
    )
    async with db.transaction(tenant) as s:
        assert await s.scalar(on(table, "SELECT count(*) FROM {table}")) == 0


@pytest.mark.parametrize("table", CLINICAL_TABLES)
async def test_only_a_related_clinician_can_write_clinical_rows(
    db: Database, clinical: ClinicalWorld, admin: psycopg.Connection[Any], table: str
) -> None:
    """An off-care-team physician's record or prescription fails WITH CHECK; the same row
    from the care-team physician is accepted."""
    sql = INSERT_ROW[table]

    def row_by(who: str) -> dict[str, Any]:
        return statement_params(
            sql,
            {
                "clinic": clinical.clinic_id,
                "id": uuid.uuid4(),
                "patient": clinical.patient_id,
                "professional": clinical.users[who],
            },
        )

    before = admin_count(admin, table, clinical.clinic_id)
    for who, role in (("physician_off_team", "physician"), ("receptionist", "receptionist")):
        with pytest.raises(DBAPIError, match=RLS_VIOLATION):
            async with db.transaction(
                TenantContext(clinical.clinic_id, clinical.users[who], role)
            ) as s:
                await s.execute(text(sql), row_by(who))
    assert admin_count(admin, table, clinical.clinic_id) == before
    author = clinical.users["physician_on_care_team"]
    async with db.transaction(TenantContext(clinical.clinic_id, author, "physician")) as s:
        await s.execute(text(sql), row_by("physician_on_care_team"))
    assert admin_count(admin, table, clinical.clinic_id) == before + 1


@pytest.mark.parametrize("table", CLINICAL_TABLES)
async def test_off_team_physician_cannot_change_or_remove_clinical_rows(
    db: Database, clinical: ClinicalWorld, admin: psycopg.Connection[Any], table: str
) -> None:
    """UPDATE and DELETE of clinical rows by an unrelated physician reach no row."""
    before = admin_count(admin, table, clinical.clinic_id)
    tenant = TenantContext(clinical.clinic_id, clinical.users["physician_off_team"], "physician")
    async with db.transaction(tenant) as s:
        updated = await s.execute(on(table, "UPDATE {table} SET clinic_id = clinic_id"))
        deleted = await s.execute(on(table, "DELETE FROM {table}"))
    assert (updated.rowcount, deleted.rowcount) == (0, 0)  # type: ignore[attr-defined]
    assert admin_count(admin, table, clinical.clinic_id) == before


# -- a patient sees only themselves ---------------------------------------------------------


@pytest.mark.parametrize(("who", "own"), [("patient", "the"), ("other_patient", "other")])
async def test_patient_sees_only_own_patient_row_and_appointments(
    db: Database, clinical: ClinicalWorld, who: str, own: str
) -> None:
    """A patient-role transaction sees its own patients row and appointments, no one else's."""
    own_id = clinical.patient_id if own == "the" else clinical.other_patient_id
    async with db.transaction(
        TenantContext(clinical.clinic_id, clinical.users[who], "patient")
    ) as s:
        patients = set((await s.execute(text("SELECT id FROM patients"))).scalars())
        appointments = list(
            (await s.execute(text("SELECT patient_id FROM appointments"))).scalars()
        )
    assert patients == {own_id}
    assert appointments
    assert set(appointments) == {own_id}


async def test_staff_see_every_patient_and_appointment_of_their_clinic(
    db: Database, clinical: ClinicalWorld
) -> None:
    """A receptionist (not a patient) sees all the clinic's patients and appointments."""
    tenant = TenantContext(clinical.clinic_id, clinical.users["receptionist"], "receptionist")
    async with db.transaction(tenant) as s:
        patients = set((await s.execute(text("SELECT id FROM patients"))).scalars())
        appointments = set((await s.execute(text("SELECT patient_id FROM appointments"))).scalars())
    assert patients == appointments == {clinical.patient_id, clinical.other_patient_id}


# -- before a clinic is chosen: own memberships, one API key --------------------------------


async def test_person_sees_only_own_memberships_across_clinics(
    db: Database, clinics: TwoClinics
) -> None:
    """Sign-in's person context sees that person's memberships in every clinic, nobody else's."""
    async with db.transaction(TenantContext.person(clinics.shared_user_id)) as s:
        rows = (await s.execute(text("SELECT clinic_id, user_id FROM clinic_memberships"))).all()
    assert {tuple(row) for row in rows} == {
        (clinics.a.clinic_id, clinics.shared_user_id),
        (clinics.b.clinic_id, clinics.shared_user_id),
    }
    async with db.transaction(TenantContext.person(clinics.a.physician_id)) as s:
        rows = (await s.execute(text("SELECT clinic_id, user_id FROM clinic_memberships"))).all()
    assert {tuple(row) for row in rows} == {(clinics.a.clinic_id, clinics.a.physician_id)}


async def test_person_cannot_make_themselves_a_member(db: Database, clinics: TwoClinics) -> None:
    """Seeing one's memberships is not writing them: without a clinic, INSERT is refused."""
    sql = INSERT_ROW["clinic_memberships"]
    params = statement_params(sql, clinics.b.insert_params())
    with pytest.raises(DBAPIError, match=RLS_VIOLATION):
        async with db.transaction(TenantContext.person(params["user"])) as s:
            await s.execute(text(sql), params)


async def test_api_key_lookup_sees_exactly_the_named_prefix(
    db: Database, clinics: TwoClinics
) -> None:
    """With app.api_key_prefix and no clinic, exactly the key with that prefix is visible."""
    for rows in (clinics.a, clinics.b):
        async with db.transaction() as s:
            await db.set_setting(s, "app.api_key_prefix", rows.api_key_prefix)
            found = (await s.execute(text("SELECT clinic_id, id, prefix FROM api_keys"))).all()
        assert [tuple(row) for row in found] == [
            (rows.clinic_id, rows.api_key_id, rows.api_key_prefix)
        ]


@pytest.mark.parametrize("prefix", [None, "", "0000deadbeef"], ids=["unset", "empty", "unknown"])
async def test_api_key_lookup_without_a_known_prefix_sees_nothing(
    db: Database, clinics: TwoClinics, prefix: str | None
) -> None:
    """No prefix, an empty one or an unknown one makes no API key visible."""
    async with db.transaction() as s:
        if prefix is not None:
            await db.set_setting(s, "app.api_key_prefix", prefix)
        assert await s.scalar(text("SELECT count(*) FROM api_keys")) == 0


# -- what each role may see and write -------------------------------------------------------

#: Append-only tables: no DELETE policy at all, so a DELETE reaches no row, even as system.
APPEND_ONLY = ("medical_records", "prescriptions", "emergency_grants")
MUTABLE_TABLES = tuple(t for t in TENANT_TABLES if t not in APPEND_ONLY)
FRONT_DESK_TABLES = frozenset({"patients", "appointments"})
ORGANISATION_TABLES = frozenset(
    {"care_team", "treatments", "treatment_certifications", "clinic_memberships"}
)
STAFF_READS = FRONT_DESK_TABLES | ORGANISATION_TABLES
CLINICAL = frozenset(CLINICAL_TABLES)
EVERY_TABLE = frozenset(TENANT_TABLES)
ROLES = (
    "system",
    "clinic_admin",
    "physician",
    "nurse",
    "receptionist",
    "compliance_officer",
    "integration",
    "patient",
)

#: In a seeded clinic (see :func:`role_context` for who acts), the tables each role sees a
#: row of. The physician is on the care team and holds the grant; the nurse holds nothing.
READS: dict[str, frozenset[str]] = {
    "system": EVERY_TABLE,
    "clinic_admin": STAFF_READS | {"emergency_grants", "api_keys"},
    "physician": STAFF_READS | {"emergency_grants"} | CLINICAL,
    "nurse": STAFF_READS,
    "receptionist": STAFF_READS,
    "compliance_officer": STAFF_READS | {"emergency_grants"} | CLINICAL,
    "integration": STAFF_READS | {"api_keys"},
    "patient": frozenset(),
}
#: The tables where each role's INSERT of a valid :data:`INSERT_ROW` row is accepted (the
#: grant's grantee and the clinical rows' author are the nurse).
INSERTS: dict[str, frozenset[str]] = {
    "system": EVERY_TABLE,
    "clinic_admin": FRONT_DESK_TABLES | ORGANISATION_TABLES | {"api_keys"},
    "physician": FRONT_DESK_TABLES,
    # the seeded nurse cares for nobody: she books no appointment
    "nurse": (FRONT_DESK_TABLES - {"appointments"}) | {"emergency_grants"},
    "receptionist": FRONT_DESK_TABLES,
    "compliance_officer": frozenset(),
    "integration": FRONT_DESK_TABLES,
    "patient": frozenset(),
}
#: The (non-append-only) tables where each role's UPDATE reaches rows; requests made with
#: an API key change no key.
UPDATES: dict[str, frozenset[str]] = {
    "system": frozenset(MUTABLE_TABLES),
    "clinic_admin": frozenset(MUTABLE_TABLES),
    "physician": FRONT_DESK_TABLES,
    "nurse": FRONT_DESK_TABLES - {"appointments"},
    "receptionist": FRONT_DESK_TABLES,
    "compliance_officer": frozenset(),
    "integration": FRONT_DESK_TABLES,
    "patient": frozenset(),
}


def role_context(rows: ClinicRows, role: str) -> TenantContext:
    """``role`` in ``rows``' clinic: the seeded physician (care team, grant) and nurse,
    the clinic's API key for integration, a fresh id for anyone else (the policies know
    them by role only)."""
    if role == "system":
        return TenantContext.system(rows.clinic_id)
    acting = {"physician": rows.physician_id, "nurse": rows.nurse_id}
    acting["integration"] = rows.api_key_id
    return TenantContext(rows.clinic_id, acting.get(role) or uuid.uuid4(), role)


@pytest.mark.parametrize("role", ROLES)
async def test_each_role_sees_only_its_tables(db: Database, clinics: TwoClinics, role: str) -> None:
    """Which tenant tables a role sees any row of (patients see none of an unrelated clinic;
    only administrators and integrations see API keys; clinical rows need the relationship)."""
    async with db.transaction(role_context(clinics.a, role)) as s:
        seen = {t for t in TENANT_TABLES if await s.scalar(on(t, "SELECT count(*) FROM {table}"))}
    assert seen == READS[role]


@pytest.mark.parametrize("role", ROLES)
async def test_each_role_inserts_only_where_allowed(
    db: Database, clinics: TwoClinics, admin: psycopg.Connection[Any], role: str
) -> None:
    """A valid new row for each table, written by ``role``: refused by the policy unless
    the role writes that table (organisation tables: administrators only; patients and
    appointments: the front desk and clinicians; a grant: its own grantee)."""
    accepted = set()
    for table in TENANT_TABLES:
        sql = INSERT_ROW[table]
        params = statement_params(sql, clinics.a.insert_params())
        before = admin_count(admin, table, clinics.a.clinic_id)
        if await attempt(db, role_context(clinics.a, role), sql, params) is not None:
            accepted.add(table)
        assert admin_count(admin, table, clinics.a.clinic_id) == before + (table in accepted)
    assert accepted == INSERTS[role]


@pytest.mark.parametrize("role", ROLES)
async def test_each_role_updates_only_where_allowed(
    db: Database, clinics: TwoClinics, role: str
) -> None:
    """UPDATE of every row of each mutable table reaches rows only where the role writes."""
    async with db.transaction(role_context(clinics.a, role)) as s:
        updated = {
            t
            for t in MUTABLE_TABLES
            if (await s.execute(on(t, "UPDATE {table} SET clinic_id = clinic_id"))).rowcount  # type: ignore[attr-defined]
        }
    assert updated == UPDATES[role]


@pytest.mark.parametrize(
    "role", [None, "platform_admin", "Physician"], ids=["no-role", "platform_admin", "wrong-case"]
)
async def test_clinic_without_an_allowed_role_sees_and_writes_nothing(
    db: Database, clinics: TwoClinics, admin: psycopg.Connection[Any], role: str | None
) -> None:
    """A transaction naming a clinic but no role (``TenantContext(clinic_id)``), or a role
    outside the allowlist, sees no row of any tenant table and writes none."""
    tenant = TenantContext(clinics.a.clinic_id, None, role)
    before = {t: admin_count(admin, t, clinics.a.clinic_id) for t in TENANT_TABLES}
    async with db.transaction(tenant) as s:
        seen = {t: await s.scalar(on(t, "SELECT count(*) FROM {table}")) for t in TENANT_TABLES}
        changed = {
            t: (await s.execute(on(t, "UPDATE {table} SET clinic_id = clinic_id"))).rowcount  # type: ignore[attr-defined]
            + (await s.execute(on(t, "DELETE FROM {table}"))).rowcount  # type: ignore[attr-defined]
            for t in TENANT_TABLES
        }
    assert seen == changed == dict.fromkeys(TENANT_TABLES, 0)
    for table in TENANT_TABLES:
        sql = INSERT_ROW[table]
        params = statement_params(sql, clinics.a.insert_params())
        assert await attempt(db, tenant, sql, params) is None, table
    assert {t: admin_count(admin, t, clinics.a.clinic_id) for t in TENANT_TABLES} == before


async def test_clinic_id_alone_sees_no_patient(db: Database, clinics: TwoClinics) -> None:
    """``TenantContext(clinic_id)``, the shape a forgotten role takes, sees 0 patients
    (the same clinic's maintenance context sees them)."""
    async with db.transaction(TenantContext(clinics.a.clinic_id)) as s:
        assert await s.scalar(text("SELECT count(*) FROM patients")) == 0
    async with db.transaction(TenantContext.system(clinics.a.clinic_id)) as s:
        assert await s.scalar(text("SELECT count(*) FROM patients")) == 1


async def test_requests_made_with_a_key_change_no_key(db: Database, clinics: TwoClinics) -> None:
    """An integration context sees its clinic's keys but UPDATE reaches none of them, its
    own included (marking a key used is maintenance); an administrator's reaches every
    key of the clinic."""
    a = clinics.a
    sql = INSERT_ROW["api_keys"]
    second = statement_params(sql, a.insert_params())
    assert await attempt(db, role_context(a, "clinic_admin"), sql, second) == 1
    async with db.transaction(role_context(a, "integration")) as s:
        seen = set((await s.execute(text("SELECT id FROM api_keys"))).scalars())
        used = await s.execute(text("UPDATE api_keys SET last_used_at = now() RETURNING id"))
        touched = set(used.scalars())
    assert seen == {a.api_key_id, second["id"]}
    assert touched == set()
    update_all = "UPDATE api_keys SET last_used_at = now()"
    assert await attempt(db, role_context(a, "clinic_admin"), update_all) == 2
    assert await attempt(db, TenantContext.system(a.clinic_id), update_all) == 2


async def test_a_clinician_cannot_book_their_way_into_a_patients_records(
    db: Database, clinical: ClinicalWorld
) -> None:
    """An appointment is a care relation, so a clinician books only patients already in
    their care: the off-team physician's appointment with themselves is refused, the
    front desk's same row is accepted (and with it come the records)."""
    sql = INSERT_ROW["appointments"]
    params = clinical.row(sql, professional="physician_off_team")
    assert await attempt(db, clinical.ctx("physician_off_team"), sql, params) is None
    records = text("SELECT patient_id FROM medical_records")
    async with db.transaction(clinical.ctx("physician_off_team")) as s:
        assert set((await s.execute(records)).scalars()) == set()
    assert await attempt(db, clinical.ctx("receptionist"), sql, params) == 1
    async with db.transaction(clinical.ctx("physician_off_team")) as s:
        assert set((await s.execute(records)).scalars()) == {clinical.patient_id}


# -- care team, break-glass grants and clinical writes: who may write which row --------------


async def test_only_an_administrator_changes_the_care_team(
    db: Database, clinical: ClinicalWorld, admin: psycopg.Connection[Any]
) -> None:
    """Nobody but an administrator joins a care team: not the off-team physician adding
    themselves, not a care-team clinician adding a colleague, not the front desk or the
    patient. The administrator's same row is accepted, and with it comes clinical access."""
    sql = INSERT_ROW["care_team"]
    params = clinical.row(sql, professional="physician_off_team")
    before = admin_count(admin, "care_team", clinical.clinic_id)
    for who in (
        "physician_off_team",
        "physician_on_care_team",
        "nurse_on_care_team",
        "receptionist",
        "compliance_officer",
        "patient",
    ):
        assert await attempt(db, clinical.ctx(who), sql, params) is None, who
    assert admin_count(admin, "care_team", clinical.clinic_id) == before
    records = text("SELECT patient_id FROM medical_records")
    async with db.transaction(clinical.ctx("physician_off_team")) as s:
        assert set((await s.execute(records)).scalars()) == set()
    assert await attempt(db, clinical.ctx("clinic_admin"), sql, params) == 1
    async with db.transaction(clinical.ctx("physician_off_team")) as s:
        assert set((await s.execute(records)).scalars()) == {clinical.patient_id}


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("physician_on_care_team", 0),
        ("nurse_on_care_team", 0),
        ("receptionist", 0),
        ("compliance_officer", 0),
        ("patient", 0),
        ("clinic_admin", 1),
    ],
)
async def test_only_an_administrator_repoints_the_care_team(
    db: Database, clinical: ClinicalWorld, who: str, expected: int
) -> None:
    """UPDATE of the patient's care team (to put oneself on it) and DELETE from it reach no
    row but for an administrator."""
    repoint = (
        "UPDATE care_team SET professional_id = :me"
        " WHERE patient_id = :patient AND professional_id = :nurse"
    )
    params = {
        "me": clinical.users["physician_off_team"],
        "patient": clinical.patient_id,
        "nurse": clinical.users["nurse_on_care_team"],
    }
    assert await attempt(db, clinical.ctx(who), repoint, params) == expected
    if expected == 0:
        remove = "DELETE FROM care_team WHERE patient_id = :patient"
        assert await attempt(db, clinical.ctx(who), remove, params) == 0


GRANT_OPENINGS = [
    # (who opens it, for whom, accepted)
    ("receptionist", "nurse_off_team", False),
    ("receptionist", "receptionist", False),
    ("physician_off_team", "nurse_off_team", False),
    ("nurse_on_care_team", "physician_off_team", False),
    ("clinic_admin", "physician_off_team", False),
    ("compliance_officer", "physician_off_team", False),
    ("patient", "patient", False),
    ("physician_off_team", "physician_off_team", True),
    ("nurse_off_team", "nurse_off_team", True),
]


@pytest.mark.parametrize("case", GRANT_OPENINGS, ids=[f"{w}-for-{g}" for w, g, _ in GRANT_OPENINGS])
async def test_only_the_grantee_opens_an_emergency_grant(
    db: Database,
    clinical: ClinicalWorld,
    admin: psycopg.Connection[Any],
    case: tuple[str, str, bool],
) -> None:
    """A break-glass grant is opened by the physician or nurse it is for, never on someone
    else's behalf (nor by the front desk, an administrator or the patient). A refused row
    is valid: maintenance writes it."""
    who, grantee, accepted = case
    sql = INSERT_ROW["emergency_grants"]
    params = clinical.row(sql, professional=grantee)
    before = admin_count(admin, "emergency_grants", clinical.clinic_id)
    outcome = await attempt(db, clinical.ctx(who), sql, params)
    assert outcome == (1 if accepted else None)
    if not accepted:
        assert await attempt(db, TenantContext.system(clinical.clinic_id), sql, params) == 1
    assert admin_count(admin, "emergency_grants", clinical.clinic_id) == before + 1


SEEDED_GRANTEES = frozenset(
    {"physician_with_grant", "physician_with_expired_grant", "physician_with_revoked_grant"}
)
GRANT_READERS = [
    ("physician_with_grant", {"physician_with_grant"}),
    ("physician_with_expired_grant", {"physician_with_expired_grant"}),
    ("physician_off_team", set()),
    ("nurse_on_care_team", set()),
    ("receptionist", set()),
    ("patient", set()),
    ("clinic_admin", SEEDED_GRANTEES),
    ("compliance_officer", SEEDED_GRANTEES),
]


@pytest.mark.parametrize(("who", "sees"), GRANT_READERS, ids=[w for w, _ in GRANT_READERS])
async def test_clinicians_see_only_their_own_grants(
    db: Database, clinical: ClinicalWorld, who: str, sees: set[str]
) -> None:
    """A physician or nurse sees only the grants made out to them (open or not); the
    administrator and compliance see every grant of the clinic; nobody else sees any."""
    async with db.transaction(clinical.ctx(who)) as s:
        found = set((await s.execute(text("SELECT grantee_id FROM emergency_grants"))).scalars())
    assert found == {clinical.users[name] for name in sees}


async def test_a_new_grant_is_seen_by_its_grantee_and_oversight_only(
    db: Database, clinical: ClinicalWorld
) -> None:
    """The nurse's own new grant: she sees it alone, the other grantees still only theirs,
    oversight every one."""
    sql = INSERT_ROW["emergency_grants"]
    assert (
        await attempt(
            db,
            clinical.ctx("nurse_off_team"),
            sql,
            clinical.row(sql, professional="nurse_off_team"),
        )
        == 1
    )
    grantees = text("SELECT grantee_id FROM emergency_grants")
    expected = {
        "nurse_off_team": {"nurse_off_team"},
        "physician_with_grant": {"physician_with_grant"},
        "compliance_officer": {*SEEDED_GRANTEES, "nurse_off_team"},
        "clinic_admin": {*SEEDED_GRANTEES, "nurse_off_team"},
    }
    for who, names in expected.items():
        async with db.transaction(clinical.ctx(who)) as s:
            found = set((await s.execute(grantees)).scalars())
        assert found == {clinical.users[name] for name in names}, who


RECORD_OF_KIND = (
    "INSERT INTO medical_records (clinic_id, id, patient_id, author_id, kind, notes,"
    " created_at) VALUES (:clinic, :id, :patient, :author, :kind,"
    " convert_to('Sem queixas.', 'UTF8'), now())"
)
PRESCRIPTION_BY = INSERT_ROW["prescriptions"].replace(":professional", ":author")
CLINICAL_WRITES = [
    # (who writes, what, as whose author/prescriber, kind, accepted)
    ("patient", RECORD_OF_KIND, "patient", "consultation", False),
    ("compliance_officer", RECORD_OF_KIND, "compliance_officer", "consultation", False),
    ("clinic_admin", RECORD_OF_KIND, "clinic_admin", "consultation", False),
    ("receptionist", RECORD_OF_KIND, "receptionist", "nursing_note", False),
    ("nurse_on_care_team", RECORD_OF_KIND, "nurse_on_care_team", "consultation", False),
    ("nurse_on_care_team", RECORD_OF_KIND, "nurse_on_care_team", "nursing_note", True),
    ("nurse_off_team", RECORD_OF_KIND, "nurse_off_team", "nursing_note", False),
    ("physician_on_care_team", RECORD_OF_KIND, "physician_with_appointment", "exam", False),
    ("physician_with_appointment", RECORD_OF_KIND, "physician_with_appointment", "exam", True),
    ("physician_with_grant", RECORD_OF_KIND, "physician_with_grant", "procedure", True),
    ("patient", PRESCRIPTION_BY, "patient", None, False),
    ("compliance_officer", PRESCRIPTION_BY, "compliance_officer", None, False),
    ("nurse_on_care_team", PRESCRIPTION_BY, "nurse_on_care_team", None, False),
    ("physician_on_care_team", PRESCRIPTION_BY, "physician_with_appointment", None, False),
    ("physician_with_grant", PRESCRIPTION_BY, "physician_with_grant", None, True),
]


def _clinical_write_id(case: tuple[str, str, str, str | None, bool]) -> str:
    who, _, author, kind, _ = case
    what = kind or "prescription"
    return f"{who}-{what}" + ("" if author == who else f"-as-{author}")


@pytest.mark.parametrize(
    "case", CLINICAL_WRITES, ids=[_clinical_write_id(c) for c in CLINICAL_WRITES]
)
async def test_clinical_rows_are_written_only_by_their_author(
    db: Database,
    clinical: ClinicalWorld,
    admin: psycopg.Connection[Any],
    case: tuple[str, str, str, str | None, bool],
) -> None:
    """A clinical record is written by its own author with clinical access to the patient:
    a physician of any kind, a nurse a nursing note only; a prescription by its prescribing
    physician. Patients, compliance, administrators and the front desk write neither, and
    nobody writes in a colleague's name. A refused row is valid: maintenance writes it."""
    who, sql, author, kind, accepted = case
    table = "prescriptions" if sql is PRESCRIPTION_BY else "medical_records"
    params = clinical.row(sql, author=author, kind=kind)
    before = admin_count(admin, table, clinical.clinic_id)
    assert await attempt(db, clinical.ctx(who), sql, params) == (1 if accepted else None)
    if not accepted:
        assert await attempt(db, TenantContext.system(clinical.clinic_id), sql, params) == 1
    assert admin_count(admin, table, clinical.clinic_id) == before + 1


# -- patients and compliance only read; append-only rows are never deleted ------------------


async def test_patient_sees_nothing_of_the_clinic_organisation(
    db: Database, clinical: ClinicalWorld
) -> None:
    """A patient-role transaction sees no care team, grant, treatment or certification,
    and of the memberships only their own (compliance, for contrast, sees them all)."""
    tables = ("care_team", "emergency_grants", "treatments", "treatment_certifications")
    members = text("SELECT user_id FROM clinic_memberships")

    async def seen(who: str) -> tuple[dict[str, int], set[uuid.UUID]]:
        async with db.transaction(clinical.ctx(who)) as s:
            counts = {t: await s.scalar(on(t, "SELECT count(*) FROM {table}")) for t in tables}
            return counts, set((await s.execute(members)).scalars())

    counts, memberships = await seen("patient")
    assert counts == dict.fromkeys(tables, 0)
    assert memberships == {clinical.users["patient"]}
    counts, memberships = await seen("compliance_officer")
    assert all(counts.values()), counts
    assert memberships == set(clinical.users.values())


PATIENT_INSERTS = [
    ("care_team", INSERT_ROW["care_team"], {"professional": "patient"}),
    ("emergency_grants", INSERT_ROW["emergency_grants"], {"professional": "patient"}),
    ("appointments", INSERT_ROW["appointments"], {"professional": "physician_on_care_team"}),
    ("patients", INSERT_ROW["patients"], {}),
    ("medical_records", RECORD_OF_KIND, {"author": "patient", "kind": "follow_up"}),
    ("prescriptions", PRESCRIPTION_BY, {"author": "patient"}),
    ("treatments", INSERT_ROW["treatments"], {"name": "Autoatendimento"}),
]


@pytest.mark.parametrize("case", PATIENT_INSERTS, ids=[t for t, _, _ in PATIENT_INSERTS])
async def test_patient_context_inserts_nothing(
    db: Database,
    clinical: ClinicalWorld,
    admin: psycopg.Connection[Any],
    case: tuple[str, str, dict[str, str]],
) -> None:
    """A patient cannot join their own care team, open a grant, book an appointment,
    register a patient, write their own record or prescription: each valid row (accepted
    from maintenance) is a row-level security violation from the patient."""
    table, sql, values = case
    params = clinical.row(sql, cpf=generate_cpf(_cpfs), **values)
    before = admin_count(admin, table, clinical.clinic_id)
    assert await attempt(db, clinical.ctx("patient"), sql, params) is None
    assert admin_count(admin, table, clinical.clinic_id) == before
    assert await attempt(db, TenantContext.system(clinical.clinic_id), sql, params) == 1


@pytest.mark.parametrize("who", ["patient", "compliance_officer"])
async def test_read_only_roles_change_and_remove_no_row(
    db: Database, clinical: ClinicalWorld, admin: psycopg.Connection[Any], who: str
) -> None:
    """A patient (who sees their own patients row, appointments and clinical rows) and a
    compliance officer (who sees everything but API keys) UPDATE and DELETE no row of any
    tenant table."""
    before = {t: admin_count(admin, t, clinical.clinic_id) for t in TENANT_TABLES}
    async with db.transaction(clinical.ctx(who)) as s:
        seen = {t: await s.scalar(on(t, "SELECT count(*) FROM {table}")) for t in TENANT_TABLES}
        updated = {
            t: (await s.execute(on(t, "UPDATE {table} SET clinic_id = clinic_id"))).rowcount  # type: ignore[attr-defined]
            for t in TENANT_TABLES
        }
        deleted = {
            t: (await s.execute(on(t, "DELETE FROM {table}"))).rowcount  # type: ignore[attr-defined]
            for t in TENANT_TABLES
        }
    assert all(seen[t] for t in ("patients", "appointments", *CLINICAL_TABLES)), seen
    assert updated == deleted == dict.fromkeys(TENANT_TABLES, 0)
    assert {t: admin_count(admin, t, clinical.clinic_id) for t in TENANT_TABLES} == before


@pytest.mark.parametrize("table", APPEND_ONLY)
async def test_append_only_rows_are_never_deleted(
    db: Database, clinical: ClinicalWorld, admin: psycopg.Connection[Any], table: str
) -> None:
    """No DELETE policy: maintenance, the author or prescriber, the grantee and compliance,
    all of whom see the rows, delete none of them, even by id."""
    before = admin_count(admin, table, clinical.clinic_id)
    delete_all = on(table, "DELETE FROM {table}")
    delete_by_id = on(table, "DELETE FROM {table} WHERE id IN (SELECT id FROM {table})")
    owner = "physician_with_grant" if table == "emergency_grants" else "physician_on_care_team"
    for tenant in (
        TenantContext.system(clinical.clinic_id),
        clinical.ctx(owner),
        clinical.ctx("compliance_officer"),
    ):
        async with db.transaction(tenant) as s:
            assert await s.scalar(on(table, "SELECT count(*) FROM {table}")), tenant
        assert await attempt(db, tenant, delete_all) == 0, tenant
        assert await attempt(db, tenant, delete_by_id) == 0, tenant
    assert admin_count(admin, table, clinical.clinic_id) == before


async def test_patients_are_deleted_only_by_their_writers(
    db: Database, clinical: ClinicalWorld, admin: psycopg.Connection[Any]
) -> None:
    """A receptionist deletes a patient with no dependent rows; the patient role (even its
    own row) and compliance delete none."""
    sql = INSERT_ROW["patients"]
    params = clinical.row(sql, cpf=generate_cpf(_cpfs))
    assert await attempt(db, clinical.ctx("receptionist"), sql, params) == 1
    before = admin_count(admin, "patients", clinical.clinic_id)
    delete = "DELETE FROM patients WHERE id = :id"
    for who, patient_id in (
        ("patient", clinical.patient_id),
        ("patient", params["id"]),
        ("compliance_officer", params["id"]),
    ):
        assert await attempt(db, clinical.ctx(who), delete, {"id": patient_id}) == 0, who
    assert admin_count(admin, "patients", clinical.clinic_id) == before
    assert await attempt(db, clinical.ctx("receptionist"), delete, {"id": params["id"]}) == 1
    assert admin_count(admin, "patients", clinical.clinic_id) == before - 1


# -- UPDATE of rows meant to be append-only, and of an API key by itself --------------------

GRANT_REWRITES = [
    ("physician_with_revoked_grant", "UPDATE emergency_grants SET revoked_at = NULL"),
    (
        "physician_with_expired_grant",
        "UPDATE emergency_grants SET expires_at = now() + interval '30 days'",
    ),
    ("physician_with_grant", "UPDATE emergency_grants SET patient_id = :other"),
]


@pytest.mark.parametrize(("who", "sql"), GRANT_REWRITES, ids=["unrevoke", "extend", "repoint"])
async def test_grantee_cannot_rewrite_their_grant(
    db: Database, clinical: ClinicalWorld, who: str, sql: str
) -> None:
    """A grantee can neither revive, extend nor re-point their break-glass grant."""
    params = clinical.row(sql)
    assert await attempt(db, clinical.ctx(who), sql, params) in (0, None)


CLINICAL_REWRITES = [
    (
        "medical_records",
        "UPDATE medical_records SET notes = convert_to('Reescrito depois.', 'UTF8')",
    ),
    (
        "prescriptions",
        "UPDATE prescriptions SET dosage = convert_to('10 comprimidos de uma vez', 'UTF8')",
    ),
]


@pytest.mark.parametrize(("table", "sql"), CLINICAL_REWRITES, ids=[t for t, _ in CLINICAL_REWRITES])
async def test_author_cannot_rewrite_clinical_rows(
    db: Database, clinical: ClinicalWorld, table: str, sql: str
) -> None:
    """The care-team physician, author and prescriber of the seeded rows, changes none."""
    assert await attempt(db, clinical.ctx("physician_on_care_team"), sql) in (0, None), table


API_KEY_SELF_CHANGES = [
    'UPDATE api_keys SET scopes = \'["patients:read", "patients:create"]\' WHERE id = :me',
    "UPDATE api_keys SET expires_at = NULL WHERE id = :me",
]


@pytest.mark.parametrize("sql", API_KEY_SELF_CHANGES, ids=["scopes", "expiry"])
async def test_integration_key_cannot_widen_itself(
    db: Database, clinics: TwoClinics, sql: str
) -> None:
    """An integration key changes nothing of itself but its last use."""
    tenant = role_context(clinics.a, "integration")
    assert await attempt(db, tenant, sql, {"me": clinics.a.api_key_id}) in (0, None)


# -- the catalogue: nothing tenant-owned escapes RLS ----------------------------------------

_RLS_FLAGS = (
    "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname = ANY(%s)"
)


def rls_flags(admin: psycopg.Connection[Any], tables: list[str]) -> dict[str, tuple[bool, bool]]:
    rows = admin.execute(_RLS_FLAGS, (tables,))
    return {name: (enabled, forced) for name, enabled, forced in rows}


def test_every_tenant_table_has_rls_enabled_and_forced(
    admin: psycopg.Connection[Any],
) -> None:
    """pg_class: every tenant table has RLS enabled and forced, and a policy."""
    assert rls_flags(admin, list(TENANT_TABLES)) == dict.fromkeys(TENANT_TABLES, (True, True))
    with_policy = {
        row[0]
        for row in admin.execute(
            "SELECT tablename FROM pg_policies WHERE schemaname = 'public' AND tablename = ANY(%s)",
            (list(TENANT_TABLES),),
        )
    }
    assert with_policy == set(TENANT_TABLES)


def partitions_of(admin: psycopg.Connection[Any], parent: str) -> set[str]:
    return {
        row[0]
        for row in admin.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s",
            (parent,),
        )
    }


def app_privileges(admin: psycopg.Connection[Any], table: str) -> set[str]:
    """The privileges the application role holds on ``table``."""
    return {
        privilege
        for privilege in TABLE_PRIVILEGES
        if admin.execute(
            "SELECT has_table_privilege(%s, %s, %s)", (APP_ROLE, f"public.{table}", privilege)
        ).fetchone()
        == (True,)
    }


def test_every_table_with_a_clinic_id_is_under_rls(admin: psycopg.Connection[Any]) -> None:
    """A table with a clinic_id column without forced RLS fails here. The monthly
    partitions of the audit trail are the one exception: policies bind queries through
    their parent ``audit_events``, not a partition queried by name, so the application
    role must hold no privilege at all on a partition (it would read every clinic's
    events there)."""
    tables = sorted(
        row[0]
        for row in admin.execute(
            "SELECT c.table_name FROM information_schema.columns c"
            " JOIN information_schema.tables t"
            "   ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
            " WHERE c.table_schema = 'public' AND c.column_name = 'clinic_id'"
            "   AND t.table_type = 'BASE TABLE'"
        )
    )
    assert set(tables) >= set(TENANT_TABLES) | set(TRAIL_TABLES)
    months = partitions_of(admin, "audit_events")
    assert months, "the trail is partitioned by month on PostgreSQL"
    scoped = [t for t in tables if t not in months]
    assert rls_flags(admin, scoped) == dict.fromkeys(scoped, (True, True))
    reachable = {month: granted for month in months if (granted := app_privileges(admin, month))}
    assert reachable == {}


def test_the_audit_trail_is_under_rls_with_exactly_its_policies(
    admin: psycopg.Connection[Any],
) -> None:
    """pg_class, pg_policies and the grants: every trail table has RLS enabled and forced,
    exactly its own permissive policies (a stray one would widen who reads the trail), and
    the application role may only read and append (events are never changed or removed)."""
    assert rls_flags(admin, list(TRAIL_TABLES)) == dict.fromkeys(TRAIL_TABLES, (True, True))
    found: dict[str, set[tuple[str, str]]] = {}
    for table, name, cmd, permissive, roles in admin.execute(
        "SELECT tablename, policyname, cmd, permissive, roles FROM pg_policies"
        " WHERE schemaname = 'public' AND tablename = ANY(%s)",
        (list(TRAIL_TABLES),),
    ):
        assert (permissive, roles) == ("PERMISSIVE", ["public"]), name
        found.setdefault(table, set()).add((name, cmd))
    assert found == TRAIL_POLICIES
    assert {t: app_privileges(admin, t) for t in TRAIL_PRIVILEGES} == TRAIL_PRIVILEGES


def test_policies_are_one_per_command(admin: psycopg.Connection[Any]) -> None:
    """pg_policies: each tenant table has exactly its read, insert, update and delete
    policies (permissive, for every role), and the append-only tables no delete policy: a
    stray extra permissive policy would widen access and fails here."""
    found = {
        (table, name, cmd, permissive, tuple(roles))
        for table, name, cmd, permissive, roles in admin.execute(
            "SELECT tablename, policyname, cmd, permissive, roles FROM pg_policies"
            " WHERE schemaname = 'public' AND tablename = ANY(%s)",
            (list(TENANT_TABLES),),
        )
    }
    commands = {"read": "SELECT", "insert": "INSERT", "update": "UPDATE", "delete": "DELETE"}
    expected = {
        (table, f"{table}_{name}", cmd, "PERMISSIVE", ("public",))
        for table in TENANT_TABLES
        for name, cmd in commands.items()
        if not (name == "delete" and table in APPEND_ONLY)
    }
    assert found == expected
