"""Security events as stored."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, String, Text
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


class AuditEvent(Base):
    """One event of a clinic's audit trail, link ``seq`` of its hash chain. Written in the
    transaction of the access it records; never updated or deleted by the application
    (PostgreSQL: INSERT and SELECT only, and triggers refuse UPDATE, DELETE and TRUNCATE)."""

    __tablename__ = "audit_events"

    clinic_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(unique=True, default=new_id)
    occurred_at: Mapped[datetime] = mapped_column()
    actor_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    actor_role: Mapped[str | None] = mapped_column(String(32), default=None)
    session_id: Mapped[str | None] = mapped_column(String(64), default=None)
    request_id: Mapped[str | None] = mapped_column(String(128), default=None)
    ip: Mapped[str | None] = mapped_column(String(64), default=None)
    user_agent: Mapped[str | None] = mapped_column(String(256), default=None)
    event_type: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str | None] = mapped_column(String(64), default=None)
    patient_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    action: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    risk_score: Mapped[int] = mapped_column(Integer)
    risk_level: Mapped[str] = mapped_column(String(16))
    compliance: Mapped[bool] = mapped_column(Boolean, default=False)
    requires_review: Mapped[bool] = mapped_column(Boolean, default=False)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index(
            "ix_audit_events_clinic_id_patient_id_occurred_at",
            "clinic_id",
            "patient_id",
            "occurred_at",
        ),
        Index(
            "ix_audit_events_clinic_id_actor_id_occurred_at", "clinic_id", "actor_id", "occurred_at"
        ),
        Index("ix_audit_events_clinic_id_occurred_at", "clinic_id", "occurred_at"),
    )


class AuditHead(Base):
    """The newest link of each clinic's chain: appends lock this row, so a clinic's events
    are numbered and chained in commit order however many requests write at once."""

    __tablename__ = "audit_heads"

    clinic_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
