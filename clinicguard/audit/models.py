"""Security events as stored."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from clinicguard.core.clock import utcnow
from clinicguard.core.ids import new_id
from clinicguard.store.base import Base


class SecurityEventRecord(Base):
    """One security event. Platform-wide events (a login for an unknown email) have no
    clinic; clinic-scoped ones lead their index with it."""

    __tablename__ = "security_events"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    event_type: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(16))
    clinic_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    user_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    session_id: Mapped[str | None] = mapped_column(String(64), default=None)
    request_id: Mapped[str | None] = mapped_column(String(128), default=None)
    ip: Mapped[str | None] = mapped_column(String(64), default=None)
    user_agent: Mapped[str | None] = mapped_column(String(256), default=None)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (
        Index("ix_security_events_clinic_id_occurred_at", "clinic_id", "occurred_at"),
        Index("ix_security_events_user_id_occurred_at", "user_id", "occurred_at"),
        Index("ix_security_events_event_type_occurred_at", "event_type", "occurred_at"),
    )
