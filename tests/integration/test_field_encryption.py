"""Field encryption end to end, on both backends: rotation with resumable re-encryption,
crypto-shredding against an earlier copy of the database, and no plaintext at rest.

- After a field-key rotation new values are sealed under the new version at once, old
  ones stay readable; ``reencrypt`` killed after its first batch and run again finishes
  the job: every value on the new key (clinical content on the patient's own key), each
  still decrypting to what it was (none lost, none sealed twice); a row the application
  changes between re-encryption's read and write is skipped, never overwritten.
- ``shred_patient`` makes the patient's clinical content unrecoverable, also from a copy
  of the clinical database taken before (SQLite: the database file and its WAL;
  PostgreSQL: the ciphertext read as the superuser), while their clinic-key fields stay
  readable; a high-risk ``crypto:key:shredded`` event, sent to review, joins the trail.
- Every table (PostgreSQL, as the superuser) and every file (SQLite, key vault, mail)
  holds none of the personal or clinical values written through the factories and the API.
"""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql
from sqlalchemy import select

from clinicguard.audit.models import AuditEvent
from clinicguard.clinic import maintenance
from clinicguard.clinic.cpf import format_cpf
from clinicguard.clinic.maintenance import (
    TABLES,
    reencrypt,
    shred_patient,
    version_counts,
)
from clinicguard.clinic.models import ENCRYPTED, MedicalRecord, Sensitivity
from clinicguard.crypto import fields as fieldfmt
from clinicguard.crypto.fields import KeyKind, Place, header_of
from clinicguard.crypto.interfaces import DecryptionFailed
from clinicguard.crypto.keyring import FIELD
from clinicguard.crypto.vault import SubjectKeyDestroyed, subject_keys
from clinicguard.store.interfaces import TenantContext
from tests.audit_trail import trail_events
from tests.conftest import AuthWorld, Backend
from tests.factories.clinical import ClinicSet, add_clinic_set, new_cpf

PATIENTS = "/api/v1/patients"
RECORD_FIELDS = ("diagnosis", "notes", "treatment")
PRESCRIPTION_FIELDS = ("medication", "dosage", "instructions")


class Interrupted(Exception):
    """Stands for the process being killed half-way."""


# --- helpers -----------------------------------------------------------------------------------


async def raw_row(world: AuthWorld, table: str, clinic_id: uuid.UUID, row_id: uuid.UUID) -> Any:
    model = TABLES[table]
    async with world.services.db.transaction(TenantContext.system(clinic_id)) as session:
        return await session.scalar(
            select(model).where(model.clinic_id == clinic_id, model.id == row_id)
        )


async def get_json(world: AuthWorld, url: str, headers: dict[str, str]) -> Any:
    response = await world.client.get(url, headers=headers, params=None)
    assert response.status_code == 200, response.text
    return response.json()


def without_updated_at(values: dict[str, Any]) -> dict[str, Any]:
    """Re-encryption is not an edit, but the ORM's onupdate still stamps ``updated_at``
    (see test_reencryption_does_not_stamp_updated_at); the values are compared here."""
    return {k: v for k, v in values.items() if k != "updated_at"}


async def clinical_view(world: AuthWorld, a: ClinicSet) -> dict[str, Any]:
    """Everything the care-team physician reads of the clinic's patients, through the API."""
    doctor = await a.headers(world, "physician")
    view: dict[str, Any] = {}
    for patient in a.patients:
        base = f"{PATIENTS}/{patient.id}"
        view[f"patient:{patient.id}"] = without_updated_at(await get_json(world, base, doctor))
        view[f"records:{patient.id}"] = (await get_json(world, f"{base}/records", doctor))["items"]
        view[f"prescriptions:{patient.id}"] = (
            await get_json(world, f"{base}/prescriptions", doctor)
        )["items"]
    admin = await a.headers(world, "clinic_admin")
    view["appointments"] = [
        without_updated_at(item)
        for item in (await get_json(world, "/api/v1/appointments", admin))["items"]
    ]
    return view


def keys_in_use(counts: dict[tuple[str, str, str], int], *kinds: str) -> set[str]:
    return {key for (_t, _c, key) in counts if not kinds or key.split(" ")[0] in kinds}


async def add_clinic_key_record(world: AuthWorld, a: ClinicSet, patient: Any) -> Any:
    """A medical record sealed under the clinic's field key, as migration 0004 leaves
    existing clinical content until re-encryption moves it to the patient's own key."""
    now = world.services.clock.now()
    record = MedicalRecord(
        clinic_id=a.clinic_id,
        id=uuid.uuid4(),
        patient_id=patient.id,
        author_id=a.people["physician"].id,
        kind="exam",
        created_at=now - timedelta(days=3),
    )
    plain = {
        "diagnosis": "Glicemia alterada",
        "notes": "Exame de rotina migrado",
        "treatment": None,
    }
    for name, value in plain.items():
        place = Place(a.clinic_id, "medical_records", name, record.id)
        setattr(record, name, await world.services.fields.seal(place, value))
    async with world.services.db.transaction(TenantContext.system(a.clinic_id)) as session:
        session.add(record)
    return record


# --- rotation and resumable re-encryption ---------------------------------------------------


async def test_rotation_then_interrupted_and_resumed_reencryption(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    fields, db = world.services.fields, world.services.db
    legacy = await add_clinic_key_record(world, a, a.patients[0])
    assert header_of(legacy.diagnosis).kind is KeyKind.CLINIC
    before = await version_counts(db, a.clinic_id)
    assert keys_in_use(before, "clinic") == {"clinic v1"}
    assert before[("medical_records", "diagnosis", "clinic v1")] == 1
    view_before = await clinical_view(world, a)

    assert await fields.ring.rotate(a.clinic_id, FIELD) == 2
    # New writes use v2 at once: the stored header says so, byte for byte.
    front = await a.headers(world, "receptionist")
    created = await world.client.post(
        PATIENTS,
        json={"full_name": "Depois da Rotação", "cpf": new_cpf(), "phone": "11 98888-7777"},
        headers=front,
    )
    assert created.status_code == 201, created.text
    newcomer = await raw_row(world, "patients", a.clinic_id, uuid.UUID(created.json()["id"]))
    for blob in (newcomer.cpf, newcomer.phone):
        assert blob[0] == fieldfmt.FORMAT_V1
        assert blob[1] == KeyKind.CLINIC
        assert blob[2:6] == (2).to_bytes(4, "big")
    # Old rows are still readable on v1.
    assert await clinical_view(world, a) == view_before
    old = await raw_row(world, "patients", a.clinic_id, a.patients[0].id)
    assert header_of(old.allergies).version == 1

    # Which rows a run must move: the three old patients, the appointment and the record
    # under the clinic key (the newcomer is on v2 already).
    stale = {p.id for p in a.patients} | {a.appointments[0].id, legacy.id}
    async with db.transaction(TenantContext.system(a.clinic_id)) as session:
        first_batch = (
            await session.scalars(
                select(TABLES["patients"].id)
                .where(TABLES["patients"].clinic_id == a.clinic_id)
                .order_by(TABLES["patients"].id)
                .limit(2)
            )
        ).all()
    moved_first = stale & set(first_batch)

    progress: list[int] = []

    def killed_after_first_batch(rows: int) -> None:
        progress.append(rows)
        raise Interrupted

    with pytest.raises(Interrupted):
        await maintenance.reencrypt(
            db, fields, batch=2, progress=killed_after_first_batch, clinics=[a.clinic_id]
        )
    assert progress == [2]
    halfway = await version_counts(db, a.clinic_id)
    assert halfway[("patients", "cpf", "clinic v2")] == 1 + len(moved_first)
    assert halfway[("patients", "cpf", "clinic v1")] == 3 - len(moved_first)
    # Half-way, everything still reads the same.
    assert await clinical_view(world, a) == view_before

    resumed_progress: list[int] = []
    report = await reencrypt(db, fields, batch=2, progress=resumed_progress.append)
    assert report.rewritten == len(stale) - len(moved_first)
    assert report.skipped_changed == 0
    assert sum(resumed_progress) == report.examined
    assert report.subject_keys_rewrapped == len(a.patients)
    after = await version_counts(db, a.clinic_id)
    assert keys_in_use(after, "clinic") == {"clinic v2"}
    for table, column, key in after:
        if column in ENCRYPTED.get(table, {}):
            sensitivity = ENCRYPTED[table][column]
            expected = "patient" if sensitivity is Sensitivity.HIGHLY_SENSITIVE else "clinic v2"
            assert key == expected, (table, column, key)
    assert after[("medical_records", "diagnosis", "patient")] == len(a.records) + 1
    # Every value decrypts to what it was: none lost, none sealed twice.
    assert await clinical_view(world, a) == view_before
    legacy_now = await get_json(
        world, f"/api/v1/records/{legacy.id}", await a.headers(world, "physician")
    )
    assert legacy_now["diagnosis"] == "Glicemia alterada"
    assert legacy_now["notes"] == "Exame de rotina migrado"
    assert legacy_now["treatment"] is None
    # The patients' own keys are wrapped under the new field key.
    async with fields.vault.db.transaction() as session:
        versions = (
            await session.scalars(
                select(subject_keys.c.dek_version).where(subject_keys.c.clinic_id == a.clinic_id)
            )
        ).all()
    assert sorted(versions) == [2] * len(a.patients)
    # A further run finds nothing left.
    again = await reencrypt(db, fields, batch=2, clinics=[a.clinic_id])
    assert (again.rewritten, again.skipped_changed, again.subject_keys_rewrapped) == (0, 0, 0)
    assert await version_counts(db, a.clinic_id) == after


async def test_row_changed_between_read_and_write_is_skipped_not_overwritten(
    world: AuthWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compare-and-set: while re-encryption holds a row's old values, the application
    changes the row; re-encryption then skips it (the new value survives) and the next
    run moves it."""
    a = await add_clinic_set(world)
    fields, db = world.services.fields, world.services.db
    doctor = await a.headers(world, "physician")
    await fields.ring.rotate(a.clinic_id, FIELD)
    target = min(p.id for p in a.patients)  # the first row re-encryption reads
    changed_allergies = "Látex (informado durante a recifragem)"
    real_open = maintenance.open_from
    raced: list[uuid.UUID] = []

    async def open_then_race(fields_: Any, table: str, row: Any, names: Any) -> Any:
        values = await real_open(fields_, table, row, names)
        if table == "patients" and row.id == target and not raced:
            raced.append(row.id)
            response = await world.client.patch(
                f"{PATIENTS}/{target}", json={"allergies": changed_allergies}, headers=doctor
            )
            assert response.status_code == 200, response.text
        return values

    monkeypatch.setattr(maintenance, "open_from", open_then_race)
    report = await reencrypt(db, fields, batch=50, clinics=[a.clinic_id])
    assert raced == [target]
    assert report.skipped_changed == 1
    assert report.rewritten == len(a.patients) - 1 + len(a.appointments)
    row = await raw_row(world, "patients", a.clinic_id, target)
    assert header_of(row.allergies).version == 2  # the application's write
    assert header_of(row.cpf).version == 1  # untouched by re-encryption
    read = await get_json(world, f"{PATIENTS}/{target}", doctor)
    assert read["allergies"] == changed_allergies

    monkeypatch.undo()
    second = await reencrypt(db, fields, batch=50, clinics=[a.clinic_id])
    assert (second.rewritten, second.skipped_changed) == (1, 0)
    read = await get_json(world, f"{PATIENTS}/{target}", doctor)
    assert read["allergies"] == changed_allergies
    patient = next(p for p in a.patients if p.id == target)
    assert read["cpf"] == patient.cpf
    assert read["medications"] == patient.medications
    assert keys_in_use(await version_counts(db, a.clinic_id), "clinic") == {"clinic v2"}


async def test_reencryption_does_not_stamp_updated_at(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    fields, db = world.services.fields, world.services.db
    patient = a.patients[0]
    before = await raw_row(world, "patients", a.clinic_id, patient.id)
    await fields.ring.rotate(a.clinic_id, FIELD)
    report = await reencrypt(db, fields, clinics=[a.clinic_id])
    assert report.rewritten == len(a.patients) + len(a.appointments)
    after = await raw_row(world, "patients", a.clinic_id, patient.id)
    assert header_of(after.cpf).version == 2
    assert after.updated_at == before.updated_at
    appointment = await raw_row(world, "appointments", a.clinic_id, a.appointments[0].id)
    assert appointment.updated_at == a.appointments[0].updated_at


# --- crypto-shredding against an earlier copy -------------------------------------------------


def copy_of_sqlite(database_url: str, directory: Path) -> Path:
    """The database file copied with its write-ahead log (what a file backup holds)."""
    source = Path(database_url.split("///", 1)[1])
    directory.mkdir()
    for suffix in ("", "-wal", "-shm"):
        part = source.with_name(source.name + suffix)
        if part.exists():
            shutil.copyfile(part, directory / part.name)
    return directory / source.name


def ciphertext_from_copy(
    backend: Backend,
    copy: Path | None,
    table: str,
    columns: tuple[str, ...],
    *,
    where: str,
    key: Any,
) -> dict[uuid.UUID, dict[str, bytes | None]]:
    """``{row id: {column: stored bytes}}`` from the copy (SQLite) or straight from
    PostgreSQL as the superuser."""
    names = ", ".join(columns)
    if backend.postgres is not None:
        with psycopg.connect(backend.postgres.admin_url, autocommit=True) as conn:
            rows = conn.execute(
                pgsql.SQL(f"SELECT id, {names} FROM {{}} WHERE {where} = %s").format(  # noqa: S608
                    pgsql.Identifier(table)
                ),
                (key,),
            ).fetchall()
        return {
            r[0]: dict(zip(columns, (bytes(v) if v else None for v in r[1:]), strict=True))
            for r in rows
        }
    assert copy is not None
    with sqlite3.connect(copy) as conn:
        rows = conn.execute(
            f"SELECT id, {names} FROM {table} WHERE {where} = ?",  # noqa: S608
            (key.hex,),
        ).fetchall()
    return {
        uuid.UUID(r[0]): dict(zip(columns, (bytes(v) if v else None for v in r[1:]), strict=True))
        for r in rows
    }


async def shredded_events(world: AuthWorld, clinic_id: uuid.UUID) -> list[AuditEvent]:
    return await trail_events(world.services.db, types="crypto:key:shredded", clinic_id=clinic_id)


async def test_shredded_patient_is_unrecoverable_even_from_an_earlier_copy(
    world: AuthWorld, backend: Backend, tmp_path: Path
) -> None:
    a = await add_clinic_set(world)
    fields, services = world.services.fields, world.services
    patient, neighbour = a.patients[1], a.patients[2]
    doctor = await a.headers(world, "physician")
    # One more record, written through the API, so the copy holds two of them.
    written = await world.client.post(
        f"{PATIENTS}/{patient.id}/records",
        json={"kind": "consultation", "diagnosis": "Asma leve", "notes": "Usar bombinha"},
        headers=doctor,
    )
    assert written.status_code == 201, written.text

    copy = (
        None
        if backend.postgres is not None
        else copy_of_sqlite(backend.database_url, tmp_path / "backup")
    )
    records = ciphertext_from_copy(
        backend, copy, "medical_records", RECORD_FIELDS, where="patient_id", key=patient.id
    )
    prescriptions = ciphertext_from_copy(
        backend, copy, "prescriptions", PRESCRIPTION_FIELDS, where="patient_id", key=patient.id
    )
    demographics = ciphertext_from_copy(
        backend, copy, "patients", ("cpf", "allergies"), where="id", key=patient.id
    )
    assert len(records) == 2
    assert len(prescriptions) == 1
    # The copy is a real one: before the shredding it opens with the live keys.
    for record_id, values in records.items():
        place = Place(a.clinic_id, "medical_records", "diagnosis", record_id)
        assert await fields.open(place, values["diagnosis"], subject=patient.id) in {
            "Dermatite de contato",
            "Asma leve",
        }

    admin = a.people["clinic_admin"]
    assert await shred_patient(fields, services.events, a.clinic_id, patient.id, admin.id)

    # Through the API: the clinical content reads as erased, the rest is intact.
    listed = (await get_json(world, f"{PATIENTS}/{patient.id}/records", doctor))["items"]
    assert len(listed) == 2
    for record in listed:
        assert (record["diagnosis"], record["notes"], record["treatment"]) == (None, None, None)
        assert record["kind"] == "consultation"
    (rx,) = (await get_json(world, f"{PATIENTS}/{patient.id}/prescriptions", doctor))["items"]
    assert (rx["medication"], rx["dosage"], rx["instructions"]) == (None, None, None)
    person = await get_json(world, f"{PATIENTS}/{patient.id}", doctor)
    assert person["cpf"] == patient.cpf
    assert person["allergies"] == patient.allergies
    assert person["email"] == patient.email
    neighbours = (await get_json(world, f"{PATIENTS}/{neighbour.id}/records", doctor))["items"]
    assert neighbours[0]["diagnosis"] == "Dermatite de contato"

    # The copy's ciphertext is useless with everything the live system holds.
    with pytest.raises(SubjectKeyDestroyed):
        await fields.vault.key(a.clinic_id, patient.id, 1)
    field_keys = [
        await fields.ring.key(a.clinic_id, FIELD, v)
        for v in await fields.ring.versions(a.clinic_id, FIELD)
    ]
    copied = [("medical_records", records), ("prescriptions", prescriptions)]
    for table, rows in copied:
        for row_id, values in rows.items():
            for column, blob in values.items():
                if blob is None:
                    continue
                place = Place(a.clinic_id, table, column, row_id)
                assert header_of(blob).kind is KeyKind.SUBJECT
                assert await fields.open(place, blob, subject=patient.id) is None
                with pytest.raises(DecryptionFailed):
                    await fields.open(place, blob)
                for key in field_keys:
                    with pytest.raises(DecryptionFailed):
                        fieldfmt.decrypt(key, place, blob)
    # Clinic-key fields in the copy are unaffected by the shredding.
    for column in ("cpf", "allergies"):
        blob = demographics[patient.id][column]
        place = Place(a.clinic_id, "patients", column, patient.id)
        assert await fields.open(place, blob) == getattr(patient, column)

    (event,) = await shredded_events(world, a.clinic_id)
    assert event.risk_level in ("high", "critical")
    assert event.requires_review is True
    assert event.outcome == "success"
    assert event.actor_id == admin.id
    assert event.details == {"patient_id": str(patient.id), "destroyed": True}
    # The vault keeps a tombstone: erased, not missing.
    async with fields.vault.db.transaction() as session:
        tombstone = (
            await session.execute(
                select(subject_keys).where(
                    subject_keys.c.clinic_id == a.clinic_id,
                    subject_keys.c.subject_id == patient.id,
                )
            )
        ).one()
    assert tombstone.wrapped is None
    assert tombstone.destroyed_at is not None
    # Shredding again destroys nothing and says so.
    assert not await shred_patient(fields, services.events, a.clinic_id, patient.id, admin.id)
    events = await shredded_events(world, a.clinic_id)
    assert sorted(e.outcome for e in events) == ["failure", "success"]


async def test_new_clinical_data_after_shredding_leaves_erased_records_erased(
    world: AuthWorld,
) -> None:
    a = await add_clinic_set(world)
    patient = a.patients[0]
    services = world.services
    doctor = await a.headers(world, "physician")
    assert await shred_patient(services.fields, services.events, a.clinic_id, patient.id)
    written = await world.client.post(
        f"{PATIENTS}/{patient.id}/records",
        json={"kind": "follow_up", "notes": "Paciente retornou"},
        headers=doctor,
    )
    assert written.status_code == 201, written.text
    listed = await world.client.get(f"{PATIENTS}/{patient.id}/records", headers=doctor)
    assert listed.status_code == 200, listed.text
    notes = sorted((r["notes"] or "") for r in listed.json()["items"])
    assert notes == ["", "Paciente retornou"]
    prescriptions = await world.client.get(f"{PATIENTS}/{patient.id}/prescriptions", headers=doctor)
    assert prescriptions.status_code == 200, prescriptions.text


# --- no plaintext at rest -----------------------------------------------------------------------


def postgres_text(backend: Backend) -> str:
    """Every row of every table as text, read as the superuser (bytea renders as hex)."""
    assert backend.postgres is not None
    chunks: list[str] = []
    with psycopg.connect(backend.postgres.admin_url, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ]
        assert {"patients", "medical_records", "prescriptions", "appointments"} <= set(tables)
        for table in tables:
            query = pgsql.SQL("SELECT t::text FROM {} t").format(pgsql.Identifier(table))
            chunks += [row[0] for row in conn.execute(query)]
    return "\n".join(chunks)


def files_under(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


async def test_no_personal_or_clinical_value_is_stored_in_the_clear(
    world: AuthWorld, backend: Backend
) -> None:
    a = await add_clinic_set(world)
    tag = uuid.uuid4().hex[:10]
    front = await a.headers(world, "receptionist")
    doctor = await a.headers(world, "physician")
    cpf = new_cpf()
    phone_digits = f"1199{uuid.uuid4().int % 10**7:07d}"
    email = f"marker-{tag}@exemplo.com.br"
    address = f"Rua Marcador {tag}, 77"
    created = await world.client.post(
        PATIENTS,
        json={
            "full_name": "Paciente Marcador",
            "cpf": format_cpf(cpf),
            "phone": phone_digits,
            "email": email,
            "address": address,
        },
        headers=front,
    )
    assert created.status_code == 201, created.text
    new_id = created.json()["id"]
    stored_phone = created.json().get("phone") or f"+55{phone_digits}"
    allergy = f"Alergia-Marcador-{tag}"
    medication = f"Remedio-Marcador-{tag}"
    patched = await world.client.patch(
        f"{PATIENTS}/{a.patients[0].id}",
        json={"allergies": allergy, "medications": medication},
        headers=doctor,
    )
    assert patched.status_code == 200, patched.text
    diagnosis, notes = f"Diagnostico-Marcador-{tag}", f"Nota clínica marcador {tag}"
    record = await world.client.post(
        f"{PATIENTS}/{a.patients[0].id}/records",
        json={"kind": "consultation", "diagnosis": diagnosis, "notes": notes},
        headers=doctor,
    )
    assert record.status_code == 201, record.text
    drug, dose = f"Farmaco-Marcador-{tag}", f"Dose-Marcador-{tag}"
    prescription = await world.client.post(
        f"{PATIENTS}/{a.patients[0].id}/prescriptions",
        json={"medication": drug, "dosage": dose, "instructions": f"Instrucao {tag}"},
        headers=doctor,
    )
    assert prescription.status_code == 201, prescription.text
    reason = f"Motivo-Marcador-{tag}"
    starts = world.clock.now() + timedelta(days=5)
    appointment = await world.client.post(
        "/api/v1/appointments",
        json={
            "patient_id": str(a.patients[0].id),
            "professional_id": str(a.people["physician"].id),
            "starts_at": starts.isoformat(),
            "ends_at": (starts + timedelta(minutes=30)).isoformat(),
            "reason": reason,
        },
        headers=front,
    )
    assert appointment.status_code == 201, appointment.text
    # The values really are there, readable through the API.
    assert (await get_json(world, f"{PATIENTS}/{new_id}", doctor))["email"] == email
    await world.services.fields.ring.flush()

    markers = [
        cpf,
        format_cpf(cpf),
        phone_digits,
        stored_phone,
        email,
        address,
        allergy,
        medication,
        diagnosis,
        notes,
        drug,
        dose,
        f"Instrucao {tag}",
        reason,
    ]
    for plain in a.patients:
        markers += [plain.cpf, plain.email, "Rua das Flores", "Losartana", "Dipirona"]
    markers += ["Dermatite de contato", "Cetoconazol", "Curativo", "Hipertens"]
    if backend.postgres is not None:
        text = postgres_text(backend)
        found = [m for m in markers if m in text or m.encode().hex() in text]
        assert found == []
    blob = files_under(world.services.settings.data_dir)
    assert blob
    found = [m for m in markers if m.encode() in blob or m.encode("utf-16-le") in blob]
    assert found == []
