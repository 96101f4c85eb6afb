"""Shared fixtures: backends (SQLite + memory, PostgreSQL + Redis), settings, app, client."""

from __future__ import annotations

import base64
import secrets
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from clinicguard.app import create_app
from clinicguard.core.clock import FrozenClock
from clinicguard.core.logging import configure_logging
from clinicguard.settings import Settings
from clinicguard.store.interfaces import KeyValueStore
from clinicguard.store.kv import MemoryKeyValueStore, RedisKeyValueStore
from clinicguard.store.migrate import upgrade_to_head
from clinicguard.wiring import Services
from tests.factories.people import Person
from tests.services import (
    REDIS_URL,
    PostgresDatabase,
    create_postgres_database,
    drop_postgres_database,
    flush_redis,
    redis_or_skip,
    truncate_all,
)

SERVICES = [pytest.mark.postgres, pytest.mark.redis]
configure_logging(json_logs=True)


@dataclass(frozen=True)
class Backend:
    """Where one test's app keeps its data."""

    name: str
    database_url: str
    migration_url: str
    redis_url: str
    postgres: PostgresDatabase | None = None


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (faster than migrating every time)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "clinicguard.db"
    upgrade_to_head(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_db() -> Iterator[PostgresDatabase]:
    """This test session's PostgreSQL database, migrated as the owner role."""
    db = create_postgres_database()
    try:
        upgrade_to_head(db.owner_url, db.app_url)
        yield db
    finally:
        drop_postgres_database(db)


def sqlite_backend(template: Path, tmp_path: Path) -> Backend:
    path = tmp_path / "clinicguard.db"
    shutil.copyfile(template, path)
    url = f"sqlite+aiosqlite:///{path}"
    return Backend("sqlite-memory", url, url, "")


@pytest.fixture(
    params=[
        pytest.param("sqlite-memory", id="sqlite-memory"),
        pytest.param("postgresql-redis", id="postgresql-redis", marks=SERVICES),
    ]
)
def backend(
    request: pytest.FixtureRequest, sqlite_template: Path, tmp_path: Path
) -> Iterator[Backend]:
    """Every API test runs on both: SQLite with the in-process store, and PostgreSQL (as a
    role that owns no tables) with Redis."""
    if request.param == "sqlite-memory":
        yield sqlite_backend(sqlite_template, tmp_path)
        return
    yield request.getfixturevalue("postgres_backend")


@pytest.fixture
def postgres_backend(postgres_db: PostgresDatabase) -> Iterator[Backend]:
    """PostgreSQL and Redis only, for properties SQLite does not have (roles, RLS)."""
    redis_or_skip()
    flush_redis()
    try:
        yield Backend(
            "postgresql-redis", postgres_db.app_url, postgres_db.owner_url, REDIS_URL, postgres_db
        )
    finally:
        truncate_all(postgres_db)
        flush_redis()


def fresh_secrets() -> dict[str, Any]:
    return {
        "secret_key": secrets.token_urlsafe(48),
        "master_key": base64.b64encode(secrets.token_bytes(32)).decode(),
    }


@pytest.fixture
def make_settings(backend: Backend, tmp_path: Path) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "env": "test",
            "data_dir": tmp_path,
            "database_url": backend.database_url,
            "migration_database_url": backend.migration_url,
            "redis_url": backend.redis_url,
            **fresh_secrets(),
        }
        values.update(overrides)
        return Settings(**values)

    return build


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The application with its lifespan running (start-up checks, clean shutdown)."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


def client_for(app: FastAPI, client_ip: str = "203.0.113.10") -> httpx.AsyncClient:
    """An HTTP client that talks to ``app`` in-process, as a peer at ``client_ip``."""
    transport = httpx.ASGITransport(app=app, client=(client_ip, 51000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as http:
        yield http


@dataclass
class AuthWorld:
    """An app with a frozen clock that tests move, its services and a client."""

    app: FastAPI
    client: httpx.AsyncClient
    services: Services
    clock: FrozenClock

    async def login(
        self, person: Person, *, device_token: str | None = None, offset_steps: int = 0
    ) -> dict[str, Any]:
        """Complete a sign-in (password, then TOTP when enrolled); returns the token pair.
        Each TOTP step is accepted once: advance the clock 30 s between MFA sign-ins of the
        same person."""
        body: dict[str, Any] = {"email": person.email, "password": person.password}
        if device_token:
            body["device_token"] = device_token
        response = await self.client.post("/api/v1/auth/login", json=body)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        if data.get("mfa_required"):
            response = await self.client.post(
                "/api/v1/auth/mfa/verify",
                json={
                    "mfa_token": data["mfa_token"],
                    "code": person.code(self.clock, offset_steps),
                },
            )
            assert response.status_code == 200, response.text
            data = response.json()
        return data

    @staticmethod
    def bearer(tokens: dict[str, Any] | str) -> dict[str, str]:
        token = tokens if isinstance(tokens, str) else tokens["access_token"]
        return {"authorization": f"Bearer {token}"}


@pytest.fixture
def make_world(make_settings: Callable[..., Settings]) -> Callable[..., Any]:
    """Build an AuthWorld with settings overrides (``async with make_world(**o) as w``)."""

    @asynccontextmanager
    async def build(**overrides: Any) -> AsyncIterator[AuthWorld]:
        clock = FrozenClock(datetime.now(UTC).replace(microsecond=0))
        app = create_app(make_settings(**overrides), clock=clock)
        async with app.router.lifespan_context(app), client_for(app) as client:
            yield AuthWorld(app=app, client=client, services=app.state.services, clock=clock)

    return build


@pytest.fixture
async def world(make_world: Callable[..., Any]) -> AsyncIterator[AuthWorld]:
    async with make_world() as w:
        yield w


@pytest.fixture(
    params=[
        pytest.param("memory", id="memory"),
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
    ]
)
async def kv_store(request: pytest.FixtureRequest) -> AsyncIterator[KeyValueStore]:
    """Each key-value implementation, for the one contract suite."""
    if request.param == "memory":
        store: KeyValueStore = MemoryKeyValueStore()
    else:
        redis_or_skip()
        flush_redis()
        store = RedisKeyValueStore(REDIS_URL)
    try:
        yield store
    finally:
        await store.close()
        if request.param == "redis":
            flush_redis()
