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
from types import SimpleNamespace
from typing import Any

from clinicguard.clinic.cpf import generate_cpf
from clinicguard.clinic.models import (
    ENCRYPTED,
    Appointment,
    CareTeamMember,
    EmergencyGrant,
    MedicalRecord,
    Patient,
    Prescription,
)
from clinicguard.clinic.protection import seal_into
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


_PATIENT_PLAIN = (
    "clinic_id",
    "id",
    "full_name",
    "cpf",
    "birth_date",
    "phone",
    "email",
    "address",
    "allergies",
    "medications",
    "medical_conditions",
    "user_id",
    "created_at",
    "updated_at",
)


def _encrypted(plain: Any, table: str) -> dict[str, Any]:
    return {name: getattr(plain, name) for name in ENCRYPTED[table]}


async def _sealed(fields: Any, model: Any, table: str, plain: Any) -> Any:
    """The stored row for ``plain`` (a namespace of plaintext values), its classified
    columns encrypted in place."""
    row = model(
        **{k: v for k, v in vars(plain).items() if k not in ENCRYPTED[table]},
    )
    await seal_into(fields, table, row, _encrypted(plain, table))
    return row


@dataclass
class ClinicSet:
    """Rows are namespaces of their plaintext values (the database holds ciphertext)."""

    clinic_id: uuid.UUID
    people: dict[str, Person]
    patients: list[Any]
    records: list[Any]
    prescriptions: list[Any]
    appointments: list[Any]
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
    fields = services.fields
    names = ("Ana Paciente", "Bruno Costa", "Carla Dias")
    patients = [
        SimpleNamespace(
            clinic_id=clinic.id,
            id=uuid.uuid4(),
            full_name=name,
            cpf=generate_cpf(_rng),
            birth_date=None,
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
        for i, name in enumerate(names)
    ]
    records: list[Any] = []
    prescriptions: list[Any] = []
    appointments: list[Any] = []
    async with services.db.transaction(TenantContext.system(clinic.id)) as session:
        for plain in patients:
            row = Patient(
                **{k: getattr(plain, k) for k in _PATIENT_PLAIN if k not in ENCRYPTED["patients"]}
            )
            await seal_into(fields, "patients", row, _encrypted(plain, "patients"))
            session.add(row)
        await session.flush()
        for patient in patients:
            session.add(
                CareTeamMember(
                    clinic_id=clinic.id,
                    patient_id=patient.id,
                    professional_id=people["physician"].id,
                )
            )
            record = SimpleNamespace(
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
            session.add(await _sealed(fields, MedicalRecord, "medical_records", record))
            await session.flush()
            prescription = SimpleNamespace(
                clinic_id=clinic.id,
                id=uuid.uuid4(),
                patient_id=patient.id,
                prescriber_id=people["physician"].id,
                record_id=record.id,
                medication="Cetoconazol 2%",
                dosage="2x ao dia",
                instructions=None,
                status="active",
                issued_at=now - timedelta(days=1),
                valid_until=None,
            )
            prescriptions.append(prescription)
            session.add(await _sealed(fields, Prescription, "prescriptions", prescription))
        appointment = SimpleNamespace(
            clinic_id=clinic.id,
            id=uuid.uuid4(),
            patient_id=patients[0].id,
            professional_id=people["nurse"].id,
            treatment_id=None,
            starts_at=now + timedelta(days=2),
            ends_at=now + timedelta(days=2, minutes=30),
            status="scheduled",
            reason="Curativo",
            created_at=now,
            updated_at=now,
        )
        appointments.append(appointment)
        session.add(await _sealed(fields, Appointment, "appointments", appointment))
    return ClinicSet(clinic.id, people, patients, records, prescriptions, appointments)


async def add_grant(
    world: Any, clinic: ClinicSet, grantee: str, patient: Any, *, minutes: int = 60
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
