"""Settings: production refuses weak configurations, naming every problem at once."""

from __future__ import annotations

import base64
import secrets
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from clinicguard.core.errors import ConfigurationError
from clinicguard.settings import (
    Environment,
    Settings,
    load_settings,
    production_problems,
    unknown_variables,
)

STRONG = {
    "secret_key": secrets.token_urlsafe(48),
    "master_key": base64.b64encode(secrets.token_bytes(32)).decode(),
    "database_url": "postgresql+asyncpg://clinicguard_app@db/clinicguard",
    "migration_database_url": "postgresql+asyncpg://clinicguard_owner@db/clinicguard",
    "redis_url": "redis://cache:6379/0",
    "mail_backend": "smtp",
    "public_base_url": "https://clinicas.example.com.br",
    "key_vault_url": "postgresql+asyncpg://clinicguard_vault@vault-db/clinicguard_keys",
}


def prod(**overrides: object) -> Settings:
    return Settings(env="production", **{**STRONG, **overrides})  # type: ignore[arg-type]


def test_a_sound_production_configuration_has_no_problems() -> None:
    assert production_problems(prod()) == []


def test_every_problem_is_named_at_once(tmp_path: Path) -> None:
    problems = production_problems(
        Settings(
            env=Environment.PRODUCTION,
            secret_key="changeme",  # type: ignore[arg-type]
            debug=True,
            cors_origins=["*"],
            cors_allow_credentials=True,
            data_dir=tmp_path,
        )
    )
    text = "\n".join(problems)
    for fragment in (
        "SECRET_KEY",
        "MASTER_KEY",
        "DEBUG",
        "SQLite",
        "REDIS_URL",
        "PUBLIC_BASE_URL",
        "MAIL_BACKEND",
        "CORS",
        "KEY_VAULT_URL",
    ):
        assert fragment in text, fragment
    assert len(problems) == 9


@pytest.mark.parametrize("secret", ["", "secret", "changeme", "dev", "short-but-not-default"])
def test_missing_default_or_short_secret_is_refused(secret: str) -> None:
    assert any("SECRET_KEY" in p for p in production_problems(prod(secret_key=secret)))


@pytest.mark.parametrize(
    "master_key", ["not base64!!", base64.b64encode(b"16 bytes only...").decode(), ""]
)
def test_master_key_must_be_32_bytes_of_base64(master_key: str) -> None:
    assert any("MASTER_KEY" in p for p in production_problems(prod(master_key=master_key)))


def test_outside_production_nothing_is_refused() -> None:
    assert production_problems(Settings(env="development", debug=True)) == []


def test_environment_lists_accept_csv_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLINICGUARD_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("CLINICGUARD_TRUSTED_PROXIES", '["10.0.0.0/8", "2001:db8::1"]')
    settings = Settings()
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8", "2001:db8::1/128"]


def test_invalid_values_are_refused_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLINICGUARD_ENV", "staging")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.setenv("CLINICGUARD_ENV", "test")
    monkeypatch.setenv("CLINICGUARD_TRUSTED_PROXIES", "not-an-ip")
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6"):
        Settings()


def test_development_secrets_are_generated_once_and_kept_private(tmp_path: Path) -> None:
    first = load_settings(env="development", data_dir=tmp_path)
    second = load_settings(env="development", data_dir=tmp_path)
    assert first.secret_key.get_secret_value() == second.secret_key.get_secret_value()
    assert len(first.master_key_bytes()) == 32
    mode = stat.S_IMODE((tmp_path / "secrets.json").stat().st_mode)
    assert mode == 0o600


def test_production_never_generates_secrets(tmp_path: Path) -> None:
    settings = load_settings(env="production", data_dir=tmp_path)
    assert settings.secret_key.get_secret_value() == ""
    assert not (tmp_path / "secrets.json").exists()


def test_secrets_do_not_show_in_repr() -> None:
    settings = prod()
    assert STRONG["secret_key"] not in repr(settings)
    assert STRONG["master_key"] not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("CLINICGUARD_MFA_REQUIRED_ROLES", "physician,physicain", "physicain"),
        ("CLINICGUARD_LOGIN_LOCK_MINUTES", "0,15", "at least 1 minute"),
        ("CLINICGUARD_PASSWORD_MIN_LENGTH", "100", "larger than the maximum"),
    ],
)
def test_invalid_settings_are_named_without_echoing_any_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str, fragment: str
) -> None:
    """A configuration error names the setting and the rule, never a value (pydantic's own
    message would quote every input, secrets included)."""
    monkeypatch.setenv("CLINICGUARD_SECRET_KEY", "TOP-SECRET-VALUE-that-must-not-print")
    monkeypatch.setenv("CLINICGUARD_SMTP_PASSWORD", "hunter2-smtp")
    monkeypatch.setenv("CLINICGUARD_PASSWORD_MAX_LENGTH", "50")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings(data_dir=tmp_path)
    text = str(caught.value)
    assert fragment in text
    assert "TOP-SECRET" not in text
    assert "hunter2" not in text


@pytest.mark.parametrize(
    "vault",
    [
        "",  # defaults to SQLite under the data dir
        "sqlite+aiosqlite:///var/keyvault.db",
        STRONG["database_url"],  # the clinical database: shredding would not outlive backups
    ],
)
def test_production_needs_a_key_vault_of_its_own(vault: str) -> None:
    assert any("KEY_VAULT_URL" in p for p in production_problems(prod(key_vault_url=vault)))


def test_production_needs_an_https_public_url() -> None:
    assert any(
        "PUBLIC_BASE_URL" in p
        for p in production_problems(prod(public_base_url="http://clinicas.example.com.br"))
    )
    assert production_problems(prod(public_base_url="HTTPS://clinicas.example.com.br")) == []


def test_unknown_variables_are_found_in_any_case() -> None:
    found = unknown_variables(
        {
            "CLINICGUARD_REDIS_URL": "x",
            "clinicguard_redis_ulr": "y",
            "CLINICGUARD_TEST_DATABASE_URL": "z",
            "OTHER": "w",
        }
    )
    assert found == ["clinicguard_redis_ulr"]
