"""A clinic's staff, managed by its administrators: list, add (a new account gets a
password-setup link by mail; nobody else ever sees its password), change role, deactivate.

A change of role or deactivation ends the person's sessions at once (their tokens carry
the old role). An administrator cannot change their own membership, and a clinic always
keeps one active administrator.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from clinicguard.auth.interfaces import PasswordHashing
from clinicguard.auth.models import ClinicMembership, User
from clinicguard.auth.passwords import generate_password
from clinicguard.auth.service import AuthService
from clinicguard.authz.interfaces import Permission
from clinicguard.authz.service import Authorizer
from clinicguard.clinic import schemas as s
from clinicguard.core.clock import Clock
from clinicguard.core.errors import Conflict, NotFound
from clinicguard.core.events import (
    Outcome,
    SecurityEvent,
    SecurityEventSink,
    SecurityEventType,
    Severity,
)
from clinicguard.core.principal import STAFF_ROLES, Principal, Role
from clinicguard.store.db import Database
from clinicguard.store.interfaces import tenant_of
from clinicguard.store.tenancy import Clinic

_STAFF = tuple(str(r) for r in STAFF_ROLES)


def _staff_key(principal: Principal) -> str:
    return f"staff:{principal.clinic_id}"


def staff_values(user: User, membership: ClinicMembership) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "full_name": user.full_name,
        "role": membership.role,
        "is_active": membership.is_active and user.is_active,
        "mfa_enabled": user.mfa_enabled,
        "professional_license": user.professional_license,
        "last_login_at": user.last_login_at,
        "created_at": membership.created_at,
    }


class StaffService:
    def __init__(
        self,
        *,
        db: Database,
        authorizer: Authorizer,
        auth: AuthService,
        passwords: PasswordHashing,
        clock: Clock,
        events: SecurityEventSink,
    ) -> None:
        self._db = db
        self._authz = authorizer
        self._auth = auth
        self._passwords = passwords
        self._clock = clock
        self._events = events

    async def list(self, principal: Principal) -> list[dict[str, Any]]:
        await self._authz.require(principal, Permission.USERS_READ)
        async with self._db.transaction(tenant_of(principal)) as session:
            rows = (
                await session.execute(
                    select(User, ClinicMembership)
                    .join(ClinicMembership, ClinicMembership.user_id == User.id)
                    .where(
                        ClinicMembership.clinic_id == principal.clinic_id,
                        ClinicMembership.role.in_(_STAFF),
                    )
                    .order_by(User.full_name, User.id)
                )
            ).all()
        return [staff_values(user, membership) for user, membership in rows]

    async def create(self, principal: Principal, body: s.StaffCreate) -> dict[str, Any]:
        await self._authz.require(principal, Permission.USERS_MANAGE, target={"action": "create"})
        # Hashed before the transaction: argon2 must not hold a connection.
        unusable = await self._passwords.hash(generate_password(32))
        try:
            user, membership, created, clinic_name = await self._add_member(
                principal, body, unusable
            )
        except IntegrityError as exc:  # the same person added at the same moment
            raise Conflict("This person is already a member of the clinic.") from exc
        await self._record(
            SecurityEventType.ADMIN_USER_CREATED,
            principal,
            {"target_user_id": str(user.id), "role": body.role, "new_account": created},
        )
        if created:
            await self._auth.send_password_setup(user.id, clinic_name or "")
        else:
            await self._auth.notify_membership(user.id, clinic_name or "", body.role)
        return staff_values(user, membership)

    async def _add_member(
        self, principal: Principal, body: s.StaffCreate, unusable: str
    ) -> tuple[User, ClinicMembership, bool, str | None]:
        now = self._clock.now()
        async with self._db.serialized(_staff_key(principal), tenant_of(principal)) as session:
            clinic_name = await session.scalar(
                select(Clinic.name).where(Clinic.id == principal.clinic_id)
            )
            user = await session.scalar(select(User).where(User.email == body.email))
            created = user is None
            if user is None:
                user = User(
                    id=uuid.uuid4(),
                    email=body.email,
                    full_name=body.full_name,
                    password_hash=unusable,
                    password_changed_at=now,
                    must_change_password=True,
                    professional_license=body.professional_license,
                )
                session.add(user)
                await session.flush()
            elif user.is_platform_admin:
                raise Conflict("This account cannot be a clinic member.")
            elif await session.get(ClinicMembership, (principal.clinic_id, user.id)):
                raise Conflict("This person is already a member of the clinic.")
            membership = ClinicMembership(
                clinic_id=principal.clinic_id,
                user_id=user.id,
                role=body.role,
                is_active=True,
                created_at=now,
                updated_at=now,
            )
            session.add(membership)
        return user, membership, created, clinic_name

    async def update(
        self, principal: Principal, user_id: uuid.UUID, body: s.StaffUpdate
    ) -> dict[str, Any]:
        await self._authz.require(
            principal, Permission.USERS_MANAGE, target={"target_user_id": str(user_id)}
        )
        changes = body.model_dump(exclude_unset=True)
        # Serialized per clinic: two administrators demoting each other at once must not
        # both pass the "one administrator stays" check.
        async with self._db.serialized(_staff_key(principal), tenant_of(principal)) as session:
            membership = await session.get(ClinicMembership, (principal.clinic_id, user_id))
            if membership is None or membership.role not in _STAFF:
                raise NotFound()
            if user_id == principal.user_id:
                raise Conflict("You cannot change your own role or deactivate yourself.")
            user = await session.get(User, user_id)
            if user is None:
                raise NotFound()
            losing_admin = membership.role == Role.CLINIC_ADMIN and (
                changes.get("role", membership.role) != Role.CLINIC_ADMIN
                or changes.get("is_active") is False
            )
            if losing_admin and membership.is_active:
                admins = await session.scalar(
                    select(func.count()).where(
                        ClinicMembership.clinic_id == principal.clinic_id,
                        ClinicMembership.role == str(Role.CLINIC_ADMIN),
                        ClinicMembership.is_active.is_(True),
                    )
                )
                if (admins or 0) <= 1:
                    raise Conflict("The clinic must keep an active administrator.")
            before = (membership.role, membership.is_active)
            for name, value in changes.items():
                setattr(membership, name, value)
            membership.updated_at = self._clock.now()
        if (membership.role, membership.is_active) != before:
            await self._auth.end_sessions_of(user_id, principal.clinic_id, "membership_changed")
            await self._record(
                SecurityEventType.ADMIN_USER_UPDATED,
                principal,
                {
                    "target_user_id": str(user_id),
                    "role": membership.role,
                    "previous_role": before[0],
                    "active": membership.is_active,
                },
            )
        return staff_values(user, membership)

    async def _record(
        self,
        kind: SecurityEventType,
        principal: Principal,
        details: dict[str, str | bool],
    ) -> None:
        await self._events.record(
            SecurityEvent.by(principal, kind, Outcome.SUCCESS, Severity.MEDIUM, details)
        )
