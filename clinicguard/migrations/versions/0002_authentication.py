"""authentication: signing keys, sessions' durable parts, MFA, API keys, security events.

Existing TOTP seeds are sealed under the master key (AES-GCM bound to the user id) and the
plaintext column is dropped; the migration refuses to run without the master key when any
seed exists, rather than lose or keep them in the clear. Security events are append-only
for the application role (INSERT and SELECT only).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 00:16:34.285829
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

import clinicguard.store.base
from clinicguard.crypto.secretbox import SecretBox
from clinicguard.migrations.helpers import grant_app_access, master_key


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

READ_WRITE_TABLES = ("signing_keys", "api_keys", "mfa_backup_codes", "password_history")


def upgrade() -> None:
    op.create_table('security_events',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('occurred_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('event_type', sa.String(length=64), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('clinic_id', sa.Uuid(), nullable=True),
    sa.Column('user_id', sa.Uuid(), nullable=True),
    sa.Column('session_id', sa.String(length=64), nullable=True),
    sa.Column('request_id', sa.String(length=128), nullable=True),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.Column('user_agent', sa.String(length=256), nullable=True),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_security_events'))
    )
    with op.batch_alter_table('security_events', schema=None) as batch_op:
        batch_op.create_index('ix_security_events_clinic_id_occurred_at', ['clinic_id', 'occurred_at'], unique=False)
        batch_op.create_index('ix_security_events_event_type_occurred_at', ['event_type', 'occurred_at'], unique=False)
        batch_op.create_index('ix_security_events_user_id_occurred_at', ['user_id', 'occurred_at'], unique=False)

    op.create_table('signing_keys',
    sa.Column('kid', sa.String(length=64), nullable=False),
    sa.Column('purpose', sa.String(length=32), nullable=False),
    sa.Column('algorithm', sa.String(length=16), nullable=False),
    sa.Column('public_pem', sa.String(length=1024), nullable=False),
    sa.Column('private_sealed', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('retired_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('verify_until', clinicguard.store.base.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('kid', name=op.f('pk_signing_keys'))
    )
    with op.batch_alter_table('signing_keys', schema=None) as batch_op:
        batch_op.create_index('ix_signing_keys_purpose_created_at', ['purpose', 'created_at'], unique=False)

    op.create_table('api_keys',
    sa.Column('clinic_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('secret_hash', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('scopes', sa.JSON(), nullable=False),
    sa.Column('created_by', sa.Uuid(), nullable=True),
    sa.Column('created_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_used_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['clinic_id'], ['clinics.id'], name=op.f('fk_api_keys_clinic_id_clinics'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_api_keys_created_by_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('clinic_id', 'id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('prefix', name=op.f('uq_api_keys_prefix'))
    )
    op.create_table('mfa_backup_codes',
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('code_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('used_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_mfa_backup_codes_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('user_id', 'code_hash', name=op.f('pk_mfa_backup_codes'))
    )
    op.create_table('password_history',
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('created_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_password_history_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('user_id', 'id', name=op.f('pk_password_history'))
    )
    with op.batch_alter_table('clinics', schema=None) as batch_op:
        batch_op.add_column(sa.Column('security_policy', sa.JSON(), nullable=True))

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('totp_secret_sealed', sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column('must_change_password', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('last_login_at', clinicguard.store.base.UTCDateTime(timezone=True), nullable=True))
    _seal_totp_seeds()
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('totp_secret')
    grant_app_access(READ_WRITE_TABLES)
    grant_app_access(["security_events"], ("SELECT", "INSERT"))


def _seal_totp_seeds() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, totp_secret FROM users WHERE totp_secret IS NOT NULL")).all()
    if not rows:
        return
    key = master_key()
    if key is None:
        raise RuntimeError(
            "users have TOTP seeds to encrypt: run `clinicguard migrate` with CLINICGUARD_MASTER_KEY set"
        )
    box = SecretBox(key, "totp-seed")
    users = sa.table("users", sa.column("id", sa.Uuid()), sa.column("totp_secret_sealed", sa.LargeBinary()))
    for user_id, seed in rows:
        uid = user_id if isinstance(user_id, uuid.UUID) else uuid.UUID(str(user_id))
        bind.execute(
            users.update().where(users.c.id == uid).values(totp_secret_sealed=box.seal(seed.encode(), str(uid)))
        )



def downgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('totp_secret', sa.TEXT(), nullable=True))
        batch_op.drop_column('last_login_at')
        batch_op.drop_column('must_change_password')
        batch_op.drop_column('totp_secret_sealed')

    with op.batch_alter_table('clinics', schema=None) as batch_op:
        batch_op.drop_column('security_policy')

    op.drop_table('password_history')
    op.drop_table('mfa_backup_codes')
    op.drop_table('api_keys')
    with op.batch_alter_table('signing_keys', schema=None) as batch_op:
        batch_op.drop_index('ix_signing_keys_purpose_created_at')

    op.drop_table('signing_keys')
    with op.batch_alter_table('security_events', schema=None) as batch_op:
        batch_op.drop_index('ix_security_events_user_id_occurred_at')
        batch_op.drop_index('ix_security_events_event_type_occurred_at')
        batch_op.drop_index('ix_security_events_clinic_id_occurred_at')

    op.drop_table('security_events')
