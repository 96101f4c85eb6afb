"""Server-side sessions through the HTTP API: refresh rotation with per-family reuse
detection, logout, logout-all, listing and ending sessions, idle and absolute timeouts, the
per-user session limit, password change, several instances, and a key-value outage.

Every test runs on SQLite + the in-process store and on PostgreSQL + Redis unless it says
otherwise (the multi-instance property only exists with a shared store).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest

from clinicguard.audit.models import AuditEvent
from clinicguard.auth.sessions import session_key
from clinicguard.core.principal import Role
from tests.audit_trail import trail_events
from tests.conftest import AuthWorld, client_for, fresh_secrets
from tests.factories.people import Person, add_clinic, add_person

LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
LOGOUT_ALL = "/api/v1/auth/logout-all"
SESSIONS = "/api/v1/auth/sessions"
ME = "/api/v1/me"
FIREFOX_ON_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
NEW_PASSWORD = "Violeta-jabuticaba 93 ventos do sul!"
DEAD_REDIS = "redis://127.0.0.1:1/0"
HOUR = 3600
MakeWorld = Callable[..., Any]


async def _person(world: AuthWorld, role: Role = Role.RECEPTIONIST) -> Person:
    clinic = await add_clinic(world.services)
    return await add_person(world.services, clinic.id, role)


async def _sign_in(
    world: AuthWorld,
    person: Person,
    *,
    client: httpx.AsyncClient | None = None,
    user_agent: str | None = None,
) -> dict[str, Any]:
    """A password-only sign-in (roles without MFA); returns the token pair."""
    headers = {"user-agent": user_agent} if user_agent else {}
    response = await (client or world.client).post(
        LOGIN, json={"email": person.email, "password": person.password}, headers=headers
    )
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    assert "access_token" in data, data
    return data


async def _me(client: httpx.AsyncClient, tokens: dict[str, Any] | str) -> int:
    response = await client.get(ME, headers=AuthWorld.bearer(tokens))
    return response.status_code


async def _refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post(REFRESH, json={"refresh_token": refresh_token})


async def _current_sid(world: AuthWorld, tokens: dict[str, Any]) -> str:
    response = await world.client.get(SESSIONS, headers=world.bearer(tokens))
    assert response.status_code == 200, response.text
    current = [s for s in response.json() if s["current"]]
    assert len(current) == 1
    return str(current[0]["id"])


async def _events(world: AuthWorld, kind: str) -> list[AuditEvent]:
    return await trail_events(world.services.db, types=kind)


def _problem_type(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/problem+json")
    return str(response.json()["type"])


# --- refresh rotation ---------------------------------------------------------------------


async def test_refresh_returns_a_new_pair_and_spends_the_old_token(world: AuthWorld) -> None:
    """A refresh answers a new, working pair; the spent token presented again within the
    grace yields only that same pair, never a second one (its reuse after the grace is
    tested below)."""
    person = await _person(world)
    first = await _sign_in(world, person)
    response = await _refresh(world.client, first["refresh_token"])
    assert response.status_code == 200, response.text
    second = response.json()
    assert second["token_type"] == "Bearer"
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    assert await _me(world.client, second) == 200
    # Within the grace period the spent token can only ever yield this same pair.
    again = await _refresh(world.client, first["refresh_token"])
    assert again.status_code == 200
    assert again.json()["refresh_token"] == second["refresh_token"]
    assert again.json()["access_token"] == second["access_token"]
    rotated = await _refresh(world.client, second["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["refresh_token"] not in (first["refresh_token"], second["refresh_token"])


async def test_spent_refresh_token_revokes_only_its_session(make_world: MakeWorld) -> None:
    """Presenting a spent refresh token (after the grace) is 401 refresh-token-reused, ends
    that login's session (its access tokens die) and is recorded; the user's other session
    keeps working."""
    async with make_world(refresh_grace_seconds=0) as world:
        person = await _person(world)
        stolen = await _sign_in(world, person)
        other = await _sign_in(world, person)
        sid = await _current_sid(world, stolen)
        rotated = await _refresh(world.client, stolen["refresh_token"])
        assert rotated.status_code == 200
        new_pair = rotated.json()

        replay = await _refresh(world.client, stolen["refresh_token"])
        assert replay.status_code == 401
        assert _problem_type(replay).endswith("refresh-token-reused")

        assert await _me(world.client, new_pair) == 401
        assert await _me(world.client, stolen) == 401
        assert (await _refresh(world.client, new_pair["refresh_token"])).status_code == 401
        assert await _me(world.client, other) == 200
        assert (await _refresh(world.client, other["refresh_token"])).status_code == 200

        events = await _events(world, "auth:refresh:reuse")
        assert len(events) == 1
        assert events[0].actor_id == person.id
        assert events[0].session_id == sid


async def test_spent_refresh_token_after_real_grace_period_is_reuse(
    make_world: MakeWorld,
) -> None:
    """With a grace period, the spent token is refused as reuse once the grace is over."""
    async with make_world(refresh_grace_seconds=0.5) as world:
        person = await _person(world)
        tokens = await _sign_in(world, person)
        rotated = await _refresh(world.client, tokens["refresh_token"])
        assert rotated.status_code == 200
        await asyncio.sleep(0.8)
        replay = await _refresh(world.client, tokens["refresh_token"])
        assert replay.status_code == 401
        assert _problem_type(replay).endswith("refresh-token-reused")
        assert await _me(world.client, rotated.json()) == 401


async def test_concurrent_refreshes_within_grace_get_the_same_pair(world: AuthWorld) -> None:
    """Two tabs racing to refresh the same token both get 200 with the same new pair, and
    the session stays alive."""
    person = await _person(world)
    tokens = await _sign_in(world, person)
    first, second = await asyncio.gather(
        _refresh(world.client, tokens["refresh_token"]),
        _refresh(world.client, tokens["refresh_token"]),
    )
    assert first.status_code == 200, first.text
    assert second.status_code == 200, second.text
    assert first.json()["access_token"] == second.json()["access_token"]
    assert first.json()["refresh_token"] == second.json()["refresh_token"]
    assert await _me(world.client, first.json()) == 200
    assert (await _refresh(world.client, first.json()["refresh_token"])).status_code == 200


async def test_grandparent_refresh_token_within_grace_is_reuse(world: AuthWorld) -> None:
    """The grace covers only a duplicate of the immediate parent: a token two rotations old
    is reuse (401, session ended), even within the grace period."""
    person = await _person(world)
    a = await _sign_in(world, person)
    b = (await _refresh(world.client, a["refresh_token"])).json()
    c_response = await _refresh(world.client, b["refresh_token"])
    assert c_response.status_code == 200
    c = c_response.json()
    replay = await _refresh(world.client, a["refresh_token"])
    assert replay.status_code == 401, replay.text
    assert await _me(world.client, c) == 401


async def test_concurrent_refreshes_without_grace_do_not_fork_the_session(
    make_world: MakeWorld,
) -> None:
    """Without a grace period two concurrent refreshes of one token give exactly one 200; a
    reuse verdict sticks (no pair of that session works afterwards), so the family is never
    silently forked or resurrected."""
    async with make_world(refresh_grace_seconds=0) as world:
        person = await _person(world)
        tokens = await _sign_in(world, person)
        results = await asyncio.gather(
            _refresh(world.client, tokens["refresh_token"]),
            _refresh(world.client, tokens["refresh_token"]),
        )
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200, 401], [r.text for r in results]
        winner = next(r for r in results if r.status_code == 200).json()
        loser = next(r for r in results if r.status_code == 401)
        if _problem_type(loser).endswith("refresh-token-reused"):
            # Reuse was detected: the whole session is over, the winner's pair included.
            assert await _me(world.client, winner) == 401
            assert (await _refresh(world.client, winner["refresh_token"])).status_code == 401
            listed = await world.client.get(SESSIONS, headers=world.bearer(winner))
            assert listed.status_code == 401
        else:
            # The loser was refused without a verdict: one family, one live refresh token.
            assert await _me(world.client, winner) == 200
            again = await _refresh(world.client, tokens["refresh_token"])
            assert again.status_code == 401


# --- logout, logout-all, listing and ending sessions --------------------------------------


async def test_logout_kills_access_and_refresh_token(world: AuthWorld) -> None:
    """Logout is 204; from then on the session's access and refresh tokens are refused."""
    person = await _person(world)
    tokens = await _sign_in(world, person)
    other = await _sign_in(world, person)
    assert await _me(world.client, tokens) == 200
    response = await world.client.post(LOGOUT, headers=world.bearer(tokens))
    assert response.status_code == 204
    assert await _me(world.client, tokens) == 401
    assert (await _refresh(world.client, tokens["refresh_token"])).status_code == 401
    assert await _me(world.client, other) == 200


RACE_ROUNDS = 30


async def test_logout_racing_a_refresh_still_ends_the_session(make_world: MakeWorld) -> None:
    """A logout that answered 204 ends the session for good even when a refresh of the same
    session runs concurrently: neither the old access token nor a pair the refresh handed
    out works afterwards (a revocation is never undone by a concurrent write)."""
    async with make_world(refresh_grace_seconds=0) as world:
        person = await _person(world)
        for round_no in range(RACE_ROUNDS):
            tokens = await _sign_in(world, person)
            world.clock.advance(1)
            refreshed, logout = await asyncio.gather(
                _refresh(world.client, tokens["refresh_token"]),
                world.client.post(LOGOUT, headers=world.bearer(tokens)),
            )
            assert logout.status_code == 204, logout.text
            assert await _me(world.client, tokens) == 401, f"round {round_no}: old token lives"
            if refreshed.status_code == 200:
                assert await _me(world.client, refreshed.json()) == 401, (
                    f"round {round_no}: the refreshed pair outlived the logout"
                )


async def test_logout_all_ends_every_session_of_the_user_only(world: AuthWorld) -> None:
    """Logout-all ends each of the user's sessions (access and refresh), not other users'."""
    person = await _person(world)
    bystander = await add_person(world.services, person.clinic_id, Role.RECEPTIONIST)
    logins = [await _sign_in(world, person) for _ in range(3)]
    theirs = await _sign_in(world, bystander)
    response = await world.client.post(LOGOUT_ALL, headers=world.bearer(logins[1]))
    assert response.status_code == 204
    for tokens in logins:
        assert await _me(world.client, tokens) == 401
        assert (await _refresh(world.client, tokens["refresh_token"])).status_code == 401
    assert await _me(world.client, theirs) == 200


async def test_sessions_list_shows_device_ip_times_and_current(world: AuthWorld) -> None:
    """The listing names each session's device family, IP, created and last-seen times and
    marks the caller's own session, and shows only this user's sessions."""
    person = await _person(world)
    bystander = await add_person(world.services, person.clinic_id, Role.RECEPTIONIST)
    await _sign_in(world, bystander)
    firefox = await _sign_in(world, person, user_agent=FIREFOX_ON_LINUX)
    async with client_for(world.app, "198.51.100.23") as phone:
        await _sign_in(world, person, client=phone, user_agent="curl/8.5.0")
    response = await world.client.get(SESSIONS, headers=world.bearer(firefox))
    assert response.status_code == 200
    listed = response.json()
    assert len(listed) == 2
    mine = next(s for s in listed if s["current"])
    assert mine["device"] == "Firefox on Linux"
    assert mine["ip"] == "203.0.113.10"
    now = world.clock.now()
    for key in ("created_at", "last_seen_at"):
        when = datetime.fromisoformat(mine[key])
        assert abs((when - now).total_seconds()) < 2
    other = next(s for s in listed if not s["current"])
    assert other["device"] == "curl"
    assert other["ip"] == "198.51.100.23"
    assert {"id", "device", "ip", "created_at", "last_seen_at", "current"} <= set(other)


async def test_delete_session_ends_it(world: AuthWorld) -> None:
    """DELETE /auth/sessions/{id} ends that session (its tokens are refused) and no other."""
    person = await _person(world)
    keeper = await _sign_in(world, person)
    doomed = await _sign_in(world, person)
    sid = await _current_sid(world, doomed)
    response = await world.client.delete(f"{SESSIONS}/{sid}", headers=world.bearer(keeper))
    assert response.status_code == 204
    assert await _me(world.client, doomed) == 401
    assert (await _refresh(world.client, doomed["refresh_token"])).status_code == 401
    assert await _me(world.client, keeper) == 200
    listed = (await world.client.get(SESSIONS, headers=world.bearer(keeper))).json()
    assert sid not in {s["id"] for s in listed}


async def test_another_users_session_id_is_404(world: AuthWorld) -> None:
    """A session id of another user is 404 (like a missing one) and that session lives on."""
    person = await _person(world)
    victim = await add_person(world.services, person.clinic_id, Role.RECEPTIONIST)
    mine = await _sign_in(world, person)
    theirs = await _sign_in(world, victim)
    their_sid = await _current_sid(world, theirs)
    response = await world.client.delete(f"{SESSIONS}/{their_sid}", headers=world.bearer(mine))
    assert response.status_code == 404
    missing = await world.client.delete(
        f"{SESSIONS}/{uuid.uuid4().hex}", headers=world.bearer(mine)
    )
    assert missing.status_code == 404
    assert {k: v for k, v in response.json().items() if k != "request_id"} == {
        k: v for k, v in missing.json().items() if k != "request_id"
    }
    assert await _me(world.client, theirs) == 200


# --- timeouts and limits ------------------------------------------------------------------


async def test_idle_session_times_out(make_world: MakeWorld) -> None:
    """A session unused for longer than the idle timeout is over (access and refresh)."""
    async with make_world(session_idle_timeout_seconds=1) as world:
        person = await _person(world)
        tokens = await _sign_in(world, person)
        assert await _me(world.client, tokens) == 200
        await asyncio.sleep(1.5)
        assert await _me(world.client, tokens) == 401
        assert (await _refresh(world.client, tokens["refresh_token"])).status_code == 401


async def test_absolute_timeout_ends_an_active_session(world: AuthWorld) -> None:
    """A session kept busy (refreshed and used every 14 minutes) still ends 8 hours after
    sign-in: its tokens are refused and it is no longer listed."""
    person = await _person(world)
    tokens = await _sign_in(world, person)
    step = 14 * 60
    elapsed = 0
    while elapsed + step < 8 * HOUR:
        world.clock.advance(step)
        elapsed += step
        response = await _refresh(world.client, tokens["refresh_token"])
        assert response.status_code == 200, (elapsed, response.text)
        tokens = response.json()
        assert await _me(world.client, tokens) == 200
    world.clock.advance(8 * HOUR + 60 - elapsed)
    assert await _me(world.client, tokens) == 401
    assert (await _refresh(world.client, tokens["refresh_token"])).status_code == 401
    fresh = await _sign_in(world, person)
    listed = (await world.client.get(SESSIONS, headers=world.bearer(fresh))).json()
    assert len(listed) == 1
    assert listed[0]["current"] is True


async def test_sixth_sign_in_ends_the_oldest_session(world: AuthWorld) -> None:
    """At most 5 sessions per user: the 6th sign-in ends the oldest (recorded as
    session_limit), and the other five keep working."""
    person = await _person(world)
    logins = [await _sign_in(world, person)]
    oldest_sid = await _current_sid(world, logins[0])
    for _ in range(5):
        world.clock.advance(1)  # distinct creation times: "oldest" is well defined
        logins.append(await _sign_in(world, person))
    assert await _me(world.client, logins[0]) == 401
    assert (await _refresh(world.client, logins[0]["refresh_token"])).status_code == 401
    for tokens in logins[1:]:
        assert await _me(world.client, tokens) == 200
    listed = (await world.client.get(SESSIONS, headers=world.bearer(logins[-1]))).json()
    assert len(listed) == 5
    events = [
        e for e in await _events(world, "auth:session:revoked") if e.reason == "session_limit"
    ]
    assert len(events) == 1
    assert events[0].session_id == oldest_sid
    assert events[0].actor_id == person.id


async def test_concurrent_sign_ins_stay_within_the_session_limit(world: AuthWorld) -> None:
    """Concurrent sign-ins of one user never leave more than 5 live sessions, and every
    session that still accepts its token is listed (so the user can end it)."""
    clinic = await add_clinic(world.services)
    for _ in range(3):
        person = await add_person(world.services, clinic.id, Role.RECEPTIONIST)
        # Three sessions first, then five sign-ins at once (more than five simultaneous
        # attempts on one account are throttled by the login guard, by design).
        earlier = [await _sign_in(world, person) for _ in range(3)]
        logins = earlier + list(await asyncio.gather(*[_sign_in(world, person) for _ in range(5)]))
        live = [tokens for tokens in logins if await _me(world.client, tokens) == 200]
        assert len(live) <= 5, f"{len(live)} live sessions"
        listed = (await world.client.get(SESSIONS, headers=world.bearer(live[0]))).json()
        assert len(listed) == len(live)


async def test_stored_session_record_is_at_most_512_bytes(world: AuthWorld) -> None:
    """The stored session record stays within 512 bytes, even for the longest role, an
    IPv6 address, a long User-Agent and a console session's cookie and CSRF hashes."""
    clinic = await add_clinic(world.services)
    person = await add_person(world.services, clinic.id, Role.COMPLIANCE_OFFICER, mfa=False)
    ipv6 = "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"
    long_agent = FIREFOX_ON_LINUX + " " + "X" * 400
    async with client_for(world.app, ipv6) as client:
        token = await client.post(
            LOGIN,
            json={"email": person.email, "password": person.password},
            headers={"user-agent": long_agent},
        )
        assert token.status_code == 200, token.text
        console = await client.post(
            "/api/v1/auth/console/login",
            json={"email": person.email, "password": person.password},
            headers={"user-agent": long_agent},
        )
        assert console.status_code == 200, console.text
        refreshed = await _refresh(client, token.json()["refresh_token"])
        assert refreshed.status_code == 200
        listed = await client.get(SESSIONS, headers=AuthWorld.bearer(refreshed.json()))
    sessions = listed.json()
    assert len(sessions) == 2
    for entry in sessions:
        raw = await world.services.kv.get(session_key(person.id, entry["id"]))
        assert raw is not None
        assert len(raw) <= 512, raw


async def test_password_change_ends_other_sessions_but_not_this_one(world: AuthWorld) -> None:
    """Changing the password ends the user's other sessions (access and refresh) at once;
    the session that changed it keeps working."""
    person = await _person(world)
    current = await _sign_in(world, person)
    others = [await _sign_in(world, person) for _ in range(2)]
    response = await world.client.post(
        "/api/v1/auth/password",
        json={"current_password": person.password, "new_password": NEW_PASSWORD},
        headers=world.bearer(current),
    )
    assert response.status_code == 204, response.text
    assert await _me(world.client, current) == 200
    for tokens in others:
        assert await _me(world.client, tokens) == 401
        assert (await _refresh(world.client, tokens["refresh_token"])).status_code == 401
    assert (await _refresh(world.client, current["refresh_token"])).status_code == 200


# --- several instances and outages --------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql-redis"], indirect=True)
@pytest.mark.postgres
@pytest.mark.redis
async def test_logout_on_one_instance_is_seen_by_another_at_once(
    make_world: MakeWorld,
) -> None:
    """Two instances sharing Redis and PostgreSQL: a logout through A makes B refuse the
    token on the very next request (B's cached signature check does not keep it alive)."""
    shared = fresh_secrets()
    async with make_world(**shared) as a, make_world(**shared) as b:
        person = await _person(a)
        tokens = await _sign_in(a, person)
        assert await _me(b.client, tokens) == 200  # B verified (and cached) the signature
        assert (await a.client.post(LOGOUT, headers=a.bearer(tokens))).status_code == 204
        assert await _me(b.client, tokens) == 401
        assert (await _refresh(b.client, tokens["refresh_token"])).status_code == 401


@pytest.mark.parametrize("backend", ["postgresql-redis"], indirect=True)
@pytest.mark.postgres
@pytest.mark.redis
async def test_refresh_reuse_on_another_instance_ends_the_session_everywhere(
    make_world: MakeWorld,
) -> None:
    """Rotation is shared: a token spent on A and replayed on B is reuse, and the session
    then dies on A as well."""
    shared = fresh_secrets()
    async with (
        make_world(refresh_grace_seconds=0, **shared) as a,
        make_world(refresh_grace_seconds=0, **shared) as b,
    ):
        person = await _person(a)
        tokens = await _sign_in(a, person)
        rotated = await _refresh(a.client, tokens["refresh_token"])
        assert rotated.status_code == 200
        replay = await _refresh(b.client, tokens["refresh_token"])
        assert replay.status_code == 401
        assert _problem_type(replay).endswith("refresh-token-reused")
        assert await _me(a.client, rotated.json()) == 401


async def test_key_value_outage_fails_closed(make_world: MakeWorld) -> None:
    """With the key-value store down, a valid token's request is a 503 problem (never
    200), and so is a sign-in with the right password: no session check is skipped."""
    shared = fresh_secrets()
    async with make_world(**shared) as healthy:
        person = await _person(healthy)
        tokens = await _sign_in(healthy, person)
        assert await _me(healthy.client, tokens) == 200
        async with make_world(redis_url=DEAD_REDIS, **shared) as down:
            me = await down.client.get(ME, headers=down.bearer(tokens))
            assert me.status_code == 503, me.text
            assert _problem_type(me).endswith("service-unavailable")
            listed = await down.client.get(SESSIONS, headers=down.bearer(tokens))
            assert listed.status_code == 503
            refreshed = await _refresh(down.client, tokens["refresh_token"])
            assert refreshed.status_code == 503
            login = await down.client.post(
                LOGIN, json={"email": person.email, "password": person.password}
            )
            assert login.status_code == 503, login.text
            assert _problem_type(login).endswith("service-unavailable")
            assert "access_token" not in login.text


async def test_a_token_used_after_logout_is_recorded_once_a_minute(world: AuthWorld) -> None:
    """A correctly signed token presented after its session ended is a signal (a stolen
    token, or a client that did not log out): recorded, but once a minute per session."""
    person = await _person(world)
    tokens = await _sign_in(world, person)
    assert (await world.client.post(LOGOUT, headers=world.bearer(tokens))).status_code == 204
    for _ in range(5):
        assert await _me(world.client, tokens) == 401
    rows = await _events(world, "auth:token:rejected")
    assert len(rows) == 1
    assert rows[0].reason == "session_ended"
    assert rows[0].actor_id == person.id
