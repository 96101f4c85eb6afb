"""Factories for clinic-domain rows (plain constructors with sensible defaults)."""

from __future__ import annotations

import random
import uuid
from typing import Any

from clinicguard.auth.models import ClinicMembership, User
from clinicguard.clinic.cpf import generate_cpf
from clinicguard.clinic.models import Clinic, MedicalRecord, Patient
from clinicguard.core.ids import new_id

_rng = random.Random(20261124)


def clinic(**overrides: Any) -> Clinic:
    values: dict[str, Any] = {"id": new_id(), "name": f"Clínica {uuid.uuid4().hex[:6]}"}
    return Clinic(**{**values, **overrides})


def user(**overrides: Any) -> User:
    uid = new_id()
    values: dict[str, Any] = {
        "id": uid,
        "email": f"user-{uid.hex[:10]}@clinic.example.com",
        "full_name": "Test User",
        "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA",
    }
    return User(**{**values, **overrides})


def membership(clinic_id: uuid.UUID, user_id: uuid.UUID, role: str) -> ClinicMembership:
    return ClinicMembership(clinic_id=clinic_id, user_id=user_id, role=role)


def patient(clinic_id: uuid.UUID, **overrides: Any) -> Patient:
    """A patients row for schema tests: ``cpf`` holds opaque bytes (not real ciphertext)
    and ``cpf_index`` a unique index value, unless given."""
    cpf = generate_cpf(_rng)
    values: dict[str, Any] = {
        "id": new_id(),
        "clinic_id": clinic_id,
        "full_name": "Paciente de Teste",
        "cpf": cpf.encode(),
        "cpf_index": f"1:{cpf}",
    }
    return Patient(**{**values, **overrides})


def medical_record(
    clinic_id: uuid.UUID, patient_id: uuid.UUID, author_id: uuid.UUID, **overrides: Any
) -> MedicalRecord:
    values: dict[str, Any] = {
        "id": new_id(),
        "clinic_id": clinic_id,
        "patient_id": patient_id,
        "author_id": author_id,
        "kind": "consultation",
        "notes": b"opaque",
    }
    return MedicalRecord(**{**values, **overrides})
