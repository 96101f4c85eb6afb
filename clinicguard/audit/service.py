"""Security events go into the audit trail: each is appended to its clinic's chain (or the
platform's) in a transaction of its own, and a failure propagates (fail closed)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from clinicguard.audit.recorder import AuditRecorder
from clinicguard.audit.trail import PLATFORM, entry_of
from clinicguard.core.events import SecurityEvent
from clinicguard.store.db import Database
from clinicguard.store.interfaces import TenantContext


@dataclass(frozen=True, slots=True)
class EventActor:
    user_id: uuid.UUID | None
    role: object
    session_id: str | None


class TrailEventSink:
    """The :class:`~clinicguard.core.events.SecurityEventSink` of the application."""

    def __init__(self, db: Database, recorder: AuditRecorder) -> None:
        self._db = db
        self._recorder = recorder

    async def record(self, event: SecurityEvent) -> None:
        clinic = event.clinic_id or PLATFORM
        actor = EventActor(event.user_id, event.role, event.session_id)
        async with self._db.transaction(TenantContext.system(clinic)) as session:
            await self._recorder.record(session, clinic, actor, entry_of(event))
