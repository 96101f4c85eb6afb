"""row-level security: every tenant-owned table filtered by the transaction's clinic in
PostgreSQL itself, clinical tables also by care team / own record / break-glass grant;
the emergency_grants table.

Policies read three settings the application sets per transaction with
``set_config(..., true)`` (see clinicguard.store.db.Database.transaction): ``app.clinic_id``,
``app.user_id`` and ``app.role``. A transaction that sets none sees no tenant rows at all.
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
from clinicguard.migrations.helpers import grant_app_access

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

SAME_CLINIC = "clinic_id = cg_clinic_id()"
# A patient sees only their own row (and appointments); staff see their clinic's.
OWN_IF_PATIENT = (
    "clinic_id = cg_clinic_id() AND (cg_role() IS DISTINCT FROM 'patient' OR {own})"
)

#: table -> (USING, WITH CHECK)
POLICIES: dict[str, tuple[str, str]] = {
    "patients": (OWN_IF_PATIENT.format(own="user_id = cg_user_id()"), SAME_CLINIC),
    "appointments": (
        OWN_IF_PATIENT.format(
            own="EXISTS (SELECT 1 FROM patients p WHERE p.clinic_id = appointments.clinic_id"
            " AND p.id = appointments.patient_id AND p.user_id = cg_user_id())"
        ),
        SAME_CLINIC,
    ),
    "care_team": (SAME_CLINIC, SAME_CLINIC),
    "treatments": (SAME_CLINIC, SAME_CLINIC),
    "treatment_certifications": (SAME_CLINIC, SAME_CLINIC),
    "emergency_grants": (SAME_CLINIC, SAME_CLINIC),
    "medical_records": (
        "cg_clinical_access(clinic_id, patient_id)",
        "cg_clinical_access(clinic_id, patient_id)",
    ),
    "prescriptions": (
        "cg_clinical_access(clinic_id, patient_id)",
        "cg_clinical_access(clinic_id, patient_id)",
    ),
    # Sign-in reads a person's own memberships before any clinic is chosen.
    "clinic_memberships": ("clinic_id = cg_clinic_id() OR user_id = cg_user_id()", SAME_CLINIC),
    # An API key is found by its public prefix before its clinic is known; the lookup
    # names that one prefix for its transaction.
    "api_keys": (
        "clinic_id = cg_clinic_id()"
        " OR prefix = NULLIF(current_setting('app.api_key_prefix', true), '')",
        SAME_CLINIC,
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
    for table, (using, check) in POLICIES.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY {table}_tenant ON {table} FOR ALL USING ({using}) WITH CHECK ({check})"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in POLICIES:
            op.execute(f"DROP POLICY IF EXISTS {table}_tenant ON {table}")
            op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
            op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    with op.batch_alter_table("emergency_grants", schema=None) as batch_op:
        batch_op.drop_index("ix_emergency_grants_clinic_id_patient_id_grantee_id")
        batch_op.drop_index("ix_emergency_grants_clinic_id_granted_at")
    op.drop_table("emergency_grants")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS cg_clinical_access(uuid, uuid)")
        for name in FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")

