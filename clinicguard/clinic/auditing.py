"""Every access to patient data is appended to the audit trail in the transaction of the
access itself: the read, the list (naming every patient returned), the write. If the
event cannot be written the transaction fails, and so does the request (fail closed).

A break-glass access is marked: its event requires review, carries the grant's
justification as its reason, and scores as an emergency.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from clinicguard.audit.recorder import AuditRecorder
from clinicguard.audit.trail import AuditEntry, AuditEventType, RiskLevel
from clinicguard.authz.interfaces import AuditLevel, Decision
from clinicguard.clinic.models import EmergencyGrant
from clinicguard.core.clock import Clock
from clinicguard.core.events import SecurityEventType
from clinicguard.core.principal import Principal, clinic_of


class AccessAudit:
    def __init__(self, recorder: AuditRecorder, clock: Clock) -> None:
        self._recorder = recorder
        self._clock = clock

    async def record(
        self,
        session: AsyncSession,
        principal: Principal,
        decision: Decision,
        event_type: AuditEventType,
        resource_type: str,
        *,
        resource_id: uuid.UUID | None = None,
        patient_id: uuid.UUID | None = None,
        patients: Sequence[uuid.UUID] = (),
        rows: int = 1,
    ) -> None:
        """Append the access allowed by ``decision`` (``event_type`` names it:
        ``clinic:<resource>:<action>``) to the principal's clinic's chain in ``session``."""
        clinic = clinic_of(principal)
        emergency = decision.obligations.review
        reason = None
        if emergency and patient_id is not None:
            reason = await self._justification(session, principal, patient_id)
        entry = AuditEntry(
            event_type=event_type,
            action=str(event_type).rsplit(":", 1)[1],
            outcome="success",
            resource_type=resource_type,
            resource_id=str(resource_id) if resource_id is not None else None,
            patient_id=patient_id,
            reason=reason,
            details={
                "permission": decision.permission,
                "rule": decision.rule,
                **({"emergency": True} if emergency else {}),
            },
            requires_review=emergency,
            compliance=emergency or decision.obligations.audit is AuditLevel.HIGH,
            floor=RiskLevel.HIGH if emergency else RiskLevel.LOW,
        )
        await self._recorder.record(
            session,
            clinic,
            principal,
            entry,
            rows=max(rows, len(patients)),
            emergency=emergency,
            patients=patients,
        )

    async def emergency_granted(
        self, session: AsyncSession, principal: Principal, grant: EmergencyGrant
    ) -> None:
        """A break-glass grant opened: high risk, compliance-relevant, reviewed."""
        clinic = clinic_of(principal)
        entry = AuditEntry(
            event_type=SecurityEventType.AUTHZ_EMERGENCY_GRANTED,
            action="grant",
            outcome="success",
            resource_type="emergency_grant",
            resource_id=str(grant.id),
            patient_id=grant.patient_id,
            reason=grant.justification,
            details={"expires_at": grant.expires_at.isoformat()},
            requires_review=True,
            compliance=True,
            floor=RiskLevel.HIGH,
        )
        await self._recorder.record(session, clinic, principal, entry)

    async def _justification(
        self, session: AsyncSession, principal: Principal, patient_id: uuid.UUID
    ) -> str | None:
        """The justification of the open grant the access relied on."""
        now = self._clock.now()
        return await session.scalar(
            select(EmergencyGrant.justification)
            .where(
                EmergencyGrant.clinic_id == principal.clinic_id,
                EmergencyGrant.patient_id == patient_id,
                EmergencyGrant.grantee_id == principal.user_id,
                EmergencyGrant.revoked_at.is_(None),
                EmergencyGrant.expires_at > now,
            )
            .order_by(EmergencyGrant.granted_at.desc())
            .limit(1)
        )
