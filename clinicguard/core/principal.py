"""Who is acting: the roles of the platform and the authenticated Principal."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum

from clinicguard.core.errors import NotFound


class Role(StrEnum):
    PLATFORM_ADMIN = "platform_admin"
    CLINIC_ADMIN = "clinic_admin"
    PHYSICIAN = "physician"
    NURSE = "nurse"
    RECEPTIONIST = "receptionist"
    COMPLIANCE_OFFICER = "compliance_officer"
    PATIENT = "patient"
    INTEGRATION = "integration"
    """An API key acting for a clinic with its own scopes (never a person's membership)."""


#: Roles a person holds inside one clinic (memberships); platform_admin is platform-wide.
CLINIC_ROLES: frozenset[Role] = frozenset(Role) - {Role.PLATFORM_ADMIN, Role.INTEGRATION}
#: Staff roles: a clinic's professionals and administrators (not its patients).
STAFF_ROLES: tuple[Role, ...] = (
    Role.CLINIC_ADMIN,
    Role.PHYSICIAN,
    Role.NURSE,
    Role.RECEPTIONIST,
    Role.COMPLIANCE_OFFICER,
)


FULL_ACCESS = "full"
SCOPE_MFA_ENROLL = "mfa:enroll"
SCOPE_PASSWORD_CHANGE = "password:change"


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated actor of one request. ``clinic_id`` comes from the verified token
    (or the API key's clinic) only, never from a header, query or body.

    ``scopes`` is ``{"full"}`` for a complete sign-in; a restricted sign-in carries only
    ``mfa:enroll`` or ``password:change``; an API key carries its permission names."""

    user_id: uuid.UUID
    role: Role
    clinic_id: uuid.UUID | None
    session_id: str | None = None
    mfa_level: int = 0
    scopes: frozenset[str] = field(default_factory=frozenset)
    auth_method: str = "token"
    """``token`` (Bearer JWT), ``cookie`` (console session) or ``api_key``."""

    @property
    def is_fully_authenticated(self) -> bool:
        return FULL_ACCESS in self.scopes


def clinic_of(principal: Principal) -> uuid.UUID:
    """The principal's clinic, for work that needs one (clinic data, the clinic's audit
    trail): the policy has already refused a principal without, so NotFound (404) here
    only backs it up."""
    if principal.clinic_id is None:
        raise NotFound()
    return principal.clinic_id
