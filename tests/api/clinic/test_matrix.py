"""The generated authorization matrix (the issue's acceptance test): for every clinic data
route x role x (own clinic / other clinic, on the care team / not, own record / another
patient's, clinic open / closed, with / without a break-glass grant) the API answers what
the policy engine decides (``matrix_cases`` derives each expectation), on SQLite and on
PostgreSQL.

One test per column (each role; the off-care-team physician; an API key holding every
scope): its people sign in once and walk every route for every target, reads first, then
writes, then break-glass, then the reads again under the new grants. Differences are
collected and reported together.
"""

from __future__ import annotations

import uuid

import pytest

from clinicguard.authz.interfaces import Permission
from clinicguard.core.principal import Role
from tests.api.clinic.matrix_cases import ENGINE, Actor, Matrix, Site, Target, hours_excluding
from tests.conftest import AuthWorld
from tests.factories.clinical import add_clinic_set, add_grant
from tests.factories.people import add_person

#: The matrix's columns: every role a person holds, the physician on no care team, and an
#: integration (API key).
COLUMNS = (
    "platform_admin",
    "clinic_admin",
    "physician",
    "physician_off",
    "nurse",
    "receptionist",
    "compliance_officer",
    "patient",
    "integration",
)
ALL_SCOPES = sorted(str(p) for p in Permission)


def targets(own: Site, other: Site) -> list[Target]:
    return [
        Target("p0 (the patient user's own; the nurse's by appointment)", own, 0),
        Target("p1 (another patient; an expired grant)", own, 1),
        Target("p2 (an open grant)", own, 2),
        Target("other clinic's patient", other, 1),
        Target("an id that names no patient", own, missing=True),
    ]


async def actor_at(world: AuthWorld, column: str, site: Site) -> Actor:
    """The column's principal at ``site``, holding an expired grant for p1 and an open one
    for p2 (people only: a grant names a person)."""
    clinic = site.clinic
    if column == "integration":
        created = await world.client.post(
            "/api/v1/api-keys",
            json={"name": "matriz", "scopes": ALL_SCOPES},
            headers=await clinic.headers(world, "clinic_admin"),
        )
        assert created.status_code == 201, created.text
        key = created.json()
        return Actor(
            column,
            str(Role.INTEGRATION),
            site,
            uuid.UUID(key["id"]),
            world.bearer(key["key"]),
            scopes=frozenset(key["scopes"]),
        )
    person = clinic.people[column]
    await add_grant(world, clinic, column, clinic.patients[1], minutes=-5)
    await add_grant(world, clinic, column, clinic.patients[2])
    return Actor(
        column,
        str(person.role),
        site,
        person.id,
        await clinic.headers(world, column),
        grants={clinic.patients[2].id},
    )


async def walk(matrix: Matrix, actor: Actor, own: Site, other: Site) -> None:
    """Every route for every target, in an order where each write's effect is known."""
    aims = targets(own, other)
    for clinic_wide in (
        matrix.list_patients,
        matrix.list_appointments,
        matrix.list_emergency_grants,
        matrix.list_users,
        matrix.list_treatments,
    ):
        await clinic_wide(actor)
    for target in aims:
        await reads(matrix, actor, target)
    await matrix.create_patient(actor, clinical=False)
    await matrix.create_patient(actor, clinical=True)
    for target in aims:
        await matrix.update_patient(actor, target, "phone")
        await matrix.update_patient(actor, target, "allergies")
        await matrix.create_record(actor, target, "consultation")
        await matrix.create_record(actor, target, "nursing_note")
        await matrix.create_prescription(actor, target)
        await matrix.create_appointment(actor, target)
    await matrix.update_appointment(actor, aims[0])
    await matrix.update_appointment(actor, Target("other clinic's appointment", other, 0))
    for target in aims:
        await matrix.request_emergency(actor, target)
    # The same targets again, now under whatever grants break-glass opened.
    for target in aims:
        await reads(matrix, actor, target)
    await matrix.list_patients(actor)
    await matrix.list_appointments(actor)
    await matrix.list_emergency_grants(actor)


async def reads(matrix: Matrix, actor: Actor, target: Target) -> None:
    await matrix.get_patient(actor, target)
    await matrix.list_records(actor, target)
    await matrix.get_record(actor, target)
    await matrix.list_prescriptions(actor, target)


@pytest.mark.parametrize("column", COLUMNS)
async def test_answers_match_the_policy(world: AuthWorld, column: str) -> None:
    """Each answer (status, hidden and masked fields, denial and review events) is what
    the policy engine decides for the column at an open clinic and at a closed one."""
    assert set(COLUMNS) - {"physician_off"} == set(ENGINE.roles)
    opens, closes = hours_excluding(world.clock.now())
    open_site = Site("open", await add_clinic_set(world), open_now=True)
    closed_site = Site(
        "closed", await add_clinic_set(world, opens=opens, closes=closes), open_now=False
    )
    other = Site("other", await add_clinic_set(world), open_now=True)
    matrix = Matrix(world, (open_site, closed_site, other))
    if column == "platform_admin":
        admin = await add_person(world.services, None, Role.PLATFORM_ADMIN)
        actor = Actor(
            column, str(Role.PLATFORM_ADMIN), None, admin.id, world.bearer(await world.login(admin))
        )
        await walk(matrix, actor, open_site, other)
    else:
        for site in (open_site, closed_site):
            await walk(matrix, await actor_at(world, column, site), site, other)
    await matrix.check_events()
    if matrix.mismatches:
        pytest.fail(matrix.report(), pytrace=False)
