"""foundation schema: clinics, identities, memberships and the clinical tables.

Every tenant-owned table has clinic_id leading its primary key, indexes and foreign keys.
The application role gets read/write on these tables and nothing else (no DDL, no ownership).

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 00:01:07.575556
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import clinicguard.store.base
from clinicguard.migrations.helpers import grant_app_access

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None

TABLES = (
    "clinics",
    "users",
    "clinic_memberships",
    "patients",
    "treatments",
    "appointments",
    "care_team",
    "medical_records",
    "treatment_certifications",
    "prescriptions",
)


def upgrade() -> None:
    op.create_table('clinics',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('cnpj', sa.String(length=14), nullable=True),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('opens_at_minute', sa.Integer(), nullable=False),
    sa.Column('closes_at_minute', sa.Integer(), nullable=False),
    sa.Column('address', sa.Text(), nullable=True),
    sa.Column('city', sa.String(length=100), nullable=True),
    sa.Column('state', sa.String(length=2), nullable=True),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.Column('is_demo', sa.Boolean(), nullable=False),
    sa.Column('created_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint('opens_at_minute >= 0 AND closes_at_minute <= 1440 AND opens_at_minute < closes_at_minute', name=op.f('ck_clinics_hours')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_clinics')),
    sa.UniqueConstraint('cnpj', name=op.f('uq_clinics_cnpj'))
    )
    op.create_table('users',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('full_name', sa.String(length=200), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('password_changed_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('is_platform_admin', sa.Boolean(), nullable=False),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.Column('professional_license', sa.String(length=40), nullable=True),
    sa.Column('mfa_enabled', sa.Boolean(), nullable=False),
    sa.Column('totp_secret', sa.Text(), nullable=True),
    sa.Column('created_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('email', name=op.f('uq_users_email'))
    )
    op.create_table('clinic_memberships',
    sa.Column('clinic_id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('role', sa.String(length=32), nullable=False),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.Column('created_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['clinic_id'], ['clinics.id'], name=op.f('fk_clinic_memberships_clinic_id_clinics'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_clinic_memberships_user_id_users'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('clinic_id', 'user_id', name=op.f('pk_clinic_memberships'))
    )
    with op.batch_alter_table('clinic_memberships', schema=None) as batch_op:
        batch_op.create_index('ix_clinic_memberships_user_id', ['user_id'], unique=False)

    op.create_table('patients',
    sa.Column('clinic_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('full_name', sa.String(length=200), nullable=False),
    sa.Column('cpf', sa.String(length=11), nullable=False),
    sa.Column('birth_date', sa.Date(), nullable=True),
    sa.Column('phone', sa.String(length=32), nullable=True),
    sa.Column('email', sa.String(length=254), nullable=True),
    sa.Column('address', sa.Text(), nullable=True),
    sa.Column('allergies', sa.Text(), nullable=True),
    sa.Column('medications', sa.Text(), nullable=True),
    sa.Column('medical_conditions', sa.Text(), nullable=True),
    sa.Column('user_id', sa.Uuid(), nullable=True),
    sa.Column('created_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['clinic_id'], ['clinics.id'], name=op.f('fk_patients_clinic_id_clinics'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_patients_user_id_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('clinic_id', 'id', name=op.f('pk_patients')),
    sa.UniqueConstraint('clinic_id', 'cpf', name=op.f('uq_patients_clinic_id_cpf'))
    )
    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.create_index('ix_patients_clinic_id_user_id', ['clinic_id', 'user_id'], unique=False)

    op.create_table('treatments',
    sa.Column('clinic_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('duration_minutes', sa.Integer(), nullable=False),
    sa.Column('requires_certification', sa.Boolean(), nullable=False),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.Column('created_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint('duration_minutes > 0 AND duration_minutes <= 1440', name=op.f('ck_treatments_duration')),
    sa.ForeignKeyConstraint(['clinic_id'], ['clinics.id'], name=op.f('fk_treatments_clinic_id_clinics'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('clinic_id', 'id', name=op.f('pk_treatments')),
    sa.UniqueConstraint('clinic_id', 'name', name=op.f('uq_treatments_clinic_id_name'))
    )
    op.create_table('appointments',
    sa.Column('clinic_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('patient_id', sa.Uuid(), nullable=False),
    sa.Column('professional_id', sa.Uuid(), nullable=False),
    sa.Column('treatment_id', sa.Uuid(), nullable=True),
    sa.Column('starts_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ends_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('created_by', sa.Uuid(), nullable=True),
    sa.Column('created_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("status IN ('scheduled','confirmed','completed','cancelled','no_show')", name=op.f('ck_appointments_status')),
    sa.CheckConstraint('starts_at < ends_at', name=op.f('ck_appointments_time_order')),
    sa.ForeignKeyConstraint(['clinic_id', 'patient_id'], ['patients.clinic_id', 'patients.id'], name=op.f('fk_appointments_clinic_id_patient_id_patients'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['clinic_id', 'professional_id'], ['clinic_memberships.clinic_id', 'clinic_memberships.user_id'], name=op.f('fk_appointments_clinic_id_professional_id_clinic_memberships'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['clinic_id', 'treatment_id'], ['treatments.clinic_id', 'treatments.id'], name=op.f('fk_appointments_clinic_id_treatment_id_treatments')),
    sa.ForeignKeyConstraint(['clinic_id'], ['clinics.id'], name=op.f('fk_appointments_clinic_id_clinics'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_appointments_created_by_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('clinic_id', 'id', name=op.f('pk_appointments'))
    )
    with op.batch_alter_table('appointments', schema=None) as batch_op:
        batch_op.create_index('ix_appointments_clinic_id_patient_id_starts_at', ['clinic_id', 'patient_id', 'starts_at'], unique=False)
        batch_op.create_index('ix_appointments_clinic_id_professional_id_starts_at', ['clinic_id', 'professional_id', 'starts_at'], unique=False)

    op.create_table('care_team',
    sa.Column('clinic_id', sa.Uuid(), nullable=False),
    sa.Column('patient_id', sa.Uuid(), nullable=False),
    sa.Column('professional_id', sa.Uuid(), nullable=False),
    sa.Column('added_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['clinic_id', 'patient_id'], ['patients.clinic_id', 'patients.id'], name=op.f('fk_care_team_clinic_id_patient_id_patients'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['clinic_id', 'professional_id'], ['clinic_memberships.clinic_id', 'clinic_memberships.user_id'], name=op.f('fk_care_team_clinic_id_professional_id_clinic_memberships'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['clinic_id'], ['clinics.id'], name=op.f('fk_care_team_clinic_id_clinics'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('clinic_id', 'patient_id', 'professional_id', name=op.f('pk_care_team'))
    )
    with op.batch_alter_table('care_team', schema=None) as batch_op:
        batch_op.create_index('ix_care_team_clinic_id_professional_id', ['clinic_id', 'professional_id'], unique=False)

    op.create_table('medical_records',
    sa.Column('clinic_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('patient_id', sa.Uuid(), nullable=False),
    sa.Column('author_id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('diagnosis', sa.Text(), nullable=True),
    sa.Column('notes', sa.Text(), nullable=True),
    sa.Column('treatment', sa.Text(), nullable=True),
    sa.Column('created_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('consultation','nursing_note','procedure','exam','follow_up')", name=op.f('ck_medical_records_kind')),
    sa.ForeignKeyConstraint(['clinic_id', 'author_id'], ['clinic_memberships.clinic_id', 'clinic_memberships.user_id'], name=op.f('fk_medical_records_clinic_id_author_id_clinic_memberships'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['clinic_id', 'patient_id'], ['patients.clinic_id', 'patients.id'], name=op.f('fk_medical_records_clinic_id_patient_id_patients'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['clinic_id'], ['clinics.id'], name=op.f('fk_medical_records_clinic_id_clinics'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('clinic_id', 'id', name=op.f('pk_medical_records'))
    )
    with op.batch_alter_table('medical_records', schema=None) as batch_op:
        batch_op.create_index('ix_medical_records_clinic_id_patient_id_created_at', ['clinic_id', 'patient_id', 'created_at'], unique=False)

    op.create_table('treatment_certifications',
    sa.Column('clinic_id', sa.Uuid(), nullable=False),
    sa.Column('treatment_id', sa.Uuid(), nullable=False),
    sa.Column('professional_id', sa.Uuid(), nullable=False),
    sa.Column('certified_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['clinic_id', 'professional_id'], ['clinic_memberships.clinic_id', 'clinic_memberships.user_id'], name=op.f('fk_treatment_certifications_clinic_id_professional_id_clinic_memberships'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['clinic_id', 'treatment_id'], ['treatments.clinic_id', 'treatments.id'], name=op.f('fk_treatment_certifications_clinic_id_treatment_id_treatments'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['clinic_id'], ['clinics.id'], name=op.f('fk_treatment_certifications_clinic_id_clinics'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('clinic_id', 'treatment_id', 'professional_id', name=op.f('pk_treatment_certifications'))
    )
    op.create_table('prescriptions',
    sa.Column('clinic_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('patient_id', sa.Uuid(), nullable=False),
    sa.Column('prescriber_id', sa.Uuid(), nullable=False),
    sa.Column('record_id', sa.Uuid(), nullable=True),
    sa.Column('medication', sa.Text(), nullable=False),
    sa.Column('dosage', sa.Text(), nullable=False),
    sa.Column('instructions', sa.Text(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('issued_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('valid_until', sa.Date(), nullable=True),
    sa.CheckConstraint("status IN ('active','cancelled','dispensed')", name=op.f('ck_prescriptions_status')),
    sa.ForeignKeyConstraint(['clinic_id', 'patient_id'], ['patients.clinic_id', 'patients.id'], name=op.f('fk_prescriptions_clinic_id_patient_id_patients'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['clinic_id', 'prescriber_id'], ['clinic_memberships.clinic_id', 'clinic_memberships.user_id'], name=op.f('fk_prescriptions_clinic_id_prescriber_id_clinic_memberships'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['clinic_id', 'record_id'], ['medical_records.clinic_id', 'medical_records.id'], name=op.f('fk_prescriptions_clinic_id_record_id_medical_records')),
    sa.ForeignKeyConstraint(['clinic_id'], ['clinics.id'], name=op.f('fk_prescriptions_clinic_id_clinics'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('clinic_id', 'id', name=op.f('pk_prescriptions'))
    )
    with op.batch_alter_table('prescriptions', schema=None) as batch_op:
        batch_op.create_index('ix_prescriptions_clinic_id_patient_id_issued_at', ['clinic_id', 'patient_id', 'issued_at'], unique=False)

    grant_app_access(TABLES)


def downgrade() -> None:
    with op.batch_alter_table('prescriptions', schema=None) as batch_op:
        batch_op.drop_index('ix_prescriptions_clinic_id_patient_id_issued_at')

    op.drop_table('prescriptions')
    op.drop_table('treatment_certifications')
    with op.batch_alter_table('medical_records', schema=None) as batch_op:
        batch_op.drop_index('ix_medical_records_clinic_id_patient_id_created_at')

    op.drop_table('medical_records')
    with op.batch_alter_table('care_team', schema=None) as batch_op:
        batch_op.drop_index('ix_care_team_clinic_id_professional_id')

    op.drop_table('care_team')
    with op.batch_alter_table('appointments', schema=None) as batch_op:
        batch_op.drop_index('ix_appointments_clinic_id_professional_id_starts_at')
        batch_op.drop_index('ix_appointments_clinic_id_patient_id_starts_at')

    op.drop_table('appointments')
    op.drop_table('treatments')
    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.drop_index('ix_patients_clinic_id_user_id')

    op.drop_table('patients')
    with op.batch_alter_table('clinic_memberships', schema=None) as batch_op:
        batch_op.drop_index('ix_clinic_memberships_user_id')

    op.drop_table('clinic_memberships')
    op.drop_table('users')
    op.drop_table('clinics')
