"""The clinic data API end to end, one pass per role (the matrix tests go deeper)."""

from __future__ import annotations

from tests.conftest import AuthWorld
from tests.factories.clinical import add_clinic_set


async def test_roles_see_what_the_policy_gives(world: AuthWorld) -> None:
    """Physician on the care team sees clinical fields; receptionist sees a masked CPF and
    no clinical fields; another clinic's patient is a 404."""
    a = await add_clinic_set(world)
    b = await add_clinic_set(world)
    patient = a.patients[1]
    url = f"/api/v1/patients/{patient.id}"
    doc = await world.client.get(url, headers=await a.headers(world, "physician"))
    assert doc.status_code == 200, doc.text
    assert doc.json()["allergies"] == "Dipirona"
    assert doc.json()["cpf"] == patient.cpf
    front = await world.client.get(url, headers=await a.headers(world, "receptionist"))
    assert front.status_code == 200
    assert "allergies" not in front.json()
    assert front.json()["cpf"].startswith("***.")
    other = await world.client.get(url, headers=await b.headers(world, "physician"))
    assert other.status_code == 404
    records = await world.client.get(f"{url}/records", headers=await a.headers(world, "physician"))
    assert records.status_code == 200, records.text
    assert len(records.json()["items"]) == 1
    off = await world.client.get(f"{url}/records", headers=await a.headers(world, "physician_off"))
    assert off.status_code == 403
    one = await world.client.get(
        f"/api/v1/records/{a.records[1].id}", headers=await a.headers(world, "physician_off")
    )
    assert one.status_code == 404
    grant = await world.client.post(
        f"{url}/emergency-access",
        json={"justification": "Paciente com reação alérgica grave na recepção"},
        headers=await a.headers(world, "physician_off"),
    )
    assert grant.status_code == 201, grant.text
    one = await world.client.get(
        f"/api/v1/records/{a.records[1].id}", headers=await a.headers(world, "physician_off")
    )
    assert one.status_code == 200, one.text
    listed = await world.client.get(
        "/api/v1/patients?limit=2", headers=await a.headers(world, "receptionist")
    )
    assert listed.status_code == 200
    page = listed.json()
    assert len(page["items"]) == 2
    assert page["next_cursor"]
    rest = await world.client.get(
        f"/api/v1/patients?limit=2&cursor={page['next_cursor']}",
        headers=await a.headers(world, "receptionist"),
    )
    assert [p["id"] for p in rest.json()["items"]] == [str(a.patients[2].id)]
    patch = await world.client.patch(
        url, json={"allergies": "Nenhuma"}, headers=await a.headers(world, "receptionist")
    )
    assert patch.status_code == 403
    assert "allergies" in patch.json()["detail"]
    own = await world.client.get(
        f"/api/v1/patients/{a.patients[0].id}", headers=await a.headers(world, "patient")
    )
    assert own.status_code == 200
    assert (
        await world.client.get(url, headers=await a.headers(world, "patient"))
    ).status_code == 404
