"""The audit trail as stored: events, the chain heads, the patients each event touched,
reviews, signed checkpoints and the checkpoint signing keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from clinicguard.core.ids import new_id
from clinicguard.store.base import Base


class AuditEvent(Base):
    """One event of a clinic's audit trail, link ``seq`` of its hash chain. Written in the
    transaction of the access it records; never updated or deleted by the application
    (PostgreSQL: INSERT and SELECT only, and triggers refuse UPDATE, DELETE and TRUNCATE)."""

    __tablename__ = "audit_events"

    clinic_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(default=new_id)
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
        # PostgreSQL partitions the trail by month: every unique key holds the partition
        # key (the primary key there is (clinic_id, seq, occurred_at)).
        UniqueConstraint("id", "occurred_at", name="uq_audit_events_id"),
        Index("ix_audit_events_id", "id"),
    )


class AuditHead(Base):
    """The newest link of each clinic's chain: appends lock this row, so a clinic's events
    are numbered and chained in commit order however many requests write at once."""

    __tablename__ = "audit_heads"

    clinic_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    checkpoint_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    checkpoint_at: Mapped[datetime | None] = mapped_column(default=None)


class AuditSubject(Base):
    """A patient whose data an event touched, when it touched several (a list or a search
    records every patient returned): the index of the patient's access log. The event's
    hashed details name the same ids, so verification can hold this index to the chain."""

    __tablename__ = "audit_subjects"

    clinic_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    patient_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column()


class AuditReview(Base):
    """A reviewer's decision on an event that required review. Events never change; the
    decision lives here, once per event, and is itself recorded in the trail."""

    __tablename__ = "audit_reviews"

    clinic_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    event_seq: Mapped[int] = mapped_column(BigInteger)
    decision: Mapped[str] = mapped_column(String(16))
    reviewer_id: Mapped[uuid.UUID] = mapped_column()
    note: Mapped[str | None] = mapped_column(Text, default=None)
    decided_at: Mapped[datetime] = mapped_column()

    __table_args__ = (Index("ix_audit_reviews_clinic_id_event_seq", "clinic_id", "event_seq"),)


class AuditCheckpoint(Base):
    """An Ed25519 signature over (clinic, sequence, hash, time): the chain up to ``seq``
    is vouched for by the key ``key_id``. Written every N events or minutes, and at the
    retention boundary (``kind='retention'``), from where verification starts once older
    events have been dropped."""

    __tablename__ = "audit_checkpoints"

    clinic_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    hash: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[datetime] = mapped_column()
    kind: Mapped[str] = mapped_column(String(16))
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))


class AuditSigningKey(Base):
    """A checkpoint signing key (Ed25519). The private key is sealed under the master key;
    retired keys keep verifying the checkpoints they signed."""

    __tablename__ = "audit_signing_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_pem: Mapped[str] = mapped_column(String(1024))
    private_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column()
    retired_at: Mapped[datetime | None] = mapped_column(default=None)
