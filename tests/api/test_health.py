"""Liveness and readiness probes, on both backends."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from clinicguard.app import create_app
from clinicguard.settings import Settings
from clinicguard.store.kv import RedisKeyValueStore
from tests.conftest import client_for


async def test_healthz_is_public_and_says_only_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_checks_database_and_kv(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


async def test_readyz_reports_unavailable_kv_with_status_only(settings: Settings) -> None:
    # A Redis that is not there: port 1 on loopback refuses at once.
    dead_kv = RedisKeyValueStore("redis://127.0.0.1:1/0", timeout=0.5)
    app = create_app(settings, kv=dead_kv)
    async with app.router.lifespan_context(app), client_for(app) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable"}


async def test_readyz_reports_unavailable_database(make_settings: object) -> None:
    build = make_settings  # type: ignore[assignment]
    settings: Settings = build(  # type: ignore[operator]
        database_url="postgresql+asyncpg://nobody@127.0.0.1:1/none",
        migration_database_url="postgresql+asyncpg://nobody@127.0.0.1:1/none",
    )
    app: FastAPI = create_app(settings)
    async with app.router.lifespan_context(app), client_for(app) as client:
        response = await client.get("/readyz")
        live = await client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable"}
    assert live.status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_probes_leak_no_versions(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert "server" not in response.headers
    assert "version" not in response.text.lower()
