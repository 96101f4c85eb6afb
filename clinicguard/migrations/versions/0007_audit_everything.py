"""audit trail, complete: security events move into the hash-chained trail; the trail is
partitioned by month on PostgreSQL; the patients each event touched, review decisions,
signed checkpoints and their signing keys get tables of their own.

PostgreSQL: ``audit_events`` becomes a table partitioned by month on ``occurred_at``
(``audit_events_YYYY_MM``, plus ``audit_events_default`` for anything outside the months
created), so that retention drops whole months. ``cg_audit_partition(month)`` creates a
month (owner only: migrations and ``clinicguard retention run`` call it); this migration
creates the months from the oldest event to two years ahead. The append-only triggers of
0006 now guard the partitioned table and every partition. Row-level security as before,
and a patient reads the events about themselves (their access log).

The rows of ``security_events`` are appended, oldest first, to their clinic's chain (to the
platform chain when they have no clinic), and the table is dropped.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

import clinicguard.store.base
from clinicguard.audit.recorder import event_values
from clinicguard.audit.trail import GENESIS, PLATFORM, chain_hash, entry_of
from clinicguard.core.events import Outcome, SecurityEvent, SecurityEventType, Severity
from clinicguard.migrations.helpers import (
    Policy,
    create_policies,
    drop_policies,
    grant_app_access,
)

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

CLINIC = "clinic_id = cg_clinic_id()"
READERS = "cg_role() IN ('system', 'clinic_admin', 'compliance_officer')"
WRITERS = "cg_role() IS NOT NULL"
OWN_PATIENT = (
    "cg_role() = 'patient' AND patient_id IN (SELECT p.id FROM patients p"
    " WHERE p.clinic_id = cg_clinic_id() AND p.user_id = cg_user_id())"
)
#: A patient reads the events about themselves: named on the event, or among the patients
#: a list returned.
EVENT_OF_OWN_PATIENT = (
    "cg_role() = 'patient' AND (patient_id IN (SELECT p.id FROM patients p"
    " WHERE p.clinic_id = cg_clinic_id() AND p.user_id = cg_user_id())"
    " OR EXISTS (SELECT 1 FROM audit_subjects s JOIN patients p"
    " ON p.clinic_id = s.clinic_id AND p.id = s.patient_id"
    " WHERE s.clinic_id = audit_events.clinic_id AND s.seq = audit_events.seq"
    " AND p.user_id = cg_user_id()))"
)

PARTITION_FUNCTION = """
CREATE FUNCTION cg_audit_partition(month date) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  first date := date_trunc('month', month)::date;
  name text := 'audit_events_' || to_char(first, 'YYYY_MM');
BEGIN
  IF to_regclass(name) IS NULL THEN
    EXECUTE format(
      'CREATE TABLE %I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)', name,
      (first::timestamp AT TIME ZONE 'UTC'),
      ((first + interval '1 month')::timestamp AT TIME ZONE 'UTC'));
    EXECUTE format(
      'CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON %I'
      ' FOR EACH STATEMENT EXECUTE FUNCTION cg_audit_immutable()', name);
    -- Read through audit_events only: a partition has row-level security and no policy,
    -- so a grant on it by mistake still shows nothing.
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', name);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', name);
  END IF;
  RETURN name;
END
$$
"""
MONTHS_AHEAD = 24

COLUMNS = (
    "clinic_id, seq, id, occurred_at, actor_id, actor_role, session_id, request_id, ip,"
    " user_agent, event_type, resource_type, resource_id, patient_id, action, outcome,"
    " reason, details, risk_score, risk_level, compliance, requires_review, prev_hash, hash"
)


def _event_columns(partitioned: bool) -> list[Any]:
    when = clinicguard.store.base.UTCDateTime(timezone=True)
    key = ["clinic_id", "seq", "occurred_at"] if partitioned else ["clinic_id", "seq"]
    return [
        sa.Column("clinic_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("occurred_at", when, nullable=False),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("actor_role", sa.String(length=32), nullable=True),
        sa.Column("session_id", sa.String(length=64), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=256), nullable=True),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("resource_type", sa.String(length=32), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=True),
        sa.Column("patient_id", sa.Uuid(), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("risk_score", sa.Integer(), nullable=False),
        sa.Column("risk_level", sa.String(length=16), nullable=False),
        sa.Column("compliance", sa.Boolean(), nullable=False),
        sa.Column("requires_review", sa.Boolean(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint(*key, name="pk_audit_events"),
        sa.UniqueConstraint("id", "occurred_at", name="uq_audit_events_id"),
    ]


#: The trail's indexes in 0006; 0007 adds ``ix_audit_events_id`` (``id`` alone is no longer
#: unique once the table is partitioned: the partition key joins every unique key).
INDEXES = {
    "ix_audit_events_clinic_id_actor_id_occurred_at": ["clinic_id", "actor_id", "occurred_at"],
    "ix_audit_events_clinic_id_occurred_at": ["clinic_id", "occurred_at"],
    "ix_audit_events_clinic_id_patient_id_occurred_at": ["clinic_id", "patient_id", "occurred_at"],
}
ID_INDEX = {"ix_audit_events_id": ["id"]}


def _month(value: datetime | date) -> date:
    return date(value.year, value.month, 1)


def _add_months(month: date, n: int) -> date:
    index = month.year * 12 + month.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


def _rebuild_events(*, partitioned: bool, before_copy: Callable[[], None]) -> None:
    """Rebuild ``audit_events`` on PostgreSQL, partitioned by month (0007) or plain (0006),
    keeping its rows: the old table is renamed aside, its rows copied, and it is dropped;
    the append-only triggers come back on the new table. ``before_copy`` runs once the
    new table exists (the months must exist before rows are copied into them)."""
    old_indexes = INDEXES if partitioned else INDEXES | ID_INDEX
    op.execute("ALTER TABLE audit_events RENAME TO audit_events_old")
    for name in old_indexes:
        op.execute(f"DROP INDEX {name}")
    op.execute("ALTER TABLE audit_events_old RENAME CONSTRAINT pk_audit_events TO pk_old_events")
    op.execute("ALTER TABLE audit_events_old RENAME CONSTRAINT uq_audit_events_id TO uq_old_id")
    if partitioned:
        op.create_table(
            "audit_events", *_event_columns(True), postgresql_partition_by="RANGE (occurred_at)"
        )
    else:
        op.create_table("audit_events", *_event_columns(False))
        op.execute("ALTER TABLE audit_events DROP CONSTRAINT uq_audit_events_id")
        op.create_unique_constraint("uq_audit_events_id", "audit_events", ["id"])
    for name, columns in (INDEXES | ID_INDEX if partitioned else INDEXES).items():
        op.create_index(name, "audit_events", columns)
    before_copy()
    op.execute("ALTER TABLE audit_events_old NO FORCE ROW LEVEL SECURITY")
    op.execute(f"INSERT INTO audit_events ({COLUMNS}) SELECT {COLUMNS} FROM audit_events_old")  # noqa: S608 (constant column list)
    op.execute("DROP TABLE audit_events_old")
    op.execute(
        "CREATE TRIGGER audit_events_immutable BEFORE UPDATE OR DELETE ON audit_events"
        " FOR EACH ROW EXECUTE FUNCTION cg_audit_immutable()"
    )
    op.execute(
        "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events"
        " FOR EACH STATEMENT EXECUTE FUNCTION cg_audit_immutable()"
    )


def _partition_postgres(bind: sa.engine.Connection) -> None:
    """Rebuild the trail as a table partitioned by month, with the months from its oldest
    event (or stored security event) to two years ahead."""

    def create_months() -> None:
        op.execute(PARTITION_FUNCTION)
        op.execute("REVOKE ALL ON FUNCTION cg_audit_partition(date) FROM PUBLIC")
        op.execute("CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT")
        op.execute(
            "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events_default"
            " FOR EACH STATEMENT EXECUTE FUNCTION cg_audit_immutable()"
        )
        op.execute("ALTER TABLE audit_events_default ENABLE ROW LEVEL SECURITY")
        op.execute("ALTER TABLE audit_events_default FORCE ROW LEVEL SECURITY")
        oldest = bind.execute(
            sa.text(
                "SELECT least((SELECT min(occurred_at) FROM audit_events_old),"
                " (SELECT min(occurred_at) FROM security_events))"
            )
        ).scalar()
        now = _month(datetime.now(UTC))
        month = _month(oldest) if oldest is not None and _month(oldest) < now else now
        while month <= _add_months(now, MONTHS_AHEAD):
            bind.execute(sa.text("SELECT cg_audit_partition(:m)"), {"m": month})
            month = _add_months(month, 1)

    _rebuild_events(partitioned=True, before_copy=create_months)


def _events_policies(readers: str) -> None:
    op.execute("ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE audit_events FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY audit_events_read ON audit_events FOR SELECT USING ({CLINIC} AND"
        f" ({readers}))"
    )
    op.execute(
        f"CREATE POLICY audit_events_insert ON audit_events FOR INSERT"
        f" WITH CHECK ({CLINIC} AND {WRITERS})"
    )


def _move_security_events(bind: sa.engine.Connection) -> None:
    """Append every stored security event to its chain, oldest first (typed columns, so
    ids and times are stored exactly as the application stores them)."""
    when = clinicguard.store.base.UTCDateTime(timezone=True)
    events = sa.table(
        "audit_events",
        *(
            sa.column(c.name, c.type)
            for c in _event_columns(False)
            if isinstance(c, sa.Column)
        ),
    )
    heads = sa.table(
        "audit_heads",
        sa.column("clinic_id", sa.Uuid()),
        sa.column("seq", sa.BigInteger()),
        sa.column("hash", sa.String()),
        sa.column("checkpoint_seq", sa.BigInteger()),
    )
    stored = sa.table(
        "security_events",
        sa.column("id", sa.Uuid()),
        sa.column("occurred_at", when),
        sa.column("event_type", sa.String()),
        sa.column("outcome", sa.String()),
        sa.column("severity", sa.String()),
        sa.column("clinic_id", sa.Uuid()),
        sa.column("user_id", sa.Uuid()),
        sa.column("session_id", sa.String()),
        sa.column("request_id", sa.String()),
        sa.column("ip", sa.String()),
        sa.column("user_agent", sa.String()),
        sa.column("details", sa.JSON()),
    )
    tips = {r.clinic_id: (int(r.seq), str(r.hash)) for r in bind.execute(sa.select(heads))}
    known = set(tips)
    rows = bind.execute(sa.select(stored).order_by(stored.c.occurred_at, stored.c.id))
    for row in rows:
        clinic = row.clinic_id or PLATFORM
        event = SecurityEvent(
            type=SecurityEventType(row.event_type),
            outcome=Outcome(row.outcome),
            severity=Severity(row.severity),
            details={**(row.details or {}), "moved_from": "security_events"},
        )
        seq, previous = tips.get(clinic, (0, GENESIS))
        values = event_values(
            clinic_id=clinic,
            seq=seq + 1,
            previous=previous,
            entry=entry_of(event),
            occurred_at=row.occurred_at,
            actor_id=row.user_id,
            actor_role=None,
            session_id=row.session_id,
            request_id=row.request_id,
            ip=row.ip,
            user_agent=row.user_agent,
        )
        digest = chain_hash(previous, values)
        bind.execute(sa.insert(events).values(**values, hash=digest))
        tips[clinic] = (seq + 1, digest)
    for clinic, (seq, digest) in tips.items():
        if clinic in known:
            bind.execute(
                sa.update(heads).where(heads.c.clinic_id == clinic).values(seq=seq, hash=digest)
            )
        else:
            bind.execute(
                sa.insert(heads).values(clinic_id=clinic, seq=seq, hash=digest, checkpoint_seq=0)
            )


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    when = clinicguard.store.base.UTCDateTime(timezone=True)
    with op.batch_alter_table("audit_heads", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("checkpoint_seq", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("checkpoint_at", when, nullable=True))
    if postgres:
        _partition_postgres(bind)
        op.execute("ALTER TABLE audit_heads NO FORCE ROW LEVEL SECURITY")
    else:
        with op.batch_alter_table("audit_events", schema=None) as batch_op:
            batch_op.drop_constraint("uq_audit_events_id", type_="unique")
            batch_op.create_unique_constraint("uq_audit_events_id", ["id", "occurred_at"])
            batch_op.create_index("ix_audit_events_id", ["id"], unique=False)
    _move_security_events(bind)
    with op.batch_alter_table("security_events", schema=None) as batch_op:
        batch_op.drop_index("ix_security_events_clinic_id_occurred_at")
        batch_op.drop_index("ix_security_events_event_type_occurred_at")
        batch_op.drop_index("ix_security_events_user_id_occurred_at")
    op.drop_table("security_events")

    op.create_table(
        "audit_subjects",
        sa.Column("clinic_id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("occurred_at", when, nullable=False),
        sa.PrimaryKeyConstraint("clinic_id", "patient_id", "seq", name=op.f("pk_audit_subjects")),
    )
    op.create_table(
        "audit_reviews",
        sa.Column("clinic_id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("event_seq", sa.BigInteger(), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("reviewer_id", sa.Uuid(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("decided_at", when, nullable=False),
        sa.PrimaryKeyConstraint("clinic_id", "event_id", name=op.f("pk_audit_reviews")),
    )
    op.create_index(
        "ix_audit_reviews_clinic_id_event_seq", "audit_reviews", ["clinic_id", "event_seq"]
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("clinic_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("signed_at", when, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("clinic_id", "seq", name=op.f("pk_audit_checkpoints")),
    )
    op.create_table(
        "audit_signing_keys",
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("public_pem", sa.String(length=1024), nullable=False),
        sa.Column("private_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("retired_at", when, nullable=True),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_audit_signing_keys")),
    )
    grant_app_access(["audit_events", "audit_subjects", "audit_reviews"], ("SELECT", "INSERT"))
    grant_app_access(["audit_checkpoints"], ("SELECT", "INSERT"))
    grant_app_access(["audit_signing_keys"], ("SELECT", "INSERT", "UPDATE"))
    if not postgres:
        return
    op.execute("ALTER TABLE audit_heads FORCE ROW LEVEL SECURITY")
    _events_policies(f"{READERS} OR {EVENT_OF_OWN_PATIENT}")
    create_policies(
        "audit_subjects",
        Policy(f"{CLINIC} AND ({READERS} OR {OWN_PATIENT})", f"{CLINIC} AND {WRITERS}"),
    )
    create_policies(
        "audit_reviews",
        Policy(
            f"{CLINIC} AND {READERS}",
            f"{CLINIC} AND (cg_role() = 'system' OR (cg_role() IN"
            " ('clinic_admin', 'compliance_officer') AND reviewer_id = cg_user_id()))",
            deletable=False,
        ),
    )
    # Checkpoints vouch for hashes, which are not secrets: every writer reads and adds them.
    create_policies(
        "audit_checkpoints",
        Policy(f"{CLINIC} AND {WRITERS}", f"{CLINIC} AND {WRITERS}", deletable=False),
    )


def downgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    # The trail keeps its events (moved security events stay in their chains); a
    # downgrade makes it a plain table again (first: its policy reads audit_subjects).
    if postgres:
        _rebuild_events(partitioned=False, before_copy=lambda: None)
        op.execute("DROP FUNCTION cg_audit_partition(date)")
        _events_policies(READERS)
        grant_app_access(["audit_events"], ("SELECT", "INSERT"))
        for table in ("audit_subjects", "audit_reviews", "audit_checkpoints"):
            drop_policies(table)
    else:
        with op.batch_alter_table("audit_events", schema=None) as batch_op:
            batch_op.drop_index("ix_audit_events_id")
            batch_op.drop_constraint("uq_audit_events_id", type_="unique")
            batch_op.create_unique_constraint("uq_audit_events_id", ["id"])
    op.drop_table("audit_signing_keys")
    op.drop_table("audit_checkpoints")
    op.drop_index("ix_audit_reviews_clinic_id_event_seq", table_name="audit_reviews")
    op.drop_table("audit_reviews")
    op.drop_table("audit_subjects")
    op.create_table(
        "security_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("occurred_at", clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("clinic_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("session_id", sa.String(length=64), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=256), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_security_events")),
    )
    with op.batch_alter_table("security_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_security_events_clinic_id_occurred_at", ["clinic_id", "occurred_at"]
        )
        batch_op.create_index(
            "ix_security_events_event_type_occurred_at", ["event_type", "occurred_at"]
        )
        batch_op.create_index("ix_security_events_user_id_occurred_at", ["user_id", "occurred_at"])
    grant_app_access(["security_events"], ("SELECT", "INSERT"))
    with op.batch_alter_table("audit_heads", schema=None) as batch_op:
        batch_op.drop_column("checkpoint_at")
        batch_op.drop_column("checkpoint_seq")
