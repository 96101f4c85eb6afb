"""Who is acting: the roles of the platform and the authenticated Principal."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    PLATFORM_ADMIN = "platform_admin"
    CLINIC_ADMIN = "clinic_admin"
    PHYSICIAN = "physician"
    NURSE = "nurse"
    RECEPTIONIST = "receptionist"
    COMPLIANCE_OFFICER = "compliance_officer"
    PATIENT = "patient"


#: Roles a person holds inside one clinic (memberships); platform_admin is platform-wide.
CLINIC_ROLES: frozenset[Role] = frozenset(Role) - {Role.PLATFORM_ADMIN}
#: Staff roles: a clinic's professionals and administrators (not its patients).
STAFF_ROLES: tuple[Role, ...] = (
    Role.CLINIC_ADMIN,
    Role.PHYSICIAN,
    Role.NURSE,
    Role.RECEPTIONIST,
    Role.COMPLIANCE_OFFICER,
)


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated actor of one request. ``clinic_id`` comes from the verified token
    only, never from a header, query or body."""

    user_id: uuid.UUID
    role: Role
    clinic_id: uuid.UUID | None
    session_id: str | None = None
    mfa_level: int = 0
    scopes: frozenset[str] = field(default_factory=frozenset)
