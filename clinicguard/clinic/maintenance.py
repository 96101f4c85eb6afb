"""Key maintenance over the clinic's encrypted columns: re-encryption after a rotation,
re-indexing after an index-key rotation, row counts per key version, crypto-shredding.

Re-encryption is resumable by construction: it keeps no progress of its own. Each batch
finds rows with a value not under its column's target key (the clinic's active field key,
or the patient's own key for highly sensitive columns) or a blind index not under the
active index key, re-seals them and writes them back only if they did not change
meanwhile (compare-and-set on the old ciphertext), in one transaction per batch. Killed
half-way, a second run finds exactly the rows left; a value is never sealed twice.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Uuid, bindparam, func, select, update
from sqlalchemy.orm import InstrumentedAttribute

from clinicguard.clinic.models import (
    ENCRYPTED,
    Appointment,
    MedicalRecord,
    Patient,
    PatientFile,
    Prescription,
    Sensitivity,
)
from clinicguard.clinic.protection import open_from, seal_into
from clinicguard.core.events import (
    Outcome,
    SecurityEvent,
    SecurityEventSink,
    SecurityEventType,
    Severity,
)
from clinicguard.crypto.fields import KeyKind, header_of
from clinicguard.crypto.keyring import FIELD, INDEX
from clinicguard.crypto.service import FieldEncryption, index_version
from clinicguard.store.db import Database
from clinicguard.store.interfaces import TenantContext
from clinicguard.store.tenancy import Clinic

TABLES: dict[str, Any] = {
    "patients": Patient,
    "appointments": Appointment,
    "medical_records": MedicalRecord,
    "prescriptions": Prescription,
    "patient_files": PatientFile,
}
Progress = Callable[[int], None]


@dataclass
class ReencryptReport:
    examined: int = 0
    rewritten: int = 0
    skipped_changed: int = 0
    subject_keys_rewrapped: int = 0
    by_table: Counter[str] = field(default_factory=Counter)


async def clinic_ids(db: Database) -> list[uuid.UUID]:
    async with db.transaction() as session:
        return list((await session.scalars(select(Clinic.id).order_by(Clinic.id))).all())


def _stale(
    table: str, values: dict[str, bytes | None], field_version: int, index_ver: int, row: Any
) -> bool:
    for name, blob in values.items():
        if blob is None:
            continue
        header = header_of(blob)
        if ENCRYPTED[table][name] is Sensitivity.HIGHLY_SENSITIVE:
            if header.kind is not KeyKind.SUBJECT:
                return True
        elif header.kind is not KeyKind.CLINIC or header.version != field_version:
            return True
    if table == "patients":
        if index_version(row.cpf_index) != index_ver:
            return True
        if row.email_index is not None and index_version(row.email_index) != index_ver:
            return True
    return False


async def reencrypt(
    db: Database,
    fields: FieldEncryption,
    *,
    batch: int = 200,
    progress: Progress | None = None,
    clinics: list[uuid.UUID] | None = None,
) -> ReencryptReport:
    """Move every encrypted value and blind index of ``clinics`` (all by default) onto its
    target key, then rewrap the patients' keys under the active field key."""
    report = ReencryptReport()
    for clinic_id in clinics or await clinic_ids(db):
        field_version, _ = await fields.ring.active(clinic_id, FIELD)
        index_ver, _ = await fields.ring.active(clinic_id, INDEX)
        target = _Target(clinic_id, field_version, index_ver)
        for table, model in TABLES.items():
            await _reencrypt_table(db, fields, target, table, model, batch, report, progress)
        report.subject_keys_rewrapped += await fields.vault.rewrap(clinic_id)
    await fields.ring.flush()
    return report


@dataclass(frozen=True, slots=True)
class _Target:
    clinic_id: uuid.UUID
    field_version: int
    index_version: int


async def _reencrypt_table(  # noqa: PLR0917 (one pass's whole state)
    db: Database,
    fields: FieldEncryption,
    target: _Target,
    table: str,
    model: Any,
    batch: int,
    report: ReencryptReport,
    progress: Progress | None,
) -> None:
    clinic_id = target.clinic_id
    columns = list(ENCRYPTED[table])
    statement = _rewrite(model, table)
    after: uuid.UUID | None = None
    while True:
        async with db.transaction(TenantContext.system(clinic_id)) as session:
            query = select(model).where(model.clinic_id == clinic_id)
            if after is not None:
                query = query.where(model.id > after)
            rows = (await session.scalars(query.order_by(model.id).limit(batch))).all()
            if not rows:
                return
            after = rows[-1].id
            for row in rows:
                report.examined += 1
                old = {name: getattr(row, name) for name in columns}
                if not _stale(table, old, target.field_version, target.index_version, row):
                    continue
                plain = await open_from(fields, table, row, columns)
                probe = _Row(row)
                await seal_into(fields, table, probe, plain)
                params = {f"new_{name}": value for name, value in probe.changes.items()}
                params |= {f"old_{name}": blob for name, blob in old.items()}
                result = await session.execute(
                    statement, {"w_clinic": clinic_id, "w_id": row.id, **params}
                )
                if result.rowcount:  # type: ignore[attr-defined]
                    report.rewritten += 1
                    report.by_table[table] += 1
                else:
                    report.skipped_changed += 1
        if progress is not None:
            progress(len(rows))


def _rewrite(model: Any, table: str) -> Any:
    """One UPDATE per table, built once (compiled once) and run per row: the new
    ciphertexts and blind indexes, only where every old ciphertext is still in place
    (compare-and-set). ``updated_at`` is kept: re-encryption is not a change of the record
    (the model's onupdate would stamp it, and optimistic checks would then fail)."""
    written = list(ENCRYPTED[table]) + (["cpf_index", "email_index"] if table == "patients" else [])
    guard = [
        getattr(model, name).is_not_distinct_from(
            bindparam(f"old_{name}", type_=getattr(model, name).type)
        )
        for name in ENCRYPTED[table]
    ]
    values: dict[str, Any] = {
        name: bindparam(f"new_{name}", type_=getattr(model, name).type) for name in written
    }
    if hasattr(model, "updated_at"):
        values["updated_at"] = model.updated_at
    return (
        update(model)
        .where(
            model.clinic_id == bindparam("w_clinic", type_=Uuid()),
            model.id == bindparam("w_id", type_=Uuid()),
            *guard,
        )
        .values(values)
        .execution_options(synchronize_session=False)
    )


class _Row:
    """A stand-in row for sealing: the real row's identity, collecting new values."""

    def __init__(self, row: Any) -> None:
        object.__setattr__(self, "_row", row)
        object.__setattr__(self, "changes", {})

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_row"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        self.changes[name] = value


async def row_count(db: Database, clinic_id: uuid.UUID) -> int:
    """Rows with encrypted columns in one clinic (what a full re-encryption examines)."""
    total = 0
    async with db.transaction(TenantContext.system(clinic_id)) as session:
        for model in TABLES.values():
            total += (
                await session.scalar(
                    select(func.count()).select_from(model).where(model.clinic_id == clinic_id)
                )
                or 0
            )
    return total


async def version_counts(db: Database, clinic_id: uuid.UUID) -> dict[tuple[str, str, str], int]:
    """Rows per (table, column, key) of one clinic, the key as ``clinic v<N>``,
    ``patient`` or ``index v<N>``."""
    counts: Counter[tuple[str, str, str]] = Counter()
    async with db.transaction(TenantContext.system(clinic_id)) as session:
        for table, model in TABLES.items():
            columns: list[InstrumentedAttribute[Any]] = [
                getattr(model, name) for name in ENCRYPTED[table]
            ]
            extra = [Patient.cpf_index, Patient.email_index] if table == "patients" else []
            result = await session.execute(
                select(*columns, *extra).where(model.clinic_id == clinic_id)
            )
            for row in result:
                for name, blob in zip(ENCRYPTED[table], row[: len(columns)], strict=True):
                    if blob is None:
                        continue
                    header = header_of(blob)
                    key = (
                        "patient" if header.kind is KeyKind.SUBJECT else f"clinic v{header.version}"
                    )
                    counts[(table, name, key)] += 1
                for name, value in zip(
                    ("cpf_index", "email_index"), row[len(columns) :], strict=False
                ):
                    if value is not None:
                        counts[(table, name, f"index v{index_version(value)}")] += 1
    return dict(counts)


async def shred_patient(
    fields: FieldEncryption,
    events: SecurityEventSink,
    clinic_id: uuid.UUID,
    patient_id: uuid.UUID,
    actor: uuid.UUID | None = None,
) -> bool:
    """Destroy a patient's own key: their highly sensitive values become unrecoverable,
    here and in every copy of the clinical database. Recorded as a high-severity event."""
    destroyed = await fields.vault.destroy(clinic_id, patient_id)
    await events.record(
        SecurityEvent(
            type=SecurityEventType.CRYPTO_KEY_SHREDDED,
            outcome=Outcome.SUCCESS if destroyed else Outcome.FAILURE,
            severity=Severity.HIGH,
            user_id=actor,
            clinic_id=clinic_id,
            details={"patient_id": str(patient_id), "destroyed": destroyed},
        )
    )
    return destroyed
