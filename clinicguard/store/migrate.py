"""Running migrations programmatically (CLI, tests, ``make run``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(
    migration_url: str,
    app_url: str | None = None,
    master_key: bytes | None = None,
    key_provider: object | None = None,
) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", migration_url.replace("%", "%%"))
    owner_url = make_url(migration_url)
    owner = owner_url.username
    if app_url and make_url(app_url).get_backend_name() != owner_url.get_backend_name():
        raise ValueError(
            "CLINICGUARD_DATABASE_URL and CLINICGUARD_MIGRATION_DATABASE_URL point at different "
            "kinds of database; set both (the application's role and the schema owner)"
        )
    app_user = make_url(app_url).username if app_url else None
    # Grants go to the application's role when it is not the owner itself.
    cfg.attributes["app_role"] = app_user if app_user and app_user != owner else None
    cfg.attributes["master_key"] = master_key
    cfg.attributes["key_provider"] = key_provider
    return cfg


def upgrade_to_head(
    migration_url: str,
    app_url: str | None = None,
    master_key: bytes | None = None,
    key_provider: object | None = None,
) -> None:
    """Bring the schema to the newest revision (creating the SQLite file's folder)."""
    url = make_url(migration_url)
    if url.get_backend_name() == "sqlite" and url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(migration_url, app_url, master_key, key_provider), "head")
