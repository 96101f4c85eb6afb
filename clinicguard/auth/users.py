"""Creating accounts (operator CLI now; the staff API of the authorization work later)."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from clinicguard.auth.interfaces import PasswordHashing
from clinicguard.auth.models import ClinicMembership, User
from clinicguard.auth.passwords import generate_password
from clinicguard.core.errors import Conflict, FieldError, NotFound, ValidationFailed
from clinicguard.core.principal import CLINIC_ROLES, Role
from clinicguard.core.schemas import contains_control_characters
from clinicguard.store.db import Database
from clinicguard.store.interfaces import TenantContext
from clinicguard.store.tenancy import Clinic


async def create_user(
    db: Database,
    passwords: PasswordHashing,
    *,
    email: str,
    full_name: str,
    role: str,
    clinic_id: str | None,
) -> str:
    """Create the account (and its membership) and return its one-time password."""
    try:
        role_value = Role(role)
    except ValueError as exc:
        raise ValidationFailed(errors=[FieldError("role", f"Unknown role {role!r}.")]) from exc
    if role_value is Role.INTEGRATION:
        raise ValidationFailed(
            errors=[
                FieldError("role", "integration is not a person's role: create an API key instead.")
            ]
        )
    bad = [
        FieldError(field, "Must not contain control or invisible formatting characters.")
        for field, value in (("email", email), ("name", full_name))
        if contains_control_characters(value)
    ]
    if bad:
        raise ValidationFailed(errors=bad)
    platform = role_value is Role.PLATFORM_ADMIN
    if not platform and (role_value not in CLINIC_ROLES or clinic_id is None):
        raise ValidationFailed(errors=[FieldError("clinic", "A clinic role needs --clinic.")])
    password = generate_password(20)
    password_hash = await passwords.hash(password)
    normalized = email.strip().lower()
    async with db.transaction() as session:
        if await session.scalar(select(User.id).where(User.email == normalized)):
            raise Conflict("An account with this email exists.")
        user = User(
            id=uuid.uuid4(),
            email=normalized,
            full_name=full_name,
            password_hash=password_hash,
            is_platform_admin=platform,
            must_change_password=True,
        )
        session.add(user)
        await session.flush()
        if not platform:
            try:
                cid = uuid.UUID(str(clinic_id))
            except ValueError as exc:
                raise ValidationFailed(
                    errors=[FieldError("clinic", "Not a clinic id (UUID).")]
                ) from exc
            if await session.get(Clinic, cid) is None:
                raise NotFound("No such clinic.")
            await db.set_tenant(session, TenantContext.system(cid))
            session.add(ClinicMembership(clinic_id=cid, user_id=user.id, role=str(role_value)))
    return password
