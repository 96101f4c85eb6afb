"""What migrations share: PostgreSQL grants to the application role.

The application connects as its own role (the user of CLINICGUARD_DATABASE_URL), which owns
no tables and is not a superuser, so row-level security applies to it; migrations run as
the owner (CLINICGUARD_MIGRATION_DATABASE_URL) and grant the application exactly what it
needs, table by table.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from alembic import context, op
from sqlalchemy import text

from clinicguard.crypto.keys import MasterKeyProvider

READ_WRITE = ("SELECT", "INSERT", "UPDATE", "DELETE")


def app_role() -> str | None:
    """The role to grant to, or None when the application connects as the owner itself
    (a single-role development database)."""
    role = context.config.attributes.get("app_role")
    return str(role) if role else None


def master_key() -> bytes | None:
    """The master key, for data migrations that must encrypt (None when not given)."""
    key = context.config.attributes.get("master_key")
    return bytes(key) if key else None


def key_provider() -> Any:
    """The KEK provider for data migrations that create data keys: the one the operator
    configured (given by ``clinicguard migrate``), or the master key's; None without
    either."""
    provider = context.config.attributes.get("key_provider")
    if provider is not None:
        return provider
    key = master_key()
    if key is None:
        return None
    return MasterKeyProvider(key)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def grant_app_access(tables: Iterable[str], privileges: Iterable[str] = READ_WRITE) -> None:
    """GRANT ``privileges`` on ``tables`` to the application role (PostgreSQL only)."""
    bind = op.get_bind()
    role = app_role()
    if bind.dialect.name != "postgresql" or role is None:
        return
    exists = bind.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).scalar()
    if not exists:
        raise RuntimeError(
            f"the application role {role!r} does not exist; create it first "
            "(see docs/operations.md, PostgreSQL roles)"
        )
    privs = ", ".join(privileges)
    op.execute(f"GRANT USAGE ON SCHEMA public TO {_quote(role)}")
    for table in tables:
        op.execute(f"GRANT {privs} ON TABLE {_quote(table)} TO {_quote(role)}")


class Policy(NamedTuple):
    """A table's row-level security, one policy per command."""

    read: str
    """Which rows SELECT (and UPDATE/DELETE) can see."""
    write: str
    """Which rows INSERT and UPDATE may leave behind (and DELETE may remove)."""
    deletable: bool = True
    """False: append-only for the application (no DELETE policy: deletes touch no row)."""
    update: str | None = None
    """Which rows UPDATE may change and leave behind, when narrower than ``write``."""


POLICY_COMMANDS = ("read", "insert", "update", "delete")


def create_policies(table: str, policy: Policy) -> None:
    """Enable and force row-level security on ``table`` with ``<table>_<command>``
    policies (PostgreSQL only; callers check the dialect)."""
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY {table}_read ON {table} FOR SELECT USING ({policy.read})")
    op.execute(f"CREATE POLICY {table}_insert ON {table} FOR INSERT WITH CHECK ({policy.write})")
    update = policy.update or policy.write
    op.execute(
        f"CREATE POLICY {table}_update ON {table} FOR UPDATE"
        f" USING (({policy.read}) AND ({update})) WITH CHECK ({update})"
    )
    if policy.deletable:
        op.execute(
            f"CREATE POLICY {table}_delete ON {table} FOR DELETE"
            f" USING (({policy.read}) AND ({policy.write}))"
        )


def drop_policies(table: str) -> None:
    """Inverse of :func:`create_policies`."""
    for command in POLICY_COMMANDS:
        op.execute(f"DROP POLICY IF EXISTS {table}_{command} ON {table}")
    op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
