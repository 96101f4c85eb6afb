"""``reencrypt``: how fast ``clinicguard keys reencrypt`` moves a clinic's values onto a new
field key, against the run's PostgreSQL database.

Run by the harness as ``python -m bench.reencrypt`` (bench/inprocess.py) with the run's
configuration (the application role, the key vault's own database). It builds
clinicguard's services as a ``clinicguard`` command does, then:

1. makes a clinic of its own (keys created with it, as the demo seed does) with one
   physician, and seeds ``PATIENTS`` patients, each with one medical record and one
   prescription, every classified value sealed through ``clinic.protection.seal_into`` with
   the services' ``FieldEncryption``, under ``TenantContext.system``, ``SEED_BATCH``
   patients per transaction: a patient's 7 values under the clinic's field key (and its CPF
   and e-mail blind indexes), the record's 3 and the prescription's 3 under the patient's
   own key (one vault key per patient); then ANALYZEs those tables as their owner (see
   :func:`_analyze`);
2. for each round (``--rounds``), for each batch size of ``BATCHES``: rotates the clinic's
   field key (``fields.ring.rotate(clinic_id, "field")``) and times
   ``clinic.maintenance.reencrypt(db, fields, batch=…, clinics=[clinic])``: every row of
   the clinic examined, the patients' rows re-encrypted (the records' and prescriptions'
   values are under the patients' own keys, so they are examined only), then the patients'
   keys rewrapped under the new field key.

Prints rows per second examined and re-encrypted per batch size (all its passes together),
and where a pass spends its time: the patients (opened, sealed, written back with a
compare-and-set), the records and prescriptions (read and checked), the vault's rewrap.
``--duration`` does not apply: each pass does a fixed amount of work.
"""

from __future__ import annotations

import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import text

from bench import inprocess
from bench.inprocess import Figures, InProcessSpec, progress
from clinicguard.auth.models import ClinicMembership, User
from clinicguard.clinic.cpf import generate_cpf
from clinicguard.clinic.maintenance import ReencryptReport, reencrypt
from clinicguard.clinic.models import Clinic, MedicalRecord, Patient, Prescription
from clinicguard.clinic.protection import seal_into
from clinicguard.core.ids import new_id
from clinicguard.crypto.keyring import FIELD
from clinicguard.crypto.service import FieldEncryption
from clinicguard.store.db import Database
from clinicguard.store.interfaces import TenantContext
from clinicguard.wiring import Services

PATIENTS = 2000
SEED_BATCH = 200
"""Patients per seeding transaction."""
BATCHES = (200, 1000)
"""The ``batch`` values timed (``keys reencrypt --batch``; 200 is its default)."""
UNUSABLE_HASH = "$argon2id$v=19$m=19456,t=2,p=1$YmVuY2hiZW5jaA$bm90LWEtaGFzaA"
"""The physician's password hash: never signed in with (not the hash of any password)."""
ROWS_PER_PATIENT = 3
SEEDED_TABLES = ("patients", "medical_records", "prescriptions")
"""A patient, a medical record, a prescription."""
_ALLERGIES = ("Dipirona", "Penicilina", "Nenhuma conhecida", "Látex", "Sulfa")
_MEDICATIONS = ("Losartana 50 mg", "Metformina 850 mg", "Nenhum", "Levotiroxina 75 mcg")
_CONDITIONS = ("Hipertensão arterial", "Diabetes tipo 2", "Nenhuma", "Hipotireoidismo")
PRESCRIPTION = {
    "medication": "Cetoconazol 2% creme",
    "dosage": "Aplicar 2x ao dia",
    "instructions": "Por 14 dias",
}
_DIAGNOSES = ("Dermatite seborreica (L21)", "Acne vulgar (L70.0)", "Psoríase (L40)")


async def _clinic(db: Database, fields: FieldEncryption) -> tuple[uuid.UUID, uuid.UUID]:
    """A clinic of the bench's own, with its keys and one physician (as the demo seed
    makes a clinic: in one transaction, scoped to it as maintenance)."""
    clinic_id, physician_id = new_id(), new_id()
    async with db.transaction() as session:
        session.add(
            Clinic(
                id=clinic_id,
                name=f"Clínica Bench Reencrypt {clinic_id.hex[:6]}",
                opens_at_minute=0,
                closes_at_minute=24 * 60,
                is_demo=True,
            )
        )
        await session.flush()
        await db.set_tenant(session, TenantContext.system(clinic_id))
        await fields.ring.create_initial(session, clinic_id)
        session.add(
            User(
                id=physician_id,
                email=f"bench-reencrypt-{physician_id.hex[:10]}@bench.example.com",
                full_name="Dra. Bench Reencrypt",
                password_hash=UNUSABLE_HASH,
                professional_license="CRM-SP 000001",
            )
        )
        await session.flush()
        session.add(ClinicMembership(clinic_id=clinic_id, user_id=physician_id, role="physician"))
    return clinic_id, physician_id


async def _seed(
    db: Database, fields: FieldEncryption, clinic_id: uuid.UUID, physician_id: uuid.UUID
) -> int:
    """PATIENTS patients with a record and a prescription each; returns the values sealed."""
    rng = random.Random(20261125)  # test data, not secrets
    cpfs: set[str] = set()
    now = datetime.now(UTC)
    sealed = 0
    for first in range(0, PATIENTS, SEED_BATCH):
        async with db.transaction(TenantContext.system(clinic_id)) as session:
            patients, records, prescriptions = [], [], []
            for n in range(first, min(first + SEED_BATCH, PATIENTS)):
                cpf = generate_cpf(rng)
                while cpf in cpfs:
                    cpf = generate_cpf(rng)
                cpfs.add(cpf)
                patient = Patient(
                    id=new_id(),
                    clinic_id=clinic_id,
                    full_name=f"Paciente Bench {n}",
                    birth_date=date(1950, 1, 1) + timedelta(days=(n * 13) % 20000),
                )
                values = {
                    "cpf": cpf,
                    "phone": f"+55119{rng.randrange(10**7, 10**8)}",
                    "email": f"paciente.bench{n}@email.example.com",
                    "address": f"Rua Augusta, {rng.randrange(10, 2000)}, São Paulo - SP",
                    "allergies": rng.choice(_ALLERGIES),
                    "medications": rng.choice(_MEDICATIONS),
                    "medical_conditions": rng.choice(_CONDITIONS),
                }
                await seal_into(fields, "patients", patient, values)
                sealed += len(values)
                patients.append(patient)
                diagnosis = rng.choice(_DIAGNOSES)
                record = MedicalRecord(
                    id=new_id(),
                    clinic_id=clinic_id,
                    patient_id=patient.id,
                    author_id=physician_id,
                    kind="consultation",
                    created_at=now - timedelta(days=rng.randrange(1, 365)),
                )
                clinical = {
                    "diagnosis": diagnosis,
                    "notes": f"Paciente relata queixas compatíveis com "
                    f"{diagnosis.split(' (')[0].lower()}.",
                    "treatment": "Tratamento tópico e retorno em 30 dias.",
                }
                await seal_into(fields, "medical_records", record, clinical)
                sealed += len(clinical)
                records.append(record)
                prescription = Prescription(
                    id=new_id(),
                    clinic_id=clinic_id,
                    patient_id=patient.id,
                    prescriber_id=physician_id,
                    record_id=record.id,
                    issued_at=record.created_at,
                    valid_until=(record.created_at + timedelta(days=30)).date(),
                )
                await seal_into(fields, "prescriptions", prescription, PRESCRIPTION)
                sealed += len(PRESCRIPTION)
                prescriptions.append(prescription)
            # parents first: the foreign keys are constraints, not ORM relationships
            for rows in (patients, records, prescriptions):
                session.add_all(rows)
                await session.flush()
        progress(f"reencrypt: seeded {min(first + SEED_BATCH, PATIENTS):,}/{PATIENTS:,} patients")
    return sealed


async def _analyze(owner_url: str) -> None:
    """ANALYZE the seeded tables as their owner (the migration role), as autovacuum would
    soon after a bulk load: without statistics the planner takes the clinic's rows for a
    handful, and each batch's keyset query sorts every remaining row, evaluating the
    row-level security function on each, instead of walking the primary key to the
    batch's end."""
    owner = Database.from_url(owner_url)
    try:
        async with owner.transaction() as session:
            for table in SEEDED_TABLES:
                await session.execute(text(f"ANALYZE {table}"))
    finally:
        await owner.dispose()


@dataclass
class _Pass:
    """One timed ``reencrypt`` call."""

    batch: int
    key_version: int
    seconds: float
    report: ReencryptReport
    marks: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since the start, rows examined so far) after each batch."""

    def phases(self) -> dict[str, float]:
        """Seconds spent on the patients' rows (re-encrypted), on the records and
        prescriptions (examined), and after the last batch (the vault's rewrap of the
        patients' keys, the ring's count flush)."""
        patients_done = next((t for t, rows in self.marks if rows >= PATIENTS), 0.0)
        tables_done = self.marks[-1][0] if self.marks else 0.0
        return {
            "patients_seconds": round(patients_done, 3),
            "records_and_prescriptions_seconds": round(tables_done - patients_done, 3),
            "subject_key_rewrap_seconds": round(self.seconds - tables_done, 3),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "field_key_version": self.key_version,
            "seconds": round(self.seconds, 3),
            "examined": self.report.examined,
            "rewritten": self.report.rewritten,
            "skipped_changed": self.report.skipped_changed,
            "subject_keys_rewrapped": self.report.subject_keys_rewrapped,
            "by_table": dict(self.report.by_table),
            **self.phases(),
        }


async def _timed_pass(services: Services, clinic_id: uuid.UUID, batch: int) -> _Pass:
    version = await services.fields.ring.rotate(clinic_id, FIELD)
    marks: list[tuple[float, int]] = []
    seen = 0
    started = time.perf_counter()

    def mark(rows: int) -> None:
        nonlocal seen
        seen += rows
        marks.append((time.perf_counter() - started, seen))

    report = await reencrypt(
        services.db, services.fields, batch=batch, progress=mark, clinics=[clinic_id]
    )
    done = _Pass(batch, version, time.perf_counter() - started, report, marks)
    if report.rewritten != PATIENTS or report.skipped_changed:
        raise RuntimeError(
            f"batch {batch}: re-encrypted {report.rewritten} rows, skipped "
            f"{report.skipped_changed}; expected every one of the {PATIENTS} patients"
        )
    return done


def _rate(rows: int, seconds: float) -> float:
    return round(rows / seconds, 1) if seconds > 0 else 0.0


def _summary(passes: list[_Pass]) -> dict[str, Any]:
    seconds = sum(p.seconds for p in passes)
    examined = sum(p.report.examined for p in passes)
    rewritten = sum(p.report.rewritten for p in passes)
    phases = [p.phases() for p in passes]
    patients_seconds = sum(ph["patients_seconds"] for ph in phases)
    others_seconds = sum(ph["records_and_prescriptions_seconds"] for ph in phases)
    rewrap_seconds = sum(ph["subject_key_rewrap_seconds"] for ph in phases)
    keys = sum(p.report.subject_keys_rewrapped for p in passes)
    return {
        "passes": len(passes),
        "seconds_per_pass": round(seconds / len(passes), 3),
        "examined_rows_per_second": _rate(examined, seconds),
        "reencrypted_rows_per_second": _rate(rewritten, seconds),
        "patients_reencrypted_per_second_in_their_phase": _rate(rewritten, patients_seconds),
        "records_and_prescriptions_examined_per_second": _rate(
            examined - rewritten, others_seconds
        ),
        "subject_keys_rewrapped_per_second": _rate(keys, rewrap_seconds),
        "phase_seconds_per_pass": {
            "patients": round(patients_seconds / len(passes), 3),
            "records_and_prescriptions": round(others_seconds / len(passes), 3),
            "subject_key_rewrap": round(rewrap_seconds / len(passes), 3),
        },
    }


async def measure(spec: InProcessSpec) -> Figures:
    async with inprocess.clinicguard_services() as services:
        db, fields = services.db, services.fields
        clinic_id, physician_id = await _clinic(db, fields)
        progress(f"reencrypt: seeding {PATIENTS:,} patients with a record and a prescription")
        started = time.perf_counter()
        sealed = await _seed(db, fields, clinic_id, physician_id)
        await fields.ring.flush()
        seed_seconds = time.perf_counter() - started
        await _analyze(services.settings.migration_database_url)
        passes: list[_Pass] = []
        for round_number in range(1, spec.rounds + 1):
            for batch in BATCHES:
                done = await _timed_pass(services, clinic_id, batch)
                passes.append(done)
                progress(
                    f"reencrypt round {round_number}/{spec.rounds}: batch {batch}, field key "
                    f"v{done.key_version}: {done.report.examined:,} rows examined, "
                    f"{done.report.rewritten:,} re-encrypted in {done.seconds:.2f} s"
                )
    rows = PATIENTS * ROWS_PER_PATIENT
    by_batch = {b: _summary([p for p in passes if p.batch == b]) for b in BATCHES}
    lines = [
        f"  seeded {PATIENTS:,} patients + {PATIENTS:,} records + {PATIENTS:,} prescriptions "
        f"({sealed:,} values sealed, {PATIENTS:,} patient keys) in {seed_seconds:.1f} s "
        f"({_rate(PATIENTS, seed_seconds):,.0f} patients/s)",
        f"  each pass: field key rotated, {rows:,} rows examined, the {PATIENTS:,} patients "
        f"re-encrypted (7 values each), {PATIENTS:,} patient keys rewrapped; "
        f"{spec.rounds} pass(es) per batch size",
    ]
    for batch, s in by_batch.items():
        ph = s["phase_seconds_per_pass"]
        lines.append(
            f"  batch {batch:>4}: {s['seconds_per_pass']:.2f} s per pass: "
            f"{s['examined_rows_per_second']:,.0f} rows/s examined, "
            f"{s['reencrypted_rows_per_second']:,.0f} rows/s re-encrypted "
            f"(patients {ph['patients']:.2f} s, records + prescriptions "
            f"{ph['records_and_prescriptions']:.2f} s, patient-key rewrap "
            f"{ph['subject_key_rewrap']:.2f} s)"
        )
    return Figures(
        values={
            "patients": PATIENTS,
            "rows": rows,
            "values_sealed": sealed,
            "seed_seconds": round(seed_seconds, 3),
            "seed_batch": SEED_BATCH,
            "by_batch": {str(b): s for b, s in by_batch.items()},
            "passes": [p.as_dict() for p in passes],
        },
        lines=lines,
    )


if __name__ == "__main__":
    sys.exit(inprocess.main(measure))
