"""``clinicguard keys …`` as a real process, against a seeded SQLite database and its key
vault (the pattern of test_cli.py: one demo seed per module, a private copy per test).

- ``keys status`` lists each demo clinic's field and index keys (v1) and the rows under
  each key;
- ``keys rotate`` then ``keys reencrypt`` (which reports its rate) leave every row on v2,
  still decrypting to the demo data;
- ``keys rotate --clinic`` with a malformed or unknown id, and ``keys shred-patient``
  without ``--yes``, refuse with a message and no traceback, changing nothing;
- ``keys rewrap`` after a new active KEK in the key file moves every data key under it,
  after which the old KEK can be removed and the data still decrypts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from clinicguard.audit.models import AuditEvent
from clinicguard.clinic.models import MedicalRecord, Patient
from clinicguard.clinic.protection import open_from
from clinicguard.crypto.interfaces import DecryptionFailed
from clinicguard.settings import Settings
from clinicguard.store.interfaces import TenantContext
from clinicguard.store.migrate import upgrade_to_head
from clinicguard.wiring import build_services
from tests.audit_trail import trail_events
from tests.integration.test_cli import Seeded, query, run_cli, seed
from tests.services import process_env

WIDE = {"COLUMNS": "250"}  # rich tables unwrapped, one row per line
CLINIC_KEY_COLUMNS = {
    "patients": (
        "cpf",
        "phone",
        "email",
        "address",
        "allergies",
        "medications",
        "medical_conditions",
    ),
    "appointments": ("reason",),
}


@dataclass(frozen=True)
class Copy:
    directory: Path
    database: Path
    vault: Path
    credentials: dict[str, Any]
    env: dict[str, str]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seed(tmp_path_factory.mktemp("keys-seed"))


def private_copy(source: Seeded, directory: Path, **extra: str) -> Copy:
    """The seeded database and key vault copied (same master key: the data stays readable)."""
    for name in ("clinicguard.db", "keyvault.db"):
        for suffix in ("", "-wal", "-shm"):
            part = source.directory / (name + suffix)
            if part.exists():
                shutil.copyfile(part, directory / part.name)
    database = directory / "clinicguard.db"
    env = {
        **source.env,
        "CLINICGUARD_DATA_DIR": str(directory),
        "CLINICGUARD_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        **WIDE,
        **extra,
    }
    return Copy(directory, database, directory / "keyvault.db", source.credentials, env)


@pytest.fixture
def demo_copy(demo: Seeded, tmp_path: Path) -> Copy:
    return private_copy(demo, tmp_path)


def cli(copy: Copy, *args: str) -> tuple[int, str]:
    result = run_cli(*args, env=copy.env, cwd=copy.directory)
    return result.returncode, result.stdout + result.stderr


def table_rows(output: str) -> list[list[str]]:
    """The body rows of the rich tables in ``output``, as lists of cells."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in output.splitlines()
        if line.strip().startswith("│")
    ]


def key_rows(output: str) -> dict[tuple[str, str, str], str]:
    """``{(clinic, purpose, version): state}`` from the keys table."""
    return {(r[0], r[1], r[2]): r[6] for r in table_rows(output) if len(r) == 7}


def count_rows(output: str) -> dict[tuple[str, str, str, str], int]:
    """``{(clinic, table, column, key): rows}`` from the row-count table."""
    return {
        (r[0], r[1], r[2], r[3]): int(r[4].replace(",", ""))
        for r in table_rows(output)
        if len(r) == 5
    }


def clinic_key_versions(database: Path) -> Counter[int]:
    """How many stored clinic-key values sit under each key version (header bytes 2..5)."""
    versions: Counter[int] = Counter()
    for table, columns in CLINIC_KEY_COLUMNS.items():
        for column in columns:
            for (blob,) in query(database, f"SELECT {column} FROM {table}"):  # noqa: S608
                if blob is not None:
                    assert blob[0] == 1
                    assert blob[1] == 1  # the clinic's key
                    versions[int.from_bytes(blob[2:6], "big")] += 1
    return versions


def settings_for(copy: Copy) -> Settings:
    env = copy.env
    values: dict[str, Any] = {
        "env": "test",
        "data_dir": copy.directory,
        "database_url": env["CLINICGUARD_DATABASE_URL"],
        "secret_key": env["CLINICGUARD_SECRET_KEY"],
        "master_key": env["CLINICGUARD_MASTER_KEY"],
    }
    if env.get("CLINICGUARD_KEY_PROVIDER") == "file":
        values["key_provider"] = "file"
        values["kek_file"] = Path(env["CLINICGUARD_KEK_FILE"])
    return Settings(**values)


def read_demo_data(copy: Copy) -> None:
    """In-process: every demo patient's CPF decrypts to the credentials file's, and their
    clinical records decrypt (under their own key); DecryptionFailed otherwise."""

    async def check() -> None:
        services = build_services(settings_for(copy))
        try:
            for clinic in copy.credentials["clinics"]:
                clinic_id = uuid.UUID(clinic["id"])
                async with services.db.transaction(TenantContext.system(clinic_id)) as session:
                    patients = (
                        await session.scalars(select(Patient).where(Patient.clinic_id == clinic_id))
                    ).all()
                    records = (
                        await session.scalars(
                            select(MedicalRecord).where(MedicalRecord.clinic_id == clinic_id)
                        )
                    ).all()
                expected = {uuid.UUID(p["id"]): p["cpf"] for p in clinic["patients"]}
                assert len(patients) == len(expected)
                for patient in patients:
                    opened = await open_from(services.fields, "patients", patient, ["cpf"])
                    assert opened["cpf"] == expected[patient.id]
                assert records
                for record in records:
                    opened = await open_from(
                        services.fields, "medical_records", record, ["diagnosis", "notes"]
                    )
                    assert opened["diagnosis"] or opened["notes"]
        finally:
            await services.close()

    asyncio.run(check())


def trail_of(copy: Copy, *types: str) -> list[AuditEvent]:
    """In-process: the audit trail's events of ``types``, every chain."""

    async def read() -> list[AuditEvent]:
        services = build_services(settings_for(copy))
        try:
            return await trail_events(services.db, types=types)
        finally:
            await services.close()

    return asyncio.run(read())


def counts(database: Path, sql: str) -> dict[str, int]:
    """``{clinic id: n}`` from a ``SELECT clinic_id, count(*) … GROUP BY clinic_id``."""
    return {str(uuid.UUID(c)): n for c, n in query(database, sql)}


# --- status ---------------------------------------------------------------------------------


def test_status_lists_each_clinics_v1_keys_and_rows(demo_copy: Copy) -> None:
    code, output = cli(demo_copy, "keys", "status")
    assert code == 0, output
    keys = key_rows(output)
    rows = count_rows(output)
    clinics = demo_copy.credentials["clinics"]
    assert {k[0] for k in keys} == {c["id"] for c in clinics}
    patients = counts(
        demo_copy.database, "SELECT clinic_id, count(*) FROM patients GROUP BY clinic_id"
    )
    reasons = counts(
        demo_copy.database,
        "SELECT clinic_id, count(*) FROM appointments WHERE reason IS NOT NULL GROUP BY clinic_id",
    )
    diagnoses = counts(
        demo_copy.database,
        "SELECT clinic_id, count(*) FROM medical_records WHERE diagnosis IS NOT NULL"
        " GROUP BY clinic_id",
    )
    for clinic in clinics:
        cid = clinic["id"]
        assert keys[(cid, "field", "1")] == "active"
        assert keys[(cid, "index", "1")] == "active"
        assert not any(k[0] == cid and k[2] != "1" for k in keys)
        n = len(clinic["patients"])
        assert patients[cid] == n
        for column in CLINIC_KEY_COLUMNS["patients"]:
            assert rows[(cid, "patients", column, "clinic v1")] == n, column
        assert rows[(cid, "patients", "cpf_index", "index v1")] == n
        assert rows[(cid, "appointments", "reason", "clinic v1")] == reasons[cid]
        assert rows[(cid, "medical_records", "diagnosis", "patient")] == diagnoses[cid]
    assert "DUE" not in output
    assert "Traceback" not in output


# --- rotation and re-encryption -----------------------------------------------------------------


def test_rotate_then_reencrypt_moves_every_row_to_v2(demo_copy: Copy) -> None:
    database = demo_copy.database
    before = clinic_key_versions(database)
    assert set(before) == {1}
    code, output = cli(demo_copy, "keys", "rotate")
    assert code == 0, output
    for clinic in demo_copy.credentials["clinics"]:
        assert f"clinic {clinic['id']}: field key v2 is active" in output
    assert "keys reencrypt" in output
    assert clinic_key_versions(database) == before  # rotation alone moves nothing

    code, output = cli(demo_copy, "keys", "reencrypt", "--batch", "3")
    assert code == 0, output
    assert "rows/s" in output
    stale = sum(before.values())  # every row with a clinic-key value
    stale_rows = (
        query(database, "SELECT count(*) FROM patients")[0][0]
        + query(database, "SELECT count(*) FROM appointments WHERE reason IS NOT NULL")[0][0]
    )
    assert stale >= stale_rows
    assert f"re-encrypted {stale_rows}," in output
    assert "skipped 0 changed" in output
    patients_with_keys = query(demo_copy.vault, "SELECT count(*) FROM subject_keys")[0][0]
    assert f"patient keys rewrapped: {patients_with_keys}" in output
    assert clinic_key_versions(database) == Counter({2: stale})
    assert {v for (v,) in query(demo_copy.vault, "SELECT dek_version FROM subject_keys")} == {2}

    code, output = cli(demo_copy, "keys", "status")
    assert code == 0, output
    keys = key_rows(output)
    rows = count_rows(output)
    for clinic in demo_copy.credentials["clinics"]:
        cid = clinic["id"]
        assert keys[(cid, "field", "1")] == "retired"
        assert keys[(cid, "field", "2")] == "active"
        assert keys[(cid, "index", "1")] == "active"
        assert rows[(cid, "patients", "cpf", "clinic v2")] == len(clinic["patients"])
    assert not [r for r in rows if r[3] == "clinic v1"]
    read_demo_data(demo_copy)

    # Resuming a finished run finds nothing to do.
    code, output = cli(demo_copy, "keys", "reencrypt")
    assert code == 0, output
    assert "re-encrypted 0," in output


@pytest.mark.parametrize(
    ("clinic", "message"),
    [("garbage", "Not a clinic id"), (str(uuid.uuid4()), "No such clinic")],
    ids=["malformed", "unknown"],
)
def test_rotate_for_a_bad_clinic_refuses_cleanly(
    demo_copy: Copy, clinic: str, message: str
) -> None:
    before = query(demo_copy.database, "SELECT clinic_id, purpose, version FROM data_keys")
    code, output = cli(demo_copy, "keys", "rotate", "--clinic", clinic)
    assert code in {1, 2}, output
    assert message in output
    assert "Traceback" not in output
    assert "is active" not in output
    after = query(demo_copy.database, "SELECT clinic_id, purpose, version FROM data_keys")
    assert sorted(after) == sorted(before)


def test_rotate_index_for_one_clinic_only(demo_copy: Copy) -> None:
    first, second = (c["id"] for c in demo_copy.credentials["clinics"][:2])
    code, output = cli(demo_copy, "keys", "rotate", "--clinic", first, "--index")
    assert code == 0, output
    assert f"clinic {first}: index key v2 is active" in output
    assert second not in output
    versions = {
        (str(uuid.UUID(c)), p): v
        for c, p, v in query(
            demo_copy.database,
            "SELECT clinic_id, purpose, max(version) FROM data_keys GROUP BY clinic_id, purpose",
        )
    }
    assert versions[(first, "index")] == 2
    assert versions[(first, "field")] == 1
    assert versions[(second, "index")] == 1


# --- crypto-shredding ---------------------------------------------------------------------------


def test_shred_patient_needs_yes_and_then_destroys_the_key(demo_copy: Copy) -> None:
    clinic = demo_copy.credentials["clinics"][0]
    patient = clinic["patients"][0]
    args = ("keys", "shred-patient", "--clinic", clinic["id"], "--patient", patient["id"])

    def wrapped() -> list[Any]:
        return query(
            demo_copy.vault,
            "SELECT wrapped IS NOT NULL, destroyed_at IS NOT NULL FROM subject_keys"
            " WHERE subject_id = ?",
            (uuid.UUID(patient["id"]).hex,),
        )

    assert wrapped() == [(1, 0)]
    code, output = cli(demo_copy, *args)
    assert code == 2, output
    assert "--yes" in output
    assert "Traceback" not in output
    assert wrapped() == [(1, 0)]

    code, output = cli(
        demo_copy, "keys", "shred-patient", "--clinic", "x", "--patient", "y", "--yes"
    )
    assert code == 2, output
    assert "UUID" in output
    assert "Traceback" not in output

    code, output = cli(demo_copy, *args, "--yes")
    assert code == 0, output
    assert "unrecoverable" in output
    assert wrapped() == [(0, 1)]
    events = trail_of(demo_copy, "crypto:key:shredded")
    assert [(e.clinic_id, e.outcome, e.requires_review) for e in events] == [
        (uuid.UUID(clinic["id"]), "success", True)
    ]
    assert events[0].risk_level in ("high", "critical")

    code, output = cli(demo_copy, *args, "--yes")
    assert code == 1, output
    assert "no key for that patient" in output


# --- KEK rotation with a key file ---------------------------------------------------------------


def write_kek_file(path: Path, active: str, keys: dict[str, bytes]) -> None:
    path.write_text(
        json.dumps(
            {"active": active, "keys": {k: base64.b64encode(v).decode() for k, v in keys.items()}}
        )
    )
    path.chmod(0o600)


@pytest.fixture(scope="module")
def file_kek_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Seeded, bytes]:
    """A demo seeded with the file provider, its data keys wrapped under ``kek-a``."""
    directory = tmp_path_factory.mktemp("kek-seed")
    kek_a = os.urandom(32)
    kek_file = directory / "kek.json"
    write_kek_file(kek_file, "kek-a", {"kek-a": kek_a})
    database = directory / "clinicguard.db"
    upgrade_to_head(f"sqlite+aiosqlite:///{database}")
    env = process_env(
        directory,
        database,
        CLINICGUARD_KEY_PROVIDER="file",
        CLINICGUARD_KEK_FILE=str(kek_file),
    )
    out_file = directory / "demo-credentials.json"
    result = run_cli("demo", "seed", "--out", str(out_file), env=env, cwd=directory)
    assert result.returncode == 0, result.stderr
    seeded = Seeded(directory, database, out_file, json.loads(out_file.read_text()), env)
    return seeded, kek_a


def test_rewrap_moves_every_data_key_to_the_new_kek(
    file_kek_demo: tuple[Seeded, bytes], tmp_path: Path
) -> None:
    seeded, kek_a = file_kek_demo
    kek_file = tmp_path / "kek.json"
    copy = private_copy(seeded, tmp_path, CLINICGUARD_KEK_FILE=str(kek_file))
    data_keys = query(copy.database, "SELECT count(*) FROM data_keys")[0][0]
    assert data_keys == 2 * len(copy.credentials["clinics"])
    assert {k for (k,) in query(copy.database, "SELECT kek_id FROM data_keys")} == {"kek-a"}

    kek_b = os.urandom(32)
    # Without kek-a nothing opens: the data keys are still wrapped under it.
    write_kek_file(kek_file, "kek-b", {"kek-b": kek_b})
    with pytest.raises(DecryptionFailed):
        read_demo_data(copy)

    write_kek_file(kek_file, "kek-b", {"kek-a": kek_a, "kek-b": kek_b})
    code, output = cli(copy, "keys", "rewrap")
    assert code == 0, output
    assert f"data keys rewrapped under the active KEK: {data_keys}" in output
    assert {k for (k,) in query(copy.database, "SELECT kek_id FROM data_keys")} == {"kek-b"}

    # The old KEK can go: everything still decrypts under the new one alone.
    write_kek_file(kek_file, "kek-b", {"kek-b": kek_b})
    code, output = cli(copy, "keys", "status")
    assert code == 0, output
    assert {r[3] for r in table_rows(output) if len(r) == 7} == {"kek-b"}
    read_demo_data(copy)
    code, output = cli(copy, "keys", "rewrap")
    assert code == 0, output
    assert "data keys rewrapped under the active KEK: 0" in output


def test_keys_command_with_an_unsafe_kek_file_names_the_problem(demo_copy: Copy) -> None:
    kek_file = demo_copy.directory / "kek.json"
    write_kek_file(kek_file, "kek-a", {"kek-a": os.urandom(32)})
    kek_file.chmod(0o644)
    copy = Copy(
        demo_copy.directory,
        demo_copy.database,
        demo_copy.vault,
        demo_copy.credentials,
        {
            **demo_copy.env,
            "CLINICGUARD_KEY_PROVIDER": "file",
            "CLINICGUARD_KEK_FILE": str(kek_file),
        },
    )
    code, output = cli(copy, "keys", "status")
    assert "readable by others" in output
    assert "Traceback" not in output
    assert code == 2, output
