"""Authorization's vocabulary: permissions, conditions, decisions and the denial error."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from clinicguard.core.errors import Forbidden


class Permission(StrEnum):
    """``resource:action``. An unknown permission is denied (and refused in policy data)."""

    PATIENTS_LIST = "patients:list"
    PATIENTS_READ = "patients:read"
    PATIENTS_CREATE = "patients:create"
    PATIENTS_UPDATE = "patients:update"
    RECORDS_READ = "records:read"
    RECORDS_CREATE = "records:create"
    NURSING_NOTES_CREATE = "nursing_notes:create"
    FILES_UPLOAD = "files:upload"
    PRESCRIPTIONS_READ = "prescriptions:read"
    PRESCRIPTIONS_CREATE = "prescriptions:create"
    TREATMENTS_READ = "treatments:read"
    TREATMENTS_MANAGE = "treatments:manage"
    TREATMENTS_PERFORM = "treatments:perform"
    APPOINTMENTS_READ = "appointments:read"
    APPOINTMENTS_CREATE = "appointments:create"
    APPOINTMENTS_UPDATE = "appointments:update"
    EMERGENCY_REQUEST = "emergency:request"
    EMERGENCY_READ = "emergency:read"
    USERS_READ = "users:read"
    USERS_MANAGE = "users:manage"
    USERS_UNLOCK = "users:unlock"
    CLINIC_READ = "clinic:read"
    CLINIC_MANAGE = "clinic:manage"
    CLINICS_MANAGE = "clinics:manage"
    AUDIT_READ = "audit:read"
    AUDIT_EXPORT = "audit:export"
    AUDIT_REVIEW = "audit:review"
    AUDIT_VERIFY = "audit:verify"
    ACCESS_LOG_READ = "access_log:read"
    CONSENTS_READ = "consents:read"
    CONSENTS_MANAGE = "consents:manage"
    DSR_MANAGE = "dsr:manage"
    SECURITY_READ = "security:read"
    SECURITY_MANAGE = "security:manage"
    API_KEYS_MANAGE = "api_keys:manage"
    ENCRYPTION_TEST = "encryption:test"


class Condition(StrEnum):
    """Named facts about one request, computed by the service before it asks (a fact that
    was not computed counts as false: deny by default)."""

    CARE_TEAM = "care_team"
    """The professional is on the patient's care team or has an appointment with them."""
    SELF = "self"
    """The data is the requesting patient's own."""
    BASIC_INFO_ONLY = "basic_info_only"
    """A change touches only non-clinical fields."""
    COMPLIANCE_RELATED_ONLY = "compliance_related_only"
    """A change touches only compliance fields (consents, retention flags)."""
    CERTIFIED_FOR_TREATMENT = "certified_for_treatment"
    WITHIN_CLINIC_HOURS = "within_clinic_hours"
    """Now is within the clinic's opening hours (clinic-local time)."""
    EMERGENCY_GRANT = "emergency_grant"
    """An active break-glass grant for this patient."""
    CONSENT_GRANTED = "consent_granted"
    """The patient's consent covers this purpose (filled by the privacy feature)."""


#: Field names obligations may hide or mask (the clinic data's response fields); a policy
#: naming another field is refused, so a misspelling cannot leave a field exposed.
KNOWN_FIELDS = frozenset(
    {
        "full_name",
        "cpf",
        "birth_date",
        "phone",
        "email",
        "address",
        "allergies",
        "medications",
        "medical_conditions",
        "diagnosis",
        "notes",
        "treatment",
        "medication",
        "dosage",
        "instructions",
        "reason",
        "kind",
    }
)


class AuditLevel(StrEnum):
    STANDARD = "standard"
    HIGH = "high"


@dataclass(frozen=True, slots=True)
class Obligations:
    """What an allow decision binds the caller to."""

    hide: frozenset[str] = frozenset()
    """Fields absent from the answer (and never decrypted)."""
    mask: frozenset[str] = frozenset()
    """Fields shown masked."""
    audit: AuditLevel = AuditLevel.STANDARD
    review: bool = False
    """Every access under this decision lands in the review queue."""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    permission: str
    role: str
    rule: str | None
    """The rule that decided (None: nothing allowed it — deny by default)."""
    reason: str
    obligations: Obligations = field(default_factory=Obligations)


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """The facts of one request (conditions that hold)."""

    facts: Mapping[Condition, bool] = field(default_factory=dict)

    def holds(self, condition: Condition) -> bool:
        return bool(self.facts.get(condition, False))


class AccessDenied(Forbidden):
    """The policy denied the request (the decision names the rule, or none: deny by
    default)."""

    slug = "access-denied"
    default_detail = "You are not allowed to do this."


class PolicyError(Exception):
    """The policy data is malformed (unknown names, cycles): the process must not start."""
