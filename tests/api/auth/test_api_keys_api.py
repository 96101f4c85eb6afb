"""API keys for integrations through HTTP (both backends): created by a clinic_admin and
shown once, stored only as a keyed hash, found by prefix, scoped, expiring, revocable, and
never a stand-in for a person's sign-in."""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from sqlalchemy import select
from structlog.testing import capture_logs

from clinicguard.audit.models import AuditEvent
from clinicguard.auth.deps import CurrentPrincipal
from clinicguard.auth.models import ApiKey
from clinicguard.core.principal import Role
from clinicguard.store.interfaces import TenantContext
from clinicguard.store.tenancy import Clinic
from tests.audit_trail import trail_events
from tests.conftest import AuthWorld, client_for
from tests.factories.people import Person, add_clinic, add_person

PROBE_URL = "/api/v1/_probe_api_keys/principal"
KEYS_URL = "/api/v1/api-keys"
SCOPES = ["patients:read", "appointments:create"]
BODIES: dict[str, dict[str, Any]] = {
    KEYS_URL: {"name": "x", "scopes": ["patients:read"]},
    "/api/v1/auth/password": {"current_password": "x", "new_password": "Gir@ssol-Azul7"},
}

probe = APIRouter(prefix="/api/v1/_probe_api_keys")


@probe.get("/principal")
async def who_is_calling(principal: CurrentPrincipal) -> dict[str, Any]:
    return {
        "role": str(principal.role),
        "clinic_id": str(principal.clinic_id),
        "scopes": sorted(principal.scopes),
        "auth_method": principal.auth_method,
        "session_id": principal.session_id,
    }


@pytest.fixture
def keys_world(world: AuthWorld) -> AuthWorld:
    """The world with a probe route that takes any CurrentPrincipal (as data routes will)."""
    world.app.include_router(probe)
    return world


async def admin_of_new_clinic(world: AuthWorld) -> tuple[Person, dict[str, Any]]:
    clinic = await add_clinic(world.services)
    admin = await add_person(world.services, clinic.id, Role.CLINIC_ADMIN)
    return admin, await world.login(admin)


async def create_key(world: AuthWorld, tokens: dict[str, Any], **body: Any) -> httpx.Response:
    payload = {"name": "laboratório", "scopes": SCOPES, **body}
    return await world.client.post(KEYS_URL, json=payload, headers=world.bearer(tokens))


async def created_key(world: AuthWorld, tokens: dict[str, Any], **body: Any) -> dict[str, Any]:
    response = await create_key(world, tokens, **body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def call_probe(world: AuthWorld, headers: dict[str, str]) -> httpx.Response:
    return await world.client.get(PROBE_URL, headers=headers)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def x_api_key(key: str) -> dict[str, str]:
    return {"x-api-key": key}


async def events(world: AuthWorld, kind: str) -> list[AuditEvent]:
    return await trail_events(world.services.db, types=kind)


async def test_created_key_is_shown_once_and_stored_hashed(keys_world: AuthWorld) -> None:
    """201 with a cgk_ key once; lists show the prefix only; the table holds no plaintext."""
    world = keys_world
    admin, tokens = await admin_of_new_clinic(world)
    created = await created_key(world, tokens)
    key = created["key"]
    assert key.startswith("cgk_")
    assert key.startswith(f"cgk_{created['prefix']}_")
    assert created["scopes"] == sorted(SCOPES)
    listed = await world.client.get(KEYS_URL, headers=world.bearer(tokens))
    assert listed.status_code == 200
    (entry,) = listed.json()
    assert entry["prefix"] == created["prefix"]
    assert "key" not in entry
    assert key not in listed.text
    secret_part = key[len(f"cgk_{created['prefix']}_") :]  # the secret may contain "_"
    assert len(secret_part) == 43
    assert secret_part not in listed.text
    async with world.services.db.transaction(TenantContext.system(admin.clinic_id)) as session:
        rows = list((await session.scalars(select(ApiKey))).all())
    assert len(rows) == 1
    stored = " ".join(str(getattr(rows[0], c.key)) for c in ApiKey.__table__.columns)
    assert key not in stored
    assert secret_part not in stored
    assert rows[0].secret_hash != key
    created_events = await events(world, "auth:api_key:created")
    assert len(created_events) == 1
    assert key not in str((created_events[0].details, created_events[0].reason))
    assert secret_part not in str((created_events[0].details, created_events[0].reason))
    assert admin.id == created_events[0].actor_id


@pytest.mark.parametrize("header", [bearer, x_api_key])
async def test_key_authenticates_as_integration_of_its_clinic(
    keys_world: AuthWorld, header: Any
) -> None:
    """Bearer or X-API-Key: the principal is role integration, the key's clinic and scopes."""
    world = keys_world
    admin, tokens = await admin_of_new_clinic(world)
    key = (await created_key(world, tokens))["key"]
    response = await call_probe(world, header(key))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "role": "integration",
        "clinic_id": str(admin.clinic_id),
        "scopes": sorted(SCOPES),
        "auth_method": "api_key",
        "session_id": None,
    }


async def test_key_cannot_act_as_a_person(keys_world: AuthWorld) -> None:
    """Routes that need a person's sign-in refuse an API key with 403."""
    world = keys_world
    _, tokens = await admin_of_new_clinic(world)
    key = (await created_key(world, tokens))["key"]
    for method, url in (
        ("GET", "/api/v1/me"),
        ("GET", "/api/v1/auth/sessions"),
        ("GET", KEYS_URL),
        ("POST", KEYS_URL),
        ("POST", "/api/v1/auth/logout"),
        ("POST", "/api/v1/auth/password"),
    ):
        for headers in (bearer(key), x_api_key(key)):
            body = BODIES.get(url) if method == "POST" else None
            response = await world.client.request(method, url, headers=headers, json=body)
            assert response.status_code == 403, (method, url, response.text)
            assert response.json()["type"].endswith("insufficient-scope")


async def test_revoked_key_is_rejected(keys_world: AuthWorld) -> None:
    """After DELETE (204) the key is a 401 at once."""
    world = keys_world
    _, tokens = await admin_of_new_clinic(world)
    created = await created_key(world, tokens)
    assert (await call_probe(world, bearer(created["key"]))).status_code == 200
    deleted = await world.client.delete(f"{KEYS_URL}/{created['id']}", headers=world.bearer(tokens))
    assert deleted.status_code == 204
    for headers in (bearer(created["key"]), x_api_key(created["key"])):
        response = await call_probe(world, headers)
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/problem+json")
    listed = (await world.client.get(KEYS_URL, headers=world.bearer(tokens))).json()
    assert listed[0]["revoked_at"] is not None


async def test_expiry_in_the_past_is_refused_and_expired_keys_stop_working(
    keys_world: AuthWorld,
) -> None:
    """expires_at in the past is a 422; a key is a 401 once its expiry passes."""
    world = keys_world
    _, tokens = await admin_of_new_clinic(world)
    past = (world.clock.now() - timedelta(minutes=1)).isoformat()
    refused = await create_key(world, tokens, expires_at=past)
    assert refused.status_code == 422
    assert "body.expires_at" in [e["field"] for e in refused.json()["errors"]]
    soon = (world.clock.now() + timedelta(minutes=2)).isoformat()
    key = (await created_key(world, tokens, expires_at=soon))["key"]
    assert (await call_probe(world, bearer(key))).status_code == 200
    world.clock.advance(121)
    assert (await call_probe(world, bearer(key))).status_code == 401
    assert (await call_probe(world, x_api_key(key))).status_code == 401


async def test_wrong_secret_with_a_real_prefix_is_rejected_and_recorded(
    keys_world: AuthWorld,
) -> None:
    """The prefix only identifies: a wrong secret is a 401 and an auth:api_key:rejected event."""
    world = keys_world
    admin, tokens = await admin_of_new_clinic(world)
    created = await created_key(world, tokens)
    forged = f"cgk_{created['prefix']}_{secrets.token_urlsafe(32)}"
    assert len(forged) == len(created["key"])
    for headers in (bearer(forged), x_api_key(forged)):
        assert (await call_probe(world, headers)).status_code == 401
    rejected = await events(world, "auth:api_key:rejected")
    assert len(rejected) == 2
    assert all(e.details.get("prefix") == created["prefix"] for e in rejected)
    assert all(e.clinic_id == admin.clinic_id for e in rejected)
    assert all(forged not in str((e.details, e.reason)) for e in rejected)


@pytest.mark.parametrize(
    "presented",
    [
        "cgk_",
        "cgk_zzzzzzzzzzzz_" + "a" * 43,
        "cgk_" + "0" * 12 + "_" + "a" * 43,
        "cgk_" + "x" * 5000,
    ],
)
async def test_malformed_or_unknown_keys_are_401(keys_world: AuthWorld, presented: str) -> None:
    """Garbage and unknown keys are a 401 problem, never a 500."""
    response = await call_probe(keys_world, x_api_key(presented))
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_only_a_clinic_admin_creates_keys(keys_world: AuthWorld) -> None:
    """A fully signed-in physician (or receptionist) cannot create or list keys (403)."""
    world = keys_world
    clinic = await add_clinic(world.services)
    for role in (Role.PHYSICIAN, Role.RECEPTIONIST):
        person = await add_person(world.services, clinic.id, role)
        tokens = await world.login(person)
        response = await create_key(world, tokens)
        assert response.status_code == 403
        assert response.headers["content-type"].startswith("application/problem+json")
        assert (await world.client.get(KEYS_URL, headers=world.bearer(tokens))).status_code == 403
    async with world.services.db.transaction(TenantContext.system(clinic.id)) as session:
        assert list((await session.scalars(select(ApiKey))).all()) == []


async def test_another_clinics_admin_cannot_see_or_revoke_the_key(keys_world: AuthWorld) -> None:
    """Another clinic's admin gets 404 on DELETE (like a missing key) and an empty list."""
    world = keys_world
    _, tokens = await admin_of_new_clinic(world)
    created = await created_key(world, tokens)
    _, other_tokens = await admin_of_new_clinic(world)
    response = await world.client.delete(
        f"{KEYS_URL}/{created['id']}", headers=world.bearer(other_tokens)
    )
    assert response.status_code == 404
    missing = await world.client.delete(
        f"{KEYS_URL}/{uuid.uuid4()}", headers=world.bearer(other_tokens)
    )
    assert missing.status_code == 404
    assert response.json()["type"] == missing.json()["type"]
    assert response.json()["detail"] == missing.json()["detail"]
    assert (await world.client.get(KEYS_URL, headers=world.bearer(other_tokens))).json() == []
    assert (await call_probe(world, bearer(created["key"]))).status_code == 200


async def test_last_used_at_is_set_after_use(keys_world: AuthWorld) -> None:
    """Using a key records when it was last used."""
    world = keys_world
    _, tokens = await admin_of_new_clinic(world)
    created = await created_key(world, tokens)
    assert created["last_used_at"] is None
    assert (await call_probe(world, x_api_key(created["key"]))).status_code == 200
    (entry,) = (await world.client.get(KEYS_URL, headers=world.bearer(tokens))).json()
    assert entry["last_used_at"] is not None


@pytest.mark.parametrize(
    "scopes",
    [
        ["Patients:Read"],
        ["full"],
        ["patients read"],
        ["patients:read:all"],
        [""],
        ["patients:read", "../etc:passwd"],
        ["patients:" + "r" * 80],
        [],
    ],
)
async def test_invalid_scopes_are_422(keys_world: AuthWorld, scopes: list[str]) -> None:
    """Scopes must be resource:action names; anything else is a 422 and no key is made."""
    world = keys_world
    admin, tokens = await admin_of_new_clinic(world)
    response = await create_key(world, tokens, scopes=scopes)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    async with world.services.db.transaction(TenantContext.system(admin.clinic_id)) as session:
        assert list((await session.scalars(select(ApiKey))).all()) == []


async def test_keys_of_a_deactivated_clinic_stop_working(keys_world: AuthWorld) -> None:
    """A clinic that is switched off loses its integrations, as its people lose sign-in."""
    world = keys_world
    admin, tokens = await admin_of_new_clinic(world)
    key = (await created_key(world, tokens))["key"]
    assert (await call_probe(world, bearer(key))).status_code == 200
    async with world.services.db.transaction() as session:
        clinic = await session.get(Clinic, admin.clinic_id)
        assert clinic is not None
        clinic.is_active = False
    world.clock.advance(31)
    refused = await world.client.post(
        "/api/v1/auth/login", json={"email": admin.email, "password": admin.password}
    )
    assert refused.status_code == 401
    assert (await call_probe(world, bearer(key))).status_code == 401


async def test_expiry_without_a_utc_offset_is_422(keys_world: AuthWorld) -> None:
    """An expires_at without a time-zone offset is a 422 problem, never a 500."""
    world = keys_world
    _, tokens = await admin_of_new_clinic(world)
    with capture_logs():  # a 500's traceback is captured, not rendered (slow)
        response = await create_key(world, tokens, expires_at="2030-01-01T00:00:00")
    assert response.status_code == 422


async def test_expiry_beyond_the_representable_range_is_422(keys_world: AuthWorld) -> None:
    """An expires_at that cannot be represented in UTC is a 422 problem, never a 500."""
    world = keys_world
    _, tokens = await admin_of_new_clinic(world)
    with capture_logs():
        response = await create_key(world, tokens, expires_at="9999-12-31T23:59:59-12:00")
    assert response.status_code == 422


async def test_failed_key_attempts_are_limited_per_address_valid_keys_never(
    keys_world: AuthWorld,
) -> None:
    """Twenty wrong keys from one address, then that address is 429 (even for a right key,
    until the window passes); another address with a valid key is unaffected."""
    world = keys_world
    _admin, tokens = await admin_of_new_clinic(world)
    created = await created_key(world, tokens)
    for n in range(25):  # a valid key is never throttled by its own use
        assert (await call_probe(world, bearer(created["key"]))).status_code == 200, n
    async with client_for(world.app, "198.51.100.66") as prober:
        for n in range(20):
            wrong = f"cgk_{created['prefix']}_{'A' * 42}{n % 10}"
            answer = await prober.get(PROBE_URL, headers=bearer(wrong))
            assert answer.status_code == 401, n
        throttled = await prober.get(PROBE_URL, headers=bearer(created["key"]))
        assert throttled.status_code == 429
        assert int(throttled.headers["retry-after"]) > 0
    assert (await call_probe(world, bearer(created["key"]))).status_code == 200
