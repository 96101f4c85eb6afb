"""Operator commands for accounts and signing keys as real processes (``python -m clinicguard``)
against PostgreSQL and Redis, checked through the HTTP API of a world on the same backend."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jwt
import pytest
from sqlalchemy import select

from clinicguard.auth.models import SigningKey, User
from clinicguard.core.principal import Role
from tests.conftest import AuthWorld, Backend
from tests.factories.people import add_clinic, add_person

CLI_TIMEOUT_SECONDS = 60
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def backend(postgres_backend: Backend) -> Backend:
    """These commands are exercised on the production pairing only: PostgreSQL and Redis."""
    return postgres_backend


def cli_env(world: AuthWorld) -> dict[str, str]:
    """The world's own settings, so the command and the app share database, store and keys."""
    settings = world.services.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINICGUARD_")}
    env.update(
        CLINICGUARD_ENV="test",
        CLINICGUARD_DATABASE_URL=settings.database_url,
        CLINICGUARD_MIGRATION_DATABASE_URL=settings.migration_database_url,
        CLINICGUARD_REDIS_URL=settings.redis_url,
        CLINICGUARD_MASTER_KEY=settings.master_key.get_secret_value(),
        CLINICGUARD_SECRET_KEY=settings.secret_key.get_secret_value(),
        CLINICGUARD_DATA_DIR=str(settings.data_dir),
    )
    return env


def run_cli(world: AuthWorld, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clinicguard", *args],
        env=cli_env(world),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        check=False,
    )


async def test_users_create_gives_a_one_time_password_that_must_be_changed(
    world: AuthWorld,
) -> None:
    """users create prints a one-time password; its sign-in can only change it ('required')."""
    clinic = await add_clinic(world.services)
    email = "ana.nova@clinica.example.com"
    result = run_cli(
        world,
        "users",
        "create",
        "--email",
        email,
        "--name",
        "Ana Nova",
        "--role",
        "physician",
        "--clinic",
        str(clinic.id),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, "stdout carries the password and nothing else"
    password = lines[0]
    assert len(password) >= 20
    assert password not in result.stderr
    response = await world.client.post(
        "/api/v1/auth/login", json={"email": email, "password": password}
    )
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    assert tokens["password_change_required"] is True
    assert tokens["password_change_reason"] == "required"
    me = await world.client.get("/api/v1/me", headers=world.bearer(tokens))
    assert me.json()["scopes"] == ["password:change"]
    assert me.json()["role"] == "physician"
    assert me.json()["clinic_id"] == str(clinic.id)
    async with world.services.db.transaction() as session:
        user = await session.scalar(select(User).where(User.email == email))
    assert user is not None
    assert password not in user.password_hash
    assert user.password_hash.startswith("$argon2id$")

    again = run_cli(
        world,
        "users",
        "create",
        "--email",
        email.upper(),
        "--name",
        "Ana Outra",
        "--role",
        "nurse",
        "--clinic",
        str(clinic.id),
    )
    assert again.returncode != 0
    assert again.stdout.strip() == "", "no password is printed for a refused account"
    assert "Traceback" not in again.stderr


async def test_rotate_signing_prints_new_kids_and_old_tokens_keep_working(
    world: AuthWorld,
) -> None:
    """keys rotate-signing: new kids sign from then on; tokens signed before still verify."""
    clinic = await add_clinic(world.services)
    person = await add_person(world.services, clinic.id, Role.RECEPTIONIST)
    before = await world.login(person)
    old_kid = jwt.get_unverified_header(before["access_token"])["kid"]
    result = run_cli(world, "keys", "rotate-signing")
    assert result.returncode == 0, result.stderr
    async with world.services.db.transaction() as session:
        rows = list((await session.scalars(select(SigningKey))).all())
    active = {r.kid for r in rows if r.retired_at is None}
    retired = {r.kid for r in rows if r.retired_at is not None}
    assert old_kid in retired
    assert active
    output = result.stdout + result.stderr
    for kid in active:
        assert kid in output, "every new kid is printed"
    # Let the app's key cache expire so that it reads the rotated ring.
    world.clock.advance(31)
    me = await world.client.get("/api/v1/me", headers=world.bearer(before))
    assert me.status_code == 200
    refreshed = await world.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": before["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text
    pair = refreshed.json()
    assert jwt.get_unverified_header(pair["access_token"])["kid"] in active
    assert jwt.get_unverified_header(pair["refresh_token"])["kid"] in active
    assert (await world.client.get("/api/v1/me", headers=world.bearer(pair))).status_code == 200
    jwks = (await world.client.get("/.well-known/jwks.json")).json()
    listed = {k["kid"] for k in jwks["keys"]}
    assert old_kid in listed
    assert active & listed


async def test_users_create_with_a_malformed_clinic_id_fails_cleanly(world: AuthWorld) -> None:
    """A malformed --clinic exits non-zero with a message, no traceback, and no account."""
    email = "malformed.clinic@clinica.example.com"
    result = run_cli(
        world,
        "users",
        "create",
        "--email",
        email,
        "--name",
        "Sem Clínica",
        "--role",
        "physician",
        "--clinic",
        "not-a-uuid",
    )
    async with world.services.db.transaction() as session:
        assert await session.scalar(select(User).where(User.email == email)) is None
    assert result.returncode != 0
    assert result.stdout.strip() == ""
    assert "Traceback" not in result.stderr
