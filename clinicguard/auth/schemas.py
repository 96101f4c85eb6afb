"""Request and response bodies of the authentication API (never the ORM models)."""

from __future__ import annotations

import unicodedata
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, Field

from clinicguard.auth.policy import MAX_PASSWORD_BYTES
from clinicguard.core.schemas import PlainText, StrictModel


def _bounded_password(value: str) -> str:
    # Refused before any hashing: a megabyte "password" must not cost an argon2 run.
    if len(value.encode()) > MAX_PASSWORD_BYTES:
        raise ValueError(f"Must be at most {MAX_PASSWORD_BYTES} bytes.")
    # One form for the same characters (NFC): "ã" typed precomposed or as "a" + combining
    # tilde is the same password, and rules see composed letters.
    return unicodedata.normalize("NFC", value)


Password = Annotated[
    str, Field(min_length=1, max_length=MAX_PASSWORD_BYTES), AfterValidator(_bounded_password)
]
Email = Annotated[PlainText, Field(min_length=3, max_length=254)]
Token = Annotated[str, Field(min_length=1, max_length=4096)]
DeviceToken = Annotated[str, Field(min_length=1, max_length=128)]
Code = Annotated[str, Field(min_length=1, max_length=32)]


class LoginRequest(StrictModel):
    email: Email
    password: Password
    device_token: DeviceToken | None = None
    """A token from an earlier sign-in on this device (its own lockout counter)."""


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int
    device_token: str | None = None
    password_change_required: bool = False
    password_change_reason: str | None = None


class MfaChallengeOut(BaseModel):
    mfa_required: Literal[True] = True
    mfa_token: str
    methods: list[str]


class MfaVerifyRequest(StrictModel):
    mfa_token: Token
    code: Code
    device_token: DeviceToken | None = None


class RefreshRequest(StrictModel):
    refresh_token: Token


class SessionOut(BaseModel):
    id: str
    device: str
    ip: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    current: bool
    console: bool


class PasswordChangeRequest(StrictModel):
    current_password: Password
    new_password: Password


class ForgotRequest(StrictModel):
    email: Email


class ResetRequest(StrictModel):
    token: Token
    new_password: Password


class TotpSetupOut(BaseModel):
    secret: str
    otpauth_uri: str
    qr_svg: str


class CodeRequest(StrictModel):
    code: Code


class BackupCodesOut(BaseModel):
    backup_codes: list[str]


class StepUpRequest(StrictModel):
    password: Password
    code: Code


class StepUpOut(BaseModel):
    step_up_expires_in: int


class MeOut(BaseModel):
    id: uuid.UUID
    email: str
    full_name: str
    role: str
    clinic_id: uuid.UUID | None
    mfa_enabled: bool
    scopes: list[str]


class SwitchClinicRequest(StrictModel):
    clinic_id: uuid.UUID


class ClinicSwitched(BaseModel):
    """A console session's new clinic (a token session gets a new token pair instead)."""

    clinic_id: uuid.UUID
    role: str


class ConsoleSignedIn(BaseModel):
    csrf_token: str
    expires_in: int
    password_change_required: bool = False
    password_change_reason: str | None = None


class ApiKeyCreate(StrictModel):
    name: Annotated[PlainText, Field(min_length=1, max_length=100)]
    scopes: Annotated[
        list[Annotated[str, Field(max_length=64)]], Field(min_length=1, max_length=64)
    ]
    expires_at: AwareDatetime | None = None
    """With a time zone offset; at most two years ahead."""


class ApiKeyOut(BaseModel):
    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str
    """Shown once; only its keyed hash is stored."""


class Jwks(BaseModel):
    keys: list[dict[str, Any]]
