"""A clinic with every role and clinical history, for authorization and clinic-API tests.

``ClinicSet`` mirrors the demo data set's shape: staff of every role (one physician on the
care team of the patients, one on none), three patients (the first also a patient user),
a medical record and a prescription each, and an appointment with the care-team nurse.
People sign in once per test (``tokens``), lazily.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from clinicguard.clinic.cpf import generate_cpf
from clinicguard.clinic.models import (
    Appointment,
    CareTeamMember,
    EmergencyGrant,
    MedicalRecord,
    Patient,
    Prescription,
)
from clinicguard.core.principal import Role
from clinicguard.store.interfaces import TenantContext
from tests.factories.people import Person, add_clinic, add_person

_rng = random.Random(20261125)
#: The people of a ClinicSet, by name.
STAFF = (
    ("clinic_admin", Role.CLINIC_ADMIN),
    ("physician", Role.PHYSICIAN),  # on every patient's care team
    ("physician_off", Role.PHYSICIAN),  # on no care team
    ("nurse", Role.NURSE),  # on the care team of patient 0 only, by appointment
    ("receptionist", Role.RECEPTIONIST),
    ("compliance_officer", Role.COMPLIANCE_OFFICER),
)


@dataclass
class ClinicSet:
    clinic_id: uuid.UUID
    people: dict[str, Person]
    patients: list[Patient]
    records: list[MedicalRecord]
    prescriptions: list[Prescription]
    appointments: list[Appointment]
    _tokens: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def tokens(self, world: Any, name: str) -> dict[str, Any]:
        if name not in self._tokens:
            self._tokens[name] = await world.login(self.people[name])
        return self._tokens[name]

    async def headers(self, world: Any, name: str) -> dict[str, str]:
        return dict(world.bearer(await self.tokens(world, name)))


async def add_clinic_set(world: Any, *, opens: int = 0, closes: int = 24 * 60) -> ClinicSet:
    services = world.services
    clinic = await add_clinic(
        services, opens_at_minute=opens, closes_at_minute=closes, timezone="America/Sao_Paulo"
    )
    people = {name: await add_person(services, clinic.id, role) for name, role in STAFF}
    patient_user = await add_person(services, clinic.id, Role.PATIENT, full_name="Ana Paciente")
    people["patient"] = patient_user
    now = services.clock.now()
    patients = [
        Patient(
            clinic_id=clinic.id,
            id=uuid.uuid4(),
            full_name=name,
            cpf=generate_cpf(_rng),
            phone="+5511987654321",
            email=f"p{i}-{uuid.uuid4().hex[:6]}@example.com",
            address="Rua das Flores, 10",
            allergies="Dipirona",
            medications="Losartana 50mg",
            medical_conditions="Hipertensão",
            user_id=patient_user.id if i == 0 else None,
            created_at=now + timedelta(seconds=i),
            updated_at=now + timedelta(seconds=i),
        )
        for i, name in enumerate(("Ana Paciente", "Bruno Costa", "Carla Dias"))
    ]
    records: list[MedicalRecord] = []
    prescriptions: list[Prescription] = []
    appointments: list[Appointment] = []
    async with services.db.transaction(TenantContext.system(clinic.id)) as session:
        session.add_all(patients)
        await session.flush()
        for patient in patients:
            session.add(
                CareTeamMember(
                    clinic_id=clinic.id,
                    patient_id=patient.id,
                    professional_id=people["physician"].id,
                )
            )
            record = MedicalRecord(
                clinic_id=clinic.id,
                id=uuid.uuid4(),
                patient_id=patient.id,
                author_id=people["physician"].id,
                kind="consultation",
                diagnosis="Dermatite de contato",
                notes="Retorno em 30 dias.",
                treatment="Hidratação",
                created_at=now - timedelta(days=1),
            )
            records.append(record)
            session.add(record)
            await session.flush()
            prescription = Prescription(
                clinic_id=clinic.id,
                id=uuid.uuid4(),
                patient_id=patient.id,
                prescriber_id=people["physician"].id,
                record_id=record.id,
                medication="Cetoconazol 2%",
                dosage="2x ao dia",
                status="active",
                issued_at=now - timedelta(days=1),
            )
            prescriptions.append(prescription)
            session.add(prescription)
        appointment = Appointment(
            clinic_id=clinic.id,
            id=uuid.uuid4(),
            patient_id=patients[0].id,
            professional_id=people["nurse"].id,
            starts_at=now + timedelta(days=2),
            ends_at=now + timedelta(days=2, minutes=30),
            status="scheduled",
            reason="Curativo",
            created_at=now,
            updated_at=now,
        )
        appointments.append(appointment)
        session.add(appointment)
    return ClinicSet(clinic.id, people, patients, records, prescriptions, appointments)


async def add_grant(
    world: Any, clinic: ClinicSet, grantee: str, patient: Patient, *, minutes: int = 60
) -> EmergencyGrant:
    """A break-glass grant written directly (minutes < 0: already expired)."""
    now = world.services.clock.now()
    granted = now - timedelta(minutes=max(0, -minutes) + 1)
    grant = EmergencyGrant(
        clinic_id=clinic.clinic_id,
        id=uuid.uuid4(),
        patient_id=patient.id,
        grantee_id=clinic.people[grantee].id,
        justification="Paciente inconsciente no pronto atendimento",
        granted_at=granted,
        expires_at=now + timedelta(minutes=minutes),
    )
    async with world.services.db.transaction(TenantContext.system(clinic.clinic_id)) as session:
        session.add(grant)
    return grant


def new_cpf() -> str:
    return generate_cpf(_rng)
