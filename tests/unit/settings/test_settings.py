"""Settings: production refuses weak configurations, naming every problem at once."""

from __future__ import annotations

import base64
import secrets
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from clinicguard.settings import Environment, Settings, load_settings, production_problems

STRONG = {
    "secret_key": secrets.token_urlsafe(48),
    "master_key": base64.b64encode(secrets.token_bytes(32)).decode(),
    "database_url": "postgresql+asyncpg://clinicguard_app@db/clinicguard",
    "migration_database_url": "postgresql+asyncpg://clinicguard_owner@db/clinicguard",
    "redis_url": "redis://cache:6379/0",
    "mail_backend": "smtp",
    "public_base_url": "https://clinicas.example.com.br",
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
    ):
        assert fragment in text, fragment
    assert len(problems) == 8


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
