"""Wrapped data keys: per clinic, per purpose, versioned (the newest version is active)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from clinicguard.core.clock import utcnow
from clinicguard.store.base import Base


class DataKey(Base):
    """A clinic's data key, wrapped by a KEK (the plaintext key is never stored).

    ``purpose`` is ``field`` (AES-256-GCM of field values, and the wrapping of patients'
    own keys) or ``index`` (HMAC-SHA256 of blind indexes). ``encryptions`` counts the values
    sealed under a field key (flushed from memory periodically), to rotate well before the
    random-nonce limit of NIST SP 800-38D."""

    __tablename__ = "data_keys"

    clinic_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("clinics.id", ondelete="RESTRICT"), primary_key=True
    )
    purpose: Mapped[str] = mapped_column(String(16), primary_key=True)
    version: Mapped[int] = mapped_column(primary_key=True)
    kek_id: Mapped[str] = mapped_column(String(64))
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    encryptions: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (
        CheckConstraint("purpose IN ('field','index')", name="purpose"),
        CheckConstraint("version >= 1", name="version"),
    )
