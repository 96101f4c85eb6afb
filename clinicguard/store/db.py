"""The database: engine, tenant-scoped transactions, and failure mapping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from clinicguard.store.interfaces import DatabaseUnavailable, TenantContext

#: Per-transaction settings PostgreSQL row-level security policies read.
TENANT_SETTINGS = ("app.clinic_id", "app.user_id", "app.role")
_SET_TENANT = text(
    "SELECT set_config('app.clinic_id', :clinic_id, true),"
    " set_config('app.user_id', :user_id, true),"
    " set_config('app.role', :role, true)"
)


def _is_connectivity_error(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout | OSError | TimeoutError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _unicode_lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # SQLite's own lower() folds only A-Z; PostgreSQL's folds every letter ("JOÃO").
    dbapi_connection.create_function("lower", 1, _unicode_lower, deterministic=True)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_engine(
    url: str, *, pool_size: int = 10, statement_timeout_ms: int = 5000, **kwargs: Any
) -> AsyncEngine:
    """An async engine with timeouts on every path (connect, statement, pool checkout)."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 5}, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=5,
        pool_recycle=1800,
        connect_args={
            "timeout": 5,
            "command_timeout": statement_timeout_ms / 1000 + 1,
            "server_settings": {
                "statement_timeout": str(statement_timeout_ms),
                "idle_in_transaction_session_timeout": str(statement_timeout_ms * 4),
                "application_name": "clinicguard",
            },
        },
        **kwargs,
    )
    _ping_idle_connections(engine)
    return engine


#: A pooled connection idle longer than this is pinged before use (a database restart or
#: a dropped connection is then found before the request's transaction, not in it).
IDLE_PING_SECONDS = 10.0


def _ping_idle_connections(engine: AsyncEngine) -> None:
    """Pessimistic disconnect handling for idle connections only: SQLAlchemy's
    ``pool_pre_ping`` pings on every checkout (three round trips with asyncpg), which on a
    busy server is most of a short request's database time."""
    pool_events = engine.sync_engine.pool
    dialect = engine.sync_engine.dialect

    def checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is not None and time.monotonic() - idle_since < IDLE_PING_SECONDS:
            return
        try:
            alive = dialect.do_ping(dbapi_connection)
        except Exception as exc:  # any failure: let the pool replace the connection
            raise DisconnectionError() from exc
        if not alive:
            raise DisconnectionError()

    event.listen(pool_events, "checkin", checked_in)
    event.listen(pool_events, "checkout", checked_out)


class KeyedLocks:
    """One asyncio lock per key, in this process (dropped when nobody holds or waits)."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]


_ADVISORY_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")


class Database:
    """The application's database handle. Services open transactions through
    :meth:`transaction`, which scopes them to a tenant and fails closed."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
        self._key_locks = KeyedLocks()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Database:
        return cls(create_engine(url, **kwargs))

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def has_row_level_security(self) -> bool:
        return self.dialect == "postgresql"

    @asynccontextmanager
    async def transaction(self, tenant: TenantContext | None = None) -> AsyncIterator[AsyncSession]:
        """One transaction, committed when the block ends without error and rolled back
        otherwise. With ``tenant`` the transaction is scoped to that clinic (and, on
        PostgreSQL, so is row-level security). Raises DatabaseUnavailable when the database
        cannot be reached or times out."""
        try:
            async with self._sessions() as session, session.begin():
                if tenant is not None:
                    await self.set_tenant(session, tenant)
                yield session
        except (DBAPIError, PoolTimeout, OSError, TimeoutError) as exc:
            if _is_connectivity_error(exc):
                raise DatabaseUnavailable() from exc
            raise

    @asynccontextmanager
    async def serialized(
        self, key: str, tenant: TenantContext | None = None
    ) -> AsyncIterator[AsyncSession]:
        """A transaction that runs alone among the transactions of the same ``key`` (a
        check-then-write such as "no overlapping appointment" or "one administrator
        stays"): an in-process lock, and on PostgreSQL a transaction-scoped advisory lock
        that serializes the other processes too."""
        async with self._key_locks.hold(key), self.transaction(tenant) as session:
            if self.dialect == "postgresql":
                await session.execute(_ADVISORY_LOCK, {"key": key})
            yield session

    async def set_tenant(self, session: AsyncSession, tenant: TenantContext) -> None:
        """Scope the rest of an open transaction to ``tenant`` (sign-in learns who is
        signing in half-way through its transaction)."""
        session.info["tenant"] = tenant
        if self.has_row_level_security:
            await session.execute(
                _SET_TENANT,
                {
                    "clinic_id": str(tenant.clinic_id or ""),
                    "user_id": str(tenant.user_id or ""),
                    "role": tenant.role or "",
                },
            )

    async def set_setting(self, session: AsyncSession, name: str, value: str) -> None:
        """Set one more ``app.*`` setting for the rest of the transaction (PostgreSQL; a
        no-op where there is no row-level security to read it)."""
        if not name.startswith("app.") or name in TENANT_SETTINGS:
            raise ValueError(f"not an extra tenant setting: {name}")
        if self.has_row_level_security:
            await session.execute(
                text("SELECT set_config(:name, :value, true)"), {"name": name, "value": value}
            )

    async def ping(self) -> None:
        """Return when the database answers a trivial query; raise DatabaseUnavailable.
        Callers bound the wait (``asyncio.wait_for``)."""
        async with self.transaction() as session:
            await session.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


_ROLE_FACTS = text(
    "SELECT r.rolsuper, r.rolbypassrls,"
    " (SELECT count(*) FROM pg_tables t"
    "   WHERE t.tableowner = current_user AND t.schemaname = current_schema()) AS owned"
    " FROM pg_roles r WHERE r.rolname = current_user"
)


async def connection_role_problems(db: Database) -> list[str]:
    """Why the application's PostgreSQL role would bypass row-level security (superuser,
    BYPASSRLS, or owner of tables); empty on SQLite, which has no RLS at all."""
    if db.dialect != "postgresql":
        return []
    async with db.transaction() as session:
        row = (await session.execute(_ROLE_FACTS)).one()
    problems = []
    if row.rolsuper:
        problems.append("the application connects to PostgreSQL as a superuser")
    if row.rolbypassrls:
        problems.append("the application's PostgreSQL role has BYPASSRLS")
    if row.owned:
        problems.append(f"the application's PostgreSQL role owns {row.owned} table(s)")
    return problems
