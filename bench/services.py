"""The benchmark's own PostgreSQL databases and Redis database, made and removed per run.

As in tests/services.py: a fresh database owned by ``cg_bench_owner`` (which runs the
migrations) and an application role ``cg_bench_app`` that owns no tables, is not a
superuser and has no BYPASSRLS, so both servers connect as production would. Next to
clinicguard's schema, a ``bench`` schema holds the bare app's tables. The patients' key
vault (``CLINICGUARD_KEY_VAULT_URL``) gets a database of its own, ``<name>_vault``, owned
by a role of its own ``cg_bench_vault`` (the vault creates its one table on first use), as
production requires: a database apart from the clinical one, not SQLite. Redis: one
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
VAULT_ROLE = "cg_bench_vault"
"""Owns the key vault's database (the servers connect to the vault as this role)."""
CONNECT_TIMEOUT_SECONDS = 5
BENCH_RECORDS = 1000
"""Rows in bench.records (the bare app's primary-key reads)."""
BENCH_USERS = 100
"""Rows in bench.users (the bare app's ``GET /users/{id}``)."""

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
-- The shape of clinicguard's users row (migrations 0001 + 0002): same columns, types,
-- primary key and unique email, values of the same width (an argon2id PHC string, a
-- sealed 32-character TOTP seed).
CREATE TABLE bench.users (
    id uuid PRIMARY KEY,
    email varchar(254) NOT NULL UNIQUE,
    full_name varchar(200) NOT NULL,
    password_hash varchar(255) NOT NULL,
    password_changed_at timestamptz NOT NULL,
    is_platform_admin boolean NOT NULL,
    is_active boolean NOT NULL,
    professional_license varchar(40),
    mfa_enabled boolean NOT NULL,
    totp_secret_sealed bytea,
    must_change_password boolean NOT NULL DEFAULT false,
    last_login_at timestamptz,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
INSERT INTO bench.records (id, clinic_id, full_name, birth_date, phone, email, notes)
SELECT gen_random_uuid(), md5('bench clinic ' || n % 2)::uuid, 'Paciente ' || n,
       date '1950-01-01' + (n * 13) % 20000,
       '+55119' || lpad((n * 7919 % 100000000)::text, 8, '0'),
       'paciente' || n || '@email.example.com', repeat('Anotação clínica. ', 8)
FROM generate_series(1, {BENCH_RECORDS}) AS n;
INSERT INTO bench.users (id, email, full_name, password_hash, password_changed_at,
                         is_platform_admin, is_active, professional_license, mfa_enabled,
                         totp_secret_sealed, must_change_password, last_login_at,
                         created_at, updated_at)
SELECT gen_random_uuid(), 'medico' || n || '@bemviver.example.com.br', 'Dr. Médico ' || n,
       '$argon2id$v=19$m=19456,t=2,p=1$' || left(md5('salt' || n), 22) || '$'
           || left(md5('hash' || n) || md5('more' || n), 43),
       now() - interval '1 day', false, true, 'CRM-SP ' || (100000 + n), true,
       decode(md5('seed' || n) || md5('nonce' || n) || md5('tag' || n) || left(md5('x' || n), 24),
              'hex'),
       false, now() - interval '1 hour', now() - interval '30 days', now() - interval '1 hour'
FROM generate_series(1, {BENCH_USERS}) AS n;
GRANT USAGE ON SCHEMA bench TO {APP_ROLE};
GRANT SELECT ON bench.records TO {APP_ROLE};
GRANT SELECT ON bench.users TO {APP_ROLE};
GRANT INSERT ON bench.events TO {APP_ROLE};
ANALYZE bench.records;
ANALYZE bench.users;
"""  # noqa: S608  # built from module constants only, no input reaches it


@dataclass(frozen=True)
class BenchDatabase:
    """One run's PostgreSQL database and the URLs of its two roles."""

    name: str

    def url(
        self, role: str, driver: str = "postgresql+asyncpg", database: str | None = None
    ) -> str:
        """``role``'s URL of the run's database (or of ``database``, e.g. the vault's)."""
        return (
            make_url(PG_ADMIN_URL)
            .set(drivername=driver, username=role, password=None, database=database or self.name)
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

    @property
    def admin_url(self) -> str:
        """The superuser's (``CLINICGUARD_BENCH_DATABASE_URL``) psycopg URL of the run's
        database: row-level security does not apply to it (checks, not load)."""
        return (
            make_url(PG_ADMIN_URL)
            .set(drivername="postgresql", database=self.name)
            .render_as_string(hide_password=False)
        )

    @property
    def vault_name(self) -> str:
        return f"{self.name}_vault"

    @property
    def vault_url(self) -> str:
        """The patients' key vault: a database of its own, as its own role."""
        return self.url(VAULT_ROLE, database=self.vault_name)


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
            (VAULT_ROLE, "NOSUPERUSER NOCREATEROLE NOBYPASSRLS"),
        ):
            exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            if not exists:
                admin.execute(f"CREATE ROLE {role} LOGIN {options}")
        admin.execute(f'CREATE DATABASE "{name}" OWNER {OWNER_ROLE}')
        admin.execute(f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC')
        admin.execute(f'GRANT CONNECT ON DATABASE "{name}" TO {APP_ROLE}')
        db = BenchDatabase(name)
        admin.execute(f'CREATE DATABASE "{db.vault_name}" OWNER {VAULT_ROLE}')
        admin.execute(f'REVOKE ALL ON DATABASE "{db.vault_name}" FROM PUBLIC')
    return db


def max_connections() -> int:
    """PostgreSQL's ``max_connections`` (both servers' pools must fit under it)."""
    with psycopg.connect(
        _admin_dsn(), autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
    ) as admin:
        row = admin.execute("SHOW max_connections").fetchone()
    return int(row[0]) if row else 0


def drop_database(db: BenchDatabase) -> None:
    """Drop the run's databases (clinical and key vault), closing any connection still open
    to them."""
    with psycopg.connect(
        _admin_dsn(), autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
    ) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
        admin.execute(f'DROP DATABASE IF EXISTS "{db.vault_name}" WITH (FORCE)')


@dataclass(frozen=True)
class BenchRows:
    """The primary keys of the bare app's tables."""

    record_ids: list[str]
    """bench.records (``GET /records/{id}``)."""
    user_ids: list[str]
    """bench.users (``GET /users/{id}``)."""


def add_bench_schema(db: BenchDatabase) -> BenchRows:
    """Add the bare app's ``bench`` schema as the owner (after clinicguard's migrations);
    return the ids of its rows."""
    with psycopg.connect(
        db.url(OWNER_ROLE, driver="postgresql"),
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
    ) as owner:
        owner.execute(_BENCH_SCHEMA)
        records = owner.execute("SELECT id FROM bench.records ORDER BY id").fetchall()
        users = owner.execute("SELECT id FROM bench.users ORDER BY id").fetchall()
    return BenchRows([str(row[0]) for row in records], [str(row[0]) for row in users])


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
