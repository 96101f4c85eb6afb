"""Retention of the audit trail: whole months older than the retention period go, each
one only after the chains it holds verified and were anchored by a signed checkpoint.

PostgreSQL keeps the trail in monthly partitions (``audit_events_YYYY_MM``); a month goes
by ``DROP TABLE`` of its partition, as the owner (the application role cannot, and the
append-only triggers are row triggers, which a DROP does not fire). SQLite has no
partitions: a month's events are deleted. Either way, for each chain with events in the
month, first

1. the chain is verified up to its last event in the month (a chain that does not verify
   is never cut: the evidence stays for investigation, and nothing later goes either);
2. that event must be the end of everything the month removes: no event at or below its
   sequence may be dated after the month (clocks of two servers disagreeing at midnight
   would otherwise leave a hole in the chain);
3. a signed ``retention`` checkpoint is written at that event (sequence, hash), from where
   verification starts once the month is gone;

then the month goes, with the index rows of the patients those events touched
(``audit_subjects``), and each chain that lost events gets an ``audit:retention:run``
event of its own. Months are taken oldest first; the first one refused stops the run.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import DBAPIError

from clinicguard.audit.checkpoints import Ed25519CheckpointSigner
from clinicguard.audit.models import AuditEvent, AuditSubject
from clinicguard.audit.recorder import AuditRecorder
from clinicguard.audit.trail import AuditEntry, AuditEventType
from clinicguard.audit.verify import Verification, verify_chain
from clinicguard.core.clock import Clock
from clinicguard.core.logging import get_logger
from clinicguard.store.db import Database
from clinicguard.store.interfaces import SYSTEM_ROLE, TenantContext

log = get_logger("clinicguard.audit")

MONTHS_AHEAD = 24
"""Partitions kept created ahead of time (the migration creates the same span)."""
PARTITION = re.compile(r"audit_events_(\d{4})_(\d{2})")
DEFAULT_PARTITION = "audit_events_default"
LOCK_TIMEOUT = "10s"
"""How long dropping a partition waits for in-flight appends (it needs the table alone
for a moment); on time-out the run stops and can be repeated."""


def month_of(value: datetime | date) -> date:
    return date(value.year, value.month, 1)


def add_months(month: date, n: int) -> date:
    index = month.year * 12 + month.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


def _start(month: date) -> datetime:
    return datetime(month.year, month.month, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ChainPart:
    """One chain's events in one month."""

    clinic_id: uuid.UUID
    events: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class MonthSlice:
    """One month of the trail: a partition on PostgreSQL, a range of rows on SQLite."""

    month: date
    partition: str | None
    chains: tuple[ChainPart, ...]

    @property
    def label(self) -> str:
        return self.partition or f"month {self.month:%Y-%m}"

    @property
    def events(self) -> int:
        return sum(c.events for c in self.chains)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a month was not removed (and, with it, none after it)."""

    slice: MonthSlice
    clinic_id: uuid.UUID
    reason: str
    event_id: uuid.UUID | None = None
    seq: int | None = None


@dataclass
class RetentionReport:
    cut: datetime
    """Months that end at or before this instant are removed."""
    dry_run: bool
    removed: list[MonthSlice] = field(default_factory=list)
    """Removed months (in a dry run: those that would be)."""
    refused: Refusal | None = None
    held_back: list[MonthSlice] = field(default_factory=list)
    """Old enough months left in place because an older one was refused."""
    checkpoints: int = 0
    subjects_deleted: int = 0
    partitions_created: list[str] = field(default_factory=list)
    """PostgreSQL: months created ahead (in a dry run: missing ones)."""
    partition_problems: list[str] = field(default_factory=list)
    default_rows: int | None = None
    """PostgreSQL: rows in the default partition (months that were not created in time:
    they cannot be removed by month)."""

    @property
    def events_removed(self) -> int:
        return sum(s.events for s in self.removed)


@dataclass(frozen=True, slots=True)
class _System:
    """The actor of the retention events."""

    user_id: uuid.UUID | None = None
    role: str = SYSTEM_ROLE
    session_id: str | None = None


class AuditRetention:
    """``clinicguard retention run``. ``owner`` connects as the schema owner (drops
    partitions, creates months, re-signs a periodic checkpoint as a retention one); the
    retention events are recorded through ``recorder`` on the application's ``db``."""

    def __init__(
        self,
        *,
        owner: Database,
        db: Database,
        recorder: AuditRecorder,
        signer: Ed25519CheckpointSigner,
        clock: Clock,
        retention_days: int,
    ) -> None:
        self._owner = owner
        self._db = db
        self._recorder = recorder
        self._signer = signer
        self._clock = clock
        self._days = retention_days

    @property
    def _postgres(self) -> bool:
        return self._owner.dialect == "postgresql"

    async def run(self, *, dry_run: bool = False) -> RetentionReport:
        """Remove every month older than the retention period that can go (see the
        module's docstring); with ``dry_run`` only report what would happen. Raises
        DatabaseUnavailable; a partition that cannot be dropped in time raises the
        database's error (nothing of that month is removed)."""
        now = self._clock.now()
        report = RetentionReport(cut=now - timedelta(days=self._days), dry_run=dry_run)
        if self._postgres:
            await self._months_ahead(report, month_of(now))
            slices = await self._partitions(report.cut)
            report.default_rows = await self._default_rows()
        else:
            slices = await self._sqlite_months(report.cut)
        verified = await self._verify(slices)
        for index, part in enumerate(slices):
            refusal = await self._refusal(part, verified)
            if refusal is not None:
                report.refused, report.held_back = refusal, slices[index + 1 :]
                break
            if not dry_run:
                report.checkpoints += await self._anchor(part, now)
                report.subjects_deleted += await self._remove(part)
                log.info("audit_month_removed", month=part.label, events=part.events)
            report.removed.append(part)
        if not dry_run:
            await self._record(report)
        return report

    # --- PostgreSQL partitions ---------------------------------------------------------

    async def _partition_names(self) -> set[str]:
        async with self._owner.transaction() as session:
            rows = await session.scalars(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " WHERE i.inhparent = 'audit_events'::regclass"
                )
            )
            return set(rows.all())

    async def _months_ahead(self, report: RetentionReport, current: date) -> None:
        """This month and the next MONTHS_AHEAD exist as partitions (a dry run lists the
        missing ones). A month whose rows already sit in the default partition cannot be
        created: that is reported."""
        existing = await self._partition_names()
        for n in range(MONTHS_AHEAD + 1):
            month = add_months(current, n)
            name = f"audit_events_{month:%Y_%m}"
            if name in existing:
                continue
            if report.dry_run:
                report.partitions_created.append(name)
                continue
            try:
                async with self._owner.transaction() as session:
                    await session.execute(text("SELECT cg_audit_partition(:m)"), {"m": month})
            except DBAPIError:
                log.warning("audit_partition_not_created", partition=name, exc_info=True)
                report.partition_problems.append(
                    f"{name} could not be created (rows of that month in {DEFAULT_PARTITION}?)"
                )
            else:
                report.partitions_created.append(name)

    async def _partitions(self, cut: datetime) -> list[MonthSlice]:
        """Every monthly partition whose whole month ends at or before ``cut``, oldest
        first, with the chains in it."""
        months = []
        for name in await self._partition_names():
            match = PARTITION.fullmatch(name)
            if match is None:
                continue
            month = date(int(match[1]), int(match[2]), 1)
            if _start(add_months(month, 1)) <= cut:
                months.append((month, name))
        slices = []
        for month, name in sorted(months):
            rows = await self._owner_read(
                name,
                f'SELECT clinic_id, count(*) AS events, max(seq) AS last_seq FROM "{name}"'  # noqa: S608 (a catalog name matched by PARTITION)
                " GROUP BY clinic_id ORDER BY clinic_id",
            )
            chains = tuple(ChainPart(r.clinic_id, int(r.events), int(r.last_seq)) for r in rows)
            slices.append(MonthSlice(month, name, chains))
        return slices

    async def _owner_read(self, table: str, sql: str) -> list[Any]:
        """Read a partition itself, every chain at once. A partition has row-level
        security forced and no policy (it is read through ``audit_events``, one clinic at
        a time): its owner lifts the forcing for this one transaction only (no other
        transaction ever sees it lifted) and puts it back before committing."""
        async with self._owner.transaction() as session:
            await session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            await session.execute(text(f'ALTER TABLE "{table}" NO FORCE ROW LEVEL SECURITY'))
            rows = list((await session.execute(text(sql))).all())
            await session.execute(text(f'ALTER TABLE "{table}" FORCE ROW LEVEL SECURITY'))
        return rows

    async def _default_rows(self) -> int:
        rows = await self._owner_read(
            DEFAULT_PARTITION,
            f'SELECT count(*) FROM "{DEFAULT_PARTITION}"',  # noqa: S608 (a constant)
        )
        return int(rows[0][0] or 0)

    # --- SQLite ------------------------------------------------------------------------

    async def _sqlite_months(self, cut: datetime) -> list[MonthSlice]:
        async with self._owner.transaction() as session:
            oldest = await session.scalar(select(func.min(AuditEvent.occurred_at)))
        if oldest is None:
            return []
        slices = []
        month = month_of(oldest)
        while _start(add_months(month, 1)) <= cut:
            async with self._owner.transaction() as session:
                rows = (
                    await session.execute(
                        select(
                            AuditEvent.clinic_id,
                            func.count().label("events"),
                            func.max(AuditEvent.seq).label("last_seq"),
                        )
                        .where(
                            AuditEvent.occurred_at >= _start(month),
                            AuditEvent.occurred_at < _start(add_months(month, 1)),
                        )
                        .group_by(AuditEvent.clinic_id)
                        .order_by(AuditEvent.clinic_id)
                    )
                ).all()
            if rows:
                chains = tuple(ChainPart(r.clinic_id, int(r.events), int(r.last_seq)) for r in rows)
                slices.append(MonthSlice(month, None, chains))
            month = add_months(month, 1)
        return slices

    # --- the checks and the cut ----------------------------------------------------------

    async def _verify(self, slices: list[MonthSlice]) -> dict[uuid.UUID, Verification]:
        """Each chain, once, up to its last event in the newest month to go."""
        upto: dict[uuid.UUID, int] = {}
        for part in slices:
            for chain in part.chains:
                upto[chain.clinic_id] = max(upto.get(chain.clinic_id, 0), chain.last_seq)
        # Only keys this deployment made vouch for the checkpoints the cut relies on.
        keys = await self._signer.keys.trusted_keys()
        return {
            c: await verify_chain(self._owner, c, upto=seq, keys=keys) for c, seq in upto.items()
        }

    async def _refusal(
        self, part: MonthSlice, verified: dict[uuid.UUID, Verification]
    ) -> Refusal | None:
        end = _start(add_months(part.month, 1))
        for chain in part.chains:
            result = verified[chain.clinic_id]
            if not result.ok and (result.first_broken_seq or 0) <= chain.last_seq:
                return Refusal(
                    part,
                    chain.clinic_id,
                    f"the chain does not verify: {result.reason}",
                    result.first_broken_event_id,
                    result.first_broken_seq,
                )
            async with self._owner.transaction(TenantContext.system(chain.clinic_id)) as session:
                later = await session.scalar(
                    select(func.min(AuditEvent.seq)).where(
                        AuditEvent.clinic_id == chain.clinic_id,
                        AuditEvent.seq <= chain.last_seq,
                        AuditEvent.occurred_at >= end,
                    )
                )
            if later is not None:
                return Refusal(
                    part,
                    chain.clinic_id,
                    f"event {later} precedes event {chain.last_seq} in the chain but is dated"
                    " after the month (server clocks disagreed): removing the month would"
                    " leave a hole in the chain",
                    seq=int(later),
                )
        return None

    async def _anchor(self, part: MonthSlice, now: datetime) -> int:
        """A signed retention checkpoint at each chain's last event of the month."""
        written = 0
        for chain in part.chains:
            async with self._owner.transaction(TenantContext.system(chain.clinic_id)) as session:
                digest = await session.scalar(
                    select(AuditEvent.hash).where(
                        AuditEvent.clinic_id == chain.clinic_id,
                        AuditEvent.seq == chain.last_seq,
                    )
                )
                if digest is None:  # verified a moment ago: only a concurrent cut removes it
                    raise RuntimeError(f"event {chain.last_seq} of {chain.clinic_id} vanished")
                if await self._signer.anchor(session, chain.clinic_id, chain.last_seq, digest, now):
                    written += 1
        return written

    async def _remove(self, part: MonthSlice) -> int:
        """The month's events and their patients' index rows, in one transaction."""
        subjects = 0
        async with self._owner.transaction() as session:
            if part.partition is not None:
                await session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
                await session.execute(text(f'DROP TABLE "{part.partition}"'))
            for chain in part.chains:
                await self._owner.set_tenant(session, TenantContext.system(chain.clinic_id))
                if part.partition is None:
                    await session.execute(
                        delete(AuditEvent).where(
                            AuditEvent.clinic_id == chain.clinic_id,
                            AuditEvent.seq <= chain.last_seq,
                        )
                    )
                result: Any = await session.execute(
                    delete(AuditSubject).where(
                        AuditSubject.clinic_id == chain.clinic_id,
                        AuditSubject.seq <= chain.last_seq,
                    )
                )
                subjects += int(result.rowcount or 0)
        return subjects

    async def _record(self, report: RetentionReport) -> None:
        """One ``audit:retention:run`` event in each chain that lost events."""
        per_chain: dict[uuid.UUID, list[tuple[MonthSlice, ChainPart]]] = {}
        for part in report.removed:
            for chain in part.chains:
                per_chain.setdefault(chain.clinic_id, []).append((part, chain))
        for clinic_id, parts in per_chain.items():
            entry = AuditEntry(
                event_type=AuditEventType.RETENTION_RUN,
                action="delete",
                outcome="success",
                resource_type="audit",
                reason=f"retention of {self._days} days",
                details={
                    "months": ",".join(f"{p.month:%Y-%m}" for p, _ in parts),
                    "events_removed": sum(c.events for _, c in parts),
                    "through_seq": max(c.last_seq for _, c in parts),
                    "cut": report.cut.isoformat(timespec="seconds"),
                },
                compliance=True,
            )
            async with self._db.transaction(TenantContext.system(clinic_id)) as session:
                await self._recorder.record(session, clinic_id, _System(), entry)
