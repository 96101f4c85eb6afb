"""People and clinics for authentication and authorization tests, created fast.

Hashing a password with the production argon2 parameters costs tens of milliseconds, so
each distinct password is hashed once per test session and the hash reused.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyotp

from clinicguard.auth.mfa import TotpSeeds, new_seed
from clinicguard.auth.models import ClinicMembership, User
from clinicguard.core.clock import Clock
from clinicguard.core.principal import Role
from clinicguard.store.interfaces import TenantContext
from clinicguard.store.tenancy import Clinic
from clinicguard.wiring import Services

DEFAULT_PASSWORD = "Ipê-amarelo floresce 7 vezes!"
MFA_ROLES = {
    Role.PLATFORM_ADMIN,
    Role.CLINIC_ADMIN,
    Role.PHYSICIAN,
    Role.NURSE,
    Role.COMPLIANCE_OFFICER,
}
_hashes: dict[str, str] = {}


@dataclass
class Person:
    id: uuid.UUID
    email: str
    password: str
    role: Role
    clinic_id: uuid.UUID | None
    totp_secret: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def code(self, clock: Clock, offset_steps: int = 0) -> str:
        """The TOTP code at the clock's time (plus whole 30 s steps)."""
        assert self.totp_secret is not None, "this person has no TOTP enrolled"
        return pyotp.TOTP(self.totp_secret).at(clock.now().timestamp() + 30 * offset_steps)


async def password_hash(services: Services, password: str) -> str:
    if password not in _hashes:
        _hashes[password] = await services.passwords.hash(password)
    return _hashes[password]


async def add_clinic(services: Services, **overrides: Any) -> Clinic:
    values: dict[str, Any] = {
        "name": f"Clínica {uuid.uuid4().hex[:6]}",
        "opens_at_minute": 0,
        "closes_at_minute": 24 * 60,
    }
    clinic = Clinic(id=uuid.uuid4(), **{**values, **overrides})
    async with services.db.transaction() as session:
        session.add(clinic)
    return clinic


async def add_person(
    services: Services,
    clinic_id: uuid.UUID | None,
    role: Role,
    *,
    mfa: bool | None = None,
    password: str = DEFAULT_PASSWORD,
    email: str | None = None,
    full_name: str = "Maria Silva Teste",
    password_changed_at: datetime | None = None,
    must_change_password: bool = False,
    password_hash_override: str | None = None,
    active: bool = True,
) -> Person:
    """A user with a membership in ``clinic_id`` (or a platform admin); TOTP enrolled when
    ``mfa`` is true (default: when the role requires it)."""
    user_id = uuid.uuid4()
    enrolled = role in MFA_ROLES if mfa is None else mfa
    seed = new_seed() if enrolled else None
    seeds = TotpSeeds(services.settings.master_key_bytes())
    email = email or f"{role.value}-{user_id.hex[:8]}@clinica.example.com"
    user = User(
        id=user_id,
        email=email.lower(),
        full_name=full_name,
        password_hash=password_hash_override or await password_hash(services, password),
        is_platform_admin=role is Role.PLATFORM_ADMIN,
        mfa_enabled=enrolled,
        totp_secret_sealed=seeds.seal(user_id, seed) if seed else None,
        must_change_password=must_change_password,
        is_active=active,
        password_changed_at=password_changed_at or services.clock.now(),
    )
    async with services.db.transaction() as session:
        session.add(user)
        await session.flush()
        if role is not Role.PLATFORM_ADMIN and clinic_id is not None:
            await services.db.set_tenant(session, TenantContext.system(clinic_id))
            session.add(ClinicMembership(clinic_id=clinic_id, user_id=user_id, role=str(role)))
    return Person(
        id=user_id,
        email=user.email,
        password=password,
        role=role,
        clinic_id=clinic_id,
        totp_secret=seed,
    )
