"""The clinic data services: patients, clinical records, prescriptions, appointments,
treatments and break-glass access.

Every operation runs in a transaction scoped to the principal's clinic (so PostgreSQL's
row-level security sees the same clinic), finds rows only among those the principal may see
(another clinic's row is a 404 exactly like a missing one), asks the policy with the facts
of the request, and shapes the answer by the decision's obligations.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from clinicguard.audit.trail import AuditEventType
from clinicguard.auth.models import ClinicMembership
from clinicguard.authz.interfaces import Condition, Decision, Permission
from clinicguard.authz.service import Authorizer, Facts, shape
from clinicguard.clinic import schemas as s
from clinicguard.clinic.access import (
    CLINICIANS,
    ClinicHoursCache,
    is_patient,
    load_patient,
    visible_clinical,
    visible_patients,
)
from clinicguard.clinic.auditing import AccessAudit
from clinicguard.clinic.cpf import normalize_cpf
from clinicguard.clinic.models import (
    Appointment,
    EmergencyGrant,
    MedicalRecord,
    Patient,
    Prescription,
    Treatment,
    TreatmentCertification,
)
from clinicguard.clinic.protection import open_from, seal_into
from clinicguard.core.clock import Clock
from clinicguard.core.errors import Conflict, FieldError, NotFound, ValidationFailed
from clinicguard.core.principal import Principal, clinic_of
from clinicguard.crypto.service import FieldEncryption
from clinicguard.store.db import Database
from clinicguard.store.interfaces import tenant_of
from clinicguard.store.paging import in_utc, page_query, split_page, uuid_key

EMERGENCY_GRANT_DURATION = timedelta(minutes=60)
MAX_APPOINTMENT = timedelta(hours=12)
#: Appointment statuses that end it; a finished appointment is not changed again.
FINAL_STATUSES = frozenset({"completed", "cancelled", "no_show"})
PATIENT_FIELDS = (
    "full_name",
    "cpf",
    "birth_date",
    "phone",
    "email",
    "address",
    "allergies",
    "medications",
    "medical_conditions",
)


PATIENT_OUT = ("id", *PATIENT_FIELDS, "created_at", "updated_at")
RECORD_OUT = (
    "id",
    "patient_id",
    "author_id",
    "kind",
    "diagnosis",
    "notes",
    "treatment",
    "created_at",
)
PRESCRIPTION_OUT = (
    "id",
    "patient_id",
    "prescriber_id",
    "record_id",
    "medication",
    "dosage",
    "instructions",
    "status",
    "issued_at",
    "valid_until",
)
APPOINTMENT_OUT = (
    "id",
    "patient_id",
    "professional_id",
    "treatment_id",
    "starts_at",
    "ends_at",
    "status",
    "reason",
    "created_at",
    "updated_at",
)


def _columns(row: Any, names: Sequence[str]) -> dict[str, Any]:
    return {name: getattr(row, name) for name in names}


CPF_TAKEN = "A patient with this CPF already exists in this clinic."


def _cpf_key(clinic_id: uuid.UUID | None) -> str:
    """The lock of a clinic's CPF uniqueness check."""
    return f"patients-cpf:{clinic_id}"


class ClinicDataService:
    def __init__(
        self,
        db: Database,
        authorizer: Authorizer,
        clock: Clock,
        fields: FieldEncryption,
        audit: AccessAudit,
    ) -> None:
        self._fields = fields
        self._db = db
        self._authz = authorizer
        self._clock = clock
        self._audit = audit
        self._hours = ClinicHoursCache()

    # --- shared steps ---------------------------------------------------------------------

    def _tx(self, principal: Principal) -> Any:
        return self._db.transaction(tenant_of(principal))

    async def _reveal(
        self, table: str, row: Any, names: Sequence[str], decision: Decision
    ) -> dict[str, Any]:
        """The answer for one row: hidden fields are neither decrypted nor returned, the
        others are decrypted in their place and then masked by the obligations."""
        shown = [n for n in names if n not in decision.obligations.hide]
        return shape(await open_from(self._fields, table, row, shown), decision)

    async def _seal(self, table: str, row: Any, values: Mapping[str, Any]) -> None:
        await seal_into(self._fields, table, row, values)

    async def _patient(
        self, session: AsyncSession, principal: Principal, patient_id: uuid.UUID
    ) -> tuple[Patient, dict[Condition, bool]]:
        """A patient the principal may know exists (else 404) and the facts about them."""
        found = await load_patient(session, principal, patient_id, self._clock.now(), self._hours)
        if found is None:
            raise NotFound()
        return found

    async def _require_change(
        self,
        principal: Principal,
        permission: Permission,
        facts: Facts,
        changed: set[str],
        target: Mapping[str, str],
    ) -> Decision:
        """Allow a change of ``changed`` fields or answer 403 naming the ones the caller
        may not change (when only the clinical fields stand in the way)."""
        clinical = changed & s.CLINICAL_PATIENT_FIELDS
        facts = {**facts, Condition.BASIC_INFO_ONLY: not clinical}
        decision = self._authz.decide(principal, permission, facts)
        if decision.allowed:
            return await self._authz.require(principal, permission, facts, target=target)
        basic = self._authz.decide(
            principal, permission, {**facts, Condition.BASIC_INFO_ONLY: True}
        )
        named = tuple(sorted(clinical if basic.allowed else changed))
        raise await self._authz.denied(principal, decision, target, named)

    # --- patients -------------------------------------------------------------------------

    async def list_patients(
        self,
        principal: Principal,
        *,
        cpf: str | None,
        q: str | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        decision = await self._authz.require(principal, Permission.PATIENTS_LIST)
        query = select(Patient).where(visible_patients(principal))
        if cpf is not None:
            indexes = await self._fields.blind_indexes(
                clinic_of(principal), "cpf", normalize_cpf(cpf)
            )
            query = query.where(Patient.cpf_index.in_(indexes))
        if q is not None:
            escaped = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(func.lower(Patient.full_name).like(f"%{escaped}%", escape="\\"))
        query = page_query(
            query,
            Patient.created_at,
            Patient.id,
            cursor,
            limit,
            parse_key=uuid_key,
        )
        searched = cpf is not None or q is not None
        async with self._tx(principal) as session:
            rows = (await session.scalars(query)).all()
            items, next_cursor = split_page(rows, limit, attrgetter("created_at", "id"))
            out = [await self._reveal("patients", p, PATIENT_OUT, decision) for p in items]
            await self._audit.record(
                session,
                principal,
                decision,
                AuditEventType.PATIENT_SEARCH if searched else AuditEventType.PATIENT_LIST,
                "patient",
                patients=[p.id for p in items],
            )
        return out, next_cursor

    async def get_patient(self, principal: Principal, patient_id: uuid.UUID) -> dict[str, Any]:
        await self._authz.require_possible(principal, Permission.PATIENTS_READ)
        async with self._tx(principal) as session:
            patient, facts = await self._patient(session, principal, patient_id)
            decision = await self._authz.require(
                principal, Permission.PATIENTS_READ, facts, target={"patient_id": str(patient_id)}
            )
            out = await self._reveal("patients", patient, PATIENT_OUT, decision)
            await self._audit.record(
                session,
                principal,
                decision,
                AuditEventType.PATIENT_READ,
                "patient",
                resource_id=patient_id,
                patient_id=patient_id,
            )
        return out

    async def create_patient(self, principal: Principal, body: s.PatientCreate) -> dict[str, Any]:
        given = {k for k in body.model_fields_set if getattr(body, k) is not None}
        decision = await self._require_change(
            principal, Permission.PATIENTS_CREATE, {}, given, {"action": "create"}
        )
        now = self._clock.now()
        patient = Patient(
            clinic_id=clinic_of(principal), id=uuid.uuid4(), created_at=now, updated_at=now
        )
        values = body.model_dump()
        await self._seal("patients", patient, values)
        try:
            async with self._db.serialized(
                _cpf_key(patient.clinic_id), tenant_of(principal)
            ) as session:
                await self._refuse_taken_cpf(session, patient, body.cpf)
                session.add(patient)
                await session.flush()
                await self._audit.record(
                    session,
                    principal,
                    decision,
                    AuditEventType.PATIENT_CREATE,
                    "patient",
                    resource_id=patient.id,
                    patient_id=patient.id,
                )
        except IntegrityError as exc:
            raise Conflict(CPF_TAKEN) from exc
        return await self._as_read(principal, patient, {})

    async def _refuse_taken_cpf(self, session: AsyncSession, patient: Patient, cpf: str) -> None:
        """409 when another patient of the clinic has this CPF under any index-key version
        (the unique constraint covers one version; between an index rotation and the
        re-index both are live). Callers hold the clinic's CPF lock."""
        indexes = await self._fields.blind_indexes(patient.clinic_id, "cpf", normalize_cpf(cpf))
        taken = await session.scalar(
            select(Patient.id)
            .where(
                Patient.clinic_id == patient.clinic_id,
                Patient.cpf_index.in_(indexes),
                Patient.id != patient.id,
            )
            .limit(1)
        )
        if taken is not None:
            raise Conflict(CPF_TAKEN)

    async def update_patient(
        self, principal: Principal, patient_id: uuid.UUID, body: s.PatientUpdate
    ) -> dict[str, Any]:
        await self._authz.require_possible(principal, Permission.PATIENTS_UPDATE)
        changes = body.model_dump(exclude_unset=True)
        # A CPF change is serialized per clinic (the uniqueness check spans index versions).
        key = _cpf_key(principal.clinic_id) if "cpf" in changes else f"patient:{patient_id}"
        try:
            async with self._db.serialized(key, tenant_of(principal)) as session:
                patient, facts = await self._patient(session, principal, patient_id)
                decision = await self._require_change(
                    principal,
                    Permission.PATIENTS_UPDATE,
                    facts,
                    set(changes),
                    {"patient_id": str(patient_id)},
                )
                if "cpf" in changes:
                    await self._refuse_taken_cpf(session, patient, changes["cpf"])
                await self._seal("patients", patient, changes)
                patient.updated_at = self._clock.now()
                await session.flush()
                await self._audit.record(
                    session,
                    principal,
                    decision,
                    AuditEventType.PATIENT_UPDATE,
                    "patient",
                    resource_id=patient_id,
                    patient_id=patient_id,
                )
        except IntegrityError as exc:
            raise Conflict(CPF_TAKEN) from exc
        return await self._as_read(principal, patient, facts)

    async def _as_read(
        self, principal: Principal, patient: Patient, facts: Facts
    ) -> dict[str, Any]:
        """A written patient answered as a read of it would be (the write's own decision
        carries no read obligations)."""
        read = self._authz.decide(principal, Permission.PATIENTS_READ, facts)
        if not read.allowed:
            return {"id": patient.id}
        return await self._reveal("patients", patient, PATIENT_OUT, read)

    # --- clinical records -----------------------------------------------------------------

    async def clinical_patient(
        self,
        session: AsyncSession,
        principal: Principal,
        patient_id: uuid.UUID,
        permission: Permission,
    ) -> tuple[Patient, Decision]:
        """A visible patient and the allow decision for ``permission`` on their clinical
        data (403 or 404 otherwise), in ``session``."""
        await self._authz.require_possible(principal, permission)
        patient, facts = await self._patient(session, principal, patient_id)
        decision = await self._authz.require(
            principal, permission, facts, target={"patient_id": str(patient_id)}
        )
        return patient, decision

    async def list_records(
        self, principal: Principal, patient_id: uuid.UUID, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        query = select(MedicalRecord).where(
            MedicalRecord.clinic_id == principal.clinic_id, MedicalRecord.patient_id == patient_id
        )
        query = page_query(
            query,
            MedicalRecord.created_at,
            MedicalRecord.id,
            cursor,
            limit,
            parse_key=uuid_key,
            newest_first=True,
        )
        async with self._tx(principal) as session:
            _, decision = await self.clinical_patient(
                session, principal, patient_id, Permission.RECORDS_READ
            )
            rows = (await session.scalars(query)).all()
            items, next_cursor = split_page(rows, limit, attrgetter("created_at", "id"))
            out = [await self._reveal("medical_records", r, RECORD_OUT, decision) for r in items]
            await self._audit.record(
                session,
                principal,
                decision,
                AuditEventType.RECORD_LIST,
                "record",
                patient_id=patient_id,
                rows=len(items),
            )
        return out, next_cursor

    async def get_record(self, principal: Principal, record_id: uuid.UUID) -> dict[str, Any]:
        await self._authz.require_possible(principal, Permission.RECORDS_READ)
        async with self._tx(principal) as session:
            record = await session.scalar(
                select(MedicalRecord).where(
                    visible_clinical(principal, MedicalRecord, self._clock.now()),
                    MedicalRecord.id == record_id,
                )
            )
            if record is None:
                raise NotFound()
            patient, facts = await self._patient(session, principal, record.patient_id)
            decision = await self._authz.require(
                principal,
                Permission.RECORDS_READ,
                facts,
                target={"patient_id": str(patient.id), "record_id": str(record_id)},
            )
            out = await self._reveal("medical_records", record, RECORD_OUT, decision)
            await self._audit.record(
                session,
                principal,
                decision,
                AuditEventType.RECORD_READ,
                "record",
                resource_id=record_id,
                patient_id=patient.id,
            )
        return out

    async def create_record(
        self, principal: Principal, patient_id: uuid.UUID, body: s.RecordCreate
    ) -> dict[str, Any]:
        permission = (
            Permission.NURSING_NOTES_CREATE
            if body.kind == "nursing_note"
            else Permission.RECORDS_CREATE
        )
        async with self._tx(principal) as session:
            _, decision = await self.clinical_patient(session, principal, patient_id, permission)
            record = MedicalRecord(
                clinic_id=clinic_of(principal),
                id=uuid.uuid4(),
                patient_id=patient_id,
                author_id=principal.user_id,
                created_at=self._clock.now(),
            )
            await self._seal("medical_records", record, body.model_dump())
            session.add(record)
            await session.flush()
            await self._audit.record(
                session,
                principal,
                decision,
                AuditEventType.RECORD_CREATE,
                "record",
                resource_id=record.id,
                patient_id=patient_id,
            )
        return await self._reveal("medical_records", record, RECORD_OUT, decision)

    async def list_prescriptions(
        self, principal: Principal, patient_id: uuid.UUID, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        query = select(Prescription).where(
            Prescription.clinic_id == principal.clinic_id, Prescription.patient_id == patient_id
        )
        query = page_query(
            query,
            Prescription.issued_at,
            Prescription.id,
            cursor,
            limit,
            parse_key=uuid_key,
            newest_first=True,
        )
        async with self._tx(principal) as session:
            _, decision = await self.clinical_patient(
                session, principal, patient_id, Permission.PRESCRIPTIONS_READ
            )
            rows = (await session.scalars(query)).all()
            items, next_cursor = split_page(rows, limit, attrgetter("issued_at", "id"))
            out = [
                await self._reveal("prescriptions", r, PRESCRIPTION_OUT, decision) for r in items
            ]
            await self._audit.record(
                session,
                principal,
                decision,
                AuditEventType.PRESCRIPTION_LIST,
                "prescription",
                patient_id=patient_id,
                rows=len(items),
            )
        return out, next_cursor

    async def create_prescription(
        self, principal: Principal, patient_id: uuid.UUID, body: s.PrescriptionCreate
    ) -> dict[str, Any]:
        async with self._tx(principal) as session:
            _, decision = await self.clinical_patient(
                session, principal, patient_id, Permission.PRESCRIPTIONS_CREATE
            )
            now = self._clock.now()
            row = Prescription(
                clinic_id=clinic_of(principal),
                id=uuid.uuid4(),
                patient_id=patient_id,
                prescriber_id=principal.user_id,
                issued_at=now,
                status="active",
                record_id=body.record_id,
                valid_until=body.valid_until,
            )
            if body.valid_until is not None and body.valid_until < now.date():
                raise ValidationFailed(errors=[FieldError("body.valid_until", "Must not be past.")])
            await self._seal(
                "prescriptions",
                row,
                body.model_dump(include={"medication", "dosage", "instructions"}),
            )
            if body.record_id is not None:
                record = await session.scalar(
                    select(MedicalRecord.id).where(
                        MedicalRecord.clinic_id == principal.clinic_id,
                        MedicalRecord.id == body.record_id,
                        MedicalRecord.patient_id == patient_id,
                    )
                )
                if record is None:
                    raise ValidationFailed(
                        errors=[FieldError("body.record_id", "Not a record of this patient.")]
                    )
            session.add(row)
            await session.flush()
            await self._audit.record(
                session,
                principal,
                decision,
                AuditEventType.PRESCRIPTION_CREATE,
                "prescription",
                resource_id=row.id,
                patient_id=patient_id,
            )
        return await self._reveal("prescriptions", row, PRESCRIPTION_OUT, decision)

    # --- break-glass ----------------------------------------------------------------------

    async def request_emergency_access(
        self, principal: Principal, patient_id: uuid.UUID, justification: str
    ) -> dict[str, Any]:
        await self._authz.require_possible(principal, Permission.EMERGENCY_REQUEST)
        now = self._clock.now()
        grant = EmergencyGrant(
            clinic_id=principal.clinic_id,
            id=uuid.uuid4(),
            patient_id=patient_id,
            grantee_id=principal.user_id,
            justification=justification.strip(),
            granted_at=now,
            expires_at=now + EMERGENCY_GRANT_DURATION,
        )
        async with self._tx(principal) as session:
            await self._patient(session, principal, patient_id)
            await self._authz.require(
                principal, Permission.EMERGENCY_REQUEST, target={"patient_id": str(patient_id)}
            )
            session.add(grant)
            await session.flush()
            await self._audit.emergency_granted(session, principal, grant)
        return self._grant_values(grant, now)

    @staticmethod
    def _grant_values(grant: EmergencyGrant, now: datetime) -> dict[str, Any]:
        return {
            **_columns(
                grant,
                (
                    "id",
                    "patient_id",
                    "grantee_id",
                    "justification",
                    "granted_at",
                    "expires_at",
                    "revoked_at",
                ),
            ),
            "active": grant.revoked_at is None and grant.expires_at > now,
        }

    async def list_emergency_grants(
        self, principal: Principal, status: str, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        decision = await self._authz.require(principal, Permission.EMERGENCY_READ)
        now = self._clock.now()
        query = select(EmergencyGrant).where(EmergencyGrant.clinic_id == principal.clinic_id)
        if status == "open":
            query = query.where(
                EmergencyGrant.revoked_at.is_(None), EmergencyGrant.expires_at > now
            )
        elif status == "past":
            query = query.where(
                (EmergencyGrant.revoked_at.is_not(None)) | (EmergencyGrant.expires_at <= now)
            )
        query = page_query(
            query,
            EmergencyGrant.granted_at,
            EmergencyGrant.id,
            cursor,
            limit,
            parse_key=uuid_key,
            newest_first=True,
        )
        async with self._tx(principal) as session:
            rows = (await session.scalars(query)).all()
            items, next_cursor = split_page(rows, limit, attrgetter("granted_at", "id"))
            await self._audit.record(
                session,
                principal,
                decision,
                AuditEventType.EMERGENCY_GRANT_LIST,
                "emergency_grant",
                patients=[g.patient_id for g in items],
            )
        return [self._grant_values(g, now) for g in items], next_cursor

    # --- appointments ---------------------------------------------------------------------

    async def list_appointments(
        self,
        principal: Principal,
        *,
        patient_id: uuid.UUID | None,
        professional_id: uuid.UUID | None,
        starts_from: datetime | None,
        starts_to: datetime | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        # A patient lists only their own appointments: the "self" fact holds by the filter.
        starts_from = in_utc(starts_from, "query.from")
        starts_to = in_utc(starts_to, "query.to")
        facts = {Condition.SELF: True} if is_patient(principal) else {}
        decision = await self._authz.require(principal, Permission.APPOINTMENTS_READ, facts)
        query = select(Appointment).where(Appointment.clinic_id == principal.clinic_id)
        if is_patient(principal):
            query = query.where(
                Appointment.patient_id.in_(select(Patient.id).where(visible_patients(principal)))
            )
        if patient_id is not None:
            query = query.where(Appointment.patient_id == patient_id)
        if professional_id is not None:
            query = query.where(Appointment.professional_id == professional_id)
        if starts_from is not None:
            query = query.where(Appointment.starts_at >= starts_from)
        if starts_to is not None:
            query = query.where(Appointment.starts_at < starts_to)
        query = page_query(
            query,
            Appointment.starts_at,
            Appointment.id,
            cursor,
            limit,
            parse_key=uuid_key,
        )
        async with self._tx(principal) as session:
            rows = (await session.scalars(query)).all()
            items, next_cursor = split_page(rows, limit, attrgetter("starts_at", "id"))
            out = [await self._reveal("appointments", a, APPOINTMENT_OUT, decision) for a in items]
            await self._audit.record(
                session,
                principal,
                decision,
                AuditEventType.APPOINTMENT_LIST,
                "appointment",
                patient_id=patient_id,
                patients=[a.patient_id for a in items],
            )
        return out, next_cursor

    def _check_times(self, starts_at: datetime, ends_at: datetime) -> None:
        errors = []
        if starts_at <= self._clock.now():
            errors.append(FieldError("body.starts_at", "Must be in the future."))
        if ends_at <= starts_at:
            errors.append(FieldError("body.ends_at", "Must be after starts_at."))
        elif ends_at - starts_at > MAX_APPOINTMENT:
            errors.append(FieldError("body.ends_at", "An appointment lasts at most 12 hours."))
        if errors:
            raise ValidationFailed(errors=errors)

    async def _check_overlap(
        self,
        session: AsyncSession,
        *,
        clinic_id: uuid.UUID | None,
        professional_id: uuid.UUID,
        starts_at: datetime,
        ends_at: datetime,
        exclude: uuid.UUID | None = None,
    ) -> None:
        query = select(Appointment.id).where(
            Appointment.clinic_id == clinic_id,
            Appointment.professional_id == professional_id,
            Appointment.status.not_in(("cancelled", "no_show")),
            Appointment.starts_at < ends_at,
            Appointment.ends_at > starts_at,
        )
        if exclude is not None:
            query = query.where(Appointment.id != exclude)
        if await session.scalar(query.limit(1)) is not None:
            raise Conflict("The professional has another appointment at that time.")

    async def _check_professional(
        self,
        session: AsyncSession,
        *,
        clinic_id: uuid.UUID | None,
        professional_id: uuid.UUID,
        treatment_id: uuid.UUID | None,
        starts_at: datetime,
    ) -> None:
        role = await session.scalar(
            select(ClinicMembership.role).where(
                ClinicMembership.clinic_id == clinic_id,
                ClinicMembership.user_id == professional_id,
                ClinicMembership.is_active.is_(True),
            )
        )
        if role not in {str(r) for r in CLINICIANS}:
            raise ValidationFailed(
                errors=[
                    FieldError("body.professional_id", "Not a physician or nurse of this clinic.")
                ]
            )
        if treatment_id is None:
            return
        treatment = await session.get(Treatment, (clinic_id, treatment_id))
        if treatment is None or not treatment.is_active:
            raise ValidationFailed(
                errors=[FieldError("body.treatment_id", "Not an active treatment of this clinic.")]
            )
        if treatment.requires_certification:
            certification = await session.get(
                TreatmentCertification, (clinic_id, treatment_id, professional_id)
            )
            if certification is None or (
                certification.expires_at is not None and certification.expires_at <= starts_at
            ):
                raise ValidationFailed(
                    errors=[
                        FieldError(
                            "body.professional_id",
                            "The professional is not certified for this treatment.",
                        )
                    ]
                )

    async def create_appointment(
        self, principal: Principal, body: s.AppointmentCreate
    ) -> dict[str, Any]:
        await self._authz.require_possible(principal, Permission.APPOINTMENTS_CREATE)
        self._check_times(body.starts_at, body.ends_at)
        key = f"appointments:{principal.clinic_id}:{body.professional_id}"
        async with self._db.serialized(key, tenant_of(principal)) as session:
            patient, facts = await self._patient(session, principal, body.patient_id)
            decision = await self._authz.require(
                principal,
                Permission.APPOINTMENTS_CREATE,
                facts,
                target={"patient_id": str(patient.id)},
            )
            await self._check_professional(
                session,
                clinic_id=principal.clinic_id,
                professional_id=body.professional_id,
                treatment_id=body.treatment_id,
                starts_at=body.starts_at,
            )
            await self._check_overlap(
                session,
                clinic_id=principal.clinic_id,
                professional_id=body.professional_id,
                starts_at=body.starts_at,
                ends_at=body.ends_at,
            )
            now = self._clock.now()
            row = Appointment(
                clinic_id=clinic_of(principal),
                id=uuid.uuid4(),
                status="scheduled",
                created_by=principal.user_id if principal.auth_method != "api_key" else None,
                created_at=now,
                updated_at=now,
            )
            await self._seal("appointments", row, body.model_dump())
            session.add(row)
            await session.flush()
            await self._audit.record(
                session,
                principal,
                decision,
                AuditEventType.APPOINTMENT_CREATE,
                "appointment",
                resource_id=row.id,
                patient_id=patient.id,
            )
        return await self._reveal("appointments", row, APPOINTMENT_OUT, decision)

    async def update_appointment(
        self, principal: Principal, appointment_id: uuid.UUID, body: s.AppointmentUpdate
    ) -> dict[str, Any]:
        await self._authz.require_possible(principal, Permission.APPOINTMENTS_UPDATE)
        changes = body.model_dump(exclude_unset=True)
        async with self._tx(principal) as session:
            current = await session.scalar(
                select(Appointment).where(
                    Appointment.clinic_id == principal.clinic_id, Appointment.id == appointment_id
                )
            )
            if current is None:
                raise NotFound()
            patient, facts = await self._patient(session, principal, current.patient_id)
        decision = await self._authz.require(
            principal,
            Permission.APPOINTMENTS_UPDATE,
            facts,
            target={"patient_id": str(patient.id), "appointment_id": str(appointment_id)},
        )
        if current.status in FINAL_STATUSES:
            raise Conflict(f"The appointment is {current.status}; it cannot change.")
        starts_at = changes.get("starts_at", current.starts_at)
        ends_at = changes.get("ends_at", current.ends_at)
        moved = "starts_at" in changes or "ends_at" in changes
        if moved:
            self._check_times(starts_at, ends_at)
        key = f"appointments:{principal.clinic_id}:{current.professional_id}"
        async with self._db.serialized(key, tenant_of(principal)) as session:
            row = await session.get(Appointment, (principal.clinic_id, appointment_id))
            if row is None:
                raise NotFound()
            if row.updated_at != current.updated_at:
                raise Conflict("The appointment changed meanwhile; read it again.")
            if moved and changes.get("status", row.status) not in FINAL_STATUSES:
                await self._check_overlap(
                    session,
                    clinic_id=principal.clinic_id,
                    professional_id=row.professional_id,
                    starts_at=starts_at,
                    ends_at=ends_at,
                    exclude=row.id,
                )
            await self._seal("appointments", row, changes)
            row.updated_at = self._clock.now()
            await session.flush()
            await self._audit.record(
                session,
                principal,
                decision,
                AuditEventType.APPOINTMENT_UPDATE,
                "appointment",
                resource_id=row.id,
                patient_id=row.patient_id,
            )
        return await self._reveal("appointments", row, APPOINTMENT_OUT, decision)

    # --- treatments -----------------------------------------------------------------------

    async def list_treatments(self, principal: Principal) -> list[dict[str, Any]]:
        await self._authz.require(principal, Permission.TREATMENTS_READ)
        async with self._tx(principal) as session:
            rows = (
                await session.scalars(
                    select(Treatment)
                    .where(Treatment.clinic_id == principal.clinic_id)
                    .order_by(Treatment.name)
                )
            ).all()
        return [s.TreatmentOut.model_validate(r, from_attributes=True).model_dump() for r in rows]

    async def create_treatment(
        self, principal: Principal, body: s.TreatmentCreate
    ) -> dict[str, Any]:
        await self._authz.require(principal, Permission.TREATMENTS_MANAGE)
        row = Treatment(
            clinic_id=principal.clinic_id, id=uuid.uuid4(), is_active=True, **body.model_dump()
        )
        try:
            async with self._tx(principal) as session:
                session.add(row)
        except IntegrityError as exc:
            raise Conflict("A treatment with this name exists.") from exc
        return s.TreatmentOut.model_validate(row, from_attributes=True).model_dump()
