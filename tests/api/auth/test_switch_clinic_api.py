"""The active clinic comes only from the verified token: switching issues new tokens only
for a clinic the person belongs to, and nothing else in a request selects a tenant."""

from __future__ import annotations

import uuid
from typing import Any

from clinicguard.auth.models import ClinicMembership
from clinicguard.core.principal import Role
from clinicguard.store.interfaces import TenantContext
from tests.audit_trail import trail_events
from tests.conftest import AuthWorld
from tests.factories.people import Person, add_clinic, add_person

SWITCH = "/api/v1/auth/switch-clinic"
ME = "/api/v1/me"


async def two_clinic_person(
    world: AuthWorld,
    first: Role = Role.PHYSICIAN,
    second: Role = Role.RECEPTIONIST,
    *,
    active: bool = True,
    mfa: bool | None = None,
) -> tuple[Person, uuid.UUID, uuid.UUID]:
    a, b = await add_clinic(world.services), await add_clinic(world.services)
    person = await add_person(world.services, a.id, first, mfa=mfa)
    async with world.services.db.transaction(TenantContext.system(b.id)) as session:
        session.add(
            ClinicMembership(clinic_id=b.id, user_id=person.id, role=str(second), is_active=active)
        )
    return person, a.id, b.id


async def test_switching_gives_new_tokens_and_kills_the_old_ones(world: AuthWorld) -> None:
    """After a switch the new token acts in the new clinic with the role held there; the
    session's earlier access token and refresh token no longer work."""
    person, first, second = await two_clinic_person(world)
    tokens = await world.login(person)
    me = (await world.client.get(ME, headers=world.bearer(tokens))).json()
    assert (me["clinic_id"], me["role"]) == (str(first), "physician")
    switched = await world.client.post(
        SWITCH, json={"clinic_id": str(second)}, headers=world.bearer(tokens)
    )
    assert switched.status_code == 200, switched.text
    new = switched.json()
    me = (await world.client.get(ME, headers=world.bearer(new))).json()
    assert (me["clinic_id"], me["role"]) == (str(second), "receptionist")
    assert (await world.client.get(ME, headers=world.bearer(tokens))).status_code == 401
    old_refresh = await world.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert old_refresh.status_code == 401
    events = await trail_events(world.services.db, types="auth:session:clinic_switched")
    assert len(events) == 1
    assert events[0].details["previous_clinic"] == str(first)


async def test_a_clinic_the_person_does_not_belong_to_is_a_404(world: AuthWorld) -> None:
    """Another clinic, an inactive membership, an inactive clinic and a made-up id all
    answer the same 404, and the session stays where it was."""
    person, first, inactive_membership = await two_clinic_person(world, active=False)
    other = await add_clinic(world.services)
    closed = await add_clinic(world.services, is_active=False)
    async with world.services.db.transaction(TenantContext.system(closed.id)) as session:
        session.add(ClinicMembership(clinic_id=closed.id, user_id=person.id, role="physician"))
    tokens = await world.login(person)
    bodies: list[dict[str, Any]] = []
    for target in (other.id, inactive_membership, closed.id, uuid.uuid4()):
        answer = await world.client.post(
            SWITCH, json={"clinic_id": str(target)}, headers=world.bearer(tokens)
        )
        assert answer.status_code == 404, answer.text
        body = answer.json()
        bodies.append({k: body[k] for k in ("type", "title", "status", "detail")})
    assert all(b == bodies[0] for b in bodies)
    me = (await world.client.get(ME, headers=world.bearer(tokens))).json()
    assert me["clinic_id"] == str(first)


async def test_headers_queries_and_bodies_never_select_a_tenant(world: AuthWorld) -> None:
    """X-Clinic-ID, ?clinic_id= and a clinic id in a body change nothing: the token decides."""
    person, first, second = await two_clinic_person(world)
    tokens = await world.login(person)
    headers = {**world.bearer(tokens), "x-clinic-id": str(second)}
    me = await world.client.get(ME, headers=headers, params={"clinic_id": str(second)})
    assert me.json()["clinic_id"] == str(first)
    unknown_field = await world.client.post(
        SWITCH, json={"clinic_id": str(second), "tenant": str(second)}, headers=world.bearer(tokens)
    )
    assert unknown_field.status_code == 422


async def test_a_role_that_needs_mfa_is_enrolment_only_without_it(world: AuthWorld) -> None:
    """Receptionist at one clinic (no MFA needed), physician at another: switching there
    without MFA gives a token that can only enrol."""
    person, _, second = await two_clinic_person(
        world, first=Role.RECEPTIONIST, second=Role.PHYSICIAN, mfa=False
    )
    tokens = await world.login(person)
    new = (
        await world.client.post(
            SWITCH, json={"clinic_id": str(second)}, headers=world.bearer(tokens)
        )
    ).json()
    me = (await world.client.get(ME, headers=world.bearer(new))).json()
    assert me["scopes"] == ["mfa:enroll"]
    assert (
        await world.client.get("/api/v1/api-keys", headers=world.bearer(new))
    ).status_code == 403


async def test_a_console_session_switches_in_place(world: AuthWorld) -> None:
    """A console session keeps its cookie; the session now acts in the new clinic (and the
    switch, an unsafe request, needs the CSRF token like any other)."""
    person, _, second = await two_clinic_person(world, first=Role.RECEPTIONIST)
    login = await world.client.post(
        "/api/v1/auth/console/login", json={"email": person.email, "password": person.password}
    )
    assert login.status_code == 200, login.text
    cookie = next(
        c.split(";")[0]
        for c in login.headers.get_list("set-cookie")
        if c.startswith("__Host-cg_session=")
    )
    headers = {"cookie": cookie}
    refused = await world.client.post(SWITCH, json={"clinic_id": str(second)}, headers=headers)
    assert refused.status_code == 403
    switched = await world.client.post(
        SWITCH,
        json={"clinic_id": str(second)},
        headers={**headers, "x-csrf-token": login.json()["csrf_token"]},
    )
    assert switched.status_code == 200, switched.text
    assert switched.json() == {"clinic_id": str(second), "role": "receptionist"}
    me = (await world.client.get(ME, headers=headers)).json()
    assert me["clinic_id"] == str(second)


async def test_an_old_token_after_a_switch_is_recorded_as_clinic_mismatch(
    world: AuthWorld,
) -> None:
    """The pre-switch token still names the old clinic: refused, and recorded with the
    reason that tells it apart from a logged-out session."""
    person, _, second = await two_clinic_person(world)
    tokens = await world.login(person)
    await world.client.post(SWITCH, json={"clinic_id": str(second)}, headers=world.bearer(tokens))
    assert (await world.client.get(ME, headers=world.bearer(tokens))).status_code == 401
    rows = await trail_events(world.services.db, types="auth:token:rejected")
    assert [r.reason for r in rows] == ["clinic_mismatch"]
