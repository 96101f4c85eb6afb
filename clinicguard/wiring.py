"""Building the services from settings, in one place (the app and the CLI share it).

Backends are picked here once, from settings values: the in-process key-value store and
limiter when no Redis URL is configured, Redis otherwise; SMTP or files for mail; the
breached-password source.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from clinicguard.audit.checkpoints import (
    CheckpointKeyRing,
    Ed25519CheckpointSigner,
    IdleChainSealer,
)
from clinicguard.audit.queries import AccessLog, AuditTrail
from clinicguard.audit.recorder import AuditRecorder, CheckpointPolicy
from clinicguard.audit.reviews import ReviewQueue
from clinicguard.audit.service import TrailEventSink
from clinicguard.auth.apikeys import ApiKeyService
from clinicguard.auth.interfaces import BreachedPasswordChecker, MailSender
from clinicguard.auth.lockout import LoginGuard, LoginLimits
from clinicguard.auth.mail import QueuedMailSender, SecurityNotifier, create_mail_sender
from clinicguard.auth.passwords import Argon2PasswordHasher
from clinicguard.auth.policy import (
    PasswordPolicy,
    RangeApiBreachedPasswordChecker,
    create_breach_checker,
)
from clinicguard.auth.service import AuthConfig, AuthService
from clinicguard.auth.sessions import DeviceTrust, SessionStore
from clinicguard.auth.tokens import SigningKeyRing, TokenPurpose, TokenService
from clinicguard.authz.engine import PolicyEngine
from clinicguard.authz.interfaces import Permission
from clinicguard.authz.service import Authorizer
from clinicguard.clinic.auditing import AccessAudit
from clinicguard.clinic.directory import ClinicPatientDirectory
from clinicguard.clinic.files import PatientFileService
from clinicguard.clinic.service import ClinicDataService
from clinicguard.clinic.staff import StaffService
from clinicguard.core.clock import Clock, SystemClock
from clinicguard.core.events import SecurityEventSink
from clinicguard.crypto.keyring import DataKeyRing
from clinicguard.crypto.keys import create_key_provider
from clinicguard.crypto.secretbox import Hasher
from clinicguard.crypto.service import FieldEncryption
from clinicguard.crypto.vault import SubjectKeyVault
from clinicguard.ratelimit.interfaces import RateLimiter
from clinicguard.ratelimit.service import create_rate_limiter
from clinicguard.settings import Settings
from clinicguard.store.db import Database
from clinicguard.store.interfaces import KeyValueStore
from clinicguard.store.kv import create_kv_store


@dataclass
class Services:
    settings: Settings
    db: Database
    kv: KeyValueStore
    limiter: RateLimiter
    clock: Clock
    audit: AuditRecorder
    """The audit trail: accesses to patient data are appended in their own transaction."""
    events: SecurityEventSink
    passwords: Argon2PasswordHasher
    signing_keys: SigningKeyRing
    tokens: TokenService
    auth: AuthService
    api_keys: ApiKeyService
    mail: MailSender
    breach: BreachedPasswordChecker
    policy: PolicyEngine
    """The authorization policy, loaded (and checked) at start: a malformed policy stops
    the process instead of surfacing on the first request."""
    authorizer: Authorizer
    fields: FieldEncryption
    """Field encryption: the data-key ring, the patients' key vault, blind indexes."""
    clinic: ClinicDataService
    files: PatientFileService
    staff: StaffService
    audit_trail: AuditTrail
    """The clinic's trail for its overseers: queries, export, verification."""
    reviews: ReviewQueue
    access_log: AccessLog
    audit_keys: CheckpointKeyRing
    """The checkpoint signing keys (those this deployment made are trusted by verify)."""
    audit_sealer: IdleChainSealer
    """Signs checkpoints at the heads of audit chains that went quiet (in the background)."""

    async def start(self) -> None:
        """Background work that lives with a serving process (the mail queue, the audit
        trail's idle-chain sealer)."""
        if isinstance(self.mail, QueuedMailSender):
            self.mail.start()
        self.audit_sealer.start()

    async def close(self) -> None:
        await self.audit_sealer.stop()
        await self.fields.ring.flush()
        await self.fields.vault.dispose()
        if isinstance(self.mail, QueuedMailSender):
            await self.mail.stop()
        if isinstance(self.breach, RangeApiBreachedPasswordChecker):
            await self.breach.close()
        self.passwords.close()
        await self.limiter.close()
        await self.kv.close()
        await self.db.dispose()


def token_lifetimes(settings: Settings) -> dict[TokenPurpose, int]:
    return {
        TokenPurpose.ACCESS: settings.access_token_ttl_seconds,
        TokenPurpose.REFRESH: settings.refresh_token_ttl_seconds,
        TokenPurpose.MFA: settings.mfa_token_ttl_seconds,
        TokenPurpose.RESET: settings.reset_token_ttl_seconds,
    }


def password_policy(settings: Settings) -> PasswordPolicy:
    return PasswordPolicy(
        min_length=settings.password_min_length,
        max_length=settings.password_max_length,
        min_strength=settings.password_min_strength,
        history=settings.password_history,
        expiry_days=settings.password_expiry_days,
    )


def build_services(
    settings: Settings,
    *,
    database: Database | None = None,
    kv: KeyValueStore | None = None,
    limiter: RateLimiter | None = None,
    clock: Clock | None = None,
) -> Services:
    clock = clock or SystemClock()
    master_key = settings.master_key_bytes()
    app_secret = settings.secret_key.get_secret_value()
    db = database or Database.from_url(
        settings.database_url,
        pool_size=settings.db_pool_size,
        statement_timeout_ms=settings.db_statement_timeout_ms,
        hide_parameters=True,
    )
    kv = kv or create_kv_store(settings.redis_url, timeout=settings.kv_timeout_seconds)
    limiter = limiter or create_rate_limiter(
        settings.redis_url, timeout=settings.kv_timeout_seconds
    )
    audit_keys = CheckpointKeyRing(db, master_key=master_key, clock=clock)
    audit_signer = Ed25519CheckpointSigner(audit_keys)
    audit_every = timedelta(minutes=settings.audit_checkpoint_minutes)
    audit = AuditRecorder(
        db,
        clock,
        signer=audit_signer,
        checkpoints=CheckpointPolicy(
            every_events=settings.audit_checkpoint_events, every=audit_every
        ),
    )
    events = TrailEventSink(db, audit)
    passwords = Argon2PasswordHasher(
        memory_kib=settings.argon2_memory_kib,
        time_cost=settings.argon2_time_cost,
        parallelism=settings.argon2_parallelism,
        max_threads=settings.password_hash_threads,
    )
    lifetimes = token_lifetimes(settings)
    ring = SigningKeyRing(
        db,
        master_key=master_key,
        algorithm=settings.jwt_algorithm,
        clock=clock,
        lifetimes=lifetimes,
    )
    tokens = TokenService(ring, issuer=settings.jwt_issuer, clock=clock, lifetimes=lifetimes)
    sessions = SessionStore(
        kv,
        clock,
        idle_timeout=settings.session_idle_timeout_seconds,
        absolute_timeout=settings.session_absolute_timeout_seconds,
        max_per_user=settings.max_sessions_per_user,
        hasher=Hasher.from_secret(app_secret, "session-secrets"),
    )
    guard = LoginGuard(
        kv,
        limiter,
        Hasher.from_secret(app_secret, "login-identifier"),
        LoginLimits(
            failures_per_identifier=settings.login_failures_per_identifier,
            lock_minutes=tuple(settings.login_lock_minutes),
            failures_per_ip=settings.login_failures_per_ip,
            ip_window=settings.login_ip_window_seconds,
            global_failures_per_minute=settings.login_global_failures_per_minute,
        ),
    )
    mail = create_mail_sender(
        settings.mail_backend,
        directory=settings.data_dir / "mail",
        sender=settings.mail_from,
        host=settings.smtp_host,
        port=settings.smtp_port,
        username=settings.smtp_username,
        password=settings.smtp_password.get_secret_value(),
        starttls=settings.smtp_starttls,
        timeout=settings.smtp_timeout_seconds,
    )
    breach = create_breach_checker(
        settings.breached_password_checker, settings.breached_password_range_url
    )
    auth = AuthService(
        db=db,
        kv=kv,
        limiter=limiter,
        tokens=tokens,
        sessions=sessions,
        devices=DeviceTrust(
            kv, Hasher.from_secret(app_secret, "device-trust"), days=settings.device_trust_days
        ),
        guard=guard,
        passwords=passwords,
        breach=breach,
        notifier=SecurityNotifier(mail),
        events=events,
        clock=clock,
        config=AuthConfig(
            mfa_required_roles=frozenset(settings.mfa_required_roles),
            policy=password_policy(settings),
            refresh_grace=settings.refresh_grace_seconds,
            step_up_ttl=settings.step_up_ttl_seconds,
            reset_ttl=settings.reset_token_ttl_seconds,
            mfa_attempts=settings.mfa_attempts,
            mfa_window=settings.mfa_window_seconds,
            forgot_per_hour=settings.password_forgot_per_hour,
            public_base_url=settings.public_base_url,
        ),
        master_key=master_key,
    )
    api_keys = ApiKeyService(
        db,
        Hasher(master_key, "api-key"),
        clock,
        events,
        limiter,
        scopes=frozenset(str(p) for p in Permission),
    )
    policy = PolicyEngine.load()
    authorizer = Authorizer(policy, events)
    data_keys = DataKeyRing(
        db,
        create_key_provider(settings.key_provider, master_key, settings.kek_file),
        clock,
        rotation_days=settings.data_key_rotation_days,
        max_encryptions=settings.max_encryptions_per_key,
    )
    vault = SubjectKeyVault(Database.from_url(settings.key_vault_url), data_keys, clock)
    fields = FieldEncryption(data_keys, vault, events)
    access_audit = AccessAudit(audit, clock)
    clinic = ClinicDataService(db, authorizer, clock, fields, access_audit)
    return Services(
        settings=settings,
        db=db,
        kv=kv,
        limiter=limiter,
        clock=clock,
        audit=audit,
        audit_trail=AuditTrail(db, authorizer, audit, clock, audit_keys),
        reviews=ReviewQueue(db, authorizer, audit, clock),
        access_log=AccessLog(db, authorizer, audit, ClinicPatientDirectory(db, clock)),
        events=events,
        passwords=passwords,
        signing_keys=ring,
        tokens=tokens,
        auth=auth,
        api_keys=api_keys,
        mail=mail,
        breach=breach,
        policy=policy,
        authorizer=authorizer,
        fields=fields,
        clinic=clinic,
        files=PatientFileService(
            db=db,
            clinic=clinic,
            fields=fields,
            limiter=limiter,
            events=events,
            audit=access_audit,
            clock=clock,
            max_bytes=settings.upload_max_bytes,
        ),
        staff=StaffService(
            db=db,
            authorizer=authorizer,
            auth=auth,
            passwords=passwords,
            clock=clock,
            events=events,
        ),
        audit_keys=audit_keys,
        audit_sealer=IdleChainSealer(db, audit_signer, clock, audit_every),
    )
