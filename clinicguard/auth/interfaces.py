"""Authentication's seams (Protocols) and domain errors (mapped to HTTP once)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from clinicguard.core.errors import (
    FieldError,
    Forbidden,
    ProblemError,
    TooManyRequests,
    Unauthorized,
    ValidationFailed,
)


class InvalidCredentials(Unauthorized):
    """Wrong password and unknown email alike (one answer, so accounts cannot be found)."""

    slug = "invalid-credentials"
    default_detail = "The email or password is incorrect."


class LoginThrottled(TooManyRequests):
    slug = "login-throttled"
    default_detail = "Too many sign-in attempts; try again later."


class TokenInvalid(Unauthorized):
    """Missing, malformed, expired, badly signed or revoked token; or an ended session."""

    slug = "invalid-token"
    default_detail = "The credentials are missing, invalid, expired or revoked."


class RefreshTokenReused(Unauthorized):
    slug = "refresh-token-reused"
    default_detail = "This refresh token was already used; the session has been ended."


class MfaCodeInvalid(Unauthorized):
    slug = "mfa-code-invalid"
    default_detail = "The verification code is incorrect or was already used."


class MfaClockSkew(Unauthorized):
    slug = "mfa-clock-out-of-sync"
    default_detail = (
        "The code matches a time far from now: the authenticator's clock is out of sync. "
        "Correct the device time and try again."
    )


class MfaThrottled(TooManyRequests):
    slug = "mfa-throttled"
    default_detail = "Too many verification attempts; try again later."


class MfaNotEnrolled(ProblemError):
    status = 409
    slug = "mfa-not-enrolled"
    title = "Two-factor authentication is not set up"
    default_detail = "Set up two-factor authentication first."


class MfaAlreadyEnabled(ProblemError):
    status = 409
    slug = "mfa-already-enabled"
    title = "Two-factor authentication is already on"
    default_detail = "Two-factor authentication is already enabled for this account."


class InsufficientScope(Forbidden):
    """The token is valid but limited (MFA enrolment or password change only)."""

    slug = "insufficient-scope"


class StepUpRequired(Forbidden):
    slug = "step-up-required"
    default_detail = "Confirm your password and a verification code first (step-up)."


class CsrfFailed(Forbidden):
    slug = "csrf-failed"
    default_detail = "The CSRF token is missing or does not match this session."


class PasswordRejected(ValidationFailed):
    """A new password breaks policy rules; every broken rule is named."""

    slug = "password-rejected"
    default_detail = "The new password does not meet the password policy."

    def __init__(self, reasons: Sequence[str], field: str = "body.new_password") -> None:
        super().__init__(errors=[FieldError(field, reason) for reason in reasons])
        self.reasons = tuple(reasons)


class ResetTokenInvalid(ProblemError):
    status = 400
    slug = "reset-token-invalid"
    title = "Invalid reset link"
    default_detail = "This password reset link is invalid, used or expired."


@dataclass(frozen=True, slots=True)
class Mail:
    to: str
    subject: str
    text: str


class MailSender(Protocol):
    async def send(self, mail: Mail) -> None:
        """Deliver one message. Raises MailUnavailable when the relay cannot take it within
        the timeout (callers decide whether the request may go on without it)."""
        ...


class MailUnavailable(Exception):
    """The mail relay did not accept the message."""


class BreachedPasswordChecker(Protocol):
    async def is_breached(self, password: str) -> bool:
        """True when the password appears in a breach corpus. Raises
        BreachCheckUnavailable when the source cannot answer (the caller fails closed on
        set, open at login where it cannot block a correct password forever)."""
        ...


class BreachCheckUnavailable(Exception):
    """The breached-password source did not answer."""


class PasswordHashing(Protocol):
    async def hash(self, password: str) -> str:
        """A fresh salted hash."""
        ...

    async def verify(self, password_hash: str, password: str) -> bool:
        """Whether the password matches (False for malformed or unknown formats)."""
        ...

    def needs_rehash(self, password_hash: str) -> bool:
        """True when the hash should be replaced at the next successful login."""
        ...

    async def verify_dummy(self, password: str) -> None:
        """Spend a verification's work on nothing (unknown accounts: equal timing)."""
        ...
