"""Settings: the only module that reads the environment (prefix ``CLINICGUARD_``).

Validated when built. In production :func:`production_problems` lists every weakness at once
(missing/short/default secrets, debug, SQLite, wildcard CORS with credentials); the start-up
preflight adds what needs the database (demo data present) and refuses to start.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import secrets
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from clinicguard.core.errors import ConfigurationError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Values that ship in examples and must never guard a real deployment.
KNOWN_DEFAULT_SECRETS = frozenset(
    {"", "changeme", "change-me", "secret", "development", "dev", "test", "password", "clinicguard"}
)
MIN_SECRET_BYTES = 32


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


def _split_csv(value: Any) -> Any:
    """Lists come from the environment as comma-separated text or as a JSON array."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CLINICGUARD_", extra="ignore", validate_default=True, frozen=True
    )

    env: Environment = Environment.DEVELOPMENT
    debug: bool = False
    """Debug-level logs (never in production)."""
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    data_dir: Path = Path("var")

    database_url: str = ""
    """The application's connection (on PostgreSQL: a role that owns no tables)."""
    migration_database_url: str = ""
    """The schema owner's connection for migrations; defaults to ``database_url``."""
    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_statement_timeout_ms: int = Field(default=5000, ge=100)

    redis_url: str = ""
    """Empty: the in-process key-value store (single process only)."""
    kv_timeout_seconds: float = Field(default=1.0, gt=0, le=30)

    secret_key: SecretStr = SecretStr("")
    """Application secret: keys the hashes of short-lived state (console session cookies and
    CSRF tokens, device trust, login counters); rotating it ends console sessions, forgets
    trusted devices and resets login counters, and loses no stored data.
    Generated under data_dir outside production when unset."""
    master_key: SecretStr = SecretStr("")
    """Key-encryption key, base64 of 32 bytes. Generated under data_dir outside production."""
    key_provider: Literal["master", "file"] = "master"
    """Where the KEK that wraps the data keys comes from: derived from the master key, or
    named keys in ``kek_file`` (which can be rotated: ``clinicguard keys rewrap``)."""
    kek_file: Path | None = None
    key_vault_url: str = ""
    """The patients' own keys (crypto-shredding): a database apart from the clinical one,
    so its backups are not the clinical backups. Defaults to SQLite under data_dir."""
    data_key_rotation_days: int = Field(default=90, ge=1, le=3650)
    max_encryptions_per_key: int = Field(default=2**30, ge=1000, le=2**32)

    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_allow_credentials: bool = False
    trusted_proxies: Annotated[list[IPNetwork], NoDecode] = Field(default_factory=list)
    """Peers whose X-Forwarded-For and X-Request-ID are believed (IPs or CIDRs)."""
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    upload_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, le=100 * 1024 * 1024)
    """Largest patient file accepted (the upload route's body limit follows it)."""
    max_in_flight_requests: int = Field(default=256, ge=1)

    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    # --- authentication -------------------------------------------------------------------
    jwt_issuer: str = "clinicguard"
    jwt_algorithm: Literal["ES256", "EdDSA"] = "ES256"
    access_token_ttl_seconds: int = Field(default=15 * 60, ge=60, le=3600)
    refresh_token_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=3600, le=90 * 24 * 3600)
    mfa_token_ttl_seconds: int = Field(default=5 * 60, ge=60, le=900)
    reset_token_ttl_seconds: int = Field(default=30 * 60, ge=300, le=3600)
    refresh_grace_seconds: float = Field(default=10.0, ge=0, le=60)
    session_idle_timeout_seconds: int = Field(default=30 * 60, ge=1)
    session_absolute_timeout_seconds: int = Field(default=8 * 3600, ge=300)
    max_sessions_per_user: int = Field(default=5, ge=1, le=100)
    step_up_ttl_seconds: int = Field(default=15 * 60, ge=60, le=3600)
    device_trust_days: int = Field(default=90, ge=1, le=365)

    argon2_memory_kib: int = Field(default=19_456, ge=19_456)
    argon2_time_cost: int = Field(default=2, ge=2)
    argon2_parallelism: int = Field(default=1, ge=1, le=16)
    password_hash_threads: int = Field(default=1, ge=1, le=32)
    """Threads per process that hash passwords; one per worker keeps a sign-in storm from
    taking every core from request handling (more workers, not more threads, for more
    sign-ins per second)."""

    password_min_length: int = Field(default=12, ge=8, le=128)
    password_max_length: int = Field(default=128, ge=12, le=1024)
    password_min_strength: int = Field(default=3, ge=0, le=4)
    password_history: int = Field(default=5, ge=0, le=24)
    password_expiry_days: int = Field(default=90, ge=0)
    """0 disables expiry."""
    breached_password_checker: Literal["offline", "range-api", "none"] = "offline"
    breached_password_range_url: str = "https://api.pwnedpasswords.com/range/"

    mfa_required_roles: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            "platform_admin",
            "clinic_admin",
            "physician",
            "nurse",
            "compliance_officer",
        ]
    )
    login_failures_per_identifier: int = Field(default=5, ge=1)
    login_lock_minutes: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [15, 30, 60, 360]
    )
    """Lock durations for the 1st, 2nd, 3rd and later locks within 24 hours."""
    login_failures_per_ip: int = Field(default=20, ge=1)
    login_ip_window_seconds: int = Field(default=15 * 60, ge=60)
    login_global_failures_per_minute: int = Field(default=600, ge=10)
    mfa_attempts: int = Field(default=5, ge=1)
    mfa_window_seconds: int = Field(default=5 * 60, ge=60)
    password_forgot_per_hour: int = Field(default=3, ge=1)

    mail_backend: Literal["file", "smtp"] = "file"
    mail_from: str = "clinicguard <no-reply@clinicguard.localhost>"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_starttls: bool = False
    smtp_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    public_base_url: str = "http://127.0.0.1:8000"
    """Where people reach the service (links in e-mails)."""

    # --- audit trail ----------------------------------------------------------------------
    audit_checkpoint_events: int = Field(default=1000, ge=1, le=1_000_000)
    """A chain gets a signed checkpoint after this many events …"""
    audit_checkpoint_minutes: int = Field(default=10, ge=1, le=24 * 60)
    """… or this many minutes after its last one, whichever comes first (idle chains are
    sealed by a background sweep, so no event stays unsigned much longer than this)."""
    audit_retention_days: int = Field(default=2557, ge=365)
    """How long audit events are kept (default 7 years); ``clinicguard retention run``
    removes whole months older than this."""

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _parse_origins(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("mfa_required_roles", "login_lock_minutes", mode="before")
    @classmethod
    def _parse_lists(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("mfa_required_roles")
    @classmethod
    def _known_roles(cls, value: list[str]) -> list[str]:
        known = {
            "platform_admin",
            "clinic_admin",
            "physician",
            "nurse",
            "receptionist",
            "compliance_officer",
            "patient",
        }
        unknown = sorted(set(value) - known)
        if unknown:
            # A misspelt role would silently drop the MFA requirement for it.
            raise ValueError(f"unknown roles: {', '.join(unknown)}")
        return value

    @field_validator("login_lock_minutes")
    @classmethod
    def _lock_ladder(cls, value: list[int]) -> list[int]:
        if not value or any(m < 1 for m in value):
            raise ValueError("give one or more lock durations of at least 1 minute")
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_proxies(cls, value: Any) -> Any:
        items = _split_csv(value)
        if isinstance(items, list):
            return [ipaddress.ip_network(str(item), strict=False) for item in items]
        return items

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if self.password_min_length > self.password_max_length:
            raise ValueError("CLINICGUARD_PASSWORD_MIN_LENGTH is larger than the maximum")
        data_dir = self.data_dir.expanduser().resolve()
        object.__setattr__(self, "data_dir", data_dir)
        if not self.database_url:
            object.__setattr__(
                self, "database_url", f"sqlite+aiosqlite:///{data_dir / 'clinicguard.db'}"
            )
        if not self.migration_database_url:
            object.__setattr__(self, "migration_database_url", self.database_url)
        if not self.key_vault_url:
            object.__setattr__(
                self, "key_vault_url", f"sqlite+aiosqlite:///{data_dir / 'keyvault.db'}"
            )
        return self

    @property
    def is_production(self) -> bool:
        return self.env is Environment.PRODUCTION

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def master_key_bytes(self) -> bytes:
        """The KEK as bytes; raises ValueError when it is not base64 of 32 bytes."""
        raw = self.master_key.get_secret_value()
        try:
            key = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("CLINICGUARD_MASTER_KEY is not valid base64") from exc
        if len(key) != 32:
            raise ValueError("CLINICGUARD_MASTER_KEY must decode to exactly 32 bytes")
        return key


def _key_vault_problems(settings: Settings) -> list[str]:
    if settings.key_vault_url.startswith("sqlite"):
        return [
            "CLINICGUARD_KEY_VAULT_URL must name a database of its own (not SQLite) for the "
            "patients' keys"
        ]
    if settings.key_vault_url == settings.database_url:
        return [
            "CLINICGUARD_KEY_VAULT_URL is the clinical database: crypto-shredding would not "
            "hold against its backups"
        ]
    return []


def production_problems(settings: Settings) -> list[str]:
    """Every reason the settings are unfit for production (empty outside production)."""
    if not settings.is_production:
        return []
    problems: list[str] = []
    secret = settings.secret_key.get_secret_value()
    if secret.lower() in KNOWN_DEFAULT_SECRETS:
        problems.append("CLINICGUARD_SECRET_KEY is missing or a known default value")
    elif len(secret.encode()) < MIN_SECRET_BYTES:
        problems.append(f"CLINICGUARD_SECRET_KEY is shorter than {MIN_SECRET_BYTES} bytes")
    if not settings.master_key.get_secret_value():
        problems.append("CLINICGUARD_MASTER_KEY is missing (base64 of 32 random bytes)")
    else:
        try:
            settings.master_key_bytes()
        except ValueError as exc:
            problems.append(str(exc))
    problems.extend(_key_vault_problems(settings))
    if settings.debug:
        problems.append("CLINICGUARD_DEBUG is on")
    if settings.is_sqlite:
        problems.append(
            "CLINICGUARD_DATABASE_URL is SQLite: production needs PostgreSQL (row-level security)"
        )
    if not settings.redis_url:
        problems.append("CLINICGUARD_REDIS_URL is missing: sessions and revocations must be shared")
    if not settings.public_base_url.lower().startswith("https://"):
        problems.append("CLINICGUARD_PUBLIC_BASE_URL is not https:// (links in security mail)")
    if settings.mail_backend == "file":
        problems.append(
            "CLINICGUARD_MAIL_BACKEND is 'file': production sends security mail by SMTP"
        )
    if "*" in settings.cors_origins and settings.cors_allow_credentials:
        problems.append("CORS allows any origin ('*') together with credentials")
    return problems


def with_development_secrets(settings: Settings) -> Settings:
    """Outside production, fill missing secrets from ``data_dir/secrets.json`` (created 0600
    on first use) so a development server keeps its keys across restarts."""
    if settings.is_production or (
        settings.secret_key.get_secret_value() and settings.master_key.get_secret_value()
    ):
        return settings
    path = settings.data_dir / "secrets.json"
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    changed = False
    if "secret_key" not in stored:
        stored["secret_key"] = secrets.token_urlsafe(48)
        changed = True
    if "master_key" not in stored:
        stored["master_key"] = base64.b64encode(secrets.token_bytes(32)).decode()
        changed = True
    if changed:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(stored, fh)
    update: dict[str, Any] = {}
    if not settings.secret_key.get_secret_value():
        update["secret_key"] = SecretStr(stored["secret_key"])
    if not settings.master_key.get_secret_value():
        update["master_key"] = SecretStr(stored["master_key"])
    return settings.model_copy(update=update)


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """CLINICGUARD_* variables that name no setting (a misspelt variable would otherwise be
    ignored silently, leaving a default in force). Test-suite variables are not settings."""
    environ = os.environ if environ is None else environ
    known = {f"CLINICGUARD_{name.upper()}" for name in Settings.model_fields}
    return sorted(
        key
        for key in environ
        if key.upper().startswith("CLINICGUARD_")
        and key.upper() not in known
        and not key.upper().startswith(("CLINICGUARD_TEST_", "CLINICGUARD_REQUIRE_"))
    )


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (plus explicit overrides), with development secrets.

    Raises ConfigurationError naming each invalid setting and the rule it breaks, never the
    values given (pydantic's own message quotes inputs, secrets included)."""
    try:
        return with_development_secrets(Settings(**overrides))
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            name = f"CLINICGUARD_{where.upper()}" if where != "settings" else where
            problems.append(f"{name}: {error['msg']}")
        raise ConfigurationError(problems) from None
