"""Migrations are the schema: they match the models exactly (drift check), run on SQLite
and PostgreSQL, and downgrade cleanly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from clinicguard.migrations.schema import include_object, metadata
from clinicguard.store.migrate import alembic_config, upgrade_to_head
from tests.conftest import Backend


def _drift(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "include_object": include_object}
    )
    return list(compare_metadata(context, metadata))


def test_models_and_migrations_do_not_drift(backend: Backend) -> None:
    if backend.postgres is not None:
        url = backend.postgres.psycopg_url("cg_test_owner").replace(
            "postgresql://", "postgresql+psycopg://"
        )
    else:
        url = backend.migration_url.replace("+aiosqlite", "")
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            assert _drift(connection) == []
    finally:
        engine.dispose()


def test_sqlite_downgrade_and_upgrade_round_trip(tmp_path: Path) -> None:
    from alembic import command

    url = f"sqlite+aiosqlite:///{tmp_path / 'roundtrip.db'}"
    upgrade_to_head(url)
    command.downgrade(alembic_config(url), "base")
    upgrade_to_head(url)
    engine = create_engine(url.replace("+aiosqlite", ""))
    try:
        with engine.connect() as connection:
            assert _drift(connection) == []
    finally:
        engine.dispose()
