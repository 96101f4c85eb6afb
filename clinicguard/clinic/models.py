"""The clinic domain's tables.

Every tenant-owned table has ``clinic_id`` leading its primary key, its indexes and its
foreign keys: a medical record can only point at a patient *of the same clinic*, enforced by
the database itself, and the schema can be distributed by clinic.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from clinicguard.core.clock import utcnow
from clinicguard.core.ids import new_id
from clinicguard.store.base import Base, TenantOwned, Timestamps
from clinicguard.store.tenancy import MINUTES_PER_DAY, Clinic

__all__ = [
    "BINARY_COLUMNS",
    "ENCRYPTED",
    "MINUTES_PER_DAY",
    "Appointment",
    "CareTeamMember",
    "Clinic",
    "EmergencyGrant",
    "MedicalRecord",
    "Patient",
    "PatientFile",
    "Prescription",
    "Sensitivity",
    "Treatment",
    "TreatmentCertification",
]


class Sensitivity(StrEnum):
    """Our specification's classification of personal data."""

    SENSITIVE = "sensitive"
    """Under the clinic's field key: identifiers, contact data, health summaries."""
    HIGHLY_SENSITIVE = "highly_sensitive"
    """Under the patient's own key (crypto-shredding reaches it): clinical content."""


#: Every encrypted column, by table; a column listed here is stored only as ciphertext
#: (crypto.fields format), bound to clinic, table, column and row id.
ENCRYPTED: dict[str, dict[str, Sensitivity]] = {
    "patients": dict.fromkeys(
        (
            "cpf",
            "phone",
            "email",
            "address",
            "allergies",
            "medications",
            "medical_conditions",
        ),
        Sensitivity.SENSITIVE,
    ),
    "appointments": {"reason": Sensitivity.SENSITIVE},
    "medical_records": dict.fromkeys(
        ("diagnosis", "notes", "treatment"), Sensitivity.HIGHLY_SENSITIVE
    ),
    "prescriptions": dict.fromkeys(
        ("medication", "dosage", "instructions"), Sensitivity.HIGHLY_SENSITIVE
    ),
    "patient_files": dict.fromkeys(("filename", "content"), Sensitivity.HIGHLY_SENSITIVE),
}
#: Encrypted columns whose plaintext is bytes (the others are text).
BINARY_COLUMNS = frozenset({("patient_files", "content")})


def _patient_fk() -> ForeignKeyConstraint:
    return ForeignKeyConstraint(
        ["clinic_id", "patient_id"], ["patients.clinic_id", "patients.id"], ondelete="RESTRICT"
    )


def _member_fk(column: str) -> ForeignKeyConstraint:
    """The professional must be a member of the same clinic."""
    return ForeignKeyConstraint(
        ["clinic_id", column],
        ["clinic_memberships.clinic_id", "clinic_memberships.user_id"],
        ondelete="RESTRICT",
    )


class Patient(TenantOwned, Timestamps, Base):
    __tablename__ = "patients"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    full_name: Mapped[str] = mapped_column(String(200))
    cpf: Mapped[bytes] = mapped_column(LargeBinary)
    cpf_index: Mapped[str] = mapped_column(String(48))
    """Blind index of the CPF digits (exact-match search and uniqueness per clinic)."""
    birth_date: Mapped[date | None] = mapped_column(Date, default=None)
    phone: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    email: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    email_index: Mapped[str | None] = mapped_column(String(48), default=None)
    address: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    allergies: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    medications: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    medical_conditions: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    """The patient's own login, when they have one."""

    __table_args__ = (
        UniqueConstraint("clinic_id", "cpf_index"),
        Index("ix_patients_clinic_id_user_id", "clinic_id", "user_id"),
        Index("ix_patients_clinic_id_email_index", "clinic_id", "email_index"),
    )


class CareTeamMember(TenantOwned, Base):
    """A professional responsible for a patient (grants clinical access under policy)."""

    __tablename__ = "care_team"

    patient_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    professional_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    added_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        _patient_fk(),
        _member_fk("professional_id"),
        Index("ix_care_team_clinic_id_professional_id", "clinic_id", "professional_id"),
    )


class Treatment(TenantOwned, Timestamps, Base):
    """A procedure the clinic offers."""

    __tablename__ = "treatments"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text, default=None)
    duration_minutes: Mapped[int] = mapped_column(Integer, default=30)
    requires_certification: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)

    __table_args__ = (
        UniqueConstraint("clinic_id", "name"),
        CheckConstraint("duration_minutes > 0 AND duration_minutes <= 1440", name="duration"),
    )


class TreatmentCertification(TenantOwned, Base):
    """A professional certified to perform a treatment at this clinic."""

    __tablename__ = "treatment_certifications"

    treatment_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    professional_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    certified_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (
        ForeignKeyConstraint(
            ["clinic_id", "treatment_id"],
            ["treatments.clinic_id", "treatments.id"],
            ondelete="CASCADE",
        ),
        _member_fk("professional_id"),
    )


class Appointment(TenantOwned, Timestamps, Base):
    __tablename__ = "appointments"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    patient_id: Mapped[uuid.UUID] = mapped_column()
    professional_id: Mapped[uuid.UUID] = mapped_column()
    treatment_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    starts_at: Mapped[datetime] = mapped_column()
    ends_at: Mapped[datetime] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default="scheduled")
    reason: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )

    __table_args__ = (
        _patient_fk(),
        _member_fk("professional_id"),
        ForeignKeyConstraint(
            ["clinic_id", "treatment_id"], ["treatments.clinic_id", "treatments.id"]
        ),
        CheckConstraint("starts_at < ends_at", name="time_order"),
        CheckConstraint(
            "status IN ('scheduled','confirmed','completed','cancelled','no_show')", name="status"
        ),
        Index(
            "ix_appointments_clinic_id_professional_id_starts_at",
            "clinic_id",
            "professional_id",
            "starts_at",
        ),
        Index(
            "ix_appointments_clinic_id_patient_id_starts_at", "clinic_id", "patient_id", "starts_at"
        ),
    )


class MedicalRecord(TenantOwned, Base):
    """A clinical entry. Records are append-only in the domain: corrections are new entries."""

    __tablename__ = "medical_records"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    patient_id: Mapped[uuid.UUID] = mapped_column()
    author_id: Mapped[uuid.UUID] = mapped_column()
    kind: Mapped[str] = mapped_column(String(32))
    diagnosis: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    notes: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    treatment: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        _patient_fk(),
        _member_fk("author_id"),
        CheckConstraint(
            "kind IN ('consultation','nursing_note','procedure','exam','follow_up')", name="kind"
        ),
        Index(
            "ix_medical_records_clinic_id_patient_id_created_at",
            "clinic_id",
            "patient_id",
            "created_at",
        ),
    )


class Prescription(TenantOwned, Base):
    __tablename__ = "prescriptions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    patient_id: Mapped[uuid.UUID] = mapped_column()
    prescriber_id: Mapped[uuid.UUID] = mapped_column()
    record_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    medication: Mapped[bytes] = mapped_column(LargeBinary)
    dosage: Mapped[bytes] = mapped_column(LargeBinary)
    instructions: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    status: Mapped[str] = mapped_column(String(16), default="active")
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    valid_until: Mapped[date | None] = mapped_column(Date, default=None)

    __table_args__ = (
        _patient_fk(),
        _member_fk("prescriber_id"),
        ForeignKeyConstraint(
            ["clinic_id", "record_id"], ["medical_records.clinic_id", "medical_records.id"]
        ),
        CheckConstraint("status IN ('active','cancelled','dispensed')", name="status"),
        Index(
            "ix_prescriptions_clinic_id_patient_id_issued_at",
            "clinic_id",
            "patient_id",
            "issued_at",
        ),
    )


class EmergencyGrant(TenantOwned, Base):
    """Break-glass: a time-boxed grant to one professional for one patient's clinical data,
    with the justification they gave. Never updated except to end it early."""

    __tablename__ = "emergency_grants"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    patient_id: Mapped[uuid.UUID] = mapped_column()
    grantee_id: Mapped[uuid.UUID] = mapped_column()
    justification: Mapped[str] = mapped_column(Text)
    granted_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (
        _patient_fk(),
        _member_fk("grantee_id"),
        CheckConstraint("granted_at < expires_at", name="time_order"),
        CheckConstraint("length(justification) >= 20", name="justification"),
        Index(
            "ix_emergency_grants_clinic_id_patient_id_grantee_id",
            "clinic_id",
            "patient_id",
            "grantee_id",
        ),
        Index("ix_emergency_grants_clinic_id_granted_at", "clinic_id", "granted_at"),
    )


class PatientFile(TenantOwned, Base):
    """A patient's photo or document: type decided by content, images re-encoded without
    metadata, name and content stored only encrypted under the patient's own key."""

    __tablename__ = "patient_files"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    patient_id: Mapped[uuid.UUID] = mapped_column()
    uploaded_by: Mapped[uuid.UUID] = mapped_column()
    media_type: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(Integer)
    filename: Mapped[bytes] = mapped_column(LargeBinary)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        _patient_fk(),
        _member_fk("uploaded_by"),
        CheckConstraint(
            "media_type IN ('image/jpeg','image/png','image/webp','application/pdf')",
            name="media_type",
        ),
        Index(
            "ix_patient_files_clinic_id_patient_id_created_at",
            "clinic_id",
            "patient_id",
            "created_at",
        ),
    )
