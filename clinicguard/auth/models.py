"""Identities and the clinics they may act in."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from clinicguard.core.clock import utcnow
from clinicguard.core.ids import new_id
from clinicguard.store.base import Base, Timestamps


class User(Timestamps, Base):
    """A person who logs in. Platform-wide: one login for every clinic one works at."""

    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    """Normalized (lower-cased); the login identifier."""
    full_name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(255))
    password_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    is_platform_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    professional_license: Mapped[str | None] = mapped_column(String(40), default=None)
    """Council registration (CRM for physicians, COREN for nurses), e.g. ``CRM-SP 123456``."""
    mfa_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    totp_secret: Mapped[str | None] = mapped_column(Text, default=None)


class ClinicMembership(Timestamps, Base):
    """A user's role at one clinic; a professional may belong to several clinics."""

    __tablename__ = "clinic_memberships"

    clinic_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("clinics.id", ondelete="RESTRICT"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="RESTRICT"), primary_key=True
    )
    role: Mapped[str] = mapped_column(String(32))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)

    __table_args__ = (Index("ix_clinic_memberships_user_id", "user_id"),)
