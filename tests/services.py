"""Real PostgreSQL and Redis for the tests (never mocks).

PostgreSQL: each test session creates its own database owned by ``cg_test_owner`` (which
runs the migrations) and connects the application as ``cg_test_app``, a role that owns no
tables, is not a superuser and has no BYPASSRLS, so row-level security applies to it as in
production. Redis: database 15 only, flushed around each test.

Where a server does not answer, its tests skip with the reason, unless
CLINICGUARD_REQUIRE_SERVICES=1 (set by .ci/run), which turns the skip into a failure.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

REQUIRE_SERVICES = os.environ.get("CLINICGUARD_REQUIRE_SERVICES") == "1"
PG_ADMIN_URL = os.environ.get(
    "CLINICGUARD_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("CLINICGUARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
OWNER_ROLE = "cg_test_owner"
APP_ROLE = "cg_test_app"


def unavailable(what: str, reason: object) -> None:
    """Skip (or, when services are required, fail) a test whose server is not reachable."""
    message = f"{what} is not reachable ({reason})"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message}; CLINICGUARD_REQUIRE_SERVICES=1 forbids skipping", pytrace=False)
    pytest.skip(message)


@dataclass(frozen=True)
class PostgresDatabase:
    name: str
    admin_url: str  # psycopg URL of the superuser, for test set-up and tampering only

    def url(self, role: str, driver: str = "postgresql+asyncpg") -> str:
        base = make_url(PG_ADMIN_URL)
        return base.set(
            drivername=driver, username=role, password=None, database=self.name
        ).render_as_string(hide_password=False)

    @property
    def app_url(self) -> str:
        return self.url(APP_ROLE)

    @property
    def owner_url(self) -> str:
        return self.url(OWNER_ROLE)

    def psycopg_url(self, role: str) -> str:
        return self.url(role, driver="postgresql")


def _admin_dsn(database: str | None = None) -> str:
    url = make_url(PG_ADMIN_URL).set(drivername="postgresql")
    if database:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


def create_postgres_database() -> PostgresDatabase:
    """A fresh database owned by the owner role, with both test roles present."""
    import psycopg

    try:
        admin = psycopg.connect(_admin_dsn(), autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL", exc)
        raise  # unreachable: unavailable() skips or fails
    name = f"cg_test_{os.getpid()}_{secrets.token_hex(4)}"
    with admin:
        for role, options in (
            (OWNER_ROLE, "NOSUPERUSER NOCREATEROLE"),
            (APP_ROLE, "NOSUPERUSER NOCREATEROLE NOBYPASSRLS"),
        ):
            exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            if not exists:
                admin.execute(f"CREATE ROLE {role} LOGIN {options}")
        admin.execute(f'CREATE DATABASE "{name}" OWNER {OWNER_ROLE}')
        admin.execute(f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC')
        admin.execute(f'GRANT CONNECT ON DATABASE "{name}" TO {APP_ROLE}')
    return PostgresDatabase(name=name, admin_url=_admin_dsn(name))


def drop_postgres_database(db: PostgresDatabase) -> None:
    import psycopg

    with psycopg.connect(_admin_dsn(), autocommit=True, connect_timeout=3) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')


def truncate_all(db: PostgresDatabase) -> None:
    """Empty every application table, keeping the migrated schema (as the superuser, with
    the audit trail's maintenance switch on: its triggers refuse TRUNCATE otherwise)."""
    import psycopg

    with psycopg.connect(db.admin_url, autocommit=True) as conn:
        conn.execute("SET clinicguard.audit_maintenance = 'on'")
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename <> 'alembic_version'"
            )
        ]
        if tables:
            conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE")


def redis_or_skip() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        unavailable("Redis", exc)
    finally:
        client.close()
    return REDIS_URL


def flush_redis() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.flushdb()
    finally:
        client.close()


def process_env(data_dir: Path, database: Path, **extra: str) -> dict[str, str]:
    """The environment of a clinicguard subprocess in tests: test mode, a SQLite database,
    a fresh secret and master key, and no CLINICGUARD_* variable from the outer shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINICGUARD_")}
    env.update(
        CLINICGUARD_ENV="test",
        CLINICGUARD_DATA_DIR=str(data_dir),
        CLINICGUARD_DATABASE_URL=f"sqlite+aiosqlite:///{database}",
        CLINICGUARD_SECRET_KEY=base64.urlsafe_b64encode(os.urandom(48)).decode(),
        CLINICGUARD_MASTER_KEY=base64.b64encode(os.urandom(32)).decode(),
    )
    env.update(extra)
    return env
