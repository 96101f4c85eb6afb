"""Migration 0007 over a database that already holds a trail and security events, on SQLite
and on PostgreSQL: the events keep their chains, the security events are appended to theirs
(the platform chain for those without a clinic), every chain verifies afterwards, and a
downgrade and a new upgrade keep every event (on PostgreSQL through the rebuild of the
partitioned table both ways)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.orm import Session

from clinicguard.audit.recorder import event_values
from clinicguard.audit.trail import GENESIS, PLATFORM, AuditEntry, AuditEventType, chain_hash
from clinicguard.audit.verify import verify_all
from clinicguard.store.db import Database
from clinicguard.store.migrate import alembic_config
from clinicguard.store.tenancy import Clinic
from tests.integration.test_migration_0004 import _column_type, as_system
from tests.services import OWNER_ROLE, create_postgres_database, drop_postgres_database

CLINIC = uuid.UUID("6f1c1f5e-8d52-4e7b-9d0a-4c1e2b3a4d5e")
EVENTS_IN_0006 = 3
SECURITY_EVENTS = (  # (clinic, type, severity)
    (CLINIC, "auth:login:success", "info"),
    (None, "auth:login:failure", "low"),
    (CLINIC, "authz:access:denied", "low"),
    (None, "auth:login:failure", "low"),
    (CLINIC, "auth:lockout", "high"),
)


@dataclass
class Old:
    owner_url: str
    app_url: str
    sync_url: str
    postgres: object | None = None


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def old(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Old]:
    if request.param == "sqlite":
        path = tmp_path / "old.db"
        db = Old(f"sqlite+aiosqlite:///{path}", f"sqlite+aiosqlite:///{path}", f"sqlite:///{path}")
    else:
        pg = create_postgres_database()
        db = Old(
            pg.owner_url,
            pg.app_url,
            pg.psycopg_url(OWNER_ROLE).replace("postgresql://", "postgresql+psycopg://"),
            pg,
        )
    try:
        command.upgrade(alembic_config(db.owner_url, db.app_url), "0006")
        write_0006_data(db)
        yield db
    finally:
        if db.postgres is not None:
            drop_postgres_database(db.postgres)  # type: ignore[arg-type]


def _insert(conn: sa.Connection, table: str, values: dict[str, object]) -> None:
    columns = [
        sa.column(name, sa.JSON() if isinstance(value, dict) else _column_type(value))
        for name, value in values.items()
    ]
    conn.execute(sa.table(table, *columns).insert().values(**values))


def write_0006_data(db: Old) -> None:
    """A chain of three events written at 0006, and security events of two clinics' worth."""
    engine = sa.create_engine(db.sync_url)
    start = datetime(2026, 10, 1, 12, tzinfo=UTC)
    try:
        with Session(engine) as session, session.begin():
            session.add(Clinic(id=CLINIC, name="Clínica Antiga"))
        with engine.begin() as conn:
            as_system(conn, CLINIC)
            previous = GENESIS
            for seq in range(1, EVENTS_IN_0006 + 1):
                values = event_values(
                    clinic_id=CLINIC,
                    seq=seq,
                    previous=previous,
                    entry=AuditEntry(AuditEventType.PATIENT_READ, "read", "success", "patient"),
                    occurred_at=start + timedelta(minutes=seq),
                    actor_id=uuid.uuid4(),
                    actor_role="physician",
                    session_id="sid",
                    request_id=f"req-{seq}",
                    ip="10.0.0.1",
                    user_agent="test",
                )
                previous = chain_hash(previous, values)
                _insert(conn, "audit_events", {**values, "hash": previous})
            _insert(conn, "audit_heads", {"clinic_id": CLINIC, "seq": seq, "hash": previous})
        with engine.begin() as conn:
            for n, (clinic, kind, severity) in enumerate(SECURITY_EVENTS):
                _insert(
                    conn,
                    "security_events",
                    {
                        "id": uuid.uuid4(),
                        "occurred_at": start + timedelta(hours=1, minutes=n),
                        "event_type": kind,
                        "outcome": "success",
                        "severity": severity,
                        "clinic_id": clinic,
                        "user_id": None,
                        "session_id": None,
                        "request_id": f"sec-{n}",
                        "ip": "10.0.0.2",
                        "user_agent": "test",
                        "details": {"reason": "r", "count": n},
                    },
                )
    finally:
        engine.dispose()


def count_events(db: Old) -> dict[uuid.UUID, list[str]]:
    """Each chain's request ids in sequence order, read as the owner past row-level
    security (each chain in its own clinic's scope)."""
    engine = sa.create_engine(db.sync_url)
    found: dict[uuid.UUID, list[str]] = {}
    try:
        for clinic in (CLINIC, PLATFORM):
            with engine.begin() as conn:
                as_system(conn, clinic)
                events = sa.table(
                    "audit_events",
                    sa.column("clinic_id", sa.Uuid()),
                    sa.column("seq"),
                    sa.column("request_id"),
                )
                query = sa.select(events).order_by(events.c.seq)
                rows = [r for r in conn.execute(query).all() if r.clinic_id == clinic]
            found[clinic] = [r.request_id for r in rows]
    finally:
        engine.dispose()
    return found


async def verified(db: Old) -> dict[uuid.UUID, bool]:
    database = Database.from_url(db.app_url)
    try:
        return {clinic: v.ok for clinic, v in (await verify_all(database)).items()}
    finally:
        await database.dispose()


def test_the_trail_and_the_security_events_survive_0007_both_ways(old: Old) -> None:
    config = alembic_config(old.owner_url, old.app_url)
    command.upgrade(config, "0007")
    chains = count_events(old)
    assert chains[CLINIC] == ["req-1", "req-2", "req-3", "sec-0", "sec-2", "sec-4"]
    assert chains[PLATFORM] == ["sec-1", "sec-3"]
    assert asyncio.run(verified(old)) == {CLINIC: True, PLATFORM: True}
    engine = sa.create_engine(old.sync_url)
    try:
        assert "security_events" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
    command.downgrade(config, "0006")
    assert count_events(old) == chains
    command.upgrade(config, "0007")
    assert count_events(old) == chains
    assert asyncio.run(verified(old)) == {CLINIC: True, PLATFORM: True}
