"""row-level security: every tenant-owned table filtered by the transaction's clinic in
PostgreSQL itself, clinical tables also by care team / own record / break-glass grant;
the emergency_grants table.

Policies read three settings the application sets per transaction with
``set_config(..., true)`` (see clinicguard.store.db.Database.transaction): ``app.clinic_id``,
``app.user_id`` and ``app.role``. A transaction that sets none sees no tenant rows at all,
and one that names no role sees none either. Each table has one policy per command: what
SELECT sees, what INSERT and UPDATE may write, what DELETE may remove (clinical records,
prescriptions and break-glass grants have no DELETE policy: append-only).
``ENABLE`` and ``FORCE`` make the policies bind the table owner too; only a superuser or a
BYPASSRLS role escapes them, and the application refuses to start as either.

The role ``system`` is what maintenance work (demo seeding, re-encryption) runs as: still
one clinic at a time, never across clinics.

SQLite has no row-level security: there the application layer is the only one, and
production refuses SQLite.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import clinicguard.store.base
from clinicguard.migrations.helpers import (
    Policy,
    create_policies,
    drop_policies,
    grant_app_access,
)

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

FUNCTIONS = {
    "cg_clinic_id": (
        "RETURNS uuid LANGUAGE sql STABLE PARALLEL SAFE AS "
        "$$ SELECT NULLIF(current_setting('app.clinic_id', true), '')::uuid $$"
    ),
    "cg_user_id": (
        "RETURNS uuid LANGUAGE sql STABLE PARALLEL SAFE AS "
        "$$ SELECT NULLIF(current_setting('app.user_id', true), '')::uuid $$"
    ),
    "cg_role": (
        "RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS "
        "$$ SELECT NULLIF(current_setting('app.role', true), '') $$"
    ),
}

# Clinical access in SQL, for one patient of one clinic: maintenance; compliance (the
# application hides the clinical content from them); a clinician on the care team, with
# an appointment, or with an open break-glass grant; the patient themselves.
CLINICAL_ACCESS = """
CREATE FUNCTION cg_clinical_access(p_clinic uuid, p_patient uuid)
RETURNS boolean LANGUAGE sql STABLE AS $$
  SELECT p_clinic = cg_clinic_id() AND (
    cg_role() IN ('system', 'compliance_officer')
    OR (cg_role() IN ('physician', 'nurse') AND (
         EXISTS (SELECT 1 FROM care_team c
                  WHERE c.clinic_id = p_clinic AND c.patient_id = p_patient
                    AND c.professional_id = cg_user_id())
      OR EXISTS (SELECT 1 FROM appointments a
                  WHERE a.clinic_id = p_clinic AND a.patient_id = p_patient
                    AND a.professional_id = cg_user_id() AND a.status <> 'cancelled')
      OR EXISTS (SELECT 1 FROM emergency_grants g
                  WHERE g.clinic_id = p_clinic AND g.patient_id = p_patient
                    AND g.grantee_id = cg_user_id() AND g.revoked_at IS NULL
                    AND g.expires_at > now())))
    OR (cg_role() = 'patient' AND EXISTS (
         SELECT 1 FROM patients p
          WHERE p.clinic_id = p_clinic AND p.id = p_patient AND p.user_id = cg_user_id()))
  )
$$
"""

def _roles(*names: str) -> str:
    return "cg_role() IN (" + ", ".join(f"'{n}'" for n in names) + ")"


#: Every role that works for the clinic (and maintenance): not a patient, and never a
#: transaction that named no role at all.
STAFF = _roles(
    "system",
    "clinic_admin",
    "physician",
    "nurse",
    "receptionist",
    "compliance_officer",
    "integration",
)
#: Who may write a patient's demographics and appointments.
FRONT_DESK = _roles("system", "clinic_admin", "physician", "nurse", "receptionist", "integration")
ADMIN = _roles("system", "clinic_admin")
SCHEDULERS = _roles("system", "clinic_admin", "receptionist", "integration")
#: Rows the application never changes once written, except maintenance (re-encryption).
MAINTENANCE_ONLY = "clinic_id = cg_clinic_id() AND cg_role() = 'system'"
CLINIC = "clinic_id = cg_clinic_id()"


def _own_patient(table: str) -> str:
    return (
        f"EXISTS (SELECT 1 FROM patients p WHERE p.clinic_id = {table}.clinic_id"
        f" AND p.id = {table}.patient_id AND p.user_id = cg_user_id())"
    )


def _clinical_write(author: str, writers: str) -> str:
    """Maintenance, or the author themselves with clinical access to the patient."""
    return (
        f"{CLINIC} AND (cg_role() = 'system' OR ({writers} AND {author} = cg_user_id()"
        " AND cg_clinical_access(clinic_id, patient_id)))"
    )


POLICIES: dict[str, Policy] = {
    "patients": Policy(
        f"{CLINIC} AND ({STAFF} OR (cg_role() = 'patient' AND user_id = cg_user_id()))",
        f"{CLINIC} AND {FRONT_DESK}",
    ),
    # A clinician books and changes only appointments of patients already in their care
    # (an appointment is itself a care relation: booking oneself must not open records).
    "appointments": Policy(
        f"{CLINIC} AND ({STAFF} OR (cg_role() = 'patient' AND {_own_patient('appointments')}))",
        f"{CLINIC} AND ({SCHEDULERS} OR ({_roles('physician', 'nurse')}"
        " AND cg_clinical_access(clinic_id, patient_id)))",
    ),
    # Who is on a care team decides clinical access: only administrators change it.
    "care_team": Policy(f"{CLINIC} AND {STAFF}", f"{CLINIC} AND {ADMIN}"),
    "treatments": Policy(f"{CLINIC} AND {STAFF}", f"{CLINIC} AND {ADMIN}"),
    "treatment_certifications": Policy(f"{CLINIC} AND {STAFF}", f"{CLINIC} AND {ADMIN}"),
    # A clinician sees and opens only their own break-glass grants; oversight sees all.
    "emergency_grants": Policy(
        f"{CLINIC} AND ({_roles('system', 'clinic_admin', 'compliance_officer')}"
        f" OR ({_roles('physician', 'nurse')} AND grantee_id = cg_user_id()))",
        f"{CLINIC} AND (cg_role() = 'system'"
        f" OR ({_roles('physician', 'nurse')} AND grantee_id = cg_user_id()))",
        deletable=False,
        update=MAINTENANCE_ONLY,
    ),
    "medical_records": Policy(
        "cg_clinical_access(clinic_id, patient_id)",
        _clinical_write(
            "author_id", "(cg_role() = 'physician' OR (cg_role() = 'nurse' AND kind = 'nursing_note'))"
        ),
        deletable=False,
        update=MAINTENANCE_ONLY,
    ),
    "prescriptions": Policy(
        "cg_clinical_access(clinic_id, patient_id)",
        _clinical_write("prescriber_id", "cg_role() = 'physician'"),
        deletable=False,
        update=MAINTENANCE_ONLY,
    ),
    # Sign-in reads a person's own memberships before any clinic is chosen.
    "clinic_memberships": Policy(
        f"({CLINIC} AND {STAFF}) OR user_id = cg_user_id()", f"{CLINIC} AND {ADMIN}"
    ),
    # An API key is found by its public prefix before its clinic is known (the lookup names
    # that one prefix for its transaction). Requests made with a key cannot change keys
    # (their scopes or expiry); marking a key used is maintenance.
    "api_keys": Policy(
        f"({CLINIC} AND {_roles('system', 'clinic_admin', 'integration')})"
        " OR prefix = NULLIF(current_setting('app.api_key_prefix', true), '')",
        f"{CLINIC} AND {ADMIN}",
    ),
}


def upgrade() -> None:
    op.create_table(
        "emergency_grants",
        sa.Column("clinic_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("grantee_id", sa.Uuid(), nullable=False),
        sa.Column("justification", sa.Text(), nullable=False),
        sa.Column("granted_at", clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", clinicguard.store.base.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint("granted_at < expires_at", name=op.f("ck_emergency_grants_time_order")),
        sa.CheckConstraint(
            "length(justification) >= 20", name=op.f("ck_emergency_grants_justification")
        ),
        sa.ForeignKeyConstraint(
            ["clinic_id", "grantee_id"],
            ["clinic_memberships.clinic_id", "clinic_memberships.user_id"],
            name=op.f("fk_emergency_grants_clinic_id_grantee_id_clinic_memberships"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["clinic_id", "patient_id"],
            ["patients.clinic_id", "patients.id"],
            name=op.f("fk_emergency_grants_clinic_id_patient_id_patients"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["clinic_id"],
            ["clinics.id"],
            name=op.f("fk_emergency_grants_clinic_id_clinics"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("clinic_id", "id", name=op.f("pk_emergency_grants")),
    )
    with op.batch_alter_table("emergency_grants", schema=None) as batch_op:
        batch_op.create_index(
            "ix_emergency_grants_clinic_id_granted_at", ["clinic_id", "granted_at"], unique=False
        )
        batch_op.create_index(
            "ix_emergency_grants_clinic_id_patient_id_grantee_id",
            ["clinic_id", "patient_id", "grantee_id"],
            unique=False,
        )
    grant_app_access(["emergency_grants"])
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, body in FUNCTIONS.items():
        op.execute(f"CREATE FUNCTION {name}() {body}")
    op.execute(CLINICAL_ACCESS)
    for table, policy in POLICIES.items():
        create_policies(table, policy)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in POLICIES:
            drop_policies(table)
    with op.batch_alter_table("emergency_grants", schema=None) as batch_op:
        batch_op.drop_index("ix_emergency_grants_clinic_id_patient_id_grantee_id")
        batch_op.drop_index("ix_emergency_grants_clinic_id_granted_at")
    op.drop_table("emergency_grants")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS cg_clinical_access(uuid, uuid)")
        for name in FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")

