"""The demo data set: two Brazilian clinics with staff of every role, patients, appointments
and records, plus a platform admin. Passwords and TOTP secrets are generated per seed.

Development and test only: production refuses to seed and refuses to start while demo data
exists (clinics are marked ``is_demo``).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import pyotp
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from clinicguard.auth.mfa import TotpSeeds
from clinicguard.auth.models import ClinicMembership, User
from clinicguard.auth.passwords import generate_password
from clinicguard.clinic.cpf import generate_cpf
from clinicguard.clinic.models import (
    Appointment,
    CareTeamMember,
    Clinic,
    MedicalRecord,
    Patient,
    Prescription,
    Treatment,
    TreatmentCertification,
)
from clinicguard.clinic.protection import seal_into
from clinicguard.core.ids import new_id
from clinicguard.core.principal import Role
from clinicguard.crypto.service import FieldEncryption
from clinicguard.store.db import Database
from clinicguard.store.interfaces import TenantContext

#: Roles that must have MFA (the demo enrolls TOTP for each of them).
MFA_REQUIRED_ROLES = frozenset(
    {Role.PLATFORM_ADMIN, Role.CLINIC_ADMIN, Role.PHYSICIAN, Role.NURSE, Role.COMPLIANCE_OFFICER}
)


class PasswordHashing(Protocol):
    async def hash(self, password: str) -> str: ...


class DemoRefused(Exception):
    """The demo data set cannot be created here (production, or a database in use)."""


@dataclass(frozen=True)
class _ClinicSpec:
    name: str
    domain: str
    cnpj: str
    city: str
    state: str
    address: str
    area_code: str
    streets: tuple[str, ...]
    staff: tuple[tuple[Role, str, str | None, bool], ...]
    """(role, full name, council licence, on the care team of every patient)."""
    patients: tuple[str, ...]
    treatments: tuple[tuple[str, int, bool], ...]


CLINICS: tuple[_ClinicSpec, ...] = (
    _ClinicSpec(
        name="Clínica Bem Viver",
        domain="bemviver.example.com.br",
        cnpj="11222333000181",
        city="São Paulo",
        state="SP",
        address="Avenida Paulista, 1578, Bela Vista, São Paulo - SP, 01310-200",
        area_code="11",
        streets=("Rua Augusta", "Rua Oscar Freire", "Alameda Santos", "Rua Haddock Lobo"),
        staff=(
            (Role.CLINIC_ADMIN, "Mariana Albuquerque", None, False),
            (Role.PHYSICIAN, "Dr. Ricardo Tavares", "CRM-SP 123456", True),
            (Role.PHYSICIAN, "Dra. Helena Campos", "CRM-SP 654321", False),
            (Role.NURSE, "Enf. Juliana Moraes", "COREN-SP 234567", True),
            (Role.RECEPTIONIST, "Carlos Eduardo Lima", None, False),
            (Role.COMPLIANCE_OFFICER, "Patrícia Nogueira", None, False),
        ),
        patients=("Ana Beatriz Souza", "João Pedro Oliveira", "Francisca das Chagas Silva"),
        treatments=(
            ("Consulta dermatológica", 30, False),
            ("Aplicação de toxina botulínica", 45, True),
            ("Peeling químico", 60, True),
        ),
    ),
    _ClinicSpec(
        name="Clínica Sorriso Carioca",
        domain="sorrisocarioca.example.com.br",
        cnpj="45723174000110",
        city="Rio de Janeiro",
        state="RJ",
        address="Rua Visconde de Pirajá, 330, Ipanema, Rio de Janeiro - RJ, 22410-002",
        area_code="21",
        streets=("Rua Barata Ribeiro", "Avenida Atlântica", "Rua Voluntários da Pátria"),
        staff=(
            (Role.CLINIC_ADMIN, "Roberto Figueiredo", None, False),
            (Role.PHYSICIAN, "Dra. Camila Rocha", "CRM-RJ 112233", True),
            (Role.PHYSICIAN, "Dr. Felipe Andrade", "CRM-RJ 445566", False),
            (Role.NURSE, "Enf. Luana Ferreira", "COREN-RJ 778899", True),
            (Role.RECEPTIONIST, "Thiago Mendes", None, False),
            (Role.COMPLIANCE_OFFICER, "Sônia Barbosa", None, False),
        ),
        patients=("Luiz Fernando Costa", "Maria Eduarda Pereira", "Raimundo Nonato Santos"),
        treatments=(
            ("Avaliação clínica geral", 30, False),
            ("Preenchimento com ácido hialurônico", 60, True),
            ("Limpeza de pele", 45, False),
        ),
    ),
)

_ALLERGIES = ("Dipirona", "Penicilina", "Nenhuma conhecida", "Látex", "Frutos do mar")
_MEDICATIONS = ("Losartana 50 mg", "Metformina 850 mg", "Levotiroxina 75 mcg", "Nenhum")
_CONDITIONS = ("Hipertensão arterial", "Diabetes tipo 2", "Hipotireoidismo", "Asma leve")
_DIAGNOSES = (
    "Dermatite seborreica (L21.9)",
    "Melasma (L81.1)",
    "Acne vulgar (L70.0)",
    "Rosácea (L71.9)",
    "Queratose actínica (L57.0)",
    "Hiperidrose (R61)",
)


def _email_local(full_name: str) -> str:
    import unicodedata

    plain = unicodedata.normalize("NFKD", full_name).encode("ascii", "ignore").decode()
    words = [w for w in plain.lower().replace(".", "").split() if w not in {"dr", "dra", "enf"}]
    return f"{words[0]}.{words[-1]}"


class _Seeder:
    def __init__(
        self,
        *,
        db: Database,
        session: AsyncSession,
        hasher: PasswordHashing,
        seeds: TotpSeeds,
        fields: FieldEncryption,
        now: datetime,
    ) -> None:
        self.fields = fields
        self.db = db
        self.session = session
        self.hasher = hasher
        self.seeds = seeds
        self.now = now
        self.rng = random.SystemRandom()

    async def user(
        self, email: str, full_name: str, role: Role, licence: str | None = None
    ) -> tuple[User, dict[str, Any]]:
        password = generate_password()
        totp_secret = pyotp.random_base32(length=32) if role in MFA_REQUIRED_ROLES else None
        user_id = new_id()
        user = User(
            id=user_id,
            email=email,
            full_name=full_name,
            password_hash=await self.hasher.hash(password),
            password_changed_at=self.now,
            is_platform_admin=role is Role.PLATFORM_ADMIN,
            professional_license=licence,
            mfa_enabled=totp_secret is not None,
            totp_secret_sealed=self.seeds.seal(user_id, totp_secret) if totp_secret else None,
        )
        self.session.add(user)
        await self.session.flush()
        creds = {
            "id": str(user.id),
            "email": email,
            "password": password,
            "totp_secret": totp_secret,
        }
        return user, creds

    def phone(self, area_code: str) -> str:
        return f"+55{area_code}9{self.rng.randrange(10**7, 10**8)}"

    async def clinic(self, spec: _ClinicSpec) -> dict[str, Any]:
        clinic = Clinic(
            id=new_id(),
            name=spec.name,
            cnpj=spec.cnpj,
            timezone="America/Sao_Paulo",
            opens_at_minute=0,
            closes_at_minute=24 * 60,
            address=spec.address,
            city=spec.city,
            state=spec.state,
            is_demo=True,
        )
        self.session.add(clinic)
        await self.session.flush()
        # Row-level security: this clinic's rows are written in this clinic's scope.
        await self.db.set_tenant(self.session, TenantContext.system(clinic.id))
        await self.fields.ring.create_initial(self.session, clinic.id)
        users_out: list[dict[str, Any]] = []
        care_team: list[User] = []
        physician_on_care: User | None = None
        nurse: User | None = None
        for role, name, licence, on_care_team in spec.staff:
            user, creds = await self.user(
                f"{_email_local(name)}@{spec.domain}", name, role, licence
            )
            self.session.add(ClinicMembership(clinic_id=clinic.id, user_id=user.id, role=role))
            users_out.append({**creds, "role": str(role), "care_team": on_care_team})
            if on_care_team:
                care_team.append(user)
            if role is Role.PHYSICIAN and on_care_team:
                physician_on_care = user
            if role is Role.NURSE:
                nurse = user
        if physician_on_care is None or nurse is None:
            raise DemoRefused(f"{spec.name}: the demo needs a care-team physician and a nurse")
        await self.session.flush()

        treatments = []
        for t_name, minutes, needs_cert in spec.treatments:
            treatment = Treatment(
                id=new_id(),
                clinic_id=clinic.id,
                name=t_name,
                duration_minutes=minutes,
                requires_certification=needs_cert,
            )
            treatments.append(treatment)
            self.session.add(treatment)
        await self.session.flush()
        for treatment in treatments:
            if treatment.requires_certification:
                self.session.add(
                    TreatmentCertification(
                        clinic_id=clinic.id,
                        treatment_id=treatment.id,
                        professional_id=physician_on_care.id,
                        certified_at=self.now,
                    )
                )

        patients_out: list[dict[str, Any]] = []
        for index, full_name in enumerate(spec.patients):
            patient_user_email = None
            patient_user: User | None = None
            if index == 0:
                patient_user, creds = await self.user(
                    f"{_email_local(full_name)}@pacientes.{spec.domain}", full_name, Role.PATIENT
                )
                patient_user_email = creds["email"]
                self.session.add(
                    ClinicMembership(
                        clinic_id=clinic.id, user_id=patient_user.id, role=Role.PATIENT
                    )
                )
                users_out.append({**creds, "role": str(Role.PATIENT), "care_team": False})
                await self.session.flush()
            cpf = generate_cpf(self.rng)
            patient = Patient(
                id=new_id(),
                clinic_id=clinic.id,
                full_name=full_name,
                birth_date=date(
                    self.rng.randrange(1950, 2004),
                    self.rng.randrange(1, 13),
                    self.rng.randrange(1, 29),
                ),
                user_id=patient_user.id if patient_user else None,
            )
            await seal_into(
                self.fields,
                "patients",
                patient,
                {
                    "cpf": cpf,
                    "phone": self.phone(spec.area_code),
                    "email": f"{_email_local(full_name)}{self.rng.randrange(10, 99)}"
                    "@email.example.com",
                    "address": f"{self.rng.choice(spec.streets)}, {self.rng.randrange(10, 2000)},"
                    f" {spec.city} - {spec.state}",
                    "allergies": self.rng.choice(_ALLERGIES),
                    "medications": self.rng.choice(_MEDICATIONS),
                    "medical_conditions": self.rng.choice(_CONDITIONS),
                },
            )
            self.session.add(patient)
            await self.session.flush()
            for member in care_team:
                self.session.add(
                    CareTeamMember(
                        clinic_id=clinic.id, patient_id=patient.id, professional_id=member.id
                    )
                )
            await self.clinical_history(clinic.id, patient, physician_on_care, nurse, treatments)
            patients_out.append(
                {
                    "id": str(patient.id),
                    "full_name": full_name,
                    "cpf": cpf,
                    "user_email": patient_user_email,
                }
            )
        return {
            "id": str(clinic.id),
            "name": spec.name,
            "users": users_out,
            "patients": patients_out,
        }

    async def clinical_history(
        self,
        clinic_id: uuid.UUID,
        patient: Patient,
        physician: User,
        nurse: User,
        treatments: list[Treatment],
    ) -> None:
        diagnosis = self.rng.choice(_DIAGNOSES)
        past = (self.now - timedelta(days=self.rng.randrange(10, 60))).replace(
            minute=0, second=0, microsecond=0
        )
        future = (self.now + timedelta(days=self.rng.randrange(2, 30))).replace(
            minute=0, second=0, microsecond=0
        )
        treatment = treatments[0]
        for starts, status in ((past, "completed"), (future, "scheduled")):
            appointment = Appointment(
                id=new_id(),
                clinic_id=clinic_id,
                patient_id=patient.id,
                professional_id=physician.id,
                treatment_id=treatment.id,
                starts_at=starts,
                ends_at=starts + timedelta(minutes=treatment.duration_minutes),
                status=status,
            )
            reason = "Retorno" if status == "scheduled" else "Primeira consulta"
            await seal_into(self.fields, "appointments", appointment, {"reason": reason})
            self.session.add(appointment)
        record = MedicalRecord(
            id=new_id(),
            clinic_id=clinic_id,
            patient_id=patient.id,
            author_id=physician.id,
            kind="consultation",
            created_at=past,
        )
        await seal_into(
            self.fields,
            "medical_records",
            record,
            {
                "diagnosis": diagnosis,
                "notes": f"Paciente relata queixas compatíveis com "
                f"{diagnosis.split(' (')[0].lower()}.",
                "treatment": "Tratamento tópico e retorno em 30 dias.",
            },
        )
        self.session.add(record)
        note = MedicalRecord(
            id=new_id(),
            clinic_id=clinic_id,
            patient_id=patient.id,
            author_id=nurse.id,
            kind="nursing_note",
            created_at=past + timedelta(minutes=10),
        )
        await seal_into(
            self.fields,
            "medical_records",
            note,
            {"notes": "Sinais vitais aferidos; PA 120/80 mmHg."},
        )
        self.session.add(note)
        await self.session.flush()
        prescription = Prescription(
            id=new_id(),
            clinic_id=clinic_id,
            patient_id=patient.id,
            prescriber_id=physician.id,
            record_id=record.id,
            issued_at=past,
            valid_until=(past + timedelta(days=30)).date(),
        )
        await seal_into(
            self.fields,
            "prescriptions",
            prescription,
            {
                "medication": "Cetoconazol 2% creme",
                "dosage": "Aplicar 2x ao dia",
                "instructions": "Por 14 dias",
            },
        )
        self.session.add(prescription)


async def database_is_empty(db: Database) -> bool:
    async with db.transaction() as session:
        clinics = await session.scalar(select(func.count()).select_from(Clinic))
        users = await session.scalar(select(func.count()).select_from(User))
        return not clinics and not users


async def has_demo_data(db: Database) -> bool:
    async with db.transaction() as session:
        count = await session.scalar(
            select(func.count()).select_from(Clinic).where(Clinic.is_demo.is_(True))
        )
        return bool(count)


async def seed_demo(
    db: Database,
    hasher: PasswordHashing,
    seeds: TotpSeeds,
    fields: FieldEncryption,
    *,
    production: bool,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Create the demo data set in one transaction and return its credentials (API.md shape).

    Raises DemoRefused in production or when the database already holds clinics or users.
    """
    if production:
        raise DemoRefused("the demo data set is never created in production")
    if not await database_is_empty(db):
        raise DemoRefused("the database already holds data; the demo seeds only an empty one")
    now = now or datetime.now(UTC)
    async with db.transaction() as session:
        seeder = _Seeder(db=db, session=session, hasher=hasher, seeds=seeds, fields=fields, now=now)
        _admin, admin_creds = await seeder.user(
            "plataforma.admin@clinicguard.example.com",
            "Administração da Plataforma",
            Role.PLATFORM_ADMIN,
        )
        clinics = [await seeder.clinic(spec) for spec in CLINICS]
    return {"platform_admin": admin_creds, "clinics": clinics}
