"""Clinic staff through the HTTP API (both backends): administrators list their own
clinic's staff only, add people (a new account chooses its own password through a mailed
token; an existing account is told by mail), change roles with the person's sessions ended
at once, never change their own membership, and never leave a clinic without an active
administrator; nobody else manages staff, and another clinic's people are a 404."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from clinicguard.audit.models import AuditEvent
from clinicguard.auth.models import ClinicMembership
from clinicguard.core.principal import Role
from clinicguard.store.interfaces import TenantContext
from tests.audit_trail import trail_events
from tests.conftest import AuthWorld
from tests.factories.clinical import add_clinic_set
from tests.factories.people import add_person

USERS = "/api/v1/users"
PROBLEM = "application/problem+json"
ACCOUNT_CREATED = "Your clinicguard account"
MEMBERSHIP_ADDED = "You were added to a clinic"
JWT_LINE = re.compile(r"^([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)\s*$", re.MULTILINE)
CHOSEN_PASSWORD = "Jabuticaba-madura 42 no quintal!"
STAFF_FIELDS = {
    "id",
    "email",
    "full_name",
    "role",
    "is_active",
    "mfa_enabled",
    "professional_license",
    "last_login_at",
    "created_at",
}


# --- helpers -----------------------------------------------------------------------------------


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def fields_of(response: httpx.Response) -> list[str]:
    return [e["field"] for e in problem(response, 422)["errors"]]


def mails(world: AuthWorld, subject: str, to: str | None = None) -> list[EmailMessage]:
    directory = world.services.settings.data_dir / "mail"
    if not directory.exists():
        return []
    found = [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        for path in sorted(directory.glob("*.eml"))
    ]
    return [
        m
        for m in found
        if isinstance(m, EmailMessage) and m["Subject"] == subject and (to is None or m["To"] == to)
    ]


def text_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    content: str = body.get_content()
    return content


async def events(world: AuthWorld, kind: str, user_id: uuid.UUID) -> list[AuditEvent]:
    return await trail_events(world.services.db, types=kind, actor_id=user_id)


async def active_admins(world: AuthWorld, clinic_id: uuid.UUID) -> int:
    async with world.services.db.transaction(TenantContext.system(clinic_id)) as session:
        count = await session.scalar(
            select(func.count()).where(
                ClinicMembership.clinic_id == clinic_id,
                ClinicMembership.role == "clinic_admin",
                ClinicMembership.is_active.is_(True),
            )
        )
    return int(count or 0)


async def staff(world: AuthWorld, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = await world.client.get(USERS, headers=headers)
    assert response.status_code == 200, response.text
    listed: list[dict[str, Any]] = response.json()
    return listed


def new_member(**overrides: Any) -> dict[str, Any]:
    return {
        "email": f"nova-{uuid.uuid4().hex[:8]}@clinica.example.com",
        "full_name": "Nova Recepcionista",
        "role": "receptionist",
        **overrides,
    }


# --- listing -----------------------------------------------------------------------------------


async def test_admin_lists_the_staff_of_their_own_clinic_only(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    b = await add_clinic_set(world)
    listed = await staff(world, await a.headers(world, "clinic_admin"))
    staff_names = ("clinic_admin", "physician", "physician_off", "nurse", "receptionist")
    expected = {a.people[n].email for n in (*staff_names, "compliance_officer")}
    assert {m["email"] for m in listed} == expected
    assert a.people["patient"].email not in {m["email"] for m in listed}
    assert not {p.email for p in b.people.values()} & {m["email"] for m in listed}
    for member in listed:
        assert set(member) == STAFF_FIELDS
        assert member["is_active"] is True
    roles = {m["email"]: m["role"] for m in listed}
    assert roles[a.people["nurse"].email] == "nurse"
    spoofed = await staff(
        world, {**await a.headers(world, "clinic_admin"), "X-Clinic-ID": str(b.clinic_id)}
    )
    assert {m["email"] for m in spoofed} == expected


async def test_nobody_but_the_clinic_admin_manages_staff(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    target = a.people["nurse"].id
    for who in ("physician", "receptionist", "nurse", "compliance_officer", "patient"):
        headers = await a.headers(world, who)
        problem(await world.client.get(USERS, headers=headers), 403)
        problem(await world.client.post(USERS, json=new_member(), headers=headers), 403)
        problem(
            await world.client.patch(
                f"{USERS}/{target}", json={"role": "clinic_admin"}, headers=headers
            ),
            403,
        )
        self_promotion = await world.client.patch(
            f"{USERS}/{a.people[who].id}", json={"role": "clinic_admin"}, headers=headers
        )
        problem(self_promotion, 403)
    assert mails(world, ACCOUNT_CREATED) == []
    roles = {
        m["email"]: m["role"] for m in await staff(world, await a.headers(world, "clinic_admin"))
    }
    assert roles[a.people["nurse"].email] == "nurse"
    assert roles[a.people["receptionist"].email] == "receptionist"


# --- adding ------------------------------------------------------------------------------------


async def test_a_new_account_sets_its_own_password_from_the_mailed_token(
    world: AuthWorld,
) -> None:
    a = await add_clinic_set(world)
    admin = await a.headers(world, "clinic_admin")
    body = new_member(email="Nova.Pessoa@Clinica.Example.COM", professional_license="COREN 1")
    response = await world.client.post(USERS, json=body, headers=admin)
    assert response.status_code == 201, response.text
    member = response.json()
    address = "nova.pessoa@clinica.example.com"
    assert set(member) == STAFF_FIELDS
    assert member["email"] == address
    assert member["role"] == "receptionist"
    assert member["is_active"] is True
    assert member["mfa_enabled"] is False
    assert member["professional_license"] == "COREN 1"
    assert "password" not in response.text.lower()
    assert "$argon2" not in response.text
    [created] = mails(world, ACCOUNT_CREATED, address)
    text = text_of(created)
    match = JWT_LINE.search(text)
    assert match is not None, text
    token = match.group(1)
    # No password works before the person chooses one.
    login = await world.client.post(
        "/api/v1/auth/login", json={"email": address, "password": CHOSEN_PASSWORD}
    )
    assert login.status_code == 401
    reset = await world.client.post(
        "/api/v1/auth/password/reset", json={"token": token, "new_password": CHOSEN_PASSWORD}
    )
    assert reset.status_code == 204, reset.text
    replay = await world.client.post(
        "/api/v1/auth/password/reset", json={"token": token, "new_password": CHOSEN_PASSWORD + "x"}
    )
    assert replay.status_code in (400, 401, 422), replay.text
    login = await world.client.post(
        "/api/v1/auth/login", json={"email": address, "password": CHOSEN_PASSWORD}
    )
    assert login.status_code == 200, login.text
    me = await world.client.get("/api/v1/me", headers=world.bearer(login.json()))
    assert me.status_code == 200, me.text
    assert me.json()["role"] == "receptionist"
    assert me.json()["clinic_id"] == str(a.clinic_id)
    assert member["id"] in {m["id"] for m in await staff(world, admin)}
    [event] = await events(world, "admin:user:created", a.people["clinic_admin"].id)
    assert event.clinic_id == a.clinic_id
    assert event.details["target_user_id"] == member["id"]
    assert event.details["role"] == "receptionist"
    assert event.details["new_account"] is True
    assert token not in json.dumps([event.details, event.reason])


async def test_staff_bodies_are_validated(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    admin = await a.headers(world, "clinic_admin")
    for body, fields in (
        (new_member(email="nao-e-email"), ["body.email"]),
        (new_member(full_name="Nova\x00Pessoa"), ["body.full_name"]),
        (new_member(role="platform_admin"), ["body.role"]),
        (new_member(role="patient"), ["body.role"]),
        (new_member(role="integration"), ["body.role"]),
        (new_member(password="Escolhida-pelo-admin-1!"), ["body.password"]),
        (new_member(clinic_id=str(uuid.uuid4())), ["body.clinic_id"]),
        (new_member(is_platform_admin=True), ["body.is_platform_admin"]),
        (new_member(mfa_enabled=True), ["body.mfa_enabled"]),
    ):
        response = await world.client.post(USERS, json=body, headers=admin)
        assert fields_of(response) == fields, (body, response.text)
    assert len(await staff(world, admin)) == 6
    assert mails(world, ACCOUNT_CREATED) == []


async def test_adding_someone_already_in_the_clinic_is_409(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    admin = await a.headers(world, "clinic_admin")
    nurse = a.people["nurse"]
    for address in (nurse.email, nurse.email.upper(), a.people["clinic_admin"].email):
        response = await world.client.post(
            USERS, json=new_member(email=address, role="physician"), headers=admin
        )
        problem(response, 409)
    roles = {m["email"]: m["role"] for m in await staff(world, admin)}
    assert roles[nurse.email] == "nurse"
    platform = await add_person(world.services, None, Role.PLATFORM_ADMIN)
    problem(
        await world.client.post(USERS, json=new_member(email=platform.email), headers=admin), 409
    )
    assert mails(world, MEMBERSHIP_ADDED) == []
    assert mails(world, ACCOUNT_CREATED) == []
    assert await events(world, "admin:user:created", a.people["clinic_admin"].id) == []


async def test_adding_a_person_from_another_clinic_tells_them_by_mail(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    b = await add_clinic_set(world)
    admin = await a.headers(world, "clinic_admin")
    visitor = b.people["nurse"]
    response = await world.client.post(
        USERS,
        json=new_member(email=visitor.email, full_name="Outro Nome", role="nurse"),
        headers=admin,
    )
    assert response.status_code == 201, response.text
    assert response.json()["id"] == str(visitor.id)
    assert response.json()["role"] == "nurse"
    [notice] = mails(world, MEMBERSHIP_ADDED, visitor.email)
    assert "nurse" in text_of(notice)
    assert mails(world, ACCOUNT_CREATED, visitor.email) == []
    assert str(visitor.id) in {m["id"] for m in await staff(world, admin)}
    # Their place in the other clinic and their password are untouched.
    b_roles = {
        m["email"]: m["role"] for m in await staff(world, await b.headers(world, "clinic_admin"))
    }
    assert b_roles[visitor.email] == "nurse"
    assert (await world.login(visitor))["access_token"]
    [event] = await events(world, "admin:user:created", a.people["clinic_admin"].id)
    assert event.details["new_account"] is False
    assert event.details["target_user_id"] == str(visitor.id)


# --- changing ----------------------------------------------------------------------------------


async def test_a_role_change_ends_the_persons_sessions_at_once(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    admin = await a.headers(world, "clinic_admin")
    doc = await a.tokens(world, "physician")
    assert (await world.client.get("/api/v1/me", headers=world.bearer(doc))).status_code == 200
    response = await world.client.patch(
        f"{USERS}/{a.people['physician'].id}", json={"role": "nurse"}, headers=admin
    )
    assert response.status_code == 200, response.text
    assert response.json()["role"] == "nurse"
    problem(await world.client.get("/api/v1/me", headers=world.bearer(doc)), 401)
    problem(
        await world.client.get(
            f"/api/v1/patients/{a.patients[1].id}/records", headers=world.bearer(doc)
        ),
        401,
    )
    refresh = await world.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": doc["refresh_token"]}
    )
    problem(refresh, 401)
    world.clock.advance(30)  # a new TOTP step for the new sign-in
    again = await world.login(a.people["physician"])
    me = await world.client.get("/api/v1/me", headers=world.bearer(again))
    assert me.json()["role"] == "nurse"
    [event] = await events(world, "admin:user:updated", a.people["clinic_admin"].id)
    assert event.details["target_user_id"] == str(a.people["physician"].id)
    assert event.details["role"] == "nurse"
    assert event.details["previous_role"] == "physician"
    assert event.details["active"] is True


async def test_a_change_in_one_clinic_leaves_the_persons_other_clinic_signed_in(
    world: AuthWorld,
) -> None:
    a = await add_clinic_set(world)
    b = await add_clinic_set(world)
    visitor = b.people["physician"]
    at_b = await b.headers(world, "physician")
    admin_a = await a.headers(world, "clinic_admin")
    added = await world.client.post(
        USERS, json=new_member(email=visitor.email, role="physician"), headers=admin_a
    )
    assert added.status_code == 201, added.text
    changed = await world.client.patch(
        f"{USERS}/{visitor.id}", json={"role": "nurse"}, headers=admin_a
    )
    assert changed.status_code == 200, changed.text
    me = await world.client.get("/api/v1/me", headers=at_b)
    assert me.status_code == 200, me.text
    assert me.json()["clinic_id"] == str(b.clinic_id)
    assert me.json()["role"] == "physician"


async def test_deactivating_a_member_ends_their_access(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    admin = await a.headers(world, "clinic_admin")
    front = await a.headers(world, "receptionist")
    response = await world.client.patch(
        f"{USERS}/{a.people['receptionist'].id}", json={"is_active": False}, headers=admin
    )
    assert response.status_code == 200, response.text
    assert response.json()["is_active"] is False
    problem(await world.client.get("/api/v1/patients", headers=front), 401)
    login = await world.client.post(
        "/api/v1/auth/login",
        json={
            "email": a.people["receptionist"].email,
            "password": a.people["receptionist"].password,
        },
    )
    assert login.status_code != 200 or "access_token" not in login.json(), login.text
    listed = {m["email"]: m["is_active"] for m in await staff(world, admin)}
    assert listed[a.people["receptionist"].email] is False
    # A change that changes nothing records nothing.
    same = await world.client.patch(
        f"{USERS}/{a.people['nurse'].id}", json={"role": "nurse"}, headers=admin
    )
    assert same.status_code == 200
    updated = await events(world, "admin:user:updated", a.people["clinic_admin"].id)
    assert [e.details["target_user_id"] for e in updated] == [str(a.people["receptionist"].id)]


async def test_an_admin_cannot_change_their_own_membership(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    admin = await a.headers(world, "clinic_admin")
    me = f"{USERS}/{a.people['clinic_admin'].id}"
    for change in ({"role": "physician"}, {"is_active": False}, {"role": "clinic_admin"}):
        problem(await world.client.patch(me, json=change, headers=admin), 409)
    assert (await world.client.get("/api/v1/me", headers=admin)).status_code == 200
    assert await active_admins(world, a.clinic_id) == 1


async def test_an_admin_may_demote_another_while_one_admin_remains(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    second = await add_person(world.services, a.clinic_id, Role.CLINIC_ADMIN)
    second_headers = world.bearer(await world.login(second))
    response = await world.client.patch(
        f"{USERS}/{second.id}",
        json={"role": "receptionist"},
        headers=await a.headers(world, "clinic_admin"),
    )
    assert response.status_code == 200, response.text
    assert await active_admins(world, a.clinic_id) == 1
    # The demoted administrator's session ended with the change: no way back to the other.
    problem(
        await world.client.patch(
            f"{USERS}/{a.people['clinic_admin'].id}",
            json={"role": "receptionist"},
            headers=second_headers,
        ),
        401,
    )
    assert await active_admins(world, a.clinic_id) == 1


class Rendezvous:
    """Holds each staff-change transaction just before its commit until both have reached
    that point (or one second has passed), so two requests interleave the same way on
    every run. A fix that serializes the changes (a row lock, an advisory lock, an
    in-process lock) makes one of them wait before it gets here: the other goes on after
    the second and the test does not hang."""

    def __init__(self, db: Any, parties: int = 2) -> None:
        self._db = db
        self._parties = parties
        self._arrived = 0
        self._all_here = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    async def _meet(self) -> None:
        self._arrived += 1
        if self._arrived >= self._parties:
            self._all_here.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_here.wait(), 1.0)

    @asynccontextmanager
    async def transaction(self, tenant: TenantContext | None = None) -> AsyncIterator[Any]:
        async with self._db.transaction(tenant) as session:
            yield session
            await self._meet()

    @asynccontextmanager
    async def serialized(self, key: str, tenant: TenantContext | None = None) -> AsyncIterator[Any]:
        async with self._db.serialized(key, tenant) as session:
            yield session
            await self._meet()


@pytest.mark.parametrize("change", [{"role": "receptionist"}, {"is_active": False}])
async def test_two_admins_demoting_each_other_leave_one_admin(
    world: AuthWorld, monkeypatch: pytest.MonkeyPatch, change: dict[str, Any]
) -> None:
    """A clinic's last administrator can only be reached through another administrator:
    when two demote each other at the same moment, one change wins, the other is refused,
    and the clinic keeps an active administrator."""
    a = await add_clinic_set(world)
    second = await add_person(world.services, a.clinic_id, Role.CLINIC_ADMIN)
    first_headers = await a.headers(world, "clinic_admin")
    second_headers = world.bearer(await world.login(second))
    assert await active_admins(world, a.clinic_id) == 2
    monkeypatch.setattr(world.services.staff, "_db", Rendezvous(world.services.db))
    responses = await asyncio.gather(
        world.client.patch(f"{USERS}/{second.id}", json=change, headers=first_headers),
        world.client.patch(
            f"{USERS}/{a.people['clinic_admin'].id}", json=change, headers=second_headers
        ),
    )
    codes = sorted(r.status_code for r in responses)
    assert await active_admins(world, a.clinic_id) == 1, codes
    assert codes[0] == 200
    assert codes[1] in (401, 409), [r.text for r in responses]


@pytest.mark.parametrize("existing", [False, True], ids=["new-account", "existing-account"])
async def test_adding_the_same_person_twice_at_once_is_one_201_and_one_409(
    world: AuthWorld, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    """A double-submitted form (or two administrators) adding the same person at the same
    moment: one membership, one 201, one 409, never a 500."""
    a = await add_clinic_set(world)
    b = await add_clinic_set(world)
    admin = await a.headers(world, "clinic_admin")
    address = b.people["nurse"].email if existing else "dupla@clinica.example.com"
    monkeypatch.setattr(world.services.staff, "_db", Rendezvous(world.services.db))
    responses = await asyncio.gather(
        *(world.client.post(USERS, json=new_member(email=address), headers=admin) for _ in range(2))
    )
    assert sorted(r.status_code for r in responses) == [201, 409], [r.text for r in responses]
    assert [m["email"] for m in await staff(world, admin)].count(address) == 1


async def test_patch_bodies_are_validated(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    admin = await a.headers(world, "clinic_admin")
    url = f"{USERS}/{a.people['nurse'].id}"
    for body, fields in (
        ({}, ["body"]),
        ({"role": None}, ["body"]),
        ({"role": "platform_admin"}, ["body.role"]),
        ({"role": "patient"}, ["body.role"]),
        ({"role": "nurse", "clinic_id": str(uuid.uuid4())}, ["body.clinic_id"]),
        ({"email": "outro@clinica.example.com"}, ["body.email"]),
        ({"mfa_enabled": False}, ["body.mfa_enabled"]),
        ({"password": "Trocada-pelo-admin-9!"}, ["body.password"]),
    ):
        response = await world.client.patch(url, json=body, headers=admin)
        assert fields_of(response) == fields, (body, response.text)
    assert {m["email"]: m["role"] for m in await staff(world, admin)}[a.people["nurse"].email] == (
        "nurse"
    )


async def test_another_clinics_people_and_patients_are_404(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    b = await add_clinic_set(world)
    admin = await a.headers(world, "clinic_admin")
    spoof = {**admin, "X-Clinic-ID": str(b.clinic_id)}
    for target in (
        b.people["physician"].id,
        b.people["clinic_admin"].id,
        a.people["patient"].id,
        uuid.uuid4(),
    ):
        for headers in (admin, spoof):
            response = await world.client.patch(
                f"{USERS}/{target}", json={"role": "receptionist"}, headers=headers
            )
            problem(response, 404)
    b_roles = {
        m["email"]: m["role"] for m in await staff(world, await b.headers(world, "clinic_admin"))
    }
    assert b_roles[b.people["physician"].email] == "physician"
    assert b_roles[b.people["clinic_admin"].email] == "clinic_admin"
    assert await events(world, "admin:user:updated", a.people["clinic_admin"].id) == []
