"""The benchmark's own PostgreSQL database and Redis database, made and removed per run.

As in tests/services.py: a fresh database owned by ``cg_bench_owner`` (which runs the
migrations) and an application role ``cg_bench_app`` that owns no tables, is not a
superuser and has no BYPASSRLS, so both servers connect as production would. Next to
clinicguard's schema, a ``bench`` schema holds the bare app's two tables. Redis: one
database (14 by default), flushed at the start and the end.

Override the servers with ``CLINICGUARD_BENCH_DATABASE_URL`` (a superuser's URL; the
default is the local ``postgres`` superuser) and ``CLINICGUARD_BENCH_REDIS_URL``.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

import psycopg
import redis
from sqlalchemy.engine import make_url

PG_ADMIN_URL = os.environ.get(
    "CLINICGUARD_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("CLINICGUARD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
OWNER_ROLE = "cg_bench_owner"
APP_ROLE = "cg_bench_app"
CONNECT_TIMEOUT_SECONDS = 5
BENCH_RECORDS = 1000
"""Rows in bench.records (the bare app's primary-key reads)."""

_BENCH_SCHEMA = f"""
CREATE SCHEMA bench;
CREATE TABLE bench.records (
    id uuid PRIMARY KEY,
    clinic_id uuid NOT NULL,
    full_name text NOT NULL,
    birth_date date NOT NULL,
    phone text NOT NULL,
    email text NOT NULL,
    notes text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE bench.events (
    id uuid PRIMARY KEY,
    occurred_at timestamptz NOT NULL,
    record_id uuid NOT NULL,
    clinic_id uuid NOT NULL,
    actor text NOT NULL,
    action text NOT NULL
);
CREATE INDEX events_record ON bench.events (clinic_id, record_id, occurred_at);
INSERT INTO bench.records (id, clinic_id, full_name, birth_date, phone, email, notes)
SELECT gen_random_uuid(), md5('bench clinic ' || n % 2)::uuid, 'Paciente ' || n,
       date '1950-01-01' + (n * 13) % 20000,
       '+55119' || lpad((n * 7919 % 100000000)::text, 8, '0'),
       'paciente' || n || '@email.example.com', repeat('Anotação clínica. ', 8)
FROM generate_series(1, {BENCH_RECORDS}) AS n;
GRANT USAGE ON SCHEMA bench TO {APP_ROLE};
GRANT SELECT ON bench.records TO {APP_ROLE};
GRANT INSERT ON bench.events TO {APP_ROLE};
ANALYZE bench.records;
"""  # noqa: S608  # built from module constants only, no input reaches it


@dataclass(frozen=True)
class BenchDatabase:
    """One run's PostgreSQL database and the URLs of its two roles."""

    name: str

    def url(self, role: str, driver: str = "postgresql+asyncpg") -> str:
        return (
            make_url(PG_ADMIN_URL)
            .set(drivername=driver, username=role, password=None, database=self.name)
            .render_as_string(hide_password=False)
        )

    @property
    def app_url(self) -> str:
        """The application role (owns nothing; row-level security applies to it)."""
        return self.url(APP_ROLE)

    @property
    def owner_url(self) -> str:
        """The schema owner (migrations only)."""
        return self.url(OWNER_ROLE)


def _admin_dsn() -> str:
    return make_url(PG_ADMIN_URL).set(drivername="postgresql").render_as_string(hide_password=False)


def create_database() -> BenchDatabase:
    """A fresh, empty database owned by the owner role; both roles exist afterwards.
    Raises psycopg.OperationalError when PostgreSQL does not answer."""
    name = f"cg_bench_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(
        _admin_dsn(), autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
    ) as admin:
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
    return BenchDatabase(name)


def max_connections() -> int:
    """PostgreSQL's ``max_connections`` (both servers' pools must fit under it)."""
    with psycopg.connect(
        _admin_dsn(), autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
    ) as admin:
        row = admin.execute("SHOW max_connections").fetchone()
    return int(row[0]) if row else 0


def drop_database(db: BenchDatabase) -> None:
    """Drop the run's database, closing any connection still open to it."""
    with psycopg.connect(
        _admin_dsn(), autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
    ) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')


def add_bench_schema(db: BenchDatabase) -> list[str]:
    """Add the bare app's ``bench`` schema as the owner (after clinicguard's migrations);
    return the ids of its records."""
    with psycopg.connect(
        db.url(OWNER_ROLE, driver="postgresql"),
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
    ) as owner:
        owner.execute(_BENCH_SCHEMA)
        return [str(row[0]) for row in owner.execute("SELECT id FROM bench.records ORDER BY id")]


def flush_redis() -> None:
    """Empty the benchmark's Redis database (and only that one). Raises redis.RedisError
    or OSError when Redis does not answer."""
    client = redis.Redis.from_url(
        REDIS_URL, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS, socket_timeout=5
    )
    try:
        client.flushdb()
    finally:
        client.close()
