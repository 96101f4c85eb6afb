"""Alembic environment: runs migrations as the schema owner over the async drivers."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from clinicguard.migrations.schema import include_object, metadata

config = context.config
target_metadata = metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=include_object,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _transactional_sqlite_ddl(engine: AsyncEngine) -> None:
    """Python's sqlite3 opens transactions only before DML, so DDL would commit as it runs
    and a failed migration would leave half a schema change. Take over: no implicit
    transactions, and an explicit BEGIN for each of SQLAlchemy's (SQLAlchemy's documented
    recipe for pysqlite)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _no_implicit(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")


async def _run_async(url: str) -> None:
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":
        _transactional_sqlite_ddl(engine)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    asyncio.run(_run_async(config.get_main_option("sqlalchemy.url") or ""))


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run `clinicguard migrate`")
run_migrations_online()
