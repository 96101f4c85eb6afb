"""The durable security-event sink (the audit trail's first tenant)."""

from __future__ import annotations

from clinicguard.audit.models import SecurityEventRecord
from clinicguard.core.context import current_request
from clinicguard.core.events import SecurityEvent
from clinicguard.store.db import Database


class DatabaseSecurityEventSink:
    """Writes each event in its own transaction; a failure propagates (fail closed)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, event: SecurityEvent) -> None:
        ctx = current_request()
        row = SecurityEventRecord(
            event_type=str(event.type),
            outcome=str(event.outcome),
            severity=str(event.severity),
            clinic_id=event.clinic_id,
            user_id=event.user_id,
            session_id=event.session_id,
            request_id=ctx.request_id if ctx else None,
            ip=ctx.client_ip if ctx else None,
            user_agent=ctx.user_agent if ctx else None,
            details=dict(event.details),
        )
        async with self._db.transaction() as session:
            session.add(row)
