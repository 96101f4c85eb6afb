"""Sign-in throttling and progressive lockout through the HTTP API: no account enumeration,
identifier locks with escalation, per-IP and global limits, trusted devices that an attacker
cannot lock out, the lockout e-mail and events, administrator and operator unlock, and a
key-value outage (fail closed).

Every test runs on SQLite + the in-process store and on PostgreSQL + Redis unless it says
otherwise (the CLI only acts on a shared store).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from clinicguard.audit.models import AuditEvent
from clinicguard.core.principal import Role
from tests.audit_trail import trail_events
from tests.conftest import AuthWorld, client_for
from tests.factories.people import Person, add_clinic, add_person

LOGIN = "/api/v1/auth/login"
ME = "/api/v1/me"
WRONG_PASSWORD = "Wrong-guess 1234 totally!"
ATTACKER_IP = "198.51.100.66"
OTHER_IP = "203.0.113.77"
DEAD_REDIS = "redis://127.0.0.1:1/0"
LOCK_SECONDS = (900, 1800, 3600, 21600)
REPO_ROOT = Path(__file__).resolve().parents[3]
CLI_TIMEOUT_SECONDS = 60

MakeWorld = Callable[..., Any]


async def _attempt(
    client: httpx.AsyncClient, address: str, password: str, device_token: str | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"email": address, "password": password}
    if device_token:
        body["device_token"] = device_token
    return await client.post(LOGIN, json=body)


async def _fail(
    client: httpx.AsyncClient, address: str, times: int, device_token: str | None = None
) -> None:
    """``times`` wrong passwords, each answered with the generic 401."""
    for _ in range(times):
        response = await _attempt(client, address, WRONG_PASSWORD, device_token)
        assert response.status_code == 401, response.text


def _comparable(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    return {k: body[k] for k in ("type", "title", "status", "detail")}


def _assert_throttled(response: httpx.Response, expected_seconds: int | None = None) -> int:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"].endswith("login-throttled")
    assert "access_token" not in response.text
    retry_after = int(response.headers["retry-after"])
    if expected_seconds is not None:
        assert expected_seconds - 30 <= retry_after <= expected_seconds
    return retry_after


async def _clinic_person(world: AuthWorld, role: Role = Role.RECEPTIONIST) -> Person:
    clinic = await add_clinic(world.services)
    return await add_person(world.services, clinic.id, role)


async def _events(world: AuthWorld, *kinds: str) -> list[AuditEvent]:
    return await trail_events(world.services.db, types=kinds)


def _lock_key(world: AuthWorld, address: str) -> str:
    return f"cg:{{login:{world.services.auth._guard.identifier(address)}}}:lock"


# --- no enumeration -----------------------------------------------------------------------


async def test_unknown_email_and_wrong_password_answer_alike(world: AuthWorld) -> None:
    """An unknown email and a wrong password get the same 401 problem (type, title, status,
    detail) and the same headers, apart from the request id."""
    person = await _clinic_person(world)
    wrong = await _attempt(world.client, person.email, WRONG_PASSWORD)
    unknown = await _attempt(world.client, "nobody-here@clinica.example.com", WRONG_PASSWORD)
    assert wrong.status_code == unknown.status_code == 401
    assert _comparable(wrong) == _comparable(unknown)
    assert set(wrong.json()) == set(unknown.json())
    assert wrong.json()["type"].endswith("invalid-credentials")
    ignore = {"x-request-id", "date"}
    assert {k: v for k, v in wrong.headers.items() if k not in ignore} == {
        k: v for k, v in unknown.headers.items() if k not in ignore
    }


# --- identifier locks ---------------------------------------------------------------------


async def test_five_failures_lock_even_the_right_password(world: AuthWorld) -> None:
    """After 5 failures the identifier is locked for 15 minutes: the 6th attempt is 429 with
    Retry-After even with the right password, and no token is issued."""
    person = await _clinic_person(world)
    await _fail(world.client, person.email, 5)
    response = await _attempt(world.client, person.email, person.password)
    _assert_throttled(response, 900)
    async with client_for(world.app, OTHER_IP) as elsewhere:
        _assert_throttled(await _attempt(elsewhere, person.email, person.password), 900)


async def test_unknown_email_is_locked_the_same_way(world: AuthWorld) -> None:
    """Identifier locks apply whether or not the account exists, with the same answer."""
    person = await _clinic_person(world)
    ghost = "ghost-account@clinica.example.com"
    await _fail(world.client, person.email, 5)
    await _fail(world.client, ghost, 5)
    real = await _attempt(world.client, person.email, WRONG_PASSWORD)
    fake = await _attempt(world.client, ghost, WRONG_PASSWORD)
    _assert_throttled(real, 900)
    _assert_throttled(fake, 900)
    assert _comparable(real) == _comparable(fake)


async def test_repeated_locks_escalate(world: AuthWorld) -> None:
    """Locks within 24 hours escalate: 15 min, then 30 min, 1 h, and 6 h (the cap)."""
    person = await _clinic_person(world)
    for round_no, seconds in enumerate((*LOCK_SECONDS, LOCK_SECONDS[-1])):
        # A fresh address each round keeps the per-IP limit out of the picture.
        async with client_for(world.app, f"198.51.100.{10 + round_no}") as attacker:
            await _fail(attacker, person.email, 5)
            _assert_throttled(await _attempt(attacker, person.email, person.password), seconds)
        # The lock running out is simulated by deleting it (escalation memory stays).
        assert await world.services.kv.delete(_lock_key(world, person.email)) == 1
    async with client_for(world.app, "198.51.100.99") as owner:
        assert (await _attempt(owner, person.email, person.password)).status_code == 200


async def test_concurrent_guesses_get_no_more_than_five_tries(world: AuthWorld) -> None:
    """A burst of concurrent wrong passwords for one identifier gets at most 5 evaluated
    (401); the rest are refused (429) like sequential attempts past the limit."""
    person = await _clinic_person(world)
    async with client_for(world.app, ATTACKER_IP) as attacker:
        burst = await asyncio.gather(
            *[_attempt(attacker, person.email, WRONG_PASSWORD) for _ in range(12)]
        )
    statuses = [r.status_code for r in burst]
    assert set(statuses) <= {401, 429}
    assert statuses.count(401) <= 5, statuses


async def test_concurrent_failures_from_one_ip_stay_within_its_limit(world: AuthWorld) -> None:
    """A concurrent burst from one IP over many emails gets at most 20 attempts evaluated."""
    async with client_for(world.app, ATTACKER_IP) as attacker:
        burst = await asyncio.gather(
            *[
                _attempt(attacker, f"burst-{n}@clinica.example.com", WRONG_PASSWORD)
                for n in range(28)
            ]
        )
    statuses = [r.status_code for r in burst]
    assert set(statuses) <= {401, 429}
    assert statuses.count(401) <= 20, statuses


# --- per-IP and global limits -------------------------------------------------------------


async def test_per_ip_limit_throttles_that_address_only(world: AuthWorld) -> None:
    """20 failures from one IP, spread over many emails, throttle that IP for any email;
    another IP signs in normally."""
    person = await _clinic_person(world)
    async with client_for(world.app, ATTACKER_IP) as attacker:
        for n in range(20):
            response = await _attempt(attacker, f"spray-{n}@clinica.example.com", WRONG_PASSWORD)
            assert response.status_code == 401
        retry = _assert_throttled(await _attempt(attacker, person.email, person.password))
        assert 0 < retry <= 900
        _assert_throttled(await _attempt(attacker, "spray-0@clinica.example.com", "x"))
    async with client_for(world.app, OTHER_IP) as other:
        assert (await _attempt(other, person.email, person.password)).status_code == 200


async def test_global_ceiling_throttles_everyone(make_world: MakeWorld) -> None:
    """Past the deployment-wide failure ceiling every sign-in is 429, from any address."""
    async with make_world(login_global_failures_per_minute=10) as world:
        person = await _clinic_person(world)
        for n in range(10):
            async with client_for(world.app, f"198.51.100.{100 + n}") as attacker:
                await _fail(attacker, f"wave-{n}@clinica.example.com", 1)
        async with client_for(world.app, OTHER_IP) as bystander:
            retry = _assert_throttled(await _attempt(bystander, person.email, person.password))
            assert 0 < retry <= 60


# --- trusted devices ----------------------------------------------------------------------


async def test_trusted_device_signs_in_while_the_identifier_is_locked(world: AuthWorld) -> None:
    """A clinician's device that completed an MFA sign-in keeps its own counter: an
    attacker who knows only the email locks the identifier, yet that device still signs
    in; a sign-in without the device token is 429."""
    clinic = await add_clinic(world.services)
    doctor = await add_person(world.services, clinic.id, Role.PHYSICIAN)
    device_token = (await world.login(doctor))["device_token"]
    assert device_token
    async with client_for(world.app, ATTACKER_IP) as attacker:
        await _fail(attacker, doctor.email, 5)
        _assert_throttled(await _attempt(attacker, doctor.email, doctor.password))
    _assert_throttled(await _attempt(world.client, doctor.email, doctor.password))
    world.clock.advance(30)  # a new TOTP step
    tokens = await world.login(doctor, device_token=device_token)
    assert (await world.client.get(ME, headers=world.bearer(tokens))).status_code == 200


async def test_another_users_device_token_does_not_bypass(world: AuthWorld) -> None:
    """A device token issued to someone else gives no exemption from a lock."""
    victim = await _clinic_person(world)
    accomplice = await add_person(world.services, victim.clinic_id, Role.RECEPTIONIST)
    login = await _attempt(world.client, accomplice.email, accomplice.password)
    assert login.status_code == 200
    foreign_token = login.json()["device_token"]
    assert foreign_token
    async with client_for(world.app, ATTACKER_IP) as attacker:
        await _fail(attacker, victim.email, 5)
        _assert_throttled(await _attempt(attacker, victim.email, victim.password, foreign_token))
        _assert_throttled(await _attempt(attacker, victim.email, WRONG_PASSWORD, foreign_token))


async def test_device_scoped_lock_locks_only_that_device(world: AuthWorld) -> None:
    """Five wrong passwords sent with a trusted device token lock that device's scope only;
    the identifier (other devices) is not locked."""
    person = await _clinic_person(world)
    login = await _attempt(world.client, person.email, person.password)
    assert login.status_code == 200
    device_token = login.json()["device_token"]
    await _fail(world.client, person.email, 5, device_token)
    _assert_throttled(
        await _attempt(world.client, person.email, person.password, device_token), 900
    )
    async with client_for(world.app, OTHER_IP) as laptop:
        assert (await _attempt(laptop, person.email, person.password)).status_code == 200
    lockouts = await _events(world, "auth:lockout")
    assert len(lockouts) == 1
    assert lockouts[0].details["device_scoped"] is True


# --- what is written down -----------------------------------------------------------------


async def test_lockout_is_mailed_to_the_account_holder(world: AuthWorld) -> None:
    """The account holder is e-mailed when their account is locked."""
    person = await _clinic_person(world)
    async with client_for(world.app, ATTACKER_IP) as attacker:
        await _fail(attacker, person.email, 5)
    mail_dir = world.services.settings.data_dir / "mail"
    messages = [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        for path in sorted(mail_dir.glob("*.eml"))
    ]
    lockouts = [m for m in messages if "paused" in str(m["Subject"])]
    assert len(lockouts) == 1
    assert lockouts[0]["To"] == person.email
    body = lockouts[0].get_body(preferencelist=("plain",))
    assert body is not None
    text = body.get_content()
    assert "15 minutes" in text
    assert WRONG_PASSWORD not in text


async def test_failure_and_lockout_events_hold_no_email_or_password(world: AuthWorld) -> None:
    """auth:login:failure and auth:lockout are stored for known and unknown accounts, and
    their details carry neither the email nor the password tried."""
    person = await _clinic_person(world)
    ghost = "ghost-account@clinica.example.com"
    async with client_for(world.app, ATTACKER_IP) as attacker:
        await _fail(attacker, person.email, 5)
        await _fail(attacker, ghost, 5)
    failures = await _events(world, "auth:login:failure")
    lockouts = await _events(world, "auth:lockout")
    assert len(failures) == 10
    assert len(lockouts) == 2
    assert {e.actor_id for e in lockouts} == {person.id, None}
    assert sum(1 for e in failures if e.actor_id == person.id) == 5
    for event in failures + lockouts:
        row = json.dumps(
            {
                "details": event.details,
                "reason": event.reason,
                "user_agent": event.user_agent,
                "session_id": event.session_id,
            },
            default=str,
        ).lower()
        for secret in (
            person.email,
            person.email.partition("@")[0],
            ghost,
            ghost.partition("@")[0],
            WRONG_PASSWORD.lower(),
            person.password.lower(),
        ):
            assert secret not in row, (event.event_type, row)


# --- unlock -------------------------------------------------------------------------------


async def test_clinic_admin_unlocks_a_member(world: AuthWorld) -> None:
    """A clinic administrator's unlock (204) lets a locked member sign in again at once."""
    clinic = await add_clinic(world.services)
    admin = await add_person(world.services, clinic.id, Role.CLINIC_ADMIN)
    member = await add_person(world.services, clinic.id, Role.RECEPTIONIST)
    admin_tokens = await world.login(admin)
    async with client_for(world.app, ATTACKER_IP) as attacker:
        await _fail(attacker, member.email, 5)
    async with client_for(world.app, OTHER_IP) as desk:
        _assert_throttled(await _attempt(desk, member.email, member.password))
        response = await world.client.post(
            f"/api/v1/users/{member.id}/unlock", headers=world.bearer(admin_tokens)
        )
        assert response.status_code == 204, response.text
        assert (await _attempt(desk, member.email, member.password)).status_code == 200
    unlocks = await _events(world, "auth:unlock")
    assert [e.actor_id for e in unlocks] == [member.id]


async def test_unlock_of_another_clinics_user_is_404(world: AuthWorld) -> None:
    """A clinic administrator cannot unlock (or learn about) another clinic's user: 404,
    like a missing one, and the lock stays."""
    clinic = await add_clinic(world.services)
    admin = await add_person(world.services, clinic.id, Role.CLINIC_ADMIN)
    elsewhere = await add_clinic(world.services)
    stranger = await add_person(world.services, elsewhere.id, Role.RECEPTIONIST)
    admin_tokens = await world.login(admin)
    async with client_for(world.app, ATTACKER_IP) as attacker:
        await _fail(attacker, stranger.email, 5)
    response = await world.client.post(
        f"/api/v1/users/{stranger.id}/unlock", headers=world.bearer(admin_tokens)
    )
    missing = await world.client.post(
        f"/api/v1/users/{admin.id.hex[:8]}-0000-4000-8000-000000000000/unlock",
        headers=world.bearer(admin_tokens),
    )
    assert response.status_code == 404
    assert missing.status_code == 404
    assert _comparable(response) == _comparable(missing)
    async with client_for(world.app, OTHER_IP) as desk:
        _assert_throttled(await _attempt(desk, stranger.email, stranger.password))


async def test_physician_may_not_unlock(world: AuthWorld) -> None:
    """Only a clinic administrator unlocks accounts: a physician gets 403 and the lock
    stays."""
    clinic = await add_clinic(world.services)
    doctor = await add_person(world.services, clinic.id, Role.PHYSICIAN)
    member = await add_person(world.services, clinic.id, Role.RECEPTIONIST)
    doctor_tokens = await world.login(doctor)
    async with client_for(world.app, ATTACKER_IP) as attacker:
        await _fail(attacker, member.email, 5)
    response = await world.client.post(
        f"/api/v1/users/{member.id}/unlock", headers=world.bearer(doctor_tokens)
    )
    assert response.status_code == 403, response.text
    async with client_for(world.app, OTHER_IP) as desk:
        _assert_throttled(await _attempt(desk, member.email, member.password))


def _cli_env(world: AuthWorld) -> dict[str, str]:
    """The world's deployment settings as a CLI process sees them (and nothing else)."""
    settings = world.services.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINICGUARD_")}
    env.update(
        CLINICGUARD_ENV="test",
        CLINICGUARD_DATABASE_URL=settings.database_url,
        CLINICGUARD_REDIS_URL=settings.redis_url,
        CLINICGUARD_MASTER_KEY=settings.master_key.get_secret_value(),
        CLINICGUARD_SECRET_KEY=settings.secret_key.get_secret_value(),
        CLINICGUARD_DATA_DIR=str(settings.data_dir),
    )
    return env


async def _run_cli(world: AuthWorld, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "clinicguard",
        *args,
        env=_cli_env(world),
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_SECONDS)
    assert process.returncode is not None
    return process.returncode, (stdout + stderr).decode()


@pytest.mark.parametrize("backend", ["postgresql-redis"], indirect=True)
@pytest.mark.postgres
@pytest.mark.redis
async def test_cli_users_unlock(world: AuthWorld) -> None:
    """`clinicguard users unlock EMAIL` (an operator, another process) clears the lock in
    the shared store; the user signs in again."""
    person = await _clinic_person(world)
    async with client_for(world.app, ATTACKER_IP) as attacker:
        await _fail(attacker, person.email, 5)
    async with client_for(world.app, OTHER_IP) as desk:
        _assert_throttled(await _attempt(desk, person.email, person.password))
        code, output = await _run_cli(world, "users", "unlock", person.email)
        assert code == 0, output
        assert (await _attempt(desk, person.email, person.password)).status_code == 200
    unlocks = await _events(world, "auth:unlock")
    assert len(unlocks) == 1
    assert unlocks[0].details["by"] == "operator"


@pytest.mark.parametrize("backend", ["postgresql-redis"], indirect=True)
@pytest.mark.postgres
@pytest.mark.redis
async def test_cli_sessions_revoke(world: AuthWorld) -> None:
    """`clinicguard sessions revoke --user EMAIL` ends every session of that user at once,
    and no one else's; an unknown email exits non-zero."""
    person = await _clinic_person(world)
    bystander = await add_person(world.services, person.clinic_id, Role.RECEPTIONIST)
    logins = []
    for _ in range(2):
        response = await _attempt(world.client, person.email, person.password)
        assert response.status_code == 200
        logins.append(response.json())
    theirs = (await _attempt(world.client, bystander.email, bystander.password)).json()
    code, output = await _run_cli(world, "sessions", "revoke", "--user", person.email)
    assert code == 0, output
    for tokens in logins:
        assert (await world.client.get(ME, headers=world.bearer(tokens))).status_code == 401
        refreshed = await world.client.post(
            "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert refreshed.status_code == 401
    assert (await world.client.get(ME, headers=world.bearer(theirs))).status_code == 200
    code, output = await _run_cli(world, "sessions", "revoke", "--user", "nobody@example.com")
    assert code != 0
    assert "Traceback" not in output


# --- outage -------------------------------------------------------------------------------


async def test_sign_in_fails_closed_when_the_store_is_down(make_world: MakeWorld) -> None:
    """With the key-value store (and so the limiter) down, a sign-in is a 503 problem, with
    the right password as with a wrong one: nothing is admitted unthrottled."""
    async with make_world(redis_url=DEAD_REDIS) as world:
        person = await _clinic_person(world)
        for password in (person.password, WRONG_PASSWORD):
            response = await _attempt(world.client, person.email, password)
            assert response.status_code == 503, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["type"].endswith("service-unavailable")
            assert "access_token" not in response.text


async def test_trusted_device_passes_the_ip_and_global_ceilings(make_world: MakeWorld) -> None:
    """Flooding the clinic's own address (or the whole deployment) with failures throttles
    unknown devices, but not a clinician's device that signed in with MFA before."""
    async with make_world(login_global_failures_per_minute=10) as world:
        clinic = await add_clinic(world.services)
        doctor = await add_person(world.services, clinic.id, Role.PHYSICIAN)
        device_token = (await world.login(doctor))["device_token"]
        for n in range(10):  # failures from the clinic's own address, over other emails
            await _fail(world.client, f"flood-{n}@clinica.example.com", 1)
        _assert_throttled(await _attempt(world.client, doctor.email, doctor.password))
        world.clock.advance(30)  # a new TOTP step
        tokens = await world.login(doctor, device_token=device_token)
        assert (await world.client.get(ME, headers=world.bearer(tokens))).status_code == 200
