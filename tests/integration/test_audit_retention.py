"""``clinicguard retention run`` (docs/decisions/0037): whole months older than the
retention period leave the audit trail, each only after its chains verified and were
anchored by a signed ``retention`` checkpoint; verification then starts from there.

Events are written years back through the recorder with a clock set to that time (on
PostgreSQL into monthly partitions created first, as the owner); the retention command
runs as a real process with the default seven years. On PostgreSQL months go by dropping
their partition; on SQLite by deleting their rows. The application role can neither
create, drop nor read a partition.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import delete, select, update

from clinicguard.audit.checkpoints import CheckpointKind
from clinicguard.audit.models import AuditCheckpoint, AuditEvent, AuditSubject
from clinicguard.audit.trail import AuditEventType
from clinicguard.audit.verify import verify_chain
from clinicguard.core.clock import FrozenClock
from clinicguard.store.db import Database
from clinicguard.store.interfaces import TenantContext
from tests.conftest import Backend
from tests.integration.test_audit_checkpoints import (
    Trail,
    behind_the_back,
    checkpoints_of,
    cli_env,
    events_of,
    new_clinic,
)
from tests.integration.test_cli import run_cli

MARCH = datetime(2016, 3, 10, 8, 0, tzinfo=UTC)
APRIL = datetime(2016, 4, 10, 8, 0, tzinfo=UTC)
OLD_MONTHS = ("audit_events_2016_03", "audit_events_2016_04")


@pytest.fixture
async def database(backend: Backend) -> Any:
    db = Database.from_url(backend.database_url)
    try:
        yield db
    finally:
        await db.dispose()


def move(clock: FrozenClock, when: datetime) -> None:
    clock.advance((when - clock.now()).total_seconds())


def owner_sql(backend: Backend, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    assert backend.postgres is not None
    url = backend.postgres.psycopg_url("cg_test_owner")
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def partitions(backend: Backend) -> set[str]:
    return {
        r[0]
        for r in owner_sql(
            backend,
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'audit_events'::regclass",
        )
    }


@dataclass
class OldTrail:
    """Clinic ``a``: events 1-3 in March 2016 (3 touching a patient), 4-5 in April 2016,
    6-7 now; clinic ``b``: event 1 in March 2016 (under a periodic checkpoint), 2 now."""

    trail: Trail
    a: uuid.UUID
    b: uuid.UUID
    patient: uuid.UUID
    env: dict[str, str]


async def old_trail(database: Database, backend: Backend, tmp_path: Path) -> OldTrail:
    if backend.postgres is not None:
        for month in (date(2016, 3, 1), date(2016, 4, 1)):
            owner_sql(backend, "SELECT cg_audit_partition(%s)", month)
    clock = FrozenClock(MARCH)
    trail = Trail.build(database, every_events=3, clock=clock)
    a, b = await new_clinic(database), await new_clinic(database)
    patient = uuid.uuid4()
    await trail.append(a, 2)
    await trail.append(a, 1, patients=(patient,))
    await trail.append(b, 1)
    move(clock, APRIL)
    await trail.append(a, 2)
    move(clock, datetime.now(UTC))
    await trail.append(a, 2, patients=(patient,))
    await trail.append(b, 1)
    return OldTrail(trail, a, b, patient, cli_env(backend, tmp_path, trail.master_key))


async def subjects(db: Database, clinic: uuid.UUID) -> list[int]:
    async with db.transaction(TenantContext.system(clinic)) as session:
        rows = await session.scalars(
            select(AuditSubject.seq).where(AuditSubject.clinic_id == clinic).order_by("seq")
        )
        return list(rows.all())


async def snapshot(db: Database, world: OldTrail) -> dict[str, Any]:
    """What retention may change, for "nothing changed" comparisons."""
    state: dict[str, Any] = {}
    for name, clinic in (("a", world.a), ("b", world.b)):
        state[name] = (
            [(e.seq, e.hash) for e in await events_of(db, clinic)],
            [(c.seq, c.kind, c.signature) for c in await checkpoints_of(db, clinic)],
            await subjects(db, clinic),
        )
    return state


async def retention(env: dict[str, str], tmp_path: Path, *args: str) -> Any:
    return await asyncio.to_thread(run_cli, "retention", "run", *args, env=env, cwd=tmp_path)


async def test_retention_removes_old_months_and_the_chain_still_verifies(
    database: Database, backend: Backend, tmp_path: Path
) -> None:
    world = await old_trail(database, backend, tmp_path)
    before = await snapshot(database, world)

    dry = await retention(world.env, tmp_path, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "[dry run]" in dry.stdout
    march = next(x for x in dry.stdout.splitlines() if "2016-03" in x)
    assert "would remove" in march
    assert f"clinic {world.a}: 3" in march
    assert f"clinic {world.b}: 1" in march
    april = next(x for x in dry.stdout.splitlines() if "2016-04" in x)
    assert f"clinic {world.a}: 2" in april
    if backend.postgres is not None:
        assert "audit_events_2016_03" in march
        assert set(OLD_MONTHS) <= partitions(backend)
    assert await snapshot(database, world) == before

    run = await retention(world.env, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "removed 2 month(s), 6 event(s); 3 retention checkpoint(s) signed" in run.stdout
    if backend.postgres is not None:
        assert not set(OLD_MONTHS) & partitions(backend)

    a_events, b_events = await events_of(database, world.a), await events_of(database, world.b)
    assert [e.seq for e in a_events] == [6, 7, 8]
    assert [e.seq for e in b_events] == [2, 3]
    for events, through, removed in ((a_events, 5, 5), (b_events, 1, 1)):
        record = events[-1]
        assert record.event_type == AuditEventType.RETENTION_RUN
        assert record.actor_role == "system"
        assert record.details["through_seq"] == through
        assert record.details["events_removed"] == removed
    assert (await subjects(database, world.a)) == [6, 7]

    a_checkpoints = {c.seq: c.kind for c in await checkpoints_of(database, world.a)}
    assert a_checkpoints[3] == CheckpointKind.RETENTION
    assert a_checkpoints[5] == CheckpointKind.RETENTION
    assert a_checkpoints[1] == CheckpointKind.PERIODIC  # its event is gone; it still verifies
    b_checkpoints = {c.seq: c.kind for c in await checkpoints_of(database, world.b)}
    assert b_checkpoints[1] == CheckpointKind.RETENTION  # was periodic: re-signed

    for clinic, checked in ((world.a, 3), (world.b, 2)):
        for batch in (1000, 1):  # checkpoints below the anchor read in batches, too
            result = await verify_chain(database, clinic, batch)
            assert (result.ok, result.checked) == (True, checked), result
    verified = await asyncio.to_thread(run_cli, "audit", "verify", env=world.env, cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    again = await retention(world.env, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "removed 0 month(s), 0 event(s)" in again.stdout


async def test_verification_after_retention_needs_the_retention_checkpoint(
    database: Database, backend: Backend, tmp_path: Path
) -> None:
    """Once the oldest events are gone, the chain starts at its retention checkpoint:
    without it, or with it forged, the first remaining event is named."""
    world = await old_trail(database, backend, tmp_path)
    run = await retention(world.env, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    first = (await events_of(database, world.a))[0]
    async with behind_the_back(database, backend) as session:
        await session.execute(
            update(AuditCheckpoint)
            .where(AuditCheckpoint.clinic_id == world.a, AuditCheckpoint.seq == 5)
            .values(hash="0" * 64)
        )
    result = await verify_chain(database, world.a)
    assert (result.ok, result.first_broken_seq) == (False, 5)
    assert "does not verify" in (result.reason or "")
    async with behind_the_back(database, backend) as session:
        await session.execute(
            delete(AuditCheckpoint).where(
                AuditCheckpoint.clinic_id == world.a, AuditCheckpoint.seq == 5
            )
        )
    result = await verify_chain(database, world.a)
    assert (result.ok, result.first_broken_seq, result.first_broken_event_id) == (
        False,
        first.seq,
        first.id,
    )
    assert "events 4..5 are missing" in (result.reason or "")


async def test_a_chain_that_does_not_verify_is_not_cut(
    database: Database, backend: Backend, tmp_path: Path
) -> None:
    """An event of April edited: March (verified up to its last event) goes, April and
    everything after stay for investigation; the run says why and exits 1."""
    world = await old_trail(database, backend, tmp_path)
    edited = (await events_of(database, world.a))[3]
    async with behind_the_back(database, backend) as session:
        await session.execute(
            update(AuditEvent)
            .where(AuditEvent.clinic_id == world.a, AuditEvent.seq == 4)
            .values(outcome="denied")
        )
    before = await snapshot(database, world)

    dry = await retention(world.env, tmp_path, "--dry-run")
    assert dry.returncode == 1
    assert "REFUSED" in dry.stdout
    assert await snapshot(database, world) == before

    run = await retention(world.env, tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    refused = next(x for x in run.stdout.splitlines() if x.startswith("REFUSED"))
    assert "2016-04" in refused
    assert str(world.a) in refused
    assert "does not verify" in refused
    assert f"event {edited.id}, seq 4" in refused
    assert "removed 1 month(s), 4 event(s)" in run.stdout
    assert [e.seq for e in await events_of(database, world.a)][:2] == [4, 5]
    if backend.postgres is not None:
        assert "audit_events_2016_04" in partitions(backend)
        assert "audit_events_2016_03" not in partitions(backend)


async def test_a_month_with_a_wholly_broken_chain_stays(
    database: Database, backend: Backend, tmp_path: Path
) -> None:
    world = await old_trail(database, backend, tmp_path)
    async with behind_the_back(database, backend) as session:
        await session.execute(
            update(AuditEvent)
            .where(AuditEvent.clinic_id == world.b, AuditEvent.seq == 1)
            .values(reason="edited")
        )
    before = await snapshot(database, world)
    run = await retention(world.env, tmp_path)
    assert run.returncode == 1
    assert "REFUSED" in run.stdout
    assert "kept" in run.stdout  # April, behind the refused March
    assert "removed 0 month(s)" in run.stdout
    after = await snapshot(database, world)
    assert after["a"][0] == before["a"][0]
    assert after["b"][0] == before["b"][0]
    if backend.postgres is not None:
        assert set(OLD_MONTHS) <= partitions(backend)


async def test_events_out_of_time_order_across_the_month_end_stop_the_cut(
    database: Database, backend: Backend, tmp_path: Path
) -> None:
    """Two servers' clocks disagreeing at midnight: event 2 dated April, event 3 March.
    Removing March would leave a hole at 2; the month is refused."""
    if backend.postgres is not None:
        for month in (date(2016, 3, 1), date(2016, 4, 1)):
            owner_sql(backend, "SELECT cg_audit_partition(%s)", month)
    clock = FrozenClock(MARCH)
    trail = Trail.build(database, every_events=100, clock=clock)
    clinic = await new_clinic(database)
    await trail.append(clinic)
    move(clock, APRIL)
    await trail.append(clinic)
    behind = Trail.build(
        database, every_events=100, clock=FrozenClock(MARCH), master_key=trail.master_key
    )
    await behind.append(clinic)  # the other server, its clock a month behind
    env = cli_env(backend, tmp_path, trail.master_key)
    run = await retention(env, tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "server clocks disagreed" in run.stdout
    assert [e.seq for e in await events_of(database, clinic)] == [1, 2, 3]


async def test_the_default_partition_is_reported(postgres_backend: Backend, tmp_path: Path) -> None:
    """An event dated in a month that has no partition lands in the default partition,
    which retention cannot remove by month: the run warns."""
    db = Database.from_url(postgres_backend.database_url)
    try:
        clock = FrozenClock(datetime(2011, 5, 5, tzinfo=UTC))
        trail = Trail.build(db, clock=clock)
        clinic = await new_clinic(db)
        await trail.append(clinic)
        env = cli_env(postgres_backend, tmp_path, trail.master_key)
        run = await retention(env, tmp_path, "--dry-run")
    finally:
        await db.dispose()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "warning: 1 event(s) in audit_events_default" in run.stdout


async def test_the_application_role_cannot_touch_partitions(postgres_backend: Backend) -> None:
    """Creating, dropping and reading partitions is the owner's (retention's) business."""
    assert postgres_backend.postgres is not None
    app = postgres_backend.postgres.psycopg_url("cg_test_app")
    current = f"audit_events_{datetime.now(UTC):%Y_%m}"
    assert current in partitions(postgres_backend)
    for sql in (
        "SELECT cg_audit_partition(DATE '2099-01-01')",
        f"DROP TABLE {current}",
        f"SELECT count(*) FROM {current}",  # noqa: S608 (a partition name)
        "SELECT count(*) FROM audit_events_default",
        "ALTER TABLE audit_events DETACH PARTITION " + current,
    ):
        with (
            psycopg.connect(app, autocommit=True) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute(sql)
    assert current in partitions(postgres_backend)
    assert "audit_events_2099_01" not in partitions(postgres_backend)


async def test_the_partitions_ahead_are_created(postgres_backend: Backend, tmp_path: Path) -> None:
    """A missing month ahead (dropped here as the owner) is listed by a dry run and
    created by a run."""
    assert postgres_backend.postgres is not None
    ahead = f"audit_events_{datetime(datetime.now(UTC).year + 2, 1, 1, tzinfo=UTC):%Y_%m}"
    owner_sql(postgres_backend, f"DROP TABLE IF EXISTS {ahead}")
    db = Database.from_url(postgres_backend.database_url)
    try:
        trail = Trail.build(db)
        env = cli_env(postgres_backend, tmp_path, trail.master_key)
        dry = await retention(env, tmp_path, "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert ahead in dry.stdout
        assert ahead not in partitions(postgres_backend)
        run = await retention(env, tmp_path)
        assert run.returncode == 0, run.stdout + run.stderr
        assert ahead in partitions(postgres_backend)
        assert f"partitions created ahead: {ahead}" in run.stdout
    finally:
        await db.dispose()
