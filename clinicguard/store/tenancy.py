"""The tenant registry: clinics. Every tenant-owned row points here (``TenantOwned``)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import JSON, Boolean, CheckConstraint, Integer, String, Text, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from clinicguard.core.ids import new_id
from clinicguard.store.base import Base, Timestamps

MINUTES_PER_DAY = 24 * 60


class Clinic(Timestamps, Base):
    """A tenant. Opening hours are minutes after local midnight (0-1440) in ``timezone``."""

    __tablename__ = "clinics"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    cnpj: Mapped[str | None] = mapped_column(String(14), unique=True, default=None)
    timezone: Mapped[str] = mapped_column(String(64), default="America/Sao_Paulo")
    opens_at_minute: Mapped[int] = mapped_column(Integer, default=6 * 60)
    closes_at_minute: Mapped[int] = mapped_column(Integer, default=22 * 60)
    address: Mapped[str | None] = mapped_column(Text, default=None)
    city: Mapped[str | None] = mapped_column(String(100), default=None)
    state: Mapped[str | None] = mapped_column(String(2), default=None)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    is_demo: Mapped[bool] = mapped_column(Boolean, default=False)
    """Demo data; production refuses to start while any exists."""
    security_policy: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    """Per-clinic overrides of the password policy (stricter only; see auth.policy)."""

    __table_args__ = (
        CheckConstraint(
            f"opens_at_minute >= 0 AND closes_at_minute <= {MINUTES_PER_DAY}"
            " AND opens_at_minute < closes_at_minute",
            name="hours",
        ),
    )


async def clinic_rows(
    session: AsyncSession, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, tuple[str, dict[str, Any] | None, bool]]:
    """Name, security policy overrides and active flag of the given clinics."""
    if not ids:
        return {}
    rows = await session.execute(
        select(Clinic.id, Clinic.name, Clinic.security_policy, Clinic.is_active).where(
            Clinic.id.in_(ids)
        )
    )
    return {r.id: (r.name, r.security_policy, r.is_active) for r in rows}
