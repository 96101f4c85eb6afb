"""Security events: one typed interface for every security-relevant outcome.

Features emit :class:`SecurityEvent` through a :class:`SecurityEventSink`; the sink adds the
request context (request id, client IP, user agent) and appends the event to the audit
trail (its clinic's hash chain, or the platform's when it has no clinic). Event
types are ``source:subject:action``; details carry ids and reasons, never secrets or PHI.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from clinicguard.core.principal import Principal

DetailValue = str | int | float | bool | None


class SecurityEventType(StrEnum):
    AUTH_LOGIN_SUCCESS = "auth:login:success"
    AUTH_LOGIN_FAILURE = "auth:login:failure"
    AUTH_LOGIN_THROTTLED = "auth:login:throttled"
    AUTH_LOCKOUT = "auth:lockout"
    AUTH_UNLOCK = "auth:unlock"
    AUTH_MFA_CHALLENGE = "auth:mfa:challenge"
    AUTH_MFA_SUCCESS = "auth:mfa:success"
    AUTH_MFA_FAILURE = "auth:mfa:failure"
    AUTH_MFA_REPLAY = "auth:mfa:replay"
    AUTH_MFA_ENABLED = "auth:mfa:enabled"
    AUTH_MFA_DISABLED = "auth:mfa:disabled"
    AUTH_BACKUP_CODE_USED = "auth:backup_code:used"
    AUTH_BACKUP_CODES_REGENERATED = "auth:backup_code:regenerated"
    AUTH_STEP_UP = "auth:step_up:success"
    AUTH_REFRESH_REUSE = "auth:refresh:reuse"
    AUTH_SESSION_REVOKED = "auth:session:revoked"
    AUTH_LOGOUT = "auth:session:logout"
    AUTH_TOKEN_REJECTED = "auth:token:rejected"
    AUTH_CSRF_FAILURE = "auth:csrf:failure"
    AUTH_PASSWORD_CHANGED = "auth:password:changed"
    AUTH_PASSWORD_REJECTED = "auth:password:rejected"
    AUTH_PASSWORD_RESET_REQUESTED = "auth:password:reset_requested"
    AUTH_PASSWORD_RESET = "auth:password:reset"
    AUTH_API_KEY_CREATED = "auth:api_key:created"
    AUTH_API_KEY_REVOKED = "auth:api_key:revoked"
    AUTH_API_KEY_REJECTED = "auth:api_key:rejected"
    AUTH_SIGNING_KEY_ROTATED = "auth:signing_key:rotated"
    AUTH_CLINIC_SWITCHED = "auth:session:clinic_switched"
    AUTHZ_ACCESS_DENIED = "authz:access:denied"
    AUTHZ_EMERGENCY_GRANTED = "authz:emergency:granted"
    AUTHZ_EMERGENCY_ACCESS = "authz:emergency:access"
    """An access allowed only by a break-glass grant (every one is reviewed)."""
    CRYPTO_DECRYPT_FAILED = "crypto:decrypt:failed"
    CRYPTO_KEY_ROTATED = "crypto:key:rotated"
    CRYPTO_KEY_SHREDDED = "crypto:key:shredded"
    ADMIN_USER_CREATED = "admin:user:created"
    ADMIN_USER_UPDATED = "admin:user:updated"
    RATE_LIMITED = "ratelimit:request:refused"
    """A signed-in person went past a per-person limit (uploads, password attempts)."""
    INPUT_ATTACK_SUSPECTED = "input:attack:suspected"
    """A request whose input matched the SQL-injection / XSS / traversal detectors: a signal
    for detection, recorded after the answer; the request itself was not changed."""


class Severity(StrEnum):
    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    DENIED = "denied"


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    type: SecurityEventType
    outcome: Outcome
    severity: Severity = Severity.INFO
    user_id: uuid.UUID | None = None
    clinic_id: uuid.UUID | None = None
    session_id: str | None = None
    details: Mapping[str, DetailValue] = field(default_factory=dict)
    role: str | None = None

    @classmethod
    def by(
        cls,
        principal: Principal,
        type: SecurityEventType,
        outcome: Outcome,
        severity: Severity,
        details: Mapping[str, DetailValue],
    ) -> SecurityEvent:
        """An event of what ``principal`` did, in their clinic and session."""
        return cls(
            type=type,
            outcome=outcome,
            severity=severity,
            user_id=principal.user_id,
            clinic_id=principal.clinic_id,
            session_id=principal.session_id,
            details=details,
            role=str(principal.role),
        )


class SecurityEventSink(Protocol):
    async def record(self, event: SecurityEvent) -> None:
        """Store the event durably with the current request's context. Raises the store's
        unavailability error when it cannot: callers let it fail the request (fail
        closed), never drop the event."""
        ...
