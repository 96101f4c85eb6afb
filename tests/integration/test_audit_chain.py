"""The audit trail's chain: appended in the caller's transaction, numbered without gaps
per clinic under concurrent writers, and any edit, deletion, insertion or reordering made
behind the application's back named by verification. On PostgreSQL the application role
may only insert and read, and triggers refuse changes even to the owner."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from clinicguard.audit.recorder import AuditRecorder
from clinicguard.audit.trail import AuditEntry, AuditEventType, RiskLevel, risk
from clinicguard.audit.verify import verify_chain
from clinicguard.core.clock import SystemClock
from clinicguard.core.principal import FULL_ACCESS, Principal, Role
from clinicguard.store.db import Database
from clinicguard.store.interfaces import TenantContext
from tests.conftest import Backend
from tests.factories import clinic as f

READ = AuditEntry(
    event_type=AuditEventType.PATIENT_READ,
    action="read",
    outcome="success",
    resource_type="patient",
)


@pytest.fixture
async def database(backend: Backend) -> AsyncIterator[Database]:
    db = Database.from_url(backend.database_url)
    try:
        yield db
    finally:
        await db.dispose()


async def new_clinic(db: Database) -> uuid.UUID:
    clinic = f.clinic()
    async with db.transaction() as session:
        session.add(clinic)
    return clinic.id


def physician(clinic_id: uuid.UUID) -> Principal:
    return Principal(uuid.uuid4(), Role.PHYSICIAN, clinic_id, "sid", 1, frozenset({FULL_ACCESS}))


async def append(db: Database, clinic_id: uuid.UUID, n: int) -> list[uuid.UUID]:
    recorder = AuditRecorder(db, SystemClock())
    who = physician(clinic_id)
    ids = []
    for _ in range(n):
        async with db.transaction(TenantContext(clinic_id, who.user_id, "physician")) as s:
            event = await recorder.record(s, clinic_id, who, READ)
            ids.append(event.id)
    return ids


def superuser(backend: Backend) -> psycopg.Connection[Any]:
    assert backend.postgres is not None
    conn = psycopg.connect(backend.postgres.admin_url, autocommit=True)
    conn.execute("SET clinicguard.audit_maintenance = 'on'")
    return conn


async def tamper(db: Database, backend: Backend, sql: str, **params: Any) -> None:
    """Change the trail behind the application's back: as the superuser on PostgreSQL
    (past the triggers), directly in the file on SQLite."""
    if backend.postgres is not None:
        with superuser(backend) as conn:
            conn.execute(sql.replace(":clinic", "%(clinic)s").replace(":seq", "%(seq)s"), params)
        return
    async with db.transaction() as s:
        await s.execute(text(sql), params)


def as_param(db: Database, clinic_id: uuid.UUID) -> Any:
    return clinic_id if db.dialect == "postgresql" else clinic_id.hex


async def test_an_untouched_chain_verifies(database: Database) -> None:
    """Events of two clinics are numbered 1..n per clinic and verify."""
    a, b = await new_clinic(database), await new_clinic(database)
    await append(database, a, 5)
    await append(database, b, 3)
    for clinic, n in ((a, 5), (b, 3)):
        result = await verify_chain(database, clinic)
        assert (result.ok, result.checked, result.first_broken_event_id) == (True, n, None)


async def test_concurrent_appends_stay_one_gapless_chain(database: Database) -> None:
    """Twenty transactions of one clinic at once: sequence 1..20 without gaps, verified."""
    clinic = await new_clinic(database)
    recorder = AuditRecorder(database, SystemClock())
    who = physician(clinic)

    async def one() -> None:
        async with database.transaction(TenantContext(clinic, who.user_id, "physician")) as s:
            await recorder.record(s, clinic, who, READ)
            await asyncio.sleep(0)

    await asyncio.gather(*(one() for _ in range(20)))
    result = await verify_chain(database, clinic)
    assert (result.ok, result.checked) == (True, 20)


async def test_a_failed_access_leaves_no_event(database: Database) -> None:
    """The event belongs to its transaction: rolled back together."""
    clinic = await new_clinic(database)
    recorder = AuditRecorder(database, SystemClock())
    who = physician(clinic)

    async def failing_access() -> None:
        async with database.transaction(TenantContext(clinic, who.user_id, "physician")) as s:
            await recorder.record(s, clinic, who, READ)
            raise RuntimeError("the access failed")

    with pytest.raises(RuntimeError):
        await failing_access()
    assert (await verify_chain(database, clinic)).checked == 0
    await append(database, clinic, 1)
    assert (await verify_chain(database, clinic)).ok


@pytest.mark.parametrize(
    ("sql", "broken_seq", "why"),
    [
        (
            "UPDATE audit_events SET outcome = 'denied' WHERE clinic_id = :clinic AND seq = 3",
            3,
            "columns",
        ),
        (
            "UPDATE audit_events SET details = '{\"x\": 1}' WHERE clinic_id = :clinic AND seq = 3",
            3,
            "columns",
        ),
        ("DELETE FROM audit_events WHERE clinic_id = :clinic AND seq = 3", 4, "missing"),
        (
            "UPDATE audit_events SET seq = seq + 100 WHERE clinic_id = :clinic AND seq = 2",
            3,
            "missing",
        ),
        ("DELETE FROM audit_events WHERE clinic_id = :clinic AND seq = 5", 5, "missing"),
    ],
    ids=["edit-outcome", "edit-details", "delete-middle", "reorder", "cut-tail"],
)
async def test_verification_names_the_first_broken_event(
    database: Database, backend: Backend, sql: str, broken_seq: int, why: str
) -> None:
    clinic = await new_clinic(database)
    ids = await append(database, clinic, 5)
    await tamper(database, backend, sql, clinic=as_param(database, clinic))
    result = await verify_chain(database, clinic)
    assert not result.ok
    assert result.first_broken_seq == broken_seq
    assert why in (result.reason or "")
    if why == "columns":
        assert result.first_broken_event_id == ids[broken_seq - 1]


async def test_a_forged_event_inserted_is_named(database: Database, backend: Backend) -> None:
    """A copy of event 2 inserted as number 3 (events renumbered after it) breaks at 3."""
    clinic = await new_clinic(database)
    await append(database, clinic, 4)
    await tamper(
        database,
        backend,
        "UPDATE audit_events SET seq = seq + 1000 WHERE clinic_id = :clinic AND seq >= 3",
        clinic=as_param(database, clinic),
    )
    await tamper(
        database,
        backend,
        "UPDATE audit_events SET seq = seq - 999 WHERE clinic_id = :clinic AND seq > 1000",
        clinic=as_param(database, clinic),
    )
    columns = (
        "actor_id, actor_role, session_id, request_id, ip, user_agent, event_type,"
        " resource_type, resource_id, patient_id, action, outcome, reason, details, risk_score,"
        " risk_level, compliance, requires_review, prev_hash, hash, occurred_at"
    )
    new_id = uuid.uuid4() if database.dialect == "postgresql" else uuid.uuid4().hex
    await tamper(
        database,
        backend,
        f"INSERT INTO audit_events (clinic_id, seq, id, {columns}) SELECT clinic_id, 3,"  # noqa: S608
        f" '{new_id}', {columns} FROM audit_events WHERE clinic_id = :clinic AND seq = 2",
        clinic=as_param(database, clinic),
    )
    result = await verify_chain(database, clinic)
    assert (result.ok, result.first_broken_seq) == (False, 3)


async def test_the_application_role_and_the_owner_cannot_change_events(
    postgres_backend: Backend,
) -> None:
    """The app role has no UPDATE or DELETE on the trail; the owner's are refused by the
    triggers; TRUNCATE too."""
    db = Database.from_url(postgres_backend.database_url)
    try:
        clinic = await new_clinic(db)
        await append(db, clinic, 2)
        system = TenantContext.system(clinic)
        for sql in (
            "UPDATE audit_events SET outcome = 'denied'",
            "DELETE FROM audit_events",
            "TRUNCATE audit_events",
        ):
            with pytest.raises(DBAPIError, match=r"permission denied|append-only"):
                await run(db, system, sql)
    finally:
        await db.dispose()
    assert postgres_backend.postgres is not None
    owner = postgres_backend.postgres.psycopg_url("cg_test_owner")
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute("SET clinicguard.audit_maintenance = 'on'")  # not a superuser: ignored
        conn.execute("SELECT set_config('app.clinic_id', %s, false)", (str(clinic),))
        conn.execute("SELECT set_config('app.role', 'system', false)")
        for sql in ("UPDATE audit_events SET outcome = 'x'", "DELETE FROM audit_events"):
            # row-level security has no UPDATE or DELETE policy: nothing is reached
            assert conn.execute(sql).rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"append-only"):
            conn.execute("TRUNCATE audit_events")
    assert (await verify_chain_of(postgres_backend, clinic)).checked == 2


async def run(db: Database, tenant: TenantContext, sql: str) -> None:
    async with db.transaction(tenant) as s:
        await s.execute(text(sql))


async def verify_chain_of(backend: Backend, clinic: uuid.UUID) -> Any:
    db = Database.from_url(backend.database_url)
    try:
        return await verify_chain(db, clinic)
    finally:
        await db.dispose()


@pytest.mark.parametrize(
    ("action", "resource", "role", "rows", "emergency", "outcome", "level"),
    [
        ("read", "patient", "physician", 1, False, "success", RiskLevel.LOW),
        ("read", "record", "physician", 1, False, "success", RiskLevel.MEDIUM),
        ("list", "patient", "receptionist", 150, False, "success", RiskLevel.HIGH),
        ("read", "record", "physician", 1, True, "success", RiskLevel.HIGH),
        ("export", "audit", "compliance_officer", 500, False, "success", RiskLevel.CRITICAL),
        ("read", "patient", "patient", 1, False, "success", RiskLevel.LOW),
        ("read", "record", "receptionist", 1, False, "denied", RiskLevel.MEDIUM),
        ("shred", "key", "platform_admin", 1, False, "success", RiskLevel.CRITICAL),
    ],
)
def test_risk_levels(  # noqa: PLR0917 (one row of the table)
    action: str, resource: str, role: str, rows: int, emergency: bool, outcome: str, level: str
) -> None:
    """The baseline scoring as a table of cases (action, resource, role, bulk, break-glass,
    denial)."""
    entry = AuditEntry(AuditEventType.PATIENT_READ, action, outcome, resource)
    assert risk(entry, role, rows=rows, emergency=emergency)[1] == level
