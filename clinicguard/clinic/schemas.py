"""Request and response bodies of the clinic data API, with their validation: CPF check
digits, birth dates not in the future, phone numbers through ``phonenumbers`` (region BR by
default), emails through ``email-validator``, plain text without control characters, and
clinical notes through a small HTML allowlist (``nh3``). Unknown fields are a 422.

Responses list every field as optional: the policy's obligations remove hidden fields from
an answer (they are absent, not null) and mask others.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Annotated, Generic, Literal, TypeVar

import nh3
import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    Field,
    field_validator,
    model_validator,
)

from clinicguard.clinic.cpf import is_valid_cpf, normalize_cpf
from clinicguard.core.schemas import PlainText, StrictModel

PHONE_REGION = "BR"
#: Tags a clinical note may keep; attributes are dropped except a link's href (http/https).
NOTE_TAGS = frozenset({"p", "br", "b", "strong", "i", "em", "u", "ul", "ol", "li", "a"})
NOTE_ATTRIBUTES = {"a": {"href"}}


def check_cpf(value: str) -> str:
    if not is_valid_cpf(value):
        raise ValueError("Not a valid CPF (check digits).")
    return normalize_cpf(value)


def _phone(value: str) -> str:
    try:
        number = phonenumbers.parse(value, PHONE_REGION)
    except phonenumbers.NumberParseException as exc:
        raise ValueError("Not a phone number.") from exc
    if not phonenumbers.is_valid_number(number):
        raise ValueError("Not a valid phone number.")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _email(value: str) -> str:
    try:
        checked = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError("Not a valid email address.") from exc
    return checked.normalized.lower()


def _note(value: str) -> str:
    return nh3.clean(
        value,
        tags=set(NOTE_TAGS),
        attributes={k: set(v) for k, v in NOTE_ATTRIBUTES.items()},
        url_schemes={"http", "https"},
        link_rel="noopener noreferrer nofollow",
    )


Cpf = Annotated[str, Field(min_length=11, max_length=14), AfterValidator(check_cpf)]
Phone = Annotated[PlainText, Field(min_length=8, max_length=32), AfterValidator(_phone)]
Email = Annotated[PlainText, Field(min_length=3, max_length=254), AfterValidator(_email)]
Name = Annotated[PlainText, Field(min_length=2, max_length=200)]
ShortText = Annotated[PlainText, Field(min_length=1, max_length=500)]
LongText = Annotated[PlainText, Field(min_length=1, max_length=5000)]
ClinicalNote = Annotated[PlainText, Field(min_length=1, max_length=20000), AfterValidator(_note)]


class _BirthDate:
    @staticmethod
    def check(value: date | None) -> date | None:
        if value is not None and (value > datetime.now(UTC).date() or value.year < 1890):
            raise ValueError("Must be a real date of birth, not in the future.")
        return value


BirthDate = Annotated[date, AfterValidator(_BirthDate.check)]

#: Patient fields only clinicians change (the rest is basic information).
CLINICAL_PATIENT_FIELDS = frozenset({"allergies", "medications", "medical_conditions"})


class PatientCreate(StrictModel):
    full_name: Name
    cpf: Cpf
    birth_date: BirthDate | None = None
    phone: Phone | None = None
    email: Email | None = None
    address: LongText | None = None
    allergies: LongText | None = None
    medications: LongText | None = None
    medical_conditions: LongText | None = None


class PatientUpdate(StrictModel):
    full_name: Name | None = None
    cpf: Cpf | None = None
    birth_date: BirthDate | None = None
    phone: Phone | None = None
    email: Email | None = None
    address: LongText | None = None
    allergies: LongText | None = None
    medications: LongText | None = None
    medical_conditions: LongText | None = None

    @field_validator("full_name", "cpf")
    @classmethod
    def _required_not_null(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("Cannot be removed.")
        return value

    @model_validator(mode="after")
    def _something(self) -> PatientUpdate:
        if not self.model_fields_set:
            raise ValueError("Nothing to change.")
        return self


class PatientOut(BaseModel):
    id: uuid.UUID
    full_name: str | None = None
    cpf: str | None = None
    birth_date: date | str | None = None
    phone: str | None = None
    email: str | None = None
    address: str | None = None
    allergies: str | None = None
    medications: str | None = None
    medical_conditions: str | None = None
    created_at: datetime
    updated_at: datetime


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


RecordKind = Literal["consultation", "nursing_note", "procedure", "exam", "follow_up"]


class RecordCreate(StrictModel):
    kind: RecordKind
    diagnosis: LongText | None = None
    notes: ClinicalNote | None = None
    treatment: LongText | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> RecordCreate:
        if not (self.diagnosis or self.notes or self.treatment):
            raise ValueError("A record needs a diagnosis, notes or a treatment.")
        return self


class RecordOut(BaseModel):
    id: uuid.UUID
    patient_id: uuid.UUID
    author_id: uuid.UUID
    kind: str | None = None
    diagnosis: str | None = None
    notes: str | None = None
    treatment: str | None = None
    created_at: datetime


class PrescriptionCreate(StrictModel):
    medication: ShortText
    dosage: ShortText
    instructions: LongText | None = None
    valid_until: date | None = None
    record_id: uuid.UUID | None = None


class PrescriptionOut(BaseModel):
    id: uuid.UUID
    patient_id: uuid.UUID
    prescriber_id: uuid.UUID
    record_id: uuid.UUID | None = None
    medication: str | None = None
    dosage: str | None = None
    instructions: str | None = None
    status: str
    issued_at: datetime
    valid_until: date | None = None


AppointmentStatus = Literal["scheduled", "confirmed", "completed", "cancelled", "no_show"]


class AppointmentCreate(StrictModel):
    patient_id: uuid.UUID
    professional_id: uuid.UUID
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    treatment_id: uuid.UUID | None = None
    reason: LongText | None = None


class AppointmentUpdate(StrictModel):
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    status: AppointmentStatus | None = None
    reason: LongText | None = None

    @model_validator(mode="after")
    def _something(self) -> AppointmentUpdate:
        if not self.model_fields_set:
            raise ValueError("Nothing to change.")
        if "status" in self.model_fields_set and self.status is None:
            raise ValueError("status cannot be removed.")
        return self


class AppointmentOut(BaseModel):
    id: uuid.UUID
    patient_id: uuid.UUID
    professional_id: uuid.UUID
    treatment_id: uuid.UUID | None = None
    starts_at: datetime
    ends_at: datetime
    status: str
    reason: str | None = None
    created_at: datetime
    updated_at: datetime


class TreatmentCreate(StrictModel):
    name: Annotated[PlainText, Field(min_length=2, max_length=200)]
    description: LongText | None = None
    duration_minutes: Annotated[int, Field(gt=0, le=1440)] = 30
    requires_certification: bool = False


class TreatmentOut(BaseModel):
    id: uuid.UUID
    name: str
    description: str | None = None
    duration_minutes: int
    requires_certification: bool
    is_active: bool


class EmergencyAccessRequest(StrictModel):
    justification: Annotated[PlainText, Field(min_length=20, max_length=2000)]

    @model_validator(mode="after")
    def _meaningful(self) -> EmergencyAccessRequest:
        if len(self.justification.strip()) < 20 or len(set(self.justification.strip())) < 5:
            raise ValueError("Explain the emergency in at least 20 meaningful characters.")
        return self


class EmergencyGrantOut(BaseModel):
    id: uuid.UUID
    patient_id: uuid.UUID
    grantee_id: uuid.UUID
    justification: str
    granted_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None
    active: bool


StaffRole = Literal["clinic_admin", "physician", "nurse", "receptionist", "compliance_officer"]


class StaffCreate(StrictModel):
    email: Email
    full_name: Name
    role: StaffRole
    professional_license: Annotated[PlainText, Field(min_length=2, max_length=40)] | None = None


class StaffUpdate(StrictModel):
    role: StaffRole | None = None
    is_active: bool | None = None

    @model_validator(mode="after")
    def _something(self) -> StaffUpdate:
        if not self.model_fields_set or any(
            getattr(self, name) is None for name in self.model_fields_set
        ):
            raise ValueError("Give a role or is_active to change.")
        return self


class StaffOut(BaseModel):
    id: uuid.UUID
    email: str
    full_name: str
    role: str
    is_active: bool
    mfa_enabled: bool
    professional_license: str | None = None
    last_login_at: datetime | None = None
    created_at: datetime


class EncryptionTestIn(StrictModel):
    data: Annotated[str, Field(min_length=1, max_length=10_000)]


class EncryptionTestOut(BaseModel):
    ok: bool
    key_id: str


class FileOut(BaseModel):
    id: uuid.UUID
    patient_id: uuid.UUID
    uploaded_by: uuid.UUID
    media_type: str
    size: int
    filename: str | None = None
    """None when the patient's key was destroyed (erased)."""
    created_at: datetime
