"""Authentication: the rules. Routes call these with plain values; the CLI and tests can too.

Every outcome is a typed security event. Generic answers where a difference would leak (an
unknown email and a wrong password are the same 401 and cost the same hashing work).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, NoReturn

from sqlalchemy import delete, select, update

from clinicguard.auth.devices import device_label
from clinicguard.auth.interfaces import (
    BreachCheckUnavailable,
    BreachedPasswordChecker,
    CsrfFailed,
    InsufficientScope,
    InvalidCredentials,
    LoginThrottled,
    MfaAlreadyEnabled,
    MfaClockSkew,
    MfaCodeInvalid,
    MfaNotEnrolled,
    MfaThrottled,
    PasswordHashing,
    PasswordRejected,
    RefreshTokenReused,
    ResetTokenInvalid,
    StepUpRequired,
    TokenInvalid,
)
from clinicguard.auth.lockout import Admission, Attempt, LoginGuard
from clinicguard.auth.mail import SecurityNotifier
from clinicguard.auth.mfa import (
    BackupCodeHasher,
    TotpSeeds,
    TotpVerifier,
    looks_like_backup_code,
    new_backup_codes,
    new_seed,
    provisioning_uri,
    qr_svg,
)
from clinicguard.auth.models import ClinicMembership, MfaBackupCode, PasswordHistory, User
from clinicguard.auth.policy import PasswordPolicy, check_password, personal_words
from clinicguard.auth.sessions import DeviceTrust, Session, SessionStore, refresh_key
from clinicguard.auth.tokens import TokenPurpose, TokenService
from clinicguard.core.clock import Clock
from clinicguard.core.errors import Forbidden, NotFound, TooManyRequests
from clinicguard.core.events import (
    Outcome,
    SecurityEvent,
    SecurityEventSink,
    SecurityEventType,
    Severity,
)
from clinicguard.core.principal import (
    FULL_ACCESS,
    SCOPE_MFA_ENROLL,
    SCOPE_PASSWORD_CHANGE,
    Principal,
    Role,
)
from clinicguard.crypto.secretbox import Hasher, SecretBox
from clinicguard.ratelimit.interfaces import RateLimiter
from clinicguard.store.db import Database
from clinicguard.store.interfaces import KeyValueStore, TenantContext, tenant_of
from clinicguard.store.tenancy import clinic_rows

E = SecurityEventType
GRACE_POLL_SECONDS = 0.02
GRACE_WAIT_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class AuthConfig:
    mfa_required_roles: frozenset[str]
    policy: PasswordPolicy
    refresh_grace: float
    step_up_ttl: int
    reset_ttl: int
    mfa_attempts: int
    mfa_window: int
    forgot_per_hour: int
    public_base_url: str


@dataclass(frozen=True, slots=True)
class Client:
    """Where a sign-in comes from."""

    ip: str
    user_agent: str
    device_token: str | None = None
    console: bool = False


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A completed sign-in. Token clients get ``access_token``/``refresh_token``; console
    clients get ``cookie`` (for the __Host- session cookie) and ``csrf_token``."""

    session: Session
    expires_in: int
    device_token: str
    access_token: str | None = None
    refresh_token: str | None = None
    cookie: str | None = None
    csrf_token: str | None = None
    password_change_reason: str | None = None


@dataclass(frozen=True, slots=True)
class MfaChallenge:
    mfa_token: str
    methods: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TotpSetup:
    secret: str
    otpauth_uri: str
    qr_svg: str


@dataclass
class _Identity:
    user: User
    clinic_id: uuid.UUID | None
    role: str
    clinic_names: list[str] = field(default_factory=list)
    clinic_policies: list[dict[str, Any] | None] = field(default_factory=list)


class AuthService:
    def __init__(
        self,
        *,
        db: Database,
        kv: KeyValueStore,
        limiter: RateLimiter,
        tokens: TokenService,
        sessions: SessionStore,
        devices: DeviceTrust,
        guard: LoginGuard,
        passwords: PasswordHashing,
        breach: BreachedPasswordChecker,
        notifier: SecurityNotifier,
        events: SecurityEventSink,
        clock: Clock,
        config: AuthConfig,
        master_key: bytes,
    ) -> None:
        self._db = db
        self._kv = kv
        self._limiter = limiter
        self._tokens = tokens
        self._sessions = sessions
        self._devices = devices
        self._guard = guard
        self._passwords = passwords
        self._breach = breach
        self._notifier = notifier
        self._events = events
        self._clock = clock
        self._config = config
        self._seeds = TotpSeeds(master_key)
        self._totp = TotpVerifier(kv)
        self._backup = BackupCodeHasher(master_key)
        self._grace_box = SecretBox(master_key, "refresh-grace")
        self._reset_binding = Hasher(master_key, "reset-binding")

    # --- identities ---------------------------------------------------------------------

    async def _identity(
        self, *, email: str | None = None, user_id: uuid.UUID | None = None
    ) -> _Identity | None:
        async with self._db.transaction() as session:
            query = select(User)
            query = (
                query.where(User.email == email.strip().lower())
                if email is not None
                else query.where(User.id == user_id)
            )
            user = await session.scalar(query)
            if user is None:
                return None
            await self._db.set_tenant(session, TenantContext.person(user.id))
            memberships = (
                await session.scalars(
                    select(ClinicMembership)
                    .where(
                        ClinicMembership.user_id == user.id, ClinicMembership.is_active.is_(True)
                    )
                    .order_by(ClinicMembership.created_at)
                )
            ).all()
            clinics = await clinic_rows(session, [m.clinic_id for m in memberships])
        active = [m for m in memberships if m.clinic_id in clinics and clinics[m.clinic_id][2]]
        identity = _Identity(
            user=user,
            clinic_id=None,
            role=str(Role.PLATFORM_ADMIN) if user.is_platform_admin else "",
            clinic_names=[clinics[m.clinic_id][0] for m in active],
            clinic_policies=[clinics[m.clinic_id][1] for m in active],
        )
        if not user.is_platform_admin and active:
            identity.clinic_id, identity.role = active[0].clinic_id, active[0].role
        return identity

    async def _identity_of(self, principal: Principal) -> _Identity:
        """The signed-in person's identity (TokenInvalid when the account is gone)."""
        identity = await self._identity(user_id=principal.user_id)
        if identity is None:
            raise TokenInvalid()
        return identity

    def _when(self) -> str:
        """Now, as security notices print it (UTC)."""
        return f"{self._clock.now():%Y-%m-%d %H:%M}"

    def _policy(self, identity: _Identity) -> PasswordPolicy:
        return self._config.policy.combined(identity.clinic_policies)

    def _requires_mfa(self, role: str) -> bool:
        return role in self._config.mfa_required_roles

    async def _event(
        self,
        kind: SecurityEventType,
        outcome: Outcome,
        *,
        severity: Severity = Severity.INFO,
        user_id: uuid.UUID | None = None,
        clinic_id: uuid.UUID | None = None,
        session_id: str | None = None,
        **details: str | int | bool | None,
    ) -> None:
        await self._events.record(
            SecurityEvent(
                type=kind,
                outcome=outcome,
                severity=severity,
                user_id=user_id,
                clinic_id=clinic_id,
                session_id=session_id,
                details=details,
            )
        )

    # --- sign-in ------------------------------------------------------------------------

    async def login(self, email: str, password: str, client: Client) -> SignedIn | MfaChallenge:
        identifier = self._guard.identifier(email)
        device = await self._devices.lookup(client.device_token)
        identity = await self._identity(email=email)
        trusted = (
            device is not None
            and identity is not None
            and device.user_id == str(identity.user.id)
            and (device.mfa or not identity.user.mfa_enabled)
        )
        attempt = Attempt(
            identifier,
            client.ip,
            self._devices.fingerprint(client.device_token)
            if trusted and client.device_token
            else None,
        )
        try:
            admission = await self._guard.admit(attempt)
        except LoginThrottled:
            await self._event(
                E.AUTH_LOGIN_THROTTLED,
                Outcome.DENIED,
                severity=Severity.MEDIUM,
                identifier=identifier[:16],
                device_scoped=attempt.device is not None,
            )
            raise
        user = identity.user if identity else None
        usable = user is not None and user.is_active and bool(identity and identity.role)
        if user is None:
            await self._passwords.verify_dummy(password)
            valid = False
        else:
            valid = await self._passwords.verify(user.password_hash, password)
        if not valid or not usable or user is None or identity is None:
            await self._failed_login(
                admission,
                identity,
                "unknown_account" if user is None else "inactive" if valid else "bad_password",
            )
            raise InvalidCredentials()
        await self._guard.succeeded(admission)
        if self._passwords.needs_rehash(user.password_hash):
            await self._store_password_hash(
                user.id, await self._passwords.hash(password), history=False
            )
        reason = await self._password_change_reason(identity, password)
        if user.mfa_enabled:
            token, _ = await self._tokens.issue(
                TokenPurpose.MFA,
                user.id,
                con=client.console,
                pcr=reason or "",
            )
            await self._event(
                E.AUTH_MFA_CHALLENGE, Outcome.SUCCESS, user_id=user.id, clinic_id=identity.clinic_id
            )
            methods = ("totp", "backup_code")
            return MfaChallenge(mfa_token=token, methods=methods)
        return await self._sign_in(
            identity, client, mfa_level=0, password_change=reason, known_device=trusted
        )

    async def _failed_login(
        self, admission: Admission, identity: _Identity | None, reason: str
    ) -> None:
        attempt = admission.attempt
        lock = await self._guard.failed(admission)
        user_id = identity.user.id if identity else None
        clinic_id = identity.clinic_id if identity else None
        await self._event(
            E.AUTH_LOGIN_FAILURE,
            Outcome.FAILURE,
            severity=Severity.LOW,
            user_id=user_id,
            clinic_id=clinic_id,
            reason=reason,
            identifier=attempt.identifier[:16],
        )
        if lock.locked:
            await self._event(
                E.AUTH_LOCKOUT,
                Outcome.DENIED,
                severity=Severity.HIGH,
                user_id=user_id,
                clinic_id=clinic_id,
                minutes=lock.minutes,
                device_scoped=attempt.device is not None,
                identifier=attempt.identifier[:16],
            )
            if identity is not None:
                await self._notifier.notify(identity.user.email, "lockout", minutes=lock.minutes)

    async def _password_change_reason(self, identity: _Identity, password: str) -> str | None:
        user = identity.user
        if user.must_change_password:
            return "required"
        policy = self._policy(identity)
        if (
            policy.expiry_days
            and user.password_changed_at + timedelta(days=policy.expiry_days) <= self._clock.now()
        ):
            return "expired"
        try:
            if await self._breach.is_breached(password):
                return "breached"
        except BreachCheckUnavailable:
            pass  # at sign-in the check fails open: it must not lock out a correct password
        return None

    async def verify_mfa(self, mfa_token: str, code: str, client: Client) -> SignedIn:
        claims = await self._tokens.verify(mfa_token, TokenPurpose.MFA)
        user_id = uuid.UUID(claims["sub"])
        if bool(claims.get("con")) != client.console:
            # A console challenge is finished on the console and a token one by token
            # clients, before anything is checked or created.
            raise Forbidden("This challenge belongs to the other kind of sign-in.")
        identity = await self._identity(user_id=user_id)
        if identity is None or not identity.user.is_active or not identity.user.mfa_enabled:
            raise TokenInvalid()
        await self._second_factor(identity, code, context="sign-in")
        # The challenge is single-use: a second success with the same token is refused.
        if not await self._kv.set(
            f"cg:mfa-used:{claims['jti']}",
            b"1",
            ttl=self._tokens.lifetime(TokenPurpose.MFA) + 60,
            only_if_absent=True,
        ):
            raise TokenInvalid()
        device = await self._devices.lookup(client.device_token)
        known = device is not None and device.user_id == str(user_id) and device.mfa
        return await self._sign_in(
            identity,
            client,
            mfa_level=1,
            password_change=claims.get("pcr") or None,
            known_device=known,
        )

    async def _second_factor(self, identity: _Identity, code: str, *, context: str) -> None:
        """Check a TOTP or backup code (throttled per user); raise on failure."""
        user = identity.user
        state = await self._limiter.hit(
            f"mfa:{user.id}", limit=self._config.mfa_attempts, window=self._config.mfa_window
        )
        if not state.allowed:
            await self._event(
                E.AUTH_MFA_FAILURE,
                Outcome.DENIED,
                severity=Severity.MEDIUM,
                user_id=user.id,
                clinic_id=identity.clinic_id,
                reason="throttled",
            )
            raise MfaThrottled(int(state.reset_after) + 1)
        code = code.strip()
        if code.isascii() and code.isdigit() and user.totp_secret_sealed is not None:
            seed = self._seeds.open(user.id, user.totp_secret_sealed)
            check = await self._totp.check(user.id, seed, code, self._clock.now())
            if check.accepted:
                await self._limiter.reset(f"mfa:{user.id}")
                await self._event(
                    E.AUTH_MFA_SUCCESS,
                    Outcome.SUCCESS,
                    user_id=user.id,
                    clinic_id=identity.clinic_id,
                    method="totp",
                    context=context,
                )
                return
            kind = E.AUTH_MFA_REPLAY if check.replayed else E.AUTH_MFA_FAILURE
            await self._event(
                kind,
                Outcome.FAILURE,
                severity=Severity.MEDIUM,
                user_id=user.id,
                clinic_id=identity.clinic_id,
                method="totp",
                reason="replay"
                if check.replayed
                else "clock_skew"
                if check.clock_skew
                else "wrong_code",
            )
            if check.clock_skew:
                raise MfaClockSkew()
            raise MfaCodeInvalid()
        if looks_like_backup_code(code) and await self._use_backup_code(user.id, code):
            await self._limiter.reset(f"mfa:{user.id}")
            remaining = await self._unused_backup_codes(user.id)
            await self._event(
                E.AUTH_BACKUP_CODE_USED,
                Outcome.SUCCESS,
                severity=Severity.MEDIUM,
                user_id=user.id,
                clinic_id=identity.clinic_id,
                remaining=remaining,
                context=context,
            )
            await self._notifier.notify(
                user.email,
                "backup_code_used",
                remaining=remaining,
                when=self._when(),
            )
            return
        await self._event(
            E.AUTH_MFA_FAILURE,
            Outcome.FAILURE,
            severity=Severity.MEDIUM,
            user_id=user.id,
            clinic_id=identity.clinic_id,
            reason="wrong_code",
        )
        raise MfaCodeInvalid()

    async def _use_backup_code(self, user_id: uuid.UUID, code: str) -> bool:
        digest = self._backup.digest(user_id, code)
        async with self._db.transaction() as session:
            result = await session.execute(
                update(MfaBackupCode)
                .where(
                    MfaBackupCode.user_id == user_id,
                    MfaBackupCode.code_hash == digest,
                    MfaBackupCode.used_at.is_(None),
                )
                .values(used_at=self._clock.now())
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def _unused_backup_codes(self, user_id: uuid.UUID) -> int:
        async with self._db.transaction() as session:
            rows = await session.scalars(
                select(MfaBackupCode.code_hash).where(
                    MfaBackupCode.user_id == user_id, MfaBackupCode.used_at.is_(None)
                )
            )
            return len(rows.all())

    def _scope(self, identity: _Identity, password_change: str | None) -> str:
        if password_change:
            return SCOPE_PASSWORD_CHANGE
        if self._requires_mfa(identity.role) and not identity.user.mfa_enabled:
            return SCOPE_MFA_ENROLL
        return FULL_ACCESS

    async def _sign_in(
        self,
        identity: _Identity,
        client: Client,
        *,
        mfa_level: int,
        password_change: str | None,
        known_device: bool,
    ) -> SignedIn:
        user = identity.user
        cookie_secret = secrets.token_urlsafe(32) if client.console else None
        csrf = secrets.token_urlsafe(32) if client.console else None
        device = device_label(client.user_agent)
        session, ended = await self._sessions.create(
            user_id=user.id,
            clinic_id=identity.clinic_id,
            role=identity.role,
            mfa_level=mfa_level,
            scope=self._scope(identity, password_change),
            ip=client.ip,
            device=device,
            cookie_secret=cookie_secret,
            csrf_token=csrf,
        )
        for sid in ended:
            await self._event(
                E.AUTH_SESSION_REVOKED,
                Outcome.SUCCESS,
                user_id=user.id,
                clinic_id=identity.clinic_id,
                session_id=sid,
                reason="session_limit",
            )
        device_token = await self._devices.issue(user.id, mfa=mfa_level > 0)
        async with self._db.transaction() as db:
            await db.execute(
                update(User).where(User.id == user.id).values(last_login_at=self._clock.now())
            )
        await self._event(
            E.AUTH_LOGIN_SUCCESS,
            Outcome.SUCCESS,
            user_id=user.id,
            clinic_id=identity.clinic_id,
            session_id=session.sid,
            mfa=mfa_level > 0,
            scope=session.sc,
            console=client.console,
            new_device=not known_device,
        )
        if not known_device:
            await self._notifier.notify(
                user.email,
                "new_device",
                device=device,
                ip=client.ip,
                when=self._when(),
            )
        if client.console:
            return SignedIn(
                session=session,
                expires_in=int(session.ax - session.ca),
                device_token=device_token,
                cookie=f"{user.id}.{session.sid}.{cookie_secret}",
                csrf_token=csrf,
                password_change_reason=password_change,
            )
        return await self._issue_pair(
            session, device_token=device_token, password_change=password_change
        )

    async def _issue_pair(
        self, session: Session, *, device_token: str = "", password_change: str | None = None
    ) -> SignedIn:
        """A new access and refresh token for the session; the refresh token becomes its
        current one (raises TokenInvalid when the session ended meanwhile)."""
        end = datetime.fromtimestamp(session.ax, tz=self._clock.now().tzinfo)
        claims: dict[str, Any] = {"sid": session.sid, "rol": session.r}
        if session.c:
            claims["cid"] = session.c
        access, _ = await self._tokens.issue(
            TokenPurpose.ACCESS, session.user_id, expires_at=end, **claims
        )
        refresh, refresh_claims = await self._tokens.issue(
            TokenPurpose.REFRESH, session.user_id, expires_at=end, sid=session.sid
        )
        jti = str(refresh_claims["jti"])
        ttl = max(1.0, float(refresh_claims["exp"]) - self._clock.now().timestamp())
        session = replace(session, rt=jti)
        # The session first, and only if it still exists: a logout racing this request
        # wins, and its session is not written back.
        if not await self._sessions.save(session):
            raise TokenInvalid()
        await self._kv.set(refresh_key(session.u, jti), session.sid.encode(), ttl=ttl)
        return SignedIn(
            session=session,
            expires_in=self._expires_in(session),
            device_token=device_token,
            access_token=access,
            refresh_token=refresh,
            password_change_reason=password_change,
        )

    def _expires_in(self, session: Session) -> int:
        """Seconds the access token lives (never past the session's absolute end)."""
        left = int(session.ax - self._clock.now().timestamp())
        return max(0, min(self._tokens.lifetime(TokenPurpose.ACCESS), left))

    # --- refresh rotation -----------------------------------------------------------------

    async def refresh(self, refresh_token: str) -> SignedIn:
        """Spend a refresh token for a new pair. A spent token presented again ends its
        session (that login's family only). A duplicate of the token just spent, within the
        grace period (two tabs racing), gets the same new pair instead."""
        claims = await self._tokens.verify(refresh_token, TokenPurpose.REFRESH)
        user_id, sid, jti = claims["sub"], str(claims["sid"]), str(claims["jti"])
        grace_key = f"cg:{{u:{user_id}}}:rtg:{jti}"
        grace = self._config.refresh_grace
        claimed = grace <= 0 or await self._kv.set(
            grace_key, b"pending", ttl=grace, only_if_absent=True
        )
        if not claimed:
            return await self._grace_pair(grace_key, jti)
        owner = await self._kv.take(refresh_key(user_id, jti))
        session = await self._sessions.get(user_id, sid)
        if owner is None or owner.decode() != sid or session is None:
            if grace > 0:
                await self._kv.delete(grace_key)
            if session is None:
                raise TokenInvalid()  # the session already ended (logout, expiry, revoke)
            await self._reuse_detected(session)
        issued = await self._issue_pair(session)
        if grace > 0:
            pair = {
                "a": issued.access_token,
                "r": issued.refresh_token,
                "s": issued.session.sid,
                "u": issued.session.u,
                "j": issued.session.rt,
            }
            await self._kv.set(
                grace_key, self._grace_box.seal(json.dumps(pair).encode(), jti), ttl=grace
            )
        return issued

    async def _reuse_detected(self, session: Session) -> NoReturn:
        """A spent refresh token came back: end that login's session (its family only)."""
        await self._sessions.revoke(session)
        await self._event(
            E.AUTH_REFRESH_REUSE,
            Outcome.DENIED,
            severity=Severity.HIGH,
            user_id=session.user_id,
            clinic_id=session.clinic_id,
            session_id=session.sid,
            reason="spent_refresh_token_presented",
        )
        raise RefreshTokenReused()

    async def _grace_pair(self, grace_key: str, jti: str) -> SignedIn:
        waited = 0.0
        while waited < GRACE_WAIT_SECONDS:
            raw = await self._kv.get(grace_key)
            if raw is None:
                break
            if raw != b"pending":
                pair = json.loads(self._grace_box.open(raw, jti))
                session = await self._sessions.get(pair["u"], pair["s"])
                if session is None:
                    break
                if session.rt != pair["j"]:
                    # The pair handed out for this token was itself refreshed since: the
                    # token is a grandparent, not a racing duplicate of the parent.
                    await self._reuse_detected(session)
                return SignedIn(
                    session=session,
                    expires_in=self._expires_in(session),
                    device_token="",
                    access_token=pair["a"],
                    refresh_token=pair["r"],
                )
            await asyncio.sleep(GRACE_POLL_SECONDS)
            waited += GRACE_POLL_SECONDS
        raise TokenInvalid()

    # --- authenticating requests ------------------------------------------------------------

    def _principal(self, session: Session, method: str) -> Principal:
        return Principal(
            user_id=session.user_id,
            role=Role(session.r),
            clinic_id=session.clinic_id,
            session_id=session.sid,
            mfa_level=session.m,
            scopes=frozenset({session.sc}),
            auth_method=method,
        )

    async def authenticate_token(self, token: str) -> Principal:
        claims = await self._tokens.verify(token, TokenPurpose.ACCESS)
        session = await self._sessions.touch(claims["sub"], str(claims["sid"]))
        if session is None or (claims.get("cid") or None) != session.c:
            # A correctly signed token whose session has ended (or changed clinic): someone
            # still holds a token after logout or revocation. Recorded once a minute per
            # session, so a client retrying for the token's last minutes writes one row.
            sid = str(claims["sid"])
            if await self._kv.set(
                f"cg:{{u:{claims['sub']}}}:rejected:{sid}", b"1", ttl=60, only_if_absent=True
            ):
                await self._event(
                    E.AUTH_TOKEN_REJECTED,
                    Outcome.DENIED,
                    severity=Severity.MEDIUM,
                    user_id=uuid.UUID(claims["sub"]),
                    session_id=sid,
                    reason="session_ended" if session is None else "clinic_mismatch",
                )
            raise TokenInvalid()
        return self._principal(session, "token")

    async def authenticate_cookie(
        self, cookie: str, csrf_token: str | None, unsafe_method: bool
    ) -> Principal:
        parts = cookie.split(".")
        if len(parts) != 3 or len(cookie) > 256:
            raise TokenInvalid()
        user_id, sid, secret = parts
        try:
            uuid.UUID(user_id)
        except ValueError as exc:
            raise TokenInvalid() from exc
        # Read, check the cookie's secret, and only then restart the idle timeout: a forged
        # cookie naming a real session id must not keep that session alive.
        session = await self._sessions.get(user_id, sid)
        if session is None or not self._sessions.cookie_matches(session, secret):
            raise TokenInvalid()
        session = await self._sessions.touch(user_id, sid)
        if session is None:
            raise TokenInvalid()
        if unsafe_method and not (csrf_token and self._sessions.csrf_matches(session, csrf_token)):
            await self._event(
                E.AUTH_CSRF_FAILURE,
                Outcome.DENIED,
                severity=Severity.HIGH,
                user_id=session.user_id,
                clinic_id=session.clinic_id,
                session_id=sid,
            )
            raise CsrfFailed()
        return self._principal(session, "cookie")

    # --- sessions -------------------------------------------------------------------------

    async def _session_of(self, principal: Principal) -> Session:
        if principal.session_id is None:
            raise InsufficientScope("This credential has no session.")
        session = await self._sessions.get(principal.user_id, principal.session_id)
        if session is None:
            raise TokenInvalid()
        return session

    async def logout(self, principal: Principal) -> None:
        session = await self._session_of(principal)
        await self._sessions.revoke(session)
        await self._event(
            E.AUTH_LOGOUT,
            Outcome.SUCCESS,
            user_id=principal.user_id,
            clinic_id=principal.clinic_id,
            session_id=session.sid,
        )

    async def logout_all(self, principal: Principal) -> None:
        ended = await self._sessions.revoke_all(principal.user_id)
        await self._event(
            E.AUTH_SESSION_REVOKED,
            Outcome.SUCCESS,
            user_id=principal.user_id,
            clinic_id=principal.clinic_id,
            session_id=principal.session_id,
            reason="logout_all",
            count=len(ended),
        )

    async def list_sessions(self, principal: Principal) -> list[Session]:
        return await self._sessions.list(principal.user_id)

    async def revoke_session(self, principal: Principal, sid: str) -> None:
        session = await self._sessions.get(principal.user_id, sid)
        if session is None:
            raise NotFound()
        await self._sessions.revoke(session)
        await self._event(
            E.AUTH_SESSION_REVOKED,
            Outcome.SUCCESS,
            user_id=principal.user_id,
            clinic_id=principal.clinic_id,
            session_id=sid,
            reason="user_revoked",
        )

    async def revoke_user_sessions(self, email: str) -> int:
        """Operator action (CLI): end every session of a user."""
        identity = await self._identity(email=email)
        if identity is None:
            raise NotFound("No such user.")
        return await self.end_sessions_of(identity.user.id, None, "operator_revoked")

    async def end_sessions_of(
        self, user_id: uuid.UUID, clinic_id: uuid.UUID | None, reason: str
    ) -> int:
        """End a user's sessions (their access changed: role, membership, account): those
        active in ``clinic_id`` only, or every one when it is None."""
        ended = await self._sessions.revoke_all(user_id, clinic_id=clinic_id)
        await self._event(
            E.AUTH_SESSION_REVOKED,
            Outcome.SUCCESS,
            severity=Severity.MEDIUM,
            user_id=user_id,
            clinic_id=clinic_id,
            reason=reason,
            count=len(ended),
        )
        return len(ended)

    # --- passwords -------------------------------------------------------------------------

    async def _check_new_password(self, identity: _Identity, password: str) -> None:
        policy = self._policy(identity)
        personal = personal_words(
            identity.user.full_name, identity.user.email, identity.clinic_names
        )
        reasons = await check_password(password, policy, personal, self._breach)
        if policy.history and await self._recently_used(identity.user, password, policy.history):
            reasons.append(f"Must not be one of your last {policy.history} passwords.")
        if reasons:
            await self._event(
                E.AUTH_PASSWORD_REJECTED,
                Outcome.DENIED,
                user_id=identity.user.id,
                clinic_id=identity.clinic_id,
                rules=len(reasons),
            )
            raise PasswordRejected(reasons)

    async def _recently_used(self, user: User, password: str, count: int) -> bool:
        async with self._db.transaction() as session:
            hashes = list(
                (
                    await session.scalars(
                        select(PasswordHistory.password_hash)
                        .where(PasswordHistory.user_id == user.id)
                        .order_by(PasswordHistory.created_at.desc())
                        .limit(count - 1)
                    )
                ).all()
            )
        for stored in [user.password_hash, *hashes]:
            if await self._passwords.verify(stored, password):
                return True
        return False

    async def _store_password_hash(
        self, user_id: uuid.UUID, new_hash: str, *, history: bool = True
    ) -> None:
        now = self._clock.now()
        async with self._db.transaction() as session:
            user = await session.get(User, user_id)
            if user is None:
                raise NotFound()
            if history:
                session.add(
                    PasswordHistory(
                        user_id=user_id, password_hash=user.password_hash, created_at=now
                    )
                )
                user.password_changed_at = now
                user.must_change_password = False
            user.password_hash = new_hash

    async def change_password(self, principal: Principal, current: str, new: str) -> None:
        identity = await self._identity_of(principal)
        state = await self._limiter.hit(f"pwchange:{principal.user_id}", limit=5, window=900)
        if not state.allowed:
            await self._events.record(
                SecurityEvent.by(
                    principal,
                    E.RATE_LIMITED,
                    Outcome.DENIED,
                    Severity.MEDIUM,
                    {"limit": "password-change", "retry_after": int(state.reset_after) + 1},
                )
            )
            raise TooManyRequests(int(state.reset_after) + 1)
        if not await self._passwords.verify(identity.user.password_hash, current):
            await self._event(
                E.AUTH_PASSWORD_REJECTED,
                Outcome.FAILURE,
                severity=Severity.MEDIUM,
                user_id=principal.user_id,
                clinic_id=principal.clinic_id,
                reason="wrong_current_password",
            )
            raise PasswordRejected(
                ["The current password is incorrect."], field="body.current_password"
            )
        await self._check_new_password(identity, new)
        await self._store_password_hash(identity.user.id, await self._passwords.hash(new))
        ended = await self._sessions.revoke_all(principal.user_id, except_sid=principal.session_id)
        if principal.session_id:
            session = await self._sessions.get(principal.user_id, principal.session_id)
            if session is not None and session.sc == SCOPE_PASSWORD_CHANGE:
                identity.user.must_change_password = False
                await self._sessions.save(replace(session, sc=self._scope(identity, None)))
        await self._event(
            E.AUTH_PASSWORD_CHANGED,
            Outcome.SUCCESS,
            severity=Severity.MEDIUM,
            user_id=principal.user_id,
            clinic_id=principal.clinic_id,
            other_sessions_ended=len(ended),
        )
        await self._notifier.notify(identity.user.email, "password_changed", when=self._when())

    async def forgot_password(self, email: str, ip: str) -> None:
        """Always succeeds from the caller's point of view (202): nothing says whether the
        account exists or whether the request was throttled."""
        identifier = self._guard.identifier(email)
        for key in (f"forgot:id:{identifier}", f"forgot:ip:{ip}"):
            state = await self._limiter.hit(key, limit=self._config.forgot_per_hour, window=3600)
            if not state.allowed:
                await self._event(
                    E.AUTH_PASSWORD_RESET_REQUESTED,
                    Outcome.DENIED,
                    identifier=identifier[:16],
                    reason="throttled",
                )
                return
        identity = await self._identity(email=email)
        if identity is None or not identity.user.is_active:
            await self._event(
                E.AUTH_PASSWORD_RESET_REQUESTED,
                Outcome.FAILURE,
                identifier=identifier[:16],
                reason="unknown_account",
            )
            return
        user = identity.user
        token, _ = await self._tokens.issue(
            TokenPurpose.RESET, user.id, pwh=self._reset_binding.hexdigest(user.password_hash, 32)
        )
        await self._event(
            E.AUTH_PASSWORD_RESET_REQUESTED,
            Outcome.SUCCESS,
            user_id=user.id,
            clinic_id=identity.clinic_id,
        )
        await self._notifier.notify(
            user.email,
            "password_reset",
            token=token,
            minutes=self._tokens.lifetime(TokenPurpose.RESET) // 60,
            link=f"{self._config.public_base_url}/console/#reset={token}",
        )

    async def send_password_setup(self, user_id: uuid.UUID, clinic_name: str) -> None:
        """A new account's first password goes through a reset link mailed to its owner:
        the administrator who created the account never sees or chooses a password."""
        identity = await self._identity(user_id=user_id)
        if identity is None:
            raise NotFound()
        user = identity.user
        token, _ = await self._tokens.issue(
            TokenPurpose.RESET, user.id, pwh=self._reset_binding.hexdigest(user.password_hash, 32)
        )
        await self._notifier.notify(
            user.email,
            "account_created",
            clinic=clinic_name,
            token=token,
            minutes=self._tokens.lifetime(TokenPurpose.RESET) // 60,
            link=f"{self._config.public_base_url}/console/#reset={token}",
        )

    async def notify_membership(self, user_id: uuid.UUID, clinic_name: str, role: str) -> None:
        identity = await self._identity(user_id=user_id)
        if identity is not None:
            await self._notifier.notify(
                identity.user.email,
                "clinic_membership_added",
                clinic=clinic_name,
                role=role,
                when=self._when(),
            )

    async def reset_password(self, token: str, new: str) -> None:
        try:
            claims = await self._tokens.verify(token, TokenPurpose.RESET)
        except TokenInvalid as exc:
            raise ResetTokenInvalid() from exc
        identity = await self._identity(user_id=uuid.UUID(claims["sub"]))
        if (
            identity is None
            or not identity.user.is_active
            or not self._reset_binding.matches(identity.user.password_hash, str(claims["pwh"]))
        ):
            raise ResetTokenInvalid()  # bound to the password hash: dies when it changes
        await self._check_new_password(identity, new)
        if not await self._kv.set(
            f"cg:reset-used:{claims['jti']}",
            b"1",
            ttl=self._config.reset_ttl + 60,
            only_if_absent=True,
        ):
            raise ResetTokenInvalid()
        await self._store_password_hash(identity.user.id, await self._passwords.hash(new))
        ended = await self._sessions.revoke_all(identity.user.id)
        await self._guard.unlock(identity.user.email)
        await self._event(
            E.AUTH_PASSWORD_RESET,
            Outcome.SUCCESS,
            severity=Severity.MEDIUM,
            user_id=identity.user.id,
            clinic_id=identity.clinic_id,
            sessions_ended=len(ended),
        )
        await self._notifier.notify(identity.user.email, "password_changed", when=self._when())

    # --- MFA management --------------------------------------------------------------------

    def _pending_key(self, user_id: uuid.UUID) -> str:
        return f"cg:{{u:{user_id}}}:totp-pending"

    async def totp_setup(self, principal: Principal) -> TotpSetup:
        identity = await self._identity_of(principal)
        if identity.user.mfa_enabled:
            raise MfaAlreadyEnabled()
        seed = new_seed()
        await self._kv.set(
            self._pending_key(principal.user_id), self._seeds.seal(principal.user_id, seed), ttl=600
        )
        uri = provisioning_uri(seed, identity.user.email)
        return TotpSetup(secret=seed, otpauth_uri=uri, qr_svg=qr_svg(uri))

    async def totp_enable(self, principal: Principal, code: str) -> list[str]:
        identity = await self._identity_of(principal)
        if identity.user.mfa_enabled:
            raise MfaAlreadyEnabled()
        sealed = await self._kv.get(self._pending_key(principal.user_id))
        if sealed is None:
            raise MfaNotEnrolled("Start the set-up first (POST /api/v1/security/2fa/setup).")
        state = await self._limiter.hit(
            f"mfa:{principal.user_id}",
            limit=self._config.mfa_attempts,
            window=self._config.mfa_window,
        )
        if not state.allowed:
            raise MfaThrottled(int(state.reset_after) + 1)
        seed = self._seeds.open(principal.user_id, sealed)
        check = await self._totp.check(principal.user_id, seed, code.strip(), self._clock.now())
        if not check.accepted:
            await self._event(
                E.AUTH_MFA_FAILURE,
                Outcome.FAILURE,
                user_id=principal.user_id,
                clinic_id=principal.clinic_id,
                context="enrolment",
            )
            raise MfaClockSkew() if check.clock_skew else MfaCodeInvalid()
        codes = new_backup_codes()
        async with self._db.transaction() as session:
            user = await session.get(User, principal.user_id)
            if user is None:
                raise TokenInvalid()
            user.totp_secret_sealed = self._seeds.seal(principal.user_id, seed)
            user.mfa_enabled = True
            await self._replace_backup_codes(session, principal.user_id, codes)
        await self._kv.delete(self._pending_key(principal.user_id))
        await self._upgrade_session(principal, mfa_level=1)
        await self._event(
            E.AUTH_MFA_ENABLED,
            Outcome.SUCCESS,
            severity=Severity.MEDIUM,
            user_id=principal.user_id,
            clinic_id=principal.clinic_id,
        )
        await self._notifier.notify(identity.user.email, "mfa_enabled", when=self._when())
        return codes

    async def _replace_backup_codes(
        self, session: Any, user_id: uuid.UUID, codes: Sequence[str]
    ) -> None:
        await session.execute(delete(MfaBackupCode).where(MfaBackupCode.user_id == user_id))
        now = self._clock.now()
        session.add_all(
            [
                MfaBackupCode(
                    user_id=user_id, code_hash=self._backup.digest(user_id, c), created_at=now
                )
                for c in codes
            ]
        )

    async def _upgrade_session(self, principal: Principal, *, mfa_level: int) -> None:
        if principal.session_id is None:
            return
        session = await self._sessions.get(principal.user_id, principal.session_id)
        if session is None:
            return
        scope = FULL_ACCESS if session.sc == SCOPE_MFA_ENROLL else session.sc
        await self._sessions.save(replace(session, m=max(session.m, mfa_level), sc=scope))

    async def step_up(self, principal: Principal, password: str, code: str) -> int:
        """Confirm password and second factor now; sensitive MFA changes are allowed for
        the next minutes (returns the seconds granted)."""
        identity = await self._identity_of(principal)
        session = await self._session_of(principal)
        if not identity.user.mfa_enabled:
            raise MfaNotEnrolled()
        if not await self._passwords.verify(identity.user.password_hash, password):
            await self._limiter.hit(
                f"mfa:{principal.user_id}",
                limit=self._config.mfa_attempts,
                window=self._config.mfa_window,
            )
            await self._event(
                E.AUTH_STEP_UP,
                Outcome.FAILURE,
                severity=Severity.MEDIUM,
                user_id=principal.user_id,
                clinic_id=principal.clinic_id,
                reason="bad_password",
            )
            raise InvalidCredentials("The password is incorrect.")
        await self._second_factor(identity, code, context="step-up")
        ttl = self._config.step_up_ttl
        if not await self._sessions.save(replace(session, su=self._clock.now().timestamp() + ttl)):
            raise TokenInvalid()
        await self._event(
            E.AUTH_STEP_UP,
            Outcome.SUCCESS,
            user_id=principal.user_id,
            clinic_id=principal.clinic_id,
            session_id=session.sid,
        )
        return ttl

    async def _require_step_up(self, principal: Principal) -> _Identity:
        session = await self._session_of(principal)
        if session.su <= self._clock.now().timestamp():
            raise StepUpRequired()
        identity = await self._identity_of(principal)
        if not identity.user.mfa_enabled:
            raise MfaNotEnrolled()
        return identity

    async def mfa_disable(self, principal: Principal) -> None:
        identity = await self._require_step_up(principal)
        async with self._db.transaction() as session:
            user = await session.get(User, principal.user_id)
            if user is None:
                raise TokenInvalid()
            user.mfa_enabled = False
            user.totp_secret_sealed = None
            await session.execute(
                delete(MfaBackupCode).where(MfaBackupCode.user_id == principal.user_id)
            )
        if principal.session_id and self._requires_mfa(identity.role):
            current = await self._sessions.get(principal.user_id, principal.session_id)
            if current is not None:
                await self._sessions.save(replace(current, sc=SCOPE_MFA_ENROLL, su=0.0))
        await self._event(
            E.AUTH_MFA_DISABLED,
            Outcome.SUCCESS,
            severity=Severity.HIGH,
            user_id=principal.user_id,
            clinic_id=principal.clinic_id,
        )
        await self._notifier.notify(identity.user.email, "mfa_disabled", when=self._when())

    async def regenerate_backup_codes(self, principal: Principal) -> list[str]:
        await self._require_step_up(principal)
        codes = new_backup_codes()
        async with self._db.transaction() as session:
            await self._replace_backup_codes(session, principal.user_id, codes)
        await self._event(
            E.AUTH_BACKUP_CODES_REGENERATED,
            Outcome.SUCCESS,
            severity=Severity.MEDIUM,
            user_id=principal.user_id,
            clinic_id=principal.clinic_id,
        )
        return codes

    # --- the active clinic ------------------------------------------------------------------

    async def switch_clinic(self, principal: Principal, clinic_id: uuid.UUID) -> SignedIn:
        """Move this session to another clinic the person is an active member of (an
        active clinic). Anything else is 404, exactly like a clinic that does not exist.
        The session's earlier access tokens name the old clinic and stop working at once;
        its refresh token is spent; token sessions get a new pair."""
        session = await self._session_of(principal)
        identity = await self._identity_of(principal)
        async with self._db.transaction(TenantContext.person(principal.user_id)) as db:
            membership = await db.get(ClinicMembership, (clinic_id, principal.user_id))
            clinics = await clinic_rows(db, [clinic_id])
        if (
            membership is None
            or not membership.is_active
            or clinic_id not in clinics
            or not clinics[clinic_id][2]
        ):
            raise NotFound()
        identity.clinic_id, identity.role = clinic_id, membership.role
        scope = self._scope(identity, None)  # the new role may need MFA this person lacks
        previous = session.c
        if session.rt:
            await self._kv.delete(refresh_key(session.u, session.rt))
        switched = replace(session, c=str(clinic_id), r=membership.role, sc=scope, su=0.0, rt="")
        await self._event(
            E.AUTH_CLINIC_SWITCHED,
            Outcome.SUCCESS,
            user_id=principal.user_id,
            clinic_id=clinic_id,
            session_id=session.sid,
            previous_clinic=previous,
            role=membership.role,
        )
        if session.ck:  # a console session: the cookie stays, the session's clinic changes
            if not await self._sessions.save(switched):
                raise TokenInvalid()
            return SignedIn(
                session=switched, expires_in=int(switched.ax - switched.ca), device_token=""
            )
        return await self._issue_pair(switched)

    # --- account views and administration --------------------------------------------------

    async def me(self, principal: Principal) -> User:
        async with self._db.transaction() as session:
            user = await session.get(User, principal.user_id)
        if user is None:
            raise TokenInvalid()
        return user

    async def unlock(
        self,
        principal: Principal | None,
        user_id: uuid.UUID | None = None,
        email: str | None = None,
    ) -> None:
        """Clear a user's sign-in lock. ``principal`` None is the operator (CLI); a clinic
        administrator may unlock members of the active clinic only (others are 404)."""
        identity = await self._identity(user_id=user_id, email=email)
        if identity is None:
            raise NotFound()
        if principal is not None:
            async with self._db.transaction(tenant_of(principal)) as session:
                member = await session.get(
                    ClinicMembership, (principal.clinic_id, identity.user.id)
                )
            if member is None:
                raise NotFound()
        await self._guard.unlock(identity.user.email)
        await self._event(
            E.AUTH_UNLOCK,
            Outcome.SUCCESS,
            severity=Severity.MEDIUM,
            user_id=identity.user.id,
            clinic_id=principal.clinic_id if principal else identity.clinic_id,
            by=str(principal.user_id) if principal else "operator",
        )
