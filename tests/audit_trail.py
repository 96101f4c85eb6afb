"""Reading the audit trail in tests, across every chain.

Security events live in the audit trail: each clinic's chain, and the platform chain
(:data:`~clinicguard.audit.trail.PLATFORM`) for events that belong to no clinic. On
PostgreSQL row-level security shows a transaction only the events of the clinic its tenant
context names, and only to an oversight role; a plain ``db.transaction()`` sees none. So
the tests read each chain in turn as maintenance (``TenantContext.system``): the clinics
are found in ``clinics`` (not under row-level security), plus the platform chain.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import select

from clinicguard.audit.models import AuditEvent
from clinicguard.audit.trail import PLATFORM
from clinicguard.store.db import Database
from clinicguard.store.interfaces import TenantContext
from clinicguard.store.tenancy import Clinic


async def chains(db: Database) -> list[uuid.UUID]:
    """Every chain there may be: each clinic's, then the platform's."""
    async with db.transaction() as session:
        clinics = list((await session.scalars(select(Clinic.id).order_by(Clinic.id))).all())
    return [*clinics, PLATFORM]


async def trail_events(
    db: Database,
    *,
    types: str | Iterable[str] = (),
    actor_id: uuid.UUID | None = None,
    clinic_id: uuid.UUID | None = None,
) -> list[AuditEvent]:
    """The events of ``types`` (every type when empty), of ``actor_id`` when given, of the
    chain ``clinic_id`` when given (``PLATFORM`` for events with no clinic; a clinic not in
    ``clinics`` is found only when named here), else of every chain; oldest first, a
    chain's events in its sequence order."""
    kinds = [types] if isinstance(types, str) else [str(t) for t in types]
    found: list[AuditEvent] = []
    for chain in [clinic_id] if clinic_id is not None else await chains(db):
        query = select(AuditEvent).where(AuditEvent.clinic_id == chain)
        if kinds:
            query = query.where(AuditEvent.event_type.in_(kinds))
        if actor_id is not None:
            query = query.where(AuditEvent.actor_id == actor_id)
        async with db.transaction(TenantContext.system(chain)) as session:
            found.extend((await session.scalars(query.order_by(AuditEvent.seq))).all())
    return sorted(found, key=lambda event: (event.occurred_at, event.seq))
