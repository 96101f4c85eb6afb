"""Identities and the clinics they may act in."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Index, LargeBinary, String, false
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
    totp_secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    """The TOTP seed, AES-GCM sealed under a key derived from the master key and bound to the
    user id (a copied value does not open for another user)."""
    must_change_password: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    last_login_at: Mapped[datetime | None] = mapped_column(default=None)


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


class PasswordHistory(Base):
    """Previous password hashes (the newest N are refused as new passwords)."""

    __tablename__ = "password_history"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MfaBackupCode(Base):
    """A single-use recovery code, stored as a keyed hash."""

    __tablename__ = "mfa_backup_codes"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    used_at: Mapped[datetime | None] = mapped_column(default=None)


class SigningKey(Base):
    """A token signing key. The newest unretired key of a purpose signs; every key verifies
    until ``verify_until`` (the expiry of the last token it can have signed)."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(32))
    algorithm: Mapped[str] = mapped_column(String(16))
    public_pem: Mapped[str] = mapped_column(String(1024))
    private_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(default=None)
    verify_until: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (Index("ix_signing_keys_purpose_created_at", "purpose", "created_at"),)


class ApiKey(Base):
    """An integration's credential: shown once, stored as a keyed hash, found by prefix."""

    __tablename__ = "api_keys"

    clinic_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("clinics.id", ondelete="RESTRICT"), primary_key=True
    )
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100))
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
