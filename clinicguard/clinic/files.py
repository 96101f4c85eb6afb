"""Patients' files: upload (photos and documents), list and download, governed by the same
policy as clinical records (reading needs ``records:read``; uploading ``files:upload``,
given to clinicians under the same care-team, clinic-hours and break-glass conditions),
stored only encrypted under the patient's own key, 10 uploads a minute per person.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from clinicguard.audit.trail import AuditEventType
from clinicguard.authz.interfaces import Permission
from clinicguard.authz.service import shape
from clinicguard.clinic.access import visible_clinical
from clinicguard.clinic.auditing import AccessAudit
from clinicguard.clinic.models import PatientFile
from clinicguard.clinic.protection import open_from, seal_into
from clinicguard.clinic.service import ClinicDataService
from clinicguard.clinic.uploads import FileRefused, clean, single_file_part
from clinicguard.core.clock import Clock
from clinicguard.core.errors import NotFound, TooManyRequests
from clinicguard.core.events import (
    Outcome,
    SecurityEvent,
    SecurityEventSink,
    SecurityEventType,
    Severity,
)
from clinicguard.core.principal import Principal
from clinicguard.crypto.service import FieldEncryption
from clinicguard.ratelimit.interfaces import RateLimiter
from clinicguard.store.db import Database
from clinicguard.store.interfaces import tenant_of

UPLOADS_PER_MINUTE = 10
METADATA = ("id", "patient_id", "uploaded_by", "media_type", "size", "created_at")


@dataclass(frozen=True, slots=True)
class Download:
    media_type: str
    filename: str
    content: bytes


class PatientFileService:
    def __init__(
        self,
        *,
        db: Database,
        clinic: ClinicDataService,
        fields: FieldEncryption,
        limiter: RateLimiter,
        events: SecurityEventSink,
        audit: AccessAudit,
        clock: Clock,
        max_bytes: int,
    ) -> None:
        self._audit = audit
        self._db = db
        self._clinic = clinic
        self._fields = fields
        self._limiter = limiter
        self._events = events
        self._clock = clock
        self.max_bytes = max_bytes

    async def upload(
        self, principal: Principal, patient_id: uuid.UUID, body: bytes, content_type: str
    ) -> dict[str, Any]:
        state = await self._limiter.hit(
            f"uploads:{principal.user_id}", limit=UPLOADS_PER_MINUTE, window=60
        )
        if not state.allowed:
            await self._events.record(
                SecurityEvent.by(
                    principal,
                    SecurityEventType.RATE_LIMITED,
                    Outcome.DENIED,
                    Severity.MEDIUM,
                    {"limit": "uploads", "retry_after": int(state.reset_after) + 1},
                )
            )
            raise TooManyRequests(int(state.reset_after) + 1)
        async with self._db.transaction(tenant_of(principal)) as session:
            patient, _ = await self._clinic.clinical_patient(
                session, principal, patient_id, Permission.FILES_UPLOAD
            )
        filename, raw = single_file_part(body, content_type, self.max_bytes)
        try:
            kept = clean(filename, raw)
        except FileRefused as exc:
            if exc.signal is not None:
                await self._signal(principal, patient_id, exc.signal)
            raise
        row = PatientFile(
            clinic_id=patient.clinic_id,
            id=uuid.uuid4(),
            patient_id=patient.id,
            uploaded_by=principal.user_id,
            media_type=kept.media_type,
            size=len(kept.content),
            created_at=self._clock.now(),
        )
        # Decided again where the file is written: the care relation or the grant may
        # have ended while the file was being screened.
        async with self._db.transaction(tenant_of(principal)) as session:
            _, decision = await self._clinic.clinical_patient(
                session, principal, patient_id, Permission.FILES_UPLOAD
            )
            await seal_into(
                self._fields,
                "patient_files",
                row,
                {"filename": kept.filename, "content": kept.content},
            )
            session.add(row)
            await session.flush()
            await self._audit.record(
                session,
                principal,
                decision,
                AuditEventType.FILE_UPLOAD,
                "file",
                resource_id=row.id,
                patient_id=patient_id,
            )
        return {**shape(_metadata(row), decision), "filename": kept.filename}

    async def list(self, principal: Principal, patient_id: uuid.UUID) -> list[dict[str, Any]]:
        async with self._db.transaction(tenant_of(principal)) as session:
            _, decision = await self._clinic.clinical_patient(
                session, principal, patient_id, Permission.RECORDS_READ
            )
            rows = (
                await session.scalars(
                    select(PatientFile)
                    .where(
                        PatientFile.clinic_id == principal.clinic_id,
                        PatientFile.patient_id == patient_id,
                    )
                    .order_by(PatientFile.created_at.desc(), PatientFile.id)
                )
            ).all()
            out = []
            for row in rows:
                names = await open_from(self._fields, "patient_files", row, ("filename",))
                out.append({**shape(_metadata(row), decision), **names})
            await self._audit.record(
                session,
                principal,
                decision,
                AuditEventType.FILE_LIST,
                "file",
                patient_id=patient_id,
                rows=len(rows),
            )
        return out

    async def download(self, principal: Principal, file_id: uuid.UUID) -> Download:
        """The file, if the principal may read the patient's clinical records: like a
        record, a file outside the caller's clinical reach is a 404 (the same rule as
        row-level security), and a refusal by the policy (clinic hours) a 403."""
        async with self._db.transaction(tenant_of(principal)) as session:
            row = await session.scalar(
                select(PatientFile).where(
                    visible_clinical(principal, PatientFile, self._clock.now()),
                    PatientFile.id == file_id,
                )
            )
            if row is None:
                raise NotFound()
            _, decision = await self._clinic.clinical_patient(
                session, principal, row.patient_id, Permission.RECORDS_READ
            )
            values = await open_from(self._fields, "patient_files", row, ("filename", "content"))
            if values["content"] is None:  # the patient's key was destroyed: erased
                raise NotFound()
            await self._audit.record(
                session,
                principal,
                decision,
                AuditEventType.FILE_DOWNLOAD,
                "file",
                resource_id=file_id,
                patient_id=row.patient_id,
            )
        return Download(row.media_type, values["filename"] or "file", values["content"])

    async def _signal(self, principal: Principal, patient_id: uuid.UUID, signal: str) -> None:
        await self._events.record(
            SecurityEvent.by(
                principal,
                SecurityEventType.INPUT_ATTACK_SUSPECTED,
                Outcome.DENIED,
                Severity.MEDIUM,
                {"detectors": f"upload.{signal}", "where": "file", "patient_id": str(patient_id)},
            )
        )


def _metadata(row: PatientFile) -> dict[str, Any]:
    return {name: getattr(row, name) for name in METADATA}
