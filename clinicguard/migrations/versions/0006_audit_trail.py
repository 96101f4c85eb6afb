"""audit trail: per-clinic hash-chained events and their chain heads.

The application role may only INSERT and SELECT events; on PostgreSQL triggers also refuse
UPDATE, DELETE and TRUNCATE of events for every role — the owner included — except a
superuser's session that sets ``clinicguard.audit_maintenance`` (test clean-up; retention
drops whole partitions, which row triggers do not see). Whatever a superuser changes
anyway, the hash chain shows. Row-level security: a clinic's events are written in its
own scope and read by maintenance, administrators and compliance.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import clinicguard.store.base
from clinicguard.migrations.helpers import grant_app_access

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

CLINIC = "clinic_id = cg_clinic_id()"
READERS = "cg_role() IN ('system', 'clinic_admin', 'compliance_officer')"
WRITERS = "cg_role() IS NOT NULL"

IMMUTABLE = """
CREATE FUNCTION cg_audit_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF current_setting('clinicguard.audit_maintenance', true) = 'on'
     AND (SELECT rolsuper FROM pg_roles WHERE rolname = session_user) THEN
    IF TG_OP = 'DELETE' THEN
      RETURN OLD;
    END IF;
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'the audit trail is append-only (% refused)', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("clinic_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("occurred_at", clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
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
        sa.PrimaryKeyConstraint("clinic_id", "seq", name=op.f("pk_audit_events")),
        sa.UniqueConstraint("id", name=op.f("uq_audit_events_id")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_audit_events_clinic_id_actor_id_occurred_at",
            ["clinic_id", "actor_id", "occurred_at"],
            unique=False,
        )
        batch_op.create_index(
            "ix_audit_events_clinic_id_occurred_at", ["clinic_id", "occurred_at"], unique=False
        )
        batch_op.create_index(
            "ix_audit_events_clinic_id_patient_id_occurred_at",
            ["clinic_id", "patient_id", "occurred_at"],
            unique=False,
        )
    op.create_table(
        "audit_heads",
        sa.Column("clinic_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("clinic_id", name=op.f("pk_audit_heads")),
    )
    grant_app_access(["audit_events"], ("SELECT", "INSERT"))
    grant_app_access(["audit_heads"], ("SELECT", "INSERT", "UPDATE"))
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(IMMUTABLE)
    op.execute(
        "CREATE TRIGGER audit_events_immutable BEFORE UPDATE OR DELETE ON audit_events"
        " FOR EACH ROW EXECUTE FUNCTION cg_audit_immutable()"
    )
    op.execute(
        "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events"
        " FOR EACH STATEMENT EXECUTE FUNCTION cg_audit_immutable()"
    )
    for table in ("audit_events", "audit_heads"):
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY audit_events_read ON audit_events FOR SELECT USING ({CLINIC} AND {READERS})"
    )
    op.execute(
        f"CREATE POLICY audit_events_insert ON audit_events FOR INSERT"
        f" WITH CHECK ({CLINIC} AND {WRITERS})"
    )
    # Every writer reads and moves its clinic's head (the chain's tip is not a secret).
    op.execute(
        f"CREATE POLICY audit_heads_all ON audit_heads FOR ALL USING ({CLINIC} AND {WRITERS})"
        f" WITH CHECK ({CLINIC} AND {WRITERS})"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_immutable ON audit_events")
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS cg_audit_immutable()")
    op.drop_table("audit_heads")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_clinic_id_patient_id_occurred_at")
        batch_op.drop_index("ix_audit_events_clinic_id_occurred_at")
        batch_op.drop_index("ix_audit_events_clinic_id_actor_id_occurred_at")
    op.drop_table("audit_events")
