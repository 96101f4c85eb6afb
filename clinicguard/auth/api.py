"""The authentication API (thin: parse, call the service with the principal, answer)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status

from clinicguard.auth import schemas as s
from clinicguard.auth.deps import (
    DEVICE_COOKIE,
    SESSION_COOKIE,
    ApiKeyServiceDep,
    AuthServiceDep,
    EnrollingPerson,
    FullPerson,
    PasswordChanger,
    SignedInPerson,
    client_of,
)
from clinicguard.auth.interfaces import TokenInvalid
from clinicguard.auth.models import ApiKey
from clinicguard.auth.service import MfaChallenge, SignedIn
from clinicguard.core.context import current_request
from clinicguard.core.errors import Forbidden
from clinicguard.core.principal import Principal, Role

router = APIRouter(prefix="/api/v1", tags=["authentication"])
wellknown = APIRouter(tags=["authentication"])
_AUTH_ERRORS: dict[int | str, dict[str, str]] = {
    401: {"description": "Missing, invalid, expired or revoked credentials"},
    429: {"description": "Throttled; see Retry-After"},
}


def _pair(result: SignedIn) -> s.TokenPair:
    if result.access_token is None or result.refresh_token is None:
        raise TokenInvalid()
    return s.TokenPair(
        access_token=result.access_token,
        refresh_token=result.refresh_token,
        expires_in=result.expires_in,
        device_token=result.device_token or None,
        password_change_required=result.password_change_reason is not None,
        password_change_reason=result.password_change_reason,
    )


def _set_console_cookies(
    request: Request, response: Response, result: SignedIn
) -> s.ConsoleSignedIn:
    # __Host-: Secure, Path=/, no Domain — the cookie cannot be set or read by a sibling host.
    response.set_cookie(
        SESSION_COOKIE,
        result.cookie or "",
        max_age=result.expires_in,
        path="/",
        secure=True,
        httponly=True,
        samesite="strict",
    )
    response.set_cookie(
        DEVICE_COOKIE,
        result.device_token,
        max_age=request.app.state.settings.device_trust_days * 86400,
        path="/",
        secure=True,
        httponly=True,
        samesite="strict",
    )
    return s.ConsoleSignedIn(
        csrf_token=result.csrf_token or "",
        expires_in=result.expires_in,
        password_change_required=result.password_change_reason is not None,
        password_change_reason=result.password_change_reason,
    )


def _challenge(result: MfaChallenge) -> s.MfaChallengeOut:
    return s.MfaChallengeOut(mfa_token=result.mfa_token, methods=list(result.methods))


@router.post("/auth/login", response_model=s.TokenPair | s.MfaChallengeOut, responses=_AUTH_ERRORS)
async def login(
    body: s.LoginRequest, request: Request, auth: AuthServiceDep
) -> s.TokenPair | s.MfaChallengeOut:
    """Sign in with email and password; with MFA enrolled the answer is a challenge."""
    result = await auth.login(body.email, body.password, client_of(request, body.device_token))
    return _challenge(result) if isinstance(result, MfaChallenge) else _pair(result)


@router.post("/auth/mfa/verify", response_model=s.TokenPair, responses=_AUTH_ERRORS)
async def mfa_verify(
    body: s.MfaVerifyRequest, request: Request, auth: AuthServiceDep
) -> s.TokenPair:
    """Answer the challenge with a TOTP code (once) or a backup code (once)."""
    result = await auth.verify_mfa(body.mfa_token, body.code, client_of(request, body.device_token))
    return _pair(result)


@router.post(
    "/auth/console/login",
    response_model=s.ConsoleSignedIn | s.MfaChallengeOut,
    responses=_AUTH_ERRORS,
)
async def console_login(
    body: s.LoginRequest, request: Request, response: Response, auth: AuthServiceDep
) -> s.ConsoleSignedIn | s.MfaChallengeOut:
    """Browser sign-in: a __Host- session cookie (HttpOnly, Secure, SameSite=Strict) and a
    CSRF token that every unsafe request must send as X-CSRF-Token."""
    result = await auth.login(
        body.email, body.password, client_of(request, body.device_token, console=True)
    )
    if isinstance(result, MfaChallenge):
        return _challenge(result)
    return _set_console_cookies(request, response, result)


@router.post("/auth/console/mfa/verify", response_model=s.ConsoleSignedIn, responses=_AUTH_ERRORS)
async def console_mfa_verify(
    body: s.MfaVerifyRequest, request: Request, response: Response, auth: AuthServiceDep
) -> s.ConsoleSignedIn:
    """Finish a console sign-in's challenge (a token sign-in's challenge is refused)."""
    result = await auth.verify_mfa(
        body.mfa_token, body.code, client_of(request, body.device_token, console=True)
    )
    return _set_console_cookies(request, response, result)


@router.post(
    "/auth/switch-clinic",
    response_model=s.TokenPair | s.ClinicSwitched,
    responses={**_AUTH_ERRORS, 404: {"description": "Not a clinic of this person"}},
)
async def switch_clinic(
    body: s.SwitchClinicRequest, principal: FullPerson, auth: AuthServiceDep
) -> s.TokenPair | s.ClinicSwitched:
    """Act in another clinic this person belongs to. The clinic comes only from here and
    the token: no header, query or body of any other request selects a tenant."""
    result = await auth.switch_clinic(principal, body.clinic_id)
    if result.access_token is None:
        return s.ClinicSwitched(clinic_id=body.clinic_id, role=result.session.r)
    return _pair(result)


@router.post("/auth/refresh", response_model=s.TokenPair, responses=_AUTH_ERRORS)
async def refresh(body: s.RefreshRequest, auth: AuthServiceDep) -> s.TokenPair:
    """Spend the refresh token for a new pair (a spent token ends its session)."""
    return _pair(await auth.refresh(body.refresh_token))


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT, responses=_AUTH_ERRORS)
async def logout(principal: SignedInPerson, auth: AuthServiceDep) -> Response:
    """End this session; its access and refresh tokens stop working at once."""
    await auth.logout(principal)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


@router.post("/auth/logout-all", status_code=status.HTTP_204_NO_CONTENT, responses=_AUTH_ERRORS)
async def logout_all(principal: SignedInPerson, auth: AuthServiceDep) -> Response:
    """End every session of this user, on every device."""
    await auth.logout_all(principal)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


def _when(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


@router.get("/auth/sessions", response_model=list[s.SessionOut], responses=_AUTH_ERRORS)
async def sessions(principal: SignedInPerson, auth: AuthServiceDep) -> list[s.SessionOut]:
    """This user's live sessions: device, IP, created and last seen."""
    return [
        s.SessionOut(
            id=x.sid,
            device=x.d,
            ip=x.ip,
            created_at=_when(x.ca),
            last_seen_at=_when(x.ls),
            expires_at=_when(x.ax),
            current=x.sid == principal.session_id,
            console=bool(x.ck),
        )
        for x in await auth.list_sessions(principal)
    ]


@router.delete(
    "/auth/sessions/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_AUTH_ERRORS, 404: {"description": "No such session"}},
)
async def revoke_session(
    session_id: Annotated[str, Path(max_length=64)], principal: SignedInPerson, auth: AuthServiceDep
) -> None:
    """End one of this user's sessions (another user's session id is a 404)."""
    await auth.revoke_session(principal, session_id)


@router.post(
    "/auth/password",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_AUTH_ERRORS, 422: {"description": "Every broken rule is named"}},
)
async def change_password(
    body: s.PasswordChangeRequest, principal: PasswordChanger, auth: AuthServiceDep
) -> None:
    """Change the password; the user's other sessions end."""
    await auth.change_password(principal, body.current_password, body.new_password)


@router.post("/auth/password/forgot", status_code=status.HTTP_202_ACCEPTED)
async def forgot_password(body: s.ForgotRequest, auth: AuthServiceDep) -> None:
    """Always 202: whether the account exists is never revealed."""
    ctx = current_request()
    await auth.forgot_password(body.email, ctx.client_ip if ctx else "unknown")


@router.post(
    "/auth/password/reset",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        400: {"description": "Invalid, used or expired token"},
        422: {"description": "Every broken rule is named"},
    },
)
async def reset_password(body: s.ResetRequest, auth: AuthServiceDep) -> None:
    """Set a new password with a reset token (single use, 30 minutes, dies with the old
    password); every session of the user ends."""
    await auth.reset_password(body.token, body.new_password)


@router.post("/auth/step-up", response_model=s.StepUpOut, responses=_AUTH_ERRORS)
async def step_up(
    body: s.StepUpRequest, principal: FullPerson, auth: AuthServiceDep
) -> s.StepUpOut:
    """Confirm password and a second-factor code before sensitive MFA changes."""
    return s.StepUpOut(step_up_expires_in=await auth.step_up(principal, body.password, body.code))


@router.post("/security/2fa/setup", response_model=s.TotpSetupOut, responses=_AUTH_ERRORS)
async def totp_setup(principal: EnrollingPerson, auth: AuthServiceDep) -> s.TotpSetupOut:
    """A new TOTP secret (with its otpauth URI and QR code) to confirm with a code."""
    setup = await auth.totp_setup(principal)
    return s.TotpSetupOut(secret=setup.secret, otpauth_uri=setup.otpauth_uri, qr_svg=setup.qr_svg)


@router.post("/security/2fa/verify", response_model=s.BackupCodesOut, responses=_AUTH_ERRORS)
async def totp_verify(
    body: s.CodeRequest, principal: EnrollingPerson, auth: AuthServiceDep
) -> s.BackupCodesOut:
    """Confirm the set-up with a code: MFA is on, and 10 backup codes are shown once."""
    return s.BackupCodesOut(backup_codes=await auth.totp_enable(principal, body.code))


@router.post(
    "/security/2fa/disable",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_AUTH_ERRORS, 403: {"description": "Step-up required"}},
)
async def totp_disable(principal: FullPerson, auth: AuthServiceDep) -> None:
    """Turn MFA off (needs a step-up within the last 15 minutes)."""
    await auth.mfa_disable(principal)


@router.post(
    "/security/2fa/backup-codes",
    response_model=s.BackupCodesOut,
    responses={**_AUTH_ERRORS, 403: {"description": "Step-up required"}},
)
async def backup_codes(principal: FullPerson, auth: AuthServiceDep) -> s.BackupCodesOut:
    """Replace the backup codes (needs a step-up within the last 15 minutes)."""
    return s.BackupCodesOut(backup_codes=await auth.regenerate_backup_codes(principal))


@router.get("/me", response_model=s.MeOut, responses=_AUTH_ERRORS)
async def me(principal: SignedInPerson, auth: AuthServiceDep) -> s.MeOut:
    user = await auth.me(principal)
    return s.MeOut(
        id=user.id,
        email=user.email,
        full_name=user.full_name,
        role=str(principal.role),
        clinic_id=principal.clinic_id,
        mfa_enabled=user.mfa_enabled,
        scopes=sorted(principal.scopes),
    )


def _key_out(key: ApiKey) -> s.ApiKeyOut:
    return s.ApiKeyOut(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        scopes=list(key.scopes),
        created_at=key.created_at,
        expires_at=key.expires_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
    )


@router.get("/api-keys", response_model=list[s.ApiKeyOut], responses=_AUTH_ERRORS)
async def list_api_keys(principal: FullPerson, keys: ApiKeyServiceDep) -> list[s.ApiKeyOut]:
    return [_key_out(k) for k in await keys.list(principal)]


@router.post(
    "/api-keys",
    response_model=s.ApiKeyCreated,
    status_code=status.HTTP_201_CREATED,
    responses=_AUTH_ERRORS,
)
async def create_api_key(
    body: s.ApiKeyCreate, principal: FullPerson, keys: ApiKeyServiceDep
) -> s.ApiKeyCreated:
    """A new key for an integration; the key itself is shown only in this answer."""
    key, plaintext = await keys.create(principal, body.name, body.scopes, body.expires_at)
    return s.ApiKeyCreated(**_key_out(key).model_dump(), key=plaintext)


@router.delete(
    "/api-keys/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_AUTH_ERRORS, 404: {"description": "No such key"}},
)
async def revoke_api_key(key_id: uuid.UUID, principal: FullPerson, keys: ApiKeyServiceDep) -> None:
    await keys.revoke(principal, key_id)


def _clinic_admin(principal: Principal) -> Principal:
    if principal.role is not Role.CLINIC_ADMIN:
        raise Forbidden("Only a clinic administrator unlocks accounts.")
    return principal


@router.post(
    "/users/{user_id}/unlock",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_AUTH_ERRORS, 404: {"description": "No such member"}},
)
async def unlock_user(user_id: uuid.UUID, principal: FullPerson, auth: AuthServiceDep) -> None:
    """Clear a member's sign-in lock (members of the administrator's clinic only)."""
    await auth.unlock(_clinic_admin(principal), user_id=user_id)


@wellknown.get("/.well-known/jwks.json", response_model=s.Jwks)
async def jwks(request: Request) -> s.Jwks:
    """Public keys that verify this deployment's tokens (rotated keys stay listed until the
    last token they signed has expired)."""
    return s.Jwks(keys=await request.app.state.services.signing_keys.jwks())
