"""The browser console's sessions through HTTP (both backends): a __Host- cookie that is
HttpOnly, Secure and SameSite=Strict, a synchronizer CSRF token on every unsafe method, and
challenges that cannot cross between console and token sign-ins."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from clinicguard.audit.models import AuditEvent
from clinicguard.core.principal import Role
from tests.audit_trail import trail_events
from tests.conftest import AuthWorld
from tests.factories.people import Person, add_clinic, add_person

SESSION_COOKIE = "__Host-cg_session"
DEVICE_COOKIE = "__Host-cg_device"


@dataclass
class ConsoleSession:
    cookie: str
    csrf_token: str
    set_cookie: dict[str, dict[str, str | bool]]
    body: dict[str, Any]


def parse_set_cookie(raw: str) -> tuple[str, str, dict[str, str | bool]]:
    """A raw Set-Cookie header: name, value and attributes (names lower-cased)."""
    first, *attributes = [part.strip() for part in raw.split(";")]
    name, _, value = first.partition("=")
    parsed: dict[str, str | bool] = {}
    for attribute in attributes:
        key, sep, val = attribute.partition("=")
        parsed[key.strip().lower()] = val.strip() if sep else True
    return name, value, parsed


def cookies_of(response: httpx.Response) -> dict[str, dict[str, str | bool]]:
    found: dict[str, dict[str, str | bool]] = {}
    for raw in response.headers.get_list("set-cookie"):
        name, value, attributes = parse_set_cookie(raw)
        found[name] = {"value": value, **attributes}
    return found


def console_session(response: httpx.Response) -> ConsoleSession:
    assert response.status_code == 200, response.text
    set_cookie = cookies_of(response)
    value = set_cookie[SESSION_COOKIE]["value"]
    assert isinstance(value, str)
    body = response.json()
    return ConsoleSession(value.strip('"'), body["csrf_token"], set_cookie, body)


async def console_login(world: AuthWorld, person: Person) -> ConsoleSession:
    response = await world.client.post(
        "/api/v1/auth/console/login", json={"email": person.email, "password": person.password}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    if body.get("mfa_required"):
        response = await world.client.post(
            "/api/v1/auth/console/mfa/verify",
            json={"mfa_token": body["mfa_token"], "code": person.code(world.clock)},
        )
    return console_session(response)


def with_cookie(value: str, csrf: str | None = None) -> dict[str, str]:
    # httpx does not send Secure cookies over http://, so the header is set by hand.
    headers = {"cookie": f"{SESSION_COOKIE}={value}"}
    if csrf is not None:
        headers["x-csrf-token"] = csrf
    return headers


async def events(world: AuthWorld, kind: str, user_id: uuid.UUID) -> list[AuditEvent]:
    return await trail_events(world.services.db, types=kind, actor_id=user_id)


async def staff(world: AuthWorld, role: Role) -> Person:
    clinic = await add_clinic(world.services)
    return await add_person(world.services, clinic.id, role)


def assert_host_cookie(attributes: dict[str, str | bool]) -> None:
    assert attributes.get("httponly") is True
    assert attributes.get("secure") is True
    assert str(attributes.get("samesite", "")).lower() == "strict"
    assert attributes.get("path") == "/"
    assert "domain" not in attributes


async def test_console_login_sets_a_host_cookie_and_returns_a_csrf_token(
    world: AuthWorld,
) -> None:
    """The session cookie is __Host- (Secure, Path=/, no Domain), HttpOnly, SameSite=Strict."""
    person = await staff(world, Role.RECEPTIONIST)
    session = await console_login(world, person)
    assert_host_cookie(session.set_cookie[SESSION_COOKIE])
    assert_host_cookie(session.set_cookie[DEVICE_COOKIE])
    assert len(session.csrf_token) >= 32
    assert "access_token" not in session.body
    assert "refresh_token" not in session.body
    me = await world.client.get("/api/v1/me", headers=with_cookie(session.cookie))
    assert me.status_code == 200
    assert me.json()["id"] == str(person.id)


async def test_console_login_with_mfa_finishes_at_the_console_endpoint(world: AuthWorld) -> None:
    """An MFA person's console sign-in finishes at /console/mfa/verify with the cookie."""
    person = await staff(world, Role.PHYSICIAN)
    first = await world.client.post(
        "/api/v1/auth/console/login", json={"email": person.email, "password": person.password}
    )
    assert first.status_code == 200
    assert first.json()["mfa_required"] is True
    assert SESSION_COOKIE not in cookies_of(first), "no session before the second factor"
    verified = await world.client.post(
        "/api/v1/auth/console/mfa/verify",
        json={"mfa_token": first.json()["mfa_token"], "code": person.code(world.clock)},
    )
    session = console_session(verified)
    assert_host_cookie(session.set_cookie[SESSION_COOKIE])
    me = await world.client.get("/api/v1/me", headers=with_cookie(session.cookie))
    assert me.status_code == 200
    assert me.json()["role"] == "physician"
    assert me.json()["scopes"] == ["full"]


async def test_unsafe_method_needs_the_sessions_csrf_token(world: AuthWorld) -> None:
    """Logout by cookie: no token or a wrong one is 403 csrf-failed; the right one is 204."""
    person = await staff(world, Role.RECEPTIONIST)
    session = await console_login(world, person)
    missing = await world.client.post("/api/v1/auth/logout", headers=with_cookie(session.cookie))
    assert missing.status_code == 403
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert missing.json()["type"].endswith("csrf-failed")
    assert await events(world, "auth:csrf:failure", person.id)
    wrong = await world.client.post(
        "/api/v1/auth/logout", headers=with_cookie(session.cookie, secrets.token_urlsafe(32))
    )
    assert wrong.status_code == 403
    assert wrong.json()["type"].endswith("csrf-failed")
    empty = await world.client.post("/api/v1/auth/logout", headers=with_cookie(session.cookie, ""))
    assert empty.status_code == 403
    # The session survived the refused attempts.
    assert (
        await world.client.get("/api/v1/me", headers=with_cookie(session.cookie))
    ).status_code == 200
    ok = await world.client.post(
        "/api/v1/auth/logout", headers=with_cookie(session.cookie, session.csrf_token)
    )
    assert ok.status_code == 204
    after = await world.client.get("/api/v1/me", headers=with_cookie(session.cookie))
    assert after.status_code == 401


async def test_csrf_token_is_bound_to_its_own_session(world: AuthWorld) -> None:
    """One session's CSRF token does not authorise unsafe requests of another session."""
    person = await staff(world, Role.RECEPTIONIST)
    first = await console_login(world, person)
    second = await console_login(world, person)
    crossed = await world.client.post(
        "/api/v1/auth/logout", headers=with_cookie(second.cookie, first.csrf_token)
    )
    assert crossed.status_code == 403
    assert crossed.json()["type"].endswith("csrf-failed")


async def test_csrf_applies_to_password_change_by_cookie(world: AuthWorld) -> None:
    """A cross-site password change (cookie without the token) is refused."""
    person = await staff(world, Role.RECEPTIONIST)
    session = await console_login(world, person)
    body = {"current_password": person.password, "new_password": "Gir@ssol-Azul7"}
    refused = await world.client.post(
        "/api/v1/auth/password", json=body, headers=with_cookie(session.cookie)
    )
    assert refused.status_code == 403
    assert refused.json()["type"].endswith("csrf-failed")
    accepted = await world.client.post(
        "/api/v1/auth/password",
        json=body,
        headers=with_cookie(session.cookie, session.csrf_token),
    )
    assert accepted.status_code == 204


async def test_forged_cookie_for_another_session_is_rejected(world: AuthWorld) -> None:
    """A cookie naming a real session id with a made-up secret is a 401."""
    person = await staff(world, Role.RECEPTIONIST)
    victim = await console_login(world, person)
    tokens = await world.login(person)
    listed = await world.client.get("/api/v1/auth/sessions", headers=world.bearer(tokens))
    assert listed.status_code == 200
    sessions = listed.json()
    console_ids = [s["id"] for s in sessions if s["console"]]
    token_ids = [s["id"] for s in sessions if not s["console"]]
    assert console_ids
    assert token_ids
    forged_values = [
        f"{person.id}.{console_ids[0]}.{secrets.token_urlsafe(32)}",
        f"{person.id}.{token_ids[0]}.{secrets.token_urlsafe(32)}",
        f"{person.id}.{token_ids[0]}.",
        f"{uuid.uuid4()}.{console_ids[0]}.{victim.cookie.rsplit('.', 1)[1]}",
        victim.cookie + "x",
        "garbage",
        "a.b.c",
    ]
    for forged in forged_values:
        response = await world.client.get("/api/v1/me", headers=with_cookie(forged))
        assert response.status_code == 401, forged
        assert response.headers["content-type"].startswith("application/problem+json")
    assert (
        await world.client.get("/api/v1/me", headers=with_cookie(victim.cookie))
    ).status_code == 200


async def test_console_challenge_cannot_finish_as_token_sign_in(world: AuthWorld) -> None:
    """A console MFA challenge answered at /auth/mfa/verify gets no tokens (403)."""
    person = await staff(world, Role.PHYSICIAN)
    first = await world.client.post(
        "/api/v1/auth/console/login", json={"email": person.email, "password": person.password}
    )
    response = await world.client.post(
        "/api/v1/auth/mfa/verify",
        json={"mfa_token": first.json()["mfa_token"], "code": person.code(world.clock)},
    )
    assert response.status_code == 403
    assert "access_token" not in response.text
    assert SESSION_COOKIE not in cookies_of(response)


async def test_token_challenge_cannot_finish_as_console_sign_in(world: AuthWorld) -> None:
    """A token MFA challenge answered at /auth/console/mfa/verify sets no cookie (403)."""
    person = await staff(world, Role.PHYSICIAN)
    first = await world.client.post(
        "/api/v1/auth/login", json={"email": person.email, "password": person.password}
    )
    response = await world.client.post(
        "/api/v1/auth/console/mfa/verify",
        json={"mfa_token": first.json()["mfa_token"], "code": person.code(world.clock)},
    )
    assert response.status_code == 403
    assert SESSION_COOKIE not in cookies_of(response)
    assert "csrf_token" not in response.text


async def test_forged_cookie_does_not_touch_the_session(world: AuthWorld) -> None:
    """A request with a wrong cookie secret changes nothing about the session it names."""
    person = await staff(world, Role.RECEPTIONIST)
    await console_login(world, person)
    tokens = await world.login(person)

    async def console_entry() -> dict[str, Any]:
        listed = await world.client.get("/api/v1/auth/sessions", headers=world.bearer(tokens))
        (entry,) = [s for s in listed.json() if s["console"]]
        return dict(entry)

    before = await console_entry()
    world.clock.advance(300)
    forged = f"{person.id}.{before['id']}.{secrets.token_urlsafe(32)}"
    assert (await world.client.get("/api/v1/me", headers=with_cookie(forged))).status_code == 401
    after = await console_entry()
    assert after["last_seen_at"] == before["last_seen_at"]


async def test_refused_cross_challenge_creates_no_session(world: AuthWorld) -> None:
    """A challenge refused with 403 at the wrong endpoint leaves no session and no success."""
    person = await staff(world, Role.PHYSICIAN)
    first = await world.client.post(
        "/api/v1/auth/console/login", json={"email": person.email, "password": person.password}
    )
    refused = await world.client.post(
        "/api/v1/auth/mfa/verify",
        json={"mfa_token": first.json()["mfa_token"], "code": person.code(world.clock)},
    )
    assert refused.status_code == 403
    assert await events(world, "auth:login:success", person.id) == []
    world.clock.advance(30)
    tokens = await world.login(person)
    listed = await world.client.get("/api/v1/auth/sessions", headers=world.bearer(tokens))
    assert [s["console"] for s in listed.json()] == [False]
