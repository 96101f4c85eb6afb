"""The operator CLI as a real process: ``python -m clinicguard …`` (API.md, "CLI" and "Demo
data set and its credentials file").

Each command runs in a subprocess with an environment of its own (no CLINICGUARD_* variable
of the developer's shell leaks in) against a SQLite file under the test's tmp_path.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clinicguard.clinic.cpf import is_valid_cpf
from clinicguard.store.migrate import upgrade_to_head
from tests.services import process_env

CLI_TIMEOUT_SECONDS = 60
MFA_ROLES = {"platform_admin", "clinic_admin", "physician", "nurse", "compliance_officer"}
NO_MFA_ROLES = {"receptionist", "patient"}
STAFF_ROLE_COUNTS = {
    "clinic_admin": 1,
    "physician": 2,
    "nurse": 1,
    "receptionist": 1,
    "compliance_officer": 1,
}
PLATFORM_ADMIN_KEYS = {"id", "email", "password", "totp_secret"}
CLINIC_KEYS = {"id", "name", "users", "patients"}
USER_KEYS = {"id", "email", "password", "role", "totp_secret", "care_team"}
PATIENT_KEYS = {"id", "full_name", "cpf", "user_email"}
SPECIALS = re.compile(r"[^A-Za-z0-9]")


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clinicguard", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        check=False,
    )


def migrated_database(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    database = directory / "clinicguard.db"
    upgrade_to_head(f"sqlite+aiosqlite:///{database}")
    return database


def query(database: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read-only access to the SQLite file (never changes what a test inspects)."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        return conn.execute(sql, params).fetchall()


def dump(database: Path) -> str:
    """The whole database as SQL text: equal dumps mean nothing changed."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


def row_id(value: str) -> str:
    """A credentials-file UUID as SQLAlchemy stores it in SQLite (32 hex digits)."""
    return uuid.UUID(value).hex


@dataclass(frozen=True)
class Seeded:
    directory: Path
    database: Path
    credentials_file: Path
    credentials: dict[str, Any]
    env: dict[str, str]


def seed(directory: Path) -> Seeded:
    database = migrated_database(directory)
    env = process_env(directory, database)
    out_file = directory / "demo-credentials.json"
    result = run_cli("demo", "seed", "--out", str(out_file), env=env, cwd=directory)
    assert result.returncode == 0, result.stderr
    return Seeded(directory, database, out_file, json.loads(out_file.read_text()), env)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    """One demo seed, shared read-only by the tests that inspect its result."""
    return seed(tmp_path_factory.mktemp("seed-a"))


@pytest.fixture
def seeded_copy(seeded: Seeded, tmp_path: Path) -> Seeded:
    """A private copy of the seeded database and credentials, for tests that run commands."""
    database = tmp_path / "clinicguard.db"
    shutil.copyfile(seeded.database, database)
    out_file = tmp_path / "demo-credentials.json"
    shutil.copy2(seeded.credentials_file, out_file)
    env = process_env(tmp_path, database)
    return Seeded(tmp_path, database, out_file, seeded.credentials, env)


def all_users(credentials: dict[str, Any]) -> list[dict[str, Any]]:
    admin = {**credentials["platform_admin"], "role": "platform_admin"}
    return [admin] + [u for c in credentials["clinics"] for u in c["users"]]


def test_module_help_lists_the_commands(tmp_path: Path) -> None:
    """``python -m clinicguard --help`` works and lists the operator commands."""
    result = run_cli("--help", env=process_env(tmp_path, tmp_path / "unused.db"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("serve", "migrate", "demo"):
        assert command in result.stdout


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    """``migrate`` builds the schema from the migrations in an empty database."""
    database = tmp_path / "fresh" / "clinicguard.db"
    database.parent.mkdir()
    result = run_cli("migrate", env=process_env(tmp_path, database), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    tables = {
        row[0] for row in query(database, "SELECT name FROM sqlite_master WHERE type='table'")
    }
    assert {
        "alembic_version",
        "users",
        "clinics",
        "clinic_memberships",
        "patients",
        "care_team",
        "appointments",
        "medical_records",
    } <= tables
    assert query(database, "SELECT count(*) FROM alembic_version") == [(1,)]
    # Running it again is a no-op, not an error.
    again = run_cli("migrate", env=process_env(tmp_path, database), cwd=tmp_path)
    assert again.returncode == 0, again.stderr


def test_credentials_file_is_private(seeded: Seeded) -> None:
    """The credentials file holds passwords and TOTP secrets: only its owner may read it."""
    mode = stat.S_IMODE(seeded.credentials_file.stat().st_mode)
    assert mode == 0o600, oct(mode)


def test_credentials_file_has_exactly_the_documented_shape(seeded: Seeded) -> None:
    """The file has API.md's shape, key for key, with UUID ids."""
    creds = seeded.credentials
    assert set(creds) == {"platform_admin", "clinics"}
    assert set(creds["platform_admin"]) == PLATFORM_ADMIN_KEYS
    assert len(creds["clinics"]) >= 2
    for clinic in creds["clinics"]:
        assert set(clinic) == CLINIC_KEYS
        assert isinstance(clinic["name"], str)
        assert clinic["name"]
        for user in clinic["users"]:
            assert set(user) == USER_KEYS
            assert isinstance(user["care_team"], bool)
        for patient in clinic["patients"]:
            assert set(patient) == PATIENT_KEYS
    ids = [creds["platform_admin"]["id"]]
    ids += [c["id"] for c in creds["clinics"]]
    ids += [u["id"] for c in creds["clinics"] for u in c["users"]]
    ids += [p["id"] for c in creds["clinics"] for p in c["patients"]]
    assert all(str(uuid.UUID(i)) == i for i in ids)
    assert len(set(ids)) == len(ids)
    emails = [u["email"] for u in all_users(creds)]
    assert len(set(emails)) == len(emails)


def test_each_clinic_has_every_role_and_one_care_team_physician(seeded: Seeded) -> None:
    """Every role exists in every clinic, so each access rule can be demonstrated; exactly one
    physician is on the care team (the other shows the care-team boundary)."""
    for clinic in seeded.credentials["clinics"]:
        roles = Counter(u["role"] for u in clinic["users"])
        for role, count in STAFF_ROLE_COUNTS.items():
            assert roles[role] == count, (clinic["name"], role, roles)
        assert roles["patient"] >= 1
        physicians = [u for u in clinic["users"] if u["role"] == "physician"]
        assert sorted(p["care_team"] for p in physicians) == [False, True]


def test_patients_have_valid_cpfs_and_one_is_a_user(seeded: Seeded) -> None:
    """At least three patients per clinic, valid CPFs, exactly one linked to a patient user."""
    for clinic in seeded.credentials["clinics"]:
        patients = clinic["patients"]
        assert len(patients) >= 3
        assert all(is_valid_cpf(p["cpf"]) for p in patients), [p["cpf"] for p in patients]
        linked = [p for p in patients if p["user_email"] is not None]
        assert len(linked) == 1
        patient_users = {u["email"] for u in clinic["users"] if u["role"] == "patient"}
        assert linked[0]["user_email"] in patient_users


def test_mfa_roles_have_totp_and_others_do_not(seeded: Seeded) -> None:
    """Every role that requires MFA has TOTP enrolled (base32 secret, mfa_enabled in the
    database); receptionist and patient have none."""
    for user in all_users(seeded.credentials):
        secret = user["totp_secret"]
        if user["role"] in MFA_ROLES:
            assert isinstance(secret, str)
            assert len(secret) >= 16
            try:
                assert len(base64.b32decode(secret, casefold=False)) >= 10
            except binascii.Error:
                pytest.fail(f"{user['role']} totp_secret is not base32")
        else:
            assert user["role"] in NO_MFA_ROLES
            assert secret is None
        rows = query(
            seeded.database, "SELECT mfa_enabled FROM users WHERE id = ?", (row_id(user["id"]),)
        )
        assert rows == [(1 if secret else 0,)], user["email"]


def test_passwords_are_strong(seeded: Seeded) -> None:
    """Generated passwords: ≥12 characters with upper, lower, digit and special, all distinct."""
    passwords = [u["password"] for u in all_users(seeded.credentials)]
    assert len(set(passwords)) == len(passwords)
    for password in passwords:
        assert len(password) >= 12
        assert any(c.isupper() for c in password)
        assert any(c.islower() for c in password)
        assert any(c.isdigit() for c in password)
        assert SPECIALS.search(password)


def test_two_seeds_generate_different_secrets(
    seeded: Seeded, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Passwords and TOTP secrets are generated per seed, never shipped constants."""
    other = seed(tmp_path_factory.mktemp("seed-b"))
    first = {u["email"]: u for u in all_users(seeded.credentials)}
    second = {u["email"]: u for u in all_users(other.credentials)}
    assert first.keys() == second.keys()
    for email, user in first.items():
        assert user["password"] != second[email]["password"], email
        if user["totp_secret"]:
            assert user["totp_secret"] != second[email]["totp_secret"], email


def test_credentials_match_the_database(seeded: Seeded) -> None:
    """Every id in the file is a real row, with the role the file claims; patients' linked
    user is the patient user."""
    admin = seeded.credentials["platform_admin"]
    assert query(
        seeded.database,
        "SELECT email, is_platform_admin FROM users WHERE id = ?",
        (row_id(admin["id"]),),
    ) == [(admin["email"], 1)]
    for clinic in seeded.credentials["clinics"]:
        assert query(
            seeded.database,
            "SELECT name, is_demo FROM clinics WHERE id = ?",
            (row_id(clinic["id"]),),
        ) == [(clinic["name"], 1)]
        for user in clinic["users"]:
            rows = query(
                seeded.database,
                "SELECT u.email, m.role FROM users u JOIN clinic_memberships m"
                " ON m.user_id = u.id WHERE u.id = ? AND m.clinic_id = ?",
                (row_id(user["id"]), row_id(clinic["id"])),
            )
            assert rows == [(user["email"], user["role"])]
        for patient in clinic["patients"]:
            rows = query(
                seeded.database,
                "SELECT p.full_name, p.cpf, u.email FROM patients p"
                " LEFT JOIN users u ON u.id = p.user_id WHERE p.id = ? AND p.clinic_id = ?",
                (row_id(patient["id"]), row_id(clinic["id"])),
            )
            ((full_name, stored_cpf, email),) = rows
            assert (full_name, email) == (patient["full_name"], patient["user_email"])
            assert isinstance(stored_cpf, bytes)  # ciphertext (format v1), never the digits
            assert stored_cpf[0] == 1
            assert patient["cpf"].encode() not in stored_cpf


def test_no_demo_plaintext_is_on_disk(seeded: Seeded) -> None:
    """Every file of the SQLite database (and its write-ahead log) holds none of the demo
    data set's CPFs, phones, e-mails of patients, allergies, medications, conditions,
    diagnoses or prescriptions: they are stored only encrypted."""
    from clinicguard.clinic import demo

    secrets_ = [p["cpf"] for c in seeded.credentials["clinics"] for p in c["patients"]]
    secrets_ += [*demo._ALLERGIES, *demo._MEDICATIONS, *demo._CONDITIONS, *demo._DIAGNOSES]
    secrets_ += ["Cetoconazol 2% creme", "Aplicar 2x ao dia", "Sinais vitais aferidos"]
    secrets_ += ["@email.example.com", "Primeira consulta"]
    files = [f for f in seeded.database.parent.iterdir() if f.name.startswith("clinicguard.db")]
    assert files
    blob = b"".join(f.read_bytes() for f in files)
    found = [s for s in secrets_ if s.encode() in blob or s.encode("utf-16-le") in blob]
    assert found == []


def test_care_team_in_the_database(seeded: Seeded) -> None:
    """The care-team physician is on the care team of every patient of the clinic; the other
    physician is on none (the boundary the access rules are demonstrated with)."""
    for clinic in seeded.credentials["clinics"]:
        patient_ids = {row_id(p["id"]) for p in clinic["patients"]}
        for user in clinic["users"]:
            if user["role"] != "physician":
                continue
            rows = query(
                seeded.database,
                "SELECT patient_id FROM care_team WHERE professional_id = ?",
                (row_id(user["id"]),),
            )
            on_team = {r[0] for r in rows}
            assert on_team == (patient_ids if user["care_team"] else set()), user["email"]


def test_database_holds_appointments_records_and_open_hours(seeded: Seeded) -> None:
    """Each demo patient has appointments and medical records; demo clinics are open
    00:00-24:00 (minutes 0..1440) so the demo works at any hour."""
    for clinic in seeded.credentials["clinics"]:
        assert query(
            seeded.database,
            "SELECT opens_at_minute, closes_at_minute FROM clinics WHERE id = ?",
            (row_id(clinic["id"]),),
        ) == [(0, 1440)]
        for patient in clinic["patients"]:
            pid = row_id(patient["id"])
            [(appointments,)] = query(
                seeded.database, "SELECT count(*) FROM appointments WHERE patient_id = ?", (pid,)
            )
            [(records,)] = query(
                seeded.database, "SELECT count(*) FROM medical_records WHERE patient_id = ?", (pid,)
            )
            assert appointments >= 1, patient["full_name"]
            assert records >= 1, patient["full_name"]


def test_passwords_are_not_stored_in_plaintext(seeded: Seeded) -> None:
    """No generated password appears anywhere in the database files' bytes; the stored
    value is an Argon2id hash."""
    files = [p for p in seeded.directory.iterdir() if p.name.startswith(seeded.database.name)]
    blob = b"".join(p.read_bytes() for p in files)
    for user in all_users(seeded.credentials):
        assert user["password"].encode() not in blob, user["email"]
    hashes = query(seeded.database, "SELECT password_hash FROM users")
    assert hashes
    assert all(h.startswith("$argon2id$") for (h,) in hashes)


def test_second_seed_refuses_and_changes_nothing(seeded_copy: Seeded) -> None:
    """Seeding a database that holds data is refused (non-zero); neither the database nor the
    existing credentials file changes."""
    before_db = dump(seeded_copy.database)
    before_file = seeded_copy.credentials_file.read_bytes()
    result = run_cli(
        "demo",
        "seed",
        "--out",
        str(seeded_copy.credentials_file),
        env=seeded_copy.env,
        cwd=seeded_copy.directory,
    )
    assert result.returncode != 0
    assert "refused" in result.stderr
    assert dump(seeded_copy.database) == before_db
    assert seeded_copy.credentials_file.read_bytes() == before_file


def test_seed_if_empty_on_a_used_database_does_nothing(seeded_copy: Seeded) -> None:
    """``--if-empty`` (what ``make run`` uses) succeeds on a database in use and changes
    nothing: no new data, no credentials file written."""
    before_db = dump(seeded_copy.database)
    out_file = seeded_copy.directory / "other-credentials.json"
    result = run_cli(
        "demo",
        "seed",
        "--if-empty",
        "--out",
        str(out_file),
        env=seeded_copy.env,
        cwd=seeded_copy.directory,
    )
    assert result.returncode == 0, result.stderr
    assert dump(seeded_copy.database) == before_db
    assert not out_file.exists()


def test_seed_is_refused_in_production(tmp_path: Path) -> None:
    """``demo seed`` never runs in production: non-zero exit, no data, no credentials file."""
    database = migrated_database(tmp_path / "db")
    before = dump(database)
    out_file = tmp_path / "demo-credentials.json"
    env = process_env(tmp_path, database, CLINICGUARD_ENV="production")
    result = run_cli("demo", "seed", "--out", str(out_file), env=env, cwd=tmp_path)
    assert result.returncode != 0
    assert "refused" in result.stderr
    assert not out_file.exists()
    assert dump(database) == before
    assert query(database, "SELECT count(*) FROM users") == [(0,)]
    assert query(database, "SELECT count(*) FROM clinics") == [(0,)]


@pytest.mark.parametrize(
    "command",
    [
        ["users", "unlock", "x@clinica.example.com"],
        ["sessions", "revoke", "--user", "x@clinica.example.com"],
    ],
)
def test_shared_state_commands_refuse_without_the_shared_store(
    tmp_path: Path, command: list[str]
) -> None:
    """Without Redis the CLI process has its own empty store: it would report success and
    change nothing on the servers, so these commands refuse instead."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINICGUARD_")}
    env.update(CLINICGUARD_ENV="test", CLINICGUARD_DATA_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "clinicguard", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "CLINICGUARD_REDIS_URL" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--role", "integration"], "create an API key instead"),
        (["--role", "physician", "--clinic", "not-a-uuid"], "Not a clinic id"),
        (["--role", "wizard"], "Unknown role"),
    ],
)
def test_users_create_refusals_name_the_field(
    seeded_copy: Seeded, extra: list[str], message: str
) -> None:
    """A refused account names what is wrong (never a traceback), and creates nothing."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "clinicguard",
            "users",
            "create",
            "--email",
            "nova@clinica.example.com",
            "--name",
            "Nova Pessoa",
            *extra,
        ],
        env=seeded_copy.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert message in output
    assert "Traceback" not in output
    with sqlite3.connect(seeded_copy.database) as db:
        found = db.execute(
            "SELECT count(*) FROM users WHERE email = ?", ("nova@clinica.example.com",)
        ).fetchone()
    assert found == (0,)
