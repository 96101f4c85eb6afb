"""field encryption: wrapped data keys per clinic, personal and clinical columns stored
only as ciphertext, blind indexes for CPF and e-mail.

Existing values are encrypted in place under each clinic's new field key (clinical content
too: ``clinicguard keys reencrypt`` then moves it under each patient's own key) and their
blind indexes computed; the migration refuses to run without a key provider (the master
key, or the configured KEK file) when any value exists, rather than drop or keep them in
the clear. ``data_keys`` is under row-level security, maintenance (``system``) only.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Any

import sqlalchemy as sa
from alembic import op

import clinicguard.store.base
from clinicguard.core.clock import utcnow
from clinicguard.crypto import fields
from clinicguard.crypto.fields import Header, KeyKind, Place
from clinicguard.crypto.secretbox import KEY_BYTES
from clinicguard.crypto.service import blind_index_digest
from clinicguard.migrations.helpers import (
    Policy,
    create_policies,
    drop_policies,
    grant_app_access,
    key_provider,
)

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: table -> {column: nullable} (every encrypted column; clinic.models.ENCRYPTED)
COLUMNS: dict[str, dict[str, bool]] = {
    "patients": {
        "cpf": False,
        "phone": True,
        "email": True,
        "address": True,
        "allergies": True,
        "medications": True,
        "medical_conditions": True,
    },
    "appointments": {"reason": True},
    "medical_records": {"diagnosis": True, "notes": True, "treatment": True},
    "prescriptions": {"medication": False, "dosage": False, "instructions": True},
}
MAINTENANCE = "clinic_id = cg_clinic_id() AND cg_role() = 'system'"


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


class _Keys:
    """Each clinic's field and index keys, created (wrapped) as the migration meets them."""

    def __init__(self, bind: sa.engine.Connection, provider: Any) -> None:
        self.bind = bind
        self.provider = provider
        self.keys: dict[tuple[uuid.UUID, str], bytes] = {}
        self.table = sa.table(
            "data_keys",
            sa.column("clinic_id", sa.Uuid()),
            sa.column("purpose", sa.String()),
            sa.column("version", sa.Integer()),
            sa.column("kek_id", sa.String()),
            sa.column("wrapped", sa.LargeBinary()),
            sa.column("created_at", clinicguard.store.base.UTCDateTime()),
            sa.column("encryptions", sa.BigInteger()),
        )

    def get(self, clinic_id: uuid.UUID, purpose: str) -> bytes:
        if (clinic_id, purpose) not in self.keys:
            key = os.urandom(KEY_BYTES)
            kek_id = self.provider.active_kek_id()
            context = f"{clinic_id}|{purpose}|1".encode()
            self.bind.execute(
                self.table.insert().values(
                    clinic_id=clinic_id,
                    purpose=purpose,
                    version=1,
                    kek_id=kek_id,
                    wrapped=self.provider.wrap(kek_id, key, context),
                    created_at=utcnow(),
                    encryptions=0,
                )
            )
            self.keys[(clinic_id, purpose)] = key
        return self.keys[(clinic_id, purpose)]


_UUIDS = ("c", "clinic", "row")


def _sql(statement: str) -> sa.TextClause:
    """Raw SQL whose uuid parameters bind as the column type on every backend."""
    clause = sa.text(statement)
    names = [n for n in _UUIDS if re.search(rf":{n}\b", statement)]
    return clause.bindparams(*(sa.bindparam(n, type_=sa.Uuid()) for n in names))


def _scope(bind: sa.engine.Connection, clinic_id: uuid.UUID) -> None:
    if bind.dialect.name == "postgresql":
        bind.execute(
            sa.text(
                "SELECT set_config('app.clinic_id', :c, true), set_config('app.role', 'system', true)"
            ),
            {"c": str(clinic_id)},
        )


def _clinics_with_data(bind: sa.engine.Connection) -> list[uuid.UUID]:
    clinics = [_uuid(c) for c in bind.execute(sa.text("SELECT id FROM clinics")).scalars()]
    pending = []
    for clinic_id in clinics:
        _scope(bind, clinic_id)
        for table in COLUMNS:
            count = bind.execute(
                _sql(f"SELECT count(*) FROM {table} WHERE clinic_id = :c"), {"c": clinic_id}
            ).scalar()
            if count:
                pending.append(clinic_id)
                break
    return pending


def _encrypt_existing(bind: sa.engine.Connection, pending: list[uuid.UUID], provider: Any) -> None:
    keys = _Keys(bind, provider)
    for clinic_id in pending:
        _scope(bind, clinic_id)
        field_key = keys.get(clinic_id, "field")
        index_key = keys.get(clinic_id, "index")
        encrypted = 0
        for table, columns in COLUMNS.items():
            names = ", ".join(f"{c}_plain" for c in columns)
            rows = bind.execute(
                _sql(f"SELECT id, {names} FROM {table} WHERE clinic_id = :c"), {"c": clinic_id}
            ).all()
            for row in rows:
                row_id = _uuid(row[0])
                values: dict[str, Any] = {}
                for column, plain in zip(columns, row[1:], strict=True):
                    place = Place(clinic_id, table, column, row_id)
                    values[column] = (
                        None
                        if plain is None
                        else fields.encrypt(
                            field_key, Header(KeyKind.CLINIC, 1), place, str(plain).encode()
                        )
                    )
                    encrypted += plain is not None
                if table == "patients":
                    cpf = "".join(ch for ch in str(row[1]) if ch.isdigit())
                    values["cpf_index"] = blind_index_digest(1, index_key, "cpf", cpf)
                    email = row[3]
                    values["email_index"] = (
                        None
                        if email is None
                        else blind_index_digest(1, index_key, "email", str(email).strip().lower())
                    )
                assignments = ", ".join(f"{name} = :{name}" for name in values)
                bind.execute(
                    _sql(
                        f"UPDATE {table} SET {assignments} WHERE clinic_id = :clinic AND id = :row"
                    ).bindparams(
                        *(sa.bindparam(n, type_=sa.LargeBinary()) for n in columns),
                    ),
                    {**values, "clinic": clinic_id, "row": row_id},
                )
        bind.execute(
            keys.table.update()
            .where(
                keys.table.c.clinic_id == clinic_id,
                keys.table.c.purpose == "field",
                keys.table.c.version == 1,
            )
            .values(encryptions=encrypted)
        )


def upgrade() -> None:
    bind = op.get_bind()
    # Refuse before any change: existing values must be encrypted, never dropped or kept.
    pending = _clinics_with_data(bind)
    provider = key_provider() if pending else None
    if pending and provider is None:
        raise RuntimeError(
            "patient data exists and must be encrypted: run `clinicguard migrate` with "
            "CLINICGUARD_MASTER_KEY (and the configured key provider) set"
        )
    op.create_table(
        "data_keys",
        sa.Column("clinic_id", sa.Uuid(), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kek_id", sa.String(length=64), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", clinicguard.store.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("encryptions", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("purpose IN ('field','index')", name=op.f("ck_data_keys_purpose")),
        sa.CheckConstraint("version >= 1", name=op.f("ck_data_keys_version")),
        sa.ForeignKeyConstraint(
            ["clinic_id"],
            ["clinics.id"],
            name=op.f("fk_data_keys_clinic_id_clinics"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("clinic_id", "purpose", "version", name=op.f("pk_data_keys")),
    )
    grant_app_access(["data_keys"], ("SELECT", "INSERT", "UPDATE"))
    if bind.dialect.name == "postgresql":
        create_policies("data_keys", Policy(MAINTENANCE, MAINTENANCE, deletable=False))

    # Old columns move aside, ciphertext columns take their names.
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.drop_constraint("uq_patients_clinic_id_cpf", type_="unique")
    for table, columns in COLUMNS.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in columns:
                batch_op.alter_column(column, new_column_name=f"{column}_plain", nullable=True)
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in columns:
                batch_op.add_column(sa.Column(column, sa.LargeBinary(), nullable=True))
            if table == "patients":
                batch_op.add_column(sa.Column("cpf_index", sa.String(length=48), nullable=True))
                batch_op.add_column(sa.Column("email_index", sa.String(length=48), nullable=True))
    if pending:
        _encrypt_existing(bind, pending, provider)
    for table, columns in COLUMNS.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column, nullable in columns.items():
                batch_op.drop_column(f"{column}_plain")
                if not nullable:
                    batch_op.alter_column(column, existing_type=sa.LargeBinary(), nullable=False)
            if table == "patients":
                batch_op.alter_column(
                    "cpf_index", existing_type=sa.String(length=48), nullable=False
                )
                batch_op.create_unique_constraint(
                    "uq_patients_clinic_id_cpf_index", ["clinic_id", "cpf_index"]
                )
                batch_op.create_index(
                    "ix_patients_clinic_id_email_index", ["clinic_id", "email_index"], unique=False
                )


#: The plaintext types the columns had before (for a downgrade of an empty database).
PLAIN_TYPES: dict[str, Any] = {
    "cpf": sa.String(length=11),
    "phone": sa.String(length=32),
    "email": sa.String(length=254),
}


def downgrade() -> None:
    bind = op.get_bind()
    for table in COLUMNS:
        if bind.execute(sa.text(f"SELECT 1 FROM {table} LIMIT 1")).first() is not None:
            raise RuntimeError(
                "0004 cannot be downgraded with data in place: the values are stored only "
                "encrypted (restore a backup taken before the upgrade)"
            )
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.drop_index("ix_patients_clinic_id_email_index")
        batch_op.drop_constraint("uq_patients_clinic_id_cpf_index", type_="unique")
        batch_op.drop_column("email_index")
        batch_op.drop_column("cpf_index")
    for table, columns in COLUMNS.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in columns:
                batch_op.drop_column(column)
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column, nullable in columns.items():
                batch_op.add_column(
                    sa.Column(column, PLAIN_TYPES.get(column, sa.Text()), nullable=nullable)
                )
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_patients_clinic_id_cpf", ["clinic_id", "cpf"])
    if bind.dialect.name == "postgresql":
        drop_policies("data_keys")
    op.drop_table("data_keys")
