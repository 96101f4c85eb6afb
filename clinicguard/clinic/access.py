"""The facts the policy needs about one request, and which rows a principal may see at all.

Visibility here mirrors the PostgreSQL row-level security policies of migration 0003 (the
second layer): a patient sees only their own patient row and appointments; clinical rows
(records, prescriptions) are visible to maintenance and compliance, to a clinician on the
patient's care team, with a non-cancelled appointment with them or an open break-glass
grant, and to the patient themselves. On SQLite this is the only layer.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Uuid,
    and_,
    bindparam,
    exists,
    false,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from clinicguard.authz.interfaces import Condition
from clinicguard.clinic.models import (
    Appointment,
    CareTeamMember,
    EmergencyGrant,
    MedicalRecord,
    Patient,
    PatientFile,
    Prescription,
)
from clinicguard.core.principal import Principal, Role
from clinicguard.store.base import UTCDateTime
from clinicguard.store.tenancy import Clinic

CLINICIANS = frozenset({Role.PHYSICIAN, Role.NURSE})
#: Roles that see every clinical row of their clinic (the policy decides what of it).
CLINICAL_OVERSIGHT = frozenset({Role.COMPLIANCE_OFFICER})
HOURS_CACHE_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class ClinicHours:
    timezone: ZoneInfo
    opens_at_minute: int
    closes_at_minute: int

    def open_at(self, moment: datetime) -> bool:
        local = moment.astimezone(self.timezone)
        minute = local.hour * 60 + local.minute
        return self.opens_at_minute <= minute < self.closes_at_minute


class ClinicHoursCache:
    """Each clinic's opening hours, read at most every 30 seconds per process (a change of
    hours takes that long to apply)."""

    def __init__(self) -> None:
        self._entries: dict[uuid.UUID, tuple[float, ClinicHours]] = {}

    async def get(self, session: AsyncSession, clinic_id: uuid.UUID) -> ClinicHours:
        cached = self._entries.get(clinic_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        row = (
            await session.execute(
                select(Clinic.timezone, Clinic.opens_at_minute, Clinic.closes_at_minute).where(
                    Clinic.id == clinic_id
                )
            )
        ).one()
        try:
            zone = ZoneInfo(row.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            zone = ZoneInfo("America/Sao_Paulo")
        hours = ClinicHours(zone, row.opens_at_minute, row.closes_at_minute)
        self._entries[clinic_id] = (time.monotonic() + HOURS_CACHE_SECONDS, hours)
        return hours


def is_patient(principal: Principal) -> bool:
    return principal.role is Role.PATIENT


def visible_patients(principal: Principal) -> ColumnElement[bool]:
    """Patients rows this principal may know exist (the clinic's; a patient: their own)."""
    condition = Patient.clinic_id == principal.clinic_id
    if is_patient(principal):
        condition = and_(condition, Patient.user_id == principal.user_id)
    return condition


_Value = InstrumentedAttribute[Any] | BindParameter[Any] | uuid.UUID | datetime


def _care_relation(
    clinic_id: _Value, patient_id: _Value, user_id: _Value, now: _Value
) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """(on the care team or with an appointment, holding an open break-glass grant)."""
    care = or_(
        exists().where(
            CareTeamMember.clinic_id == clinic_id,
            CareTeamMember.patient_id == patient_id,
            CareTeamMember.professional_id == user_id,
        ),
        exists().where(
            Appointment.clinic_id == clinic_id,
            Appointment.patient_id == patient_id,
            Appointment.professional_id == user_id,
            Appointment.status != "cancelled",
        ),
    )
    grant = exists().where(
        EmergencyGrant.clinic_id == clinic_id,
        EmergencyGrant.patient_id == patient_id,
        EmergencyGrant.grantee_id == user_id,
        EmergencyGrant.revoked_at.is_(None),
        EmergencyGrant.expires_at > now,
    )
    return care, grant


def visible_clinical(
    principal: Principal,
    table: type[MedicalRecord] | type[Prescription] | type[PatientFile],
    now: datetime,
) -> ColumnElement[bool]:
    """Clinical rows this principal may know exist (mirrors ``cg_clinical_access``)."""
    in_clinic = table.clinic_id == principal.clinic_id
    if principal.role in CLINICAL_OVERSIGHT:
        return in_clinic
    if principal.role in CLINICIANS:
        care, grant = _care_relation(table.clinic_id, table.patient_id, principal.user_id, now)
        return and_(in_clinic, or_(care, grant))
    if is_patient(principal):
        own = exists().where(
            Patient.clinic_id == table.clinic_id,
            Patient.id == table.patient_id,
            Patient.user_id == principal.user_id,
        )
        return and_(in_clinic, own)
    return false()


# One patient and the facts about them, in one round trip. The statements are built once
# (parameters bound at execution), so SQLAlchemy's compiled cache serves every request.
_USER = bindparam("fact_user", type_=Uuid())
_NOW = bindparam("fact_now", type_=UTCDateTime())
_BY_ID = (
    Patient.clinic_id == bindparam("clinic_id", type_=Uuid()),
    Patient.id == bindparam("patient_id", type_=Uuid()),
)
_CARE, _GRANT = _care_relation(Patient.clinic_id, Patient.id, _USER, _NOW)
_FOR_CLINICIAN = select(Patient, _CARE.label("care"), _GRANT.label("grant")).where(*_BY_ID)
_FOR_STAFF = select(Patient).where(*_BY_ID)
_FOR_PATIENT = select(Patient).where(*_BY_ID, Patient.user_id == _USER)


async def load_patient(
    session: AsyncSession,
    principal: Principal,
    patient_id: uuid.UUID,
    now: datetime,
    hours: ClinicHoursCache,
) -> tuple[Patient, dict[Condition, bool]] | None:
    """The patient, if this principal may know they exist, and the facts about the
    principal and them (care team or appointment, open grant, clinic hours, self)."""
    params = {
        "clinic_id": principal.clinic_id,
        "patient_id": patient_id,
        "fact_user": principal.user_id,
        "fact_now": now,
    }
    clinician = principal.role in CLINICIANS
    query = _FOR_CLINICIAN if clinician else _FOR_PATIENT if is_patient(principal) else _FOR_STAFF
    row = (await session.execute(query, params)).first()
    if row is None:
        return None
    patient: Patient = row[0]
    facts: dict[Condition, bool] = {
        Condition.SELF: is_patient(principal) and patient.user_id == principal.user_id,
    }
    if clinician:
        facts[Condition.CARE_TEAM] = bool(row.care)
        facts[Condition.EMERGENCY_GRANT] = bool(row.grant)
        clinic_hours = await hours.get(session, patient.clinic_id)
        facts[Condition.WITHIN_CLINIC_HOURS] = clinic_hours.open_at(now)
    return patient, facts
