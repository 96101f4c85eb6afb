"""What the audit feature's access log asks about patients (its ``PatientDirectory``):
whether the caller may know the patient exists, with the policy facts, and which
professionals have a care relation with them.

Lives here because the audit layer sits below the clinic layer and cannot read patients.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from clinicguard.authz.interfaces import Condition
from clinicguard.clinic.access import ClinicHoursCache, load_patient
from clinicguard.clinic.models import Appointment, CareTeamMember
from clinicguard.core.clock import Clock
from clinicguard.core.principal import Principal
from clinicguard.store.db import Database
from clinicguard.store.interfaces import TenantContext

CARE_TEAM = "care team"
APPOINTMENT = "appointment"


class ClinicPatientDirectory:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._hours = ClinicHoursCache()

    async def facts(
        self, session: AsyncSession, principal: Principal, patient_id: uuid.UUID
    ) -> Mapping[Condition, bool] | None:
        found = await load_patient(session, principal, patient_id, self._clock.now(), self._hours)
        return None if found is None else found[1]

    async def care_relations(
        self, clinic_id: uuid.UUID, patient_id: uuid.UUID, professionals: Collection[uuid.UUID]
    ) -> Mapping[uuid.UUID, str]:
        # Maintenance scope: a patient reading their own access log may not read the care
        # team table, yet may learn who of those who touched their data cares for them.
        wanted = list(professionals)
        async with self._db.transaction(TenantContext.system(clinic_id)) as session:
            team = set(
                (
                    await session.scalars(
                        select(CareTeamMember.professional_id).where(
                            CareTeamMember.clinic_id == clinic_id,
                            CareTeamMember.patient_id == patient_id,
                            CareTeamMember.professional_id.in_(wanted),
                        )
                    )
                ).all()
            )
            booked = set(
                (
                    await session.scalars(
                        select(Appointment.professional_id).where(
                            Appointment.clinic_id == clinic_id,
                            Appointment.patient_id == patient_id,
                            Appointment.professional_id.in_(wanted),
                            Appointment.status != "cancelled",
                        )
                    )
                ).all()
            )
        relations = dict.fromkeys(booked, APPOINTMENT)
        relations.update(dict.fromkeys(team, CARE_TEAM))
        return relations
