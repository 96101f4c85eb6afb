"""The sign-in path end to end (both backends); the detailed properties live beside."""

from __future__ import annotations

from clinicguard.core.principal import Role
from tests.conftest import AuthWorld
from tests.factories.people import add_clinic, add_person


async def test_mfa_sign_in_gives_tokens_that_work_until_logout(world: AuthWorld) -> None:
    clinic = await add_clinic(world.services)
    doctor = await add_person(world.services, clinic.id, Role.PHYSICIAN)
    tokens = await world.login(doctor)
    me = await world.client.get("/api/v1/me", headers=world.bearer(tokens))
    assert me.status_code == 200
    assert me.json()["clinic_id"] == str(clinic.id)
    assert me.json()["role"] == "physician"
    assert (
        await world.client.post("/api/v1/auth/logout", headers=world.bearer(tokens))
    ).status_code == 204
    assert (await world.client.get("/api/v1/me", headers=world.bearer(tokens))).status_code == 401
