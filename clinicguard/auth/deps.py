"""FastAPI providers: who is calling (Bearer token, API key, or console cookie + CSRF)."""

# Providers are async (they only read app.state): a plain `def` dependency would run in
# the threadpool, a thread hop on every request.

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from clinicguard.auth.apikeys import ApiKeyService, looks_like_api_key
from clinicguard.auth.interfaces import InsufficientScope, TokenInvalid
from clinicguard.auth.service import AuthService, Client
from clinicguard.core.context import current_request
from clinicguard.core.principal import (
    FULL_ACCESS,
    SCOPE_MFA_ENROLL,
    SCOPE_PASSWORD_CHANGE,
    Principal,
)

SESSION_COOKIE = "__Host-cg_session"
DEVICE_COOKIE = "__Host-cg_device"
CSRF_HEADER = "x-csrf-token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def get_auth(request: Request) -> AuthService:
    service: AuthService = request.app.state.services.auth
    return service


async def get_api_keys(request: Request) -> ApiKeyService:
    service: ApiKeyService = request.app.state.services.api_keys
    return service


def client_of(
    request: Request, device_token: str | None = None, *, console: bool = False
) -> Client:
    ctx = current_request()
    return Client(
        ip=ctx.client_ip if ctx else "unknown",
        user_agent=ctx.user_agent if ctx else "",
        device_token=device_token or request.cookies.get(DEVICE_COOKIE),
        console=console,
    )


async def authenticate(request: Request) -> Principal:
    """Step 5 of the pipeline. The Authorization header wins; the console cookie is used
    only without one, and then every unsafe method must carry the CSRF token."""
    services = request.app.state.services
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            raise TokenInvalid()
        if looks_like_api_key(value):
            principal: Principal = await services.api_keys.authenticate(value)
        else:
            principal = await services.auth.authenticate_token(value)
    elif api_key := request.headers.get("x-api-key"):
        principal = await services.api_keys.authenticate(api_key)
    elif cookie := request.cookies.get(SESSION_COOKIE):
        principal = await services.auth.authenticate_cookie(
            cookie, request.headers.get(CSRF_HEADER), request.method in UNSAFE_METHODS
        )
    else:
        raise TokenInvalid()
    request.state.principal = principal
    return principal


def requires(*scopes: str, sessions_only: bool = False) -> Callable[..., Awaitable[Principal]]:
    """A principal holding one of ``scopes`` (API keys count as full access unless the
    route needs a person's session)."""

    async def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if principal.auth_method == "api_key":
            if sessions_only or FULL_ACCESS not in scopes:
                raise InsufficientScope("This route needs a person's sign-in, not an API key.")
            return principal
        if not principal.scopes & set(scopes):
            if SCOPE_MFA_ENROLL in principal.scopes:
                raise InsufficientScope("Set up two-factor authentication first.")
            if SCOPE_PASSWORD_CHANGE in principal.scopes:
                raise InsufficientScope("Change your password first.")
            raise InsufficientScope()
        return principal

    return dependency


#: Fully signed in (or an API key): every data route.
CurrentPrincipal = Annotated[Principal, Depends(requires(FULL_ACCESS))]
#: Any signed-in person, including a restricted sign-in (enrolment, forced password change).
SignedInPerson = Annotated[
    Principal,
    Depends(requires(FULL_ACCESS, SCOPE_MFA_ENROLL, SCOPE_PASSWORD_CHANGE, sessions_only=True)),
]
EnrollingPerson = Annotated[
    Principal, Depends(requires(FULL_ACCESS, SCOPE_MFA_ENROLL, sessions_only=True))
]
PasswordChanger = Annotated[
    Principal, Depends(requires(FULL_ACCESS, SCOPE_PASSWORD_CHANGE, sessions_only=True))
]
FullPerson = Annotated[Principal, Depends(requires(FULL_ACCESS, sessions_only=True))]
AuthServiceDep = Annotated[AuthService, Depends(get_auth)]
ApiKeyServiceDep = Annotated[ApiKeyService, Depends(get_api_keys)]
