"""Signed checkpoints of the audit chains (docs/decisions/0037).

- the recorder signs a checkpoint every N events and after the time interval, each an
  Ed25519 signature over (clinic, sequence, hash, time, kind) that verifies;
- a forged signature, a checkpoint whose hash was changed, a checkpoint signed with a key
  slipped into the key table, and an event edited under a checkpoint (also with the whole
  chain re-hashed after it) are each named by verification;
- a retired key keeps verifying what it signed;
- the idle sealer signs the heads of chains that went quiet (the platform chain too);
- ``clinicguard audit verify`` exits 0 on intact chains and 1 on a tampered one, naming
  the clinic, the event, its sequence and the reason; ``audit checkpoint`` and
  ``audit rotate-key`` work as processes.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from clinicguard.audit.checkpoints import (
    CheckpointKeyRing,
    CheckpointKind,
    Ed25519CheckpointSigner,
    IdleChainSealer,
    checkpoint_message,
    seal_chains,
)
from clinicguard.audit.models import AuditCheckpoint, AuditEvent, AuditHead, AuditSigningKey
from clinicguard.audit.recorder import HASHED, AuditRecorder, CheckpointPolicy
from clinicguard.audit.trail import PLATFORM, AuditEntry, AuditEventType, chain_hash
from clinicguard.audit.verify import verify_all, verify_chain
from clinicguard.core.clock import FrozenClock
from clinicguard.core.principal import FULL_ACCESS, Principal, Role
from clinicguard.crypto.signing import ed25519_private_pem, ed25519_sign, ed25519_verify, public_pem
from clinicguard.store.db import Database
from clinicguard.store.interfaces import TenantContext
from tests.conftest import Backend
from tests.factories import clinic as f
from tests.integration.test_cli import run_cli
from tests.services import process_env

READ = AuditEntry(
    event_type=AuditEventType.PATIENT_READ,
    action="read",
    outcome="success",
    resource_type="patient",
)
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def new_master_key() -> bytes:
    return secrets.token_bytes(32)


@dataclass
class Trail:
    """A database, a clock tests move, and a recorder that signs checkpoints."""

    db: Database
    clock: FrozenClock
    master_key: bytes
    signer: Ed25519CheckpointSigner
    recorder: AuditRecorder

    @classmethod
    def build(
        cls,
        db: Database,
        *,
        every_events: int = 1000,
        every: timedelta = timedelta(minutes=10),
        master_key: bytes | None = None,
        clock: FrozenClock | None = None,
    ) -> Trail:
        clock = clock or FrozenClock(START)
        key = master_key or new_master_key()
        signer = Ed25519CheckpointSigner(CheckpointKeyRing(db, master_key=key, clock=clock))
        recorder = AuditRecorder(
            db, clock, signer, CheckpointPolicy(every_events=every_events, every=every)
        )
        return cls(db, clock, key, signer, recorder)

    async def append(
        self, clinic_id: uuid.UUID, n: int = 1, *, patients: tuple[uuid.UUID, ...] = ()
    ) -> list[AuditEvent]:
        who = physician(clinic_id)
        tenant = (
            TenantContext.system(clinic_id)
            if clinic_id == PLATFORM
            else TenantContext(clinic_id, who.user_id, "physician")
        )
        events = []
        for _ in range(n):
            async with self.db.transaction(tenant) as session:
                events.append(
                    await self.recorder.record(session, clinic_id, who, READ, patients=patients)
                )
        return events


def physician(clinic_id: uuid.UUID) -> Principal:
    return Principal(uuid.uuid4(), Role.PHYSICIAN, clinic_id, "sid", 1, frozenset({FULL_ACCESS}))


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


async def checkpoints_of(db: Database, clinic_id: uuid.UUID) -> list[AuditCheckpoint]:
    async with db.transaction(TenantContext.system(clinic_id)) as session:
        query = select(AuditCheckpoint).where(AuditCheckpoint.clinic_id == clinic_id)
        return list((await session.scalars(query.order_by(AuditCheckpoint.seq))).all())


async def events_of(db: Database, clinic_id: uuid.UUID) -> list[AuditEvent]:
    async with db.transaction(TenantContext.system(clinic_id)) as session:
        query = select(AuditEvent).where(AuditEvent.clinic_id == clinic_id)
        return list((await session.scalars(query.order_by(AuditEvent.seq))).all())


async def head_of(db: Database, clinic_id: uuid.UUID) -> AuditHead:
    async with db.transaction(TenantContext.system(clinic_id)) as session:
        head = await session.get(AuditHead, clinic_id)
    assert head is not None
    return head


async def signing_keys(db: Database) -> dict[str, AuditSigningKey]:
    async with db.transaction() as session:
        return {k.key_id: k for k in (await session.scalars(select(AuditSigningKey))).all()}


@asynccontextmanager
async def behind_the_back(db: Database, backend: Backend) -> AsyncIterator[AsyncSession]:
    """A transaction that may change anything: the PostgreSQL superuser with the audit
    trail's maintenance switch on (past row-level security and the triggers), or the
    SQLite file itself (which has neither)."""
    if backend.postgres is None:
        async with db.transaction() as session:
            yield session
        return
    url = make_url(backend.postgres.admin_url).set(drivername="postgresql+asyncpg")
    admin = Database.from_url(url.render_as_string(hide_password=False))
    try:
        async with admin.transaction() as session:
            await session.execute(text("SET LOCAL clinicguard.audit_maintenance = 'on'"))
            yield session
    finally:
        await admin.dispose()


def signature_holds(checkpoint: AuditCheckpoint, key: AuditSigningKey) -> bool:
    message = checkpoint_message(
        checkpoint.clinic_id, checkpoint.seq, checkpoint.hash, checkpoint.signed_at, checkpoint.kind
    )
    return ed25519_verify(key.public_pem.encode(), message, bytes.fromhex(checkpoint.signature))


# --- written by the recorder ---------------------------------------------------------------


async def test_a_checkpoint_every_n_events(database: Database) -> None:
    """N=3 and a clock that stands still: the first event (no checkpoint yet), then
    every third one; each signature verifies with the stored public key."""
    trail = Trail.build(database, every_events=3)
    clinic = await new_clinic(database)
    events = await trail.append(clinic, 8)
    checkpoints = await checkpoints_of(database, clinic)
    assert [c.seq for c in checkpoints] == [1, 4, 7]
    keys = await signing_keys(database)
    assert len(keys) == 1
    for checkpoint in checkpoints:
        assert checkpoint.kind == CheckpointKind.PERIODIC
        assert checkpoint.hash == events[checkpoint.seq - 1].hash
        assert checkpoint.signed_at == START
        assert signature_holds(checkpoint, keys[checkpoint.key_id])
    head = await head_of(database, clinic)
    assert (head.seq, head.checkpoint_seq, head.checkpoint_at) == (8, 7, START)
    result = await verify_chain(database, clinic)
    assert (result.ok, result.checked) == (True, 8)


async def test_a_checkpoint_after_the_interval(database: Database) -> None:
    """Few events: a checkpoint once ten minutes have passed since the last one, at the
    next event."""
    trail = Trail.build(database, every_events=1000, every=timedelta(minutes=10))
    clinic = await new_clinic(database)
    await trail.append(clinic)  # seq 1: the first checkpoint
    trail.clock.advance(5 * 60)
    await trail.append(clinic)  # seq 2: five minutes on
    trail.clock.advance(4 * 60 + 59)
    await trail.append(clinic)  # seq 3: 9:59 on
    trail.clock.advance(1)
    await trail.append(clinic)  # seq 4: ten minutes on
    checkpoints = await checkpoints_of(database, clinic)
    assert [(c.seq, c.signed_at) for c in checkpoints] == [
        (1, START),
        (4, START + timedelta(minutes=10)),
    ]
    assert (await verify_chain(database, clinic)).ok


def test_the_signed_message_names_every_part() -> None:
    """Changing any part of (clinic, sequence, hash, time, kind) changes the message, so
    a signature holds for exactly one checkpoint."""
    clinic, at, digest = uuid.uuid4(), START, "ab" * 32
    base = checkpoint_message(clinic, 5, digest, at, CheckpointKind.PERIODIC)
    variants = [
        checkpoint_message(uuid.uuid4(), 5, digest, at, CheckpointKind.PERIODIC),
        checkpoint_message(clinic, 6, digest, at, CheckpointKind.PERIODIC),
        checkpoint_message(clinic, 5, "cd" * 32, at, CheckpointKind.PERIODIC),
        checkpoint_message(clinic, 5, digest, at + timedelta(microseconds=1), "periodic"),
        checkpoint_message(clinic, 5, digest, at, CheckpointKind.RETENTION),
    ]
    assert all(v != base for v in variants)
    assert base.startswith(b"clinicguard:audit-checkpoint:v1|")
    private = ed25519_private_pem()
    signature = ed25519_sign(private, base)
    assert ed25519_verify(public_pem(private), base, signature)
    assert not any(ed25519_verify(public_pem(private), v, signature) for v in variants)
    # One bit of the last byte flipped (setting it to zero would leave it unchanged 1 in 256).
    assert not ed25519_verify(
        public_pem(private), base, signature[:-1] + bytes([signature[-1] ^ 1])
    )
    assert not ed25519_verify(b"not a key", base, signature)


# --- tampering named by verification -------------------------------------------------------


async def forge_signature(session: AsyncSession, clinic: uuid.UUID, seq: int) -> None:
    await session.execute(
        update(AuditCheckpoint)
        .where(AuditCheckpoint.clinic_id == clinic, AuditCheckpoint.seq == seq)
        .values(signature="00" * 64)
    )


async def change_hash(session: AsyncSession, clinic: uuid.UUID, seq: int) -> None:
    await session.execute(
        update(AuditCheckpoint)
        .where(AuditCheckpoint.clinic_id == clinic, AuditCheckpoint.seq == seq)
        .values(hash="f" * 64)
    )


async def change_kind(session: AsyncSession, clinic: uuid.UUID, seq: int) -> None:
    await session.execute(
        update(AuditCheckpoint)
        .where(AuditCheckpoint.clinic_id == clinic, AuditCheckpoint.seq == seq)
        .values(kind="retention")
    )


@pytest.mark.parametrize(
    ("tamper", "why"),
    [
        (forge_signature, "does not verify"),
        (change_hash, "does not verify"),
        (change_kind, "does not verify"),
    ],
    ids=["forged-signature", "changed-hash", "relabelled-kind"],
)
async def test_a_tampered_checkpoint_is_named(
    database: Database, backend: Backend, tamper: Any, why: str
) -> None:
    trail = Trail.build(database, every_events=3)
    clinic = await new_clinic(database)
    events = await trail.append(clinic, 6)
    async with behind_the_back(database, backend) as session:
        await tamper(session, clinic, 4)
    result = await verify_chain(database, clinic)
    assert not result.ok
    assert (result.first_broken_seq, result.first_broken_event_id) == (4, events[3].id)
    assert why in (result.reason or "")
    assert result.checked == 3


async def test_a_checkpoint_signed_with_a_key_slipped_into_the_table_is_named(
    database: Database, backend: Backend
) -> None:
    """Whoever can write the tables but lacks the master key may add a key of their own
    and sign with it: with the master key's vouching (``trusted_keys``, as ``audit
    verify`` does) such a key is refused."""
    trail = Trail.build(database, every_events=3)
    clinic = await new_clinic(database)
    events = await trail.append(clinic, 5)
    forged = events[3]
    private = ed25519_private_pem()
    message = checkpoint_message(clinic, 4, forged.hash, START, CheckpointKind.PERIODIC)
    async with behind_the_back(database, backend) as session:
        session.add(
            AuditSigningKey(
                key_id="audit-forged",
                public_pem=public_pem(private).decode(),
                private_sealed=b"\x01" + secrets.token_bytes(40),
                created_at=START + timedelta(days=1),
            )
        )
        await session.flush()
        await session.execute(
            update(AuditCheckpoint)
            .where(AuditCheckpoint.clinic_id == clinic, AuditCheckpoint.seq == 4)
            .values(key_id="audit-forged", signature=ed25519_sign(private, message).hex())
        )
    trusted = await trail.signer.keys.trusted_keys()
    assert "audit-forged" not in trusted
    result = await verify_chain(database, clinic, keys=trusted)
    assert (result.ok, result.first_broken_seq, result.first_broken_event_id) == (
        False,
        4,
        forged.id,
    )
    assert "untrusted key" in (result.reason or "")
    # The trusted keys still verify everything the real key signed.
    assert (await verify_chain(database, clinic)).ok


async def test_an_event_edited_under_a_checkpoint_is_named(
    database: Database, backend: Backend
) -> None:
    """An edit alone breaks the event's own hash; re-hashing the rest of the chain (and
    the head) hides it from the links but not from the signed checkpoint after it."""
    trail = Trail.build(database, every_events=4)
    clinic = await new_clinic(database)
    events = await trail.append(clinic, 6)  # checkpoints at 1 and 5
    async with behind_the_back(database, backend) as session:
        await session.execute(
            update(AuditEvent)
            .where(AuditEvent.clinic_id == clinic, AuditEvent.seq == 3)
            .values(outcome="denied")
        )
    result = await verify_chain(database, clinic)
    assert (result.ok, result.first_broken_seq, result.first_broken_event_id) == (
        False,
        3,
        events[2].id,
    )
    assert "columns" in (result.reason or "")

    async with behind_the_back(database, backend) as session:
        rows = (
            await session.scalars(
                select(AuditEvent)
                .where(AuditEvent.clinic_id == clinic, AuditEvent.seq >= 2)
                .order_by(AuditEvent.seq)
            )
        ).all()
        previous = events[0].hash
        for row in rows:
            values = {c: getattr(row, c) for c in HASHED} | {"prev_hash": previous}
            previous = chain_hash(previous, values)
            await session.execute(
                update(AuditEvent)
                .where(AuditEvent.clinic_id == clinic, AuditEvent.seq == row.seq)
                .values(prev_hash=values["prev_hash"], hash=previous)
            )
        await session.execute(
            update(AuditHead).where(AuditHead.clinic_id == clinic).values(hash=previous)
        )
    result = await verify_chain(database, clinic)
    assert (result.ok, result.first_broken_seq, result.first_broken_event_id) == (
        False,
        5,
        events[4].id,
    )
    assert "disagrees with the chain" in (result.reason or "")


async def test_a_cut_tail_under_a_checkpoint_is_named(database: Database, backend: Backend) -> None:
    """The last events deleted and the head moved back to hide it: the checkpoint that
    vouched for them names the missing sequence."""
    trail = Trail.build(database, every_events=3)
    clinic = await new_clinic(database)
    events = await trail.append(clinic, 5)  # checkpoints at 1 and 4
    async with behind_the_back(database, backend) as session:
        for seq in (4, 5):
            await session.execute(
                delete(AuditEvent).where(AuditEvent.clinic_id == clinic, AuditEvent.seq == seq)
            )
        await session.execute(
            update(AuditHead)
            .where(AuditHead.clinic_id == clinic)
            .values(seq=3, hash=events[2].hash, checkpoint_seq=1)
        )
    result = await verify_chain(database, clinic)
    assert (result.ok, result.first_broken_seq) == (False, 4)
    assert "missing" in (result.reason or "")


async def test_a_head_moved_back_is_named(database: Database, backend: Backend) -> None:
    trail = Trail.build(database, every_events=100)
    clinic = await new_clinic(database)
    events = await trail.append(clinic, 4)
    async with behind_the_back(database, backend) as session:
        await session.execute(
            update(AuditHead)
            .where(AuditHead.clinic_id == clinic)
            .values(seq=2, hash=events[1].hash)
        )
    result = await verify_chain(database, clinic)
    assert (result.ok, result.first_broken_seq, result.first_broken_event_id) == (
        False,
        3,
        events[2].id,
    )


async def test_a_deleted_head_is_named(database: Database, backend: Backend) -> None:
    """The head row deleted: the events name it; the events deleted with it: the
    checkpoints left behind still vouch for them."""
    trail = Trail.build(database, every_events=2)
    clinic = await new_clinic(database)
    events = await trail.append(clinic, 3)  # checkpoints at 1 and 3
    async with behind_the_back(database, backend) as session:
        await session.execute(delete(AuditHead).where(AuditHead.clinic_id == clinic))
    result = await verify_chain(database, clinic)
    assert (result.ok, result.first_broken_event_id) == (False, events[0].id)
    assert "head is missing" in (result.reason or "")
    async with behind_the_back(database, backend) as session:
        await session.execute(delete(AuditEvent).where(AuditEvent.clinic_id == clinic))
    result = await verify_chain(database, clinic)
    assert (result.ok, result.first_broken_seq) == (False, 1)
    assert "events 1..3 are missing" in (result.reason or "")


async def test_small_batches_walk_the_same_chain(database: Database) -> None:
    trail = Trail.build(database, every_events=2)
    clinic = await new_clinic(database)
    await trail.append(clinic, 7)
    result = await verify_chain(database, clinic, 2)
    assert (result.ok, result.checked) == (True, 7)


# --- keys ----------------------------------------------------------------------------------


async def test_a_retired_key_still_verifies(database: Database) -> None:
    trail = Trail.build(database, every_events=2)
    clinic = await new_clinic(database)
    await trail.append(clinic, 2)  # checkpoint at 1 by the first key
    first = set(await signing_keys(database))
    new_key = await trail.signer.keys.rotate()
    await trail.append(clinic, 2)  # checkpoint at 3 by the new key
    keys = await signing_keys(database)
    old_key = next(iter(first))
    assert keys[old_key].retired_at is not None
    assert keys[new_key].retired_at is None
    checkpoints = await checkpoints_of(database, clinic)
    assert [(c.seq, c.key_id) for c in checkpoints] == [(1, old_key), (3, new_key)]
    assert set(await trail.signer.keys.trusted_keys()) == {old_key, new_key}
    result = await verify_chain(database, clinic, keys=await trail.signer.keys.trusted_keys())
    assert (result.ok, result.checked) == (True, 4)


async def test_other_processes_sign_with_the_rotated_key(database: Database) -> None:
    """Two recorders (two processes) share the key table: after one rotates, the other's
    next checkpoint uses the new key at once (the active key is read when signing)."""
    key = new_master_key()
    one = Trail.build(database, every_events=1, master_key=key)
    two = Trail.build(database, every_events=1, master_key=key)
    clinic = await new_clinic(database)
    await two.append(clinic)
    new_key = await one.signer.keys.rotate()
    await two.append(clinic)
    assert [c.key_id for c in await checkpoints_of(database, clinic)][-1] == new_key


async def test_a_key_sealed_under_another_master_key_is_refused(database: Database) -> None:
    """A deployment with another master key cannot sign with the stored key, and does
    not trust it."""
    ours = Trail.build(database, every_events=1)
    clinic = await new_clinic(database)
    await ours.append(clinic)
    theirs = Trail.build(database, every_events=1)
    assert await theirs.signer.keys.trusted_keys() == {}
    from clinicguard.crypto.interfaces import DecryptionFailed

    with pytest.raises(DecryptionFailed):
        await theirs.append(clinic)


# --- the idle sealer -----------------------------------------------------------------------


async def test_the_idle_sealer_signs_quiet_heads(database: Database) -> None:
    trail = Trail.build(database, every_events=1000, every=timedelta(minutes=10))
    busy, quiet = await new_clinic(database), await new_clinic(database)
    await trail.append(busy, 3)  # checkpoint at 1; 2 and 3 unsigned
    await trail.append(quiet, 1)  # checkpoint at 1; nothing after it
    await trail.append(PLATFORM, 2)  # the platform chain: checkpoint at 1

    every = timedelta(minutes=10)
    assert await seal_chains(database, trail.signer, trail.clock, every) == {}
    trail.clock.advance(10 * 60)
    signed = await seal_chains(database, trail.signer, trail.clock, every)
    assert signed == {busy: 3, PLATFORM: 2}
    assert [c.seq for c in await checkpoints_of(database, busy)] == [1, 3]
    head = await head_of(database, busy)
    assert (head.checkpoint_seq, head.checkpoint_at) == (3, trail.clock.now())
    # Signed heads are not signed again; an append later is covered by the recorder.
    trail.clock.advance(60 * 60)
    assert await seal_chains(database, trail.signer, trail.clock, every) == {}
    for chain in (busy, quiet, PLATFORM):
        assert (await verify_chain(database, chain)).ok
    results = await verify_all(database)
    assert {busy, quiet, PLATFORM} <= set(results)
    assert all(r.ok for r in results.values())


async def test_the_background_sealer_runs_and_stops(database: Database) -> None:
    trail = Trail.build(database, every_events=1000, every=timedelta(minutes=10))
    clinic = await new_clinic(database)
    await trail.append(clinic, 2)
    trail.clock.advance(11 * 60)
    sealer = IdleChainSealer(database, trail.signer, trail.clock, timedelta(minutes=10), 0.01)
    sealer.start()
    try:
        for _ in range(500):
            if len(await checkpoints_of(database, clinic)) == 2:
                break
            await asyncio.sleep(0.01)
    finally:
        await sealer.stop()
    assert [c.seq for c in await checkpoints_of(database, clinic)] == [1, 2]


# --- the CLI -------------------------------------------------------------------------------


def cli_env(backend: Backend, tmp_path: Path, master_key: bytes) -> dict[str, str]:
    env = process_env(
        tmp_path,
        tmp_path / "unused.db",
        CLINICGUARD_MASTER_KEY=base64.b64encode(master_key).decode(),
    )
    env["CLINICGUARD_DATABASE_URL"] = backend.database_url
    env["CLINICGUARD_MIGRATION_DATABASE_URL"] = backend.migration_url
    env["COLUMNS"] = "250"
    return env


async def test_cli_audit_verify(database: Database, backend: Backend, tmp_path: Path) -> None:
    trail = Trail.build(database, every_events=3)
    a, b = await new_clinic(database), await new_clinic(database)
    await trail.append(a, 4)
    events = await trail.append(b, 5)
    env = cli_env(backend, tmp_path, trail.master_key)

    intact = await asyncio.to_thread(run_cli, "audit", "verify", env=env, cwd=tmp_path)
    assert intact.returncode == 0, intact.stderr
    assert "intact" in intact.stdout
    assert "BROKEN" not in intact.stdout

    async with behind_the_back(database, backend) as session:
        await session.execute(
            update(AuditEvent)
            .where(AuditEvent.clinic_id == b, AuditEvent.seq == 2)
            .values(reason="edited")
        )
    broken = await asyncio.to_thread(run_cli, "audit", "verify", env=env, cwd=tmp_path)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    line = next(x for x in broken.stdout.splitlines() if x.startswith("BROKEN"))
    assert str(b) in line
    assert str(events[1].id) in line
    assert "seq 2" in line
    assert "columns do not match" in line
    assert str(a) not in broken.stdout
    assert "Traceback" not in broken.stderr

    one = await asyncio.to_thread(
        run_cli, "audit", "verify", "--clinic", str(a), env=env, cwd=tmp_path
    )
    assert one.returncode == 0, one.stdout + one.stderr
    assert "1 chain(s) verified" in one.stdout
    other = await asyncio.to_thread(
        run_cli, "audit", "verify", "--clinic", str(b), env=env, cwd=tmp_path
    )
    assert other.returncode == 1
    unknown = await asyncio.to_thread(
        run_cli, "audit", "verify", "--clinic", str(uuid.uuid4()), env=env, cwd=tmp_path
    )
    assert unknown.returncode == 1
    assert "No such clinic" in unknown.stderr
    assert "Traceback" not in unknown.stderr


async def test_cli_audit_checkpoint_and_rotate_key(
    database: Database, backend: Backend, tmp_path: Path
) -> None:
    trail = Trail.build(database, every_events=1000)
    clinic = await new_clinic(database)
    await trail.append(clinic, 3)  # checkpoint at 1 only
    env = cli_env(backend, tmp_path, trail.master_key)

    signed = await asyncio.to_thread(run_cli, "audit", "checkpoint", env=env, cwd=tmp_path)
    assert signed.returncode == 0, signed.stderr
    assert f"clinic {clinic}: checkpoint signed at seq 3" in signed.stdout
    assert [c.seq for c in await checkpoints_of(database, clinic)] == [1, 3]

    old = set(await signing_keys(database))
    rotated = await asyncio.to_thread(run_cli, "audit", "rotate-key", env=env, cwd=tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    keys = await signing_keys(database)
    (new_key,) = set(keys) - old
    assert new_key in rotated.stdout
    assert all(keys[k].retired_at is not None for k in old)
    # The rotation is itself in the trail (the platform chain), signed by the new key.
    platform = await events_of(database, PLATFORM)
    assert platform[-1].event_type == "crypto:key:rotated"
    assert platform[-1].details["key_id"] == new_key
    assert (await checkpoints_of(database, PLATFORM))[-1].key_id == new_key

    intact = await asyncio.to_thread(run_cli, "audit", "verify", env=env, cwd=tmp_path)
    assert intact.returncode == 0, intact.stdout + intact.stderr


async def test_cli_retention_as_the_application_role(
    database: Database, backend: Backend, tmp_path: Path
) -> None:
    """PostgreSQL: the application's role may not create or drop partitions, so retention
    says to use the owner's connection, without a traceback. SQLite has one role: it runs."""
    trail = Trail.build(database, every_events=3)
    await trail.append(await new_clinic(database), 2)
    env = cli_env(backend, tmp_path, trail.master_key)
    env["CLINICGUARD_MIGRATION_DATABASE_URL"] = backend.database_url
    ran = await asyncio.to_thread(run_cli, "retention", "run", env=env, cwd=tmp_path)
    assert "Traceback" not in ran.stderr
    if backend.postgres is None:
        assert ran.returncode == 0, ran.stdout + ran.stderr
        return
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert "CLINICGUARD_MIGRATION_DATABASE_URL" in ran.stdout + ran.stderr
