"""patient files: photos and documents, stored only encrypted, under the same row-level
security as clinical records (read: clinical access; write: the uploader with clinical
access; updated only by maintenance; never deleted by the application).

Revision ID: 0005
Revises: 0004
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

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

READ = "cg_clinical_access(clinic_id, patient_id)"
WRITE = (
    "clinic_id = cg_clinic_id() AND (cg_role() = 'system' OR (cg_role() IN ('physician', 'nurse')"
    " AND uploaded_by = cg_user_id() AND cg_clinical_access(clinic_id, patient_id)))"
)
MAINTENANCE = "clinic_id = cg_clinic_id() AND cg_role() = 'system'"


def upgrade() -> None:
    op.create_table(
        "patient_files",
        sa.Column("clinic_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("uploaded_by", sa.Uuid(), nullable=False),
        sa.Column("media_type", sa.String(length=32), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("filename", sa.LargeBinary(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "media_type IN ('image/jpeg','image/png','image/webp','application/pdf')",
            name=op.f("ck_patient_files_media_type"),
        ),
        sa.ForeignKeyConstraint(
            ["clinic_id", "patient_id"],
            ["patients.clinic_id", "patients.id"],
            name=op.f("fk_patient_files_clinic_id_patient_id_patients"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["clinic_id", "uploaded_by"],
            ["clinic_memberships.clinic_id", "clinic_memberships.user_id"],
            name=op.f("fk_patient_files_clinic_id_uploaded_by_clinic_memberships"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["clinic_id"],
            ["clinics.id"],
            name=op.f("fk_patient_files_clinic_id_clinics"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("clinic_id", "id", name=op.f("pk_patient_files")),
    )
    with op.batch_alter_table("patient_files", schema=None) as batch_op:
        batch_op.create_index(
            "ix_patient_files_clinic_id_patient_id_created_at",
            ["clinic_id", "patient_id", "created_at"],
            unique=False,
        )
    grant_app_access(["patient_files"], ("SELECT", "INSERT", "UPDATE"))
    if op.get_bind().dialect.name != "postgresql":
        return
    create_policies("patient_files", Policy(READ, WRITE, deletable=False, update=MAINTENANCE))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        drop_policies("patient_files")
    with op.batch_alter_table("patient_files", schema=None) as batch_op:
        batch_op.drop_index("ix_patient_files_clinic_id_patient_id_created_at")
    op.drop_table("patient_files")
