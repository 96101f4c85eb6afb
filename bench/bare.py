"""The baseline: a bare FastAPI app doing the same database work as clinicguard, with none
of its middleware, exception handlers, dependencies or abstractions.

Served by uvicorn with the same worker count and server options as ``clinicguard serve``
(httptools, uvloop, no access log, no proxy headers), through the factory
:func:`create_app`. Configuration comes from the environment the harness sets:

- ``BENCH_BARE_DATABASE_URL`` — postgresql+asyncpg URL of the application role;
- ``BENCH_BARE_REDIS_URL`` — the Redis database the benchmark owns.

The engine comes from clinicguard's own :func:`~clinicguard.store.db.create_engine` with
clinicguard's default pool size and statement timeout, so both sides have identical pools,
timeouts and pre-ping; Redis uses the pool settings of clinicguard's RedisKeyValueStore.

Endpoints (each scenario in :mod:`bench.scenarios` names the one it compares against):

- ``GET /healthz`` — ``{"status": "ok"}`` through a pydantic response model, as clinicguard's;
- ``GET /readyz`` — ``SELECT 1`` in a transaction and a Redis ``PING``, concurrently, each
  bounded by the same probe timeout as clinicguard's readiness probe;
- ``GET /records/{id}`` — a primary-key SELECT plus an INSERT in one transaction: the shape
  of a clinicguard read that writes its audit event in the same transaction;
- ``GET /users/{id}`` — a primary-key SELECT of a row shaped like clinicguard's users row (every
  column, as the ORM loads it) in one transaction, answered in the shape of
  ``GET /api/v1/me``: clinicguard's ``/me`` without authenticating the caller;
- ``GET /patients/{clinic_id}/{id}`` — clinicguard's own ``patients`` row by primary key
  (every column, as the ORM loads it) in one transaction, answered in the shape of
  ``GET /api/v1/patients/{id}``: clinicguard's patient read without authentication or
  authorization. Row-level security binds the application role, so the transaction first
  names the clinic and a staff role with the same ``set_config`` statement as
  clinicguard's ``Database.set_tenant`` (without it the SELECT sees no row at all). The
  encrypted columns (clinicguard.clinic.models.ENCRYPTED: CPF, contact data, the clinical
  summaries) come back as ciphertext bytes, which this endpoint answers base64-encoded:
  it is the "no decryption" baseline, so the difference with clinicguard includes the
  decryption and masking of those values (``field-crypto`` measures that part alone);
- ``GET /patients/{clinic_id}/{id}/audited`` — the same read plus the audit write
  clinicguard's ``AuditRecorder.record`` makes in the read's transaction, in clinicguard's
  own tables and the clinic's own chain: the head row made if missing (``INSERT … ON
  CONFLICT DO NOTHING``), locked (``SELECT … FOR UPDATE``), one ``audit_events`` row
  inserted (every column, values of the same width) and the head moved on (``UPDATE``).
  The event's hash is a cheap SHA-256 over the previous hash and the request id, not
  clinicguard's canonical encoding (this module imports nothing of clinicguard's domain),
  so a chain the bare app wrote to no longer verifies: the bench's database is thrown away.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from typing import Any, Literal

import redis.asyncio as aioredis
from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel
from sqlalchemy import JSON, bindparam, text
from sqlalchemy.ext.asyncio import async_sessionmaker

from clinicguard.settings import Settings
from clinicguard.store.db import create_engine

DB_POOL_SIZE: int = Settings.model_fields["db_pool_size"].default
"""clinicguard's default pool size (each worker may open twice as many: the overflow)."""
DB_STATEMENT_TIMEOUT_MS: int = Settings.model_fields["db_statement_timeout_ms"].default
PROBE_TIMEOUT_SECONDS = 2.0
"""clinicguard.http.api.PROBE_TIMEOUT_SECONDS."""
REDIS_TIMEOUT_SECONDS = Settings.model_fields["kv_timeout_seconds"].default
REDIS_MAX_CONNECTIONS = 64
"""RedisKeyValueStore's default pool bound."""

#: The bench's own tables (schema ``bench``, created by the harness as the schema owner; the
#: application role may SELECT records and INSERT events, nothing else).
SELECT_RECORD = text(
    "SELECT id, clinic_id, full_name, birth_date, phone, email, notes, created_at"
    " FROM bench.records WHERE id = :id"
)
SELECT_USER = text(
    "SELECT id, email, full_name, password_hash, password_changed_at, is_platform_admin,"
    " is_active, professional_license, mfa_enabled, totp_secret_sealed, must_change_password,"
    " last_login_at, created_at, updated_at FROM bench.users WHERE id = :id"
)
"""Every column, as clinicguard's ``session.get(User, id)`` selects them."""
SET_TENANT = text(
    "SELECT set_config('app.clinic_id', :clinic_id, true),"
    " set_config('app.user_id', :user_id, true),"
    " set_config('app.role', :role, true)"
)
"""clinicguard.store.db._SET_TENANT: what row-level security reads (per transaction)."""
SELECT_PATIENT = text(
    "SELECT clinic_id, id, full_name, cpf, cpf_index, birth_date, phone, email, email_index,"
    " address, allergies, medications, medical_conditions, user_id, created_at, updated_at"
    " FROM patients WHERE clinic_id = :clinic_id AND id = :id"
)
"""Every column, as clinicguard's ``select(Patient)`` selects them (clinicguard's table;
the encrypted ones are bytea, the blind indexes text)."""
INSERT_EVENT = text(
    "INSERT INTO bench.events (id, occurred_at, record_id, clinic_id, actor, action)"
    " VALUES (:id, now(), :record_id, :clinic_id, :actor, :action)"
)

#: clinicguard's audit write (clinicguard.audit.recorder.AuditRecorder.record), statement
#: for statement, in clinicguard's own tables (migrations 0006 and 0007).
GENESIS = "0" * 64
"""clinicguard.audit.trail.GENESIS: the previous hash of a chain's first event."""
ENSURE_HEAD = text(
    "INSERT INTO audit_heads (clinic_id, seq, hash, checkpoint_seq)"
    " VALUES (:clinic_id, 0, :genesis, 0) ON CONFLICT (clinic_id) DO NOTHING"
)
ADVANCE_HEAD = text(
    "UPDATE audit_heads SET seq = seq + 1 WHERE clinic_id = :clinic_id"
    " RETURNING seq, hash, checkpoint_seq, checkpoint_at"
)
"""Takes the next number and locks the head until the commit, as clinicguard's recorder."""
APPEND_AUDIT_EVENT = text(
    "WITH audit_event AS (INSERT INTO audit_events (clinic_id, seq, id, occurred_at,"
    " actor_id, actor_role, session_id, request_id, ip, user_agent, event_type,"
    " resource_type, resource_id,"
    " patient_id, action, outcome, reason, details, risk_score, risk_level, compliance,"
    " requires_review, prev_hash, hash)"
    " VALUES (:clinic_id, :seq, :id, :occurred_at, :actor_id, :actor_role, :session_id,"
    " :request_id, :ip, :user_agent, :event_type, :resource_type, :resource_id, :patient_id,"
    " :action, :outcome, :reason, :details, :risk_score, :risk_level, :compliance,"
    " :requires_review, :prev_hash, :hash))"
    " UPDATE audit_heads SET hash = :hash WHERE clinic_id = :clinic_id"
).bindparams(bindparam("details", type_=JSON))
"""Every column of an event, written by the head's UPDATE in one statement, as clinicguard's
recorder writes it (``details`` a ``json`` value through SQLAlchemy's JSON type, as there)."""


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]


class Record(BaseModel):
    id: uuid.UUID
    clinic_id: uuid.UUID
    full_name: str
    birth_date: date
    phone: str
    email: str
    notes: str
    created_at: datetime


class Me(BaseModel):
    """The fields of clinicguard's ``MeOut`` (role, clinic and scopes come from the session
    there; here they are constants, since nobody signed in)."""

    id: uuid.UUID
    email: str
    full_name: str
    role: str
    clinic_id: uuid.UUID | None
    mfa_enabled: bool
    scopes: list[str]


class Patient(BaseModel):
    """The fields of clinicguard's ``PatientOut`` (what a care-team physician is shown)."""

    id: uuid.UUID
    full_name: str | None = None
    cpf: str | None = None
    birth_date: date | str | None = None
    phone: str | None = None
    email: str | None = None
    address: str | None = None
    allergies: str | None = None
    medications: str | None = None
    medical_conditions: str | None = None
    created_at: datetime
    updated_at: datetime


PATIENT_FIELDS = tuple(Patient.model_fields)
PATIENT_CIPHERTEXT = frozenset(
    ("cpf", "phone", "email", "address", "allergies", "medications", "medical_conditions")
)
"""The patients' columns stored encrypted (clinicguard.clinic.models.ENCRYPTED["patients"],
spelled out: the bare app imports nothing of clinicguard's domain)."""


def _ciphertext_as_text(value: bytes | None) -> str | None:
    """A stored ciphertext as the bare answer shows it: base64, not decrypted (the bare
    baseline does no cryptography; None stays None)."""
    return None if value is None else base64.b64encode(value).decode("ascii")


BENCH_ROLE = "physician"
"""The role the bare ``/patients/…`` names for row-level security (nobody signed in)."""
BENCH_CLINIC_ID = uuid.UUID(int=0x00BE_0C11)
"""The clinic the bare ``/users/{id}`` answers with (clinicguard's comes from the session)."""
BENCH_ACTOR_ID = uuid.UUID(int=0x00BE_AC70)
"""The actor the bare audit events name (nobody signed in)."""
BENCH_SESSION_ID = secrets.token_urlsafe(16)
"""The session the bare audit events name (a session id's width)."""
AUDIT_DETAILS = {"permission": "patients:read", "rule": "clinician-clinical-care-team"}
"""What clinicguard's AccessAudit writes as a care-team read's details."""
AUDIT_RISK = (18, "low")
"""clinicguard.audit.trail.risk of a physician's patient read (5·1 + 4·2 + 5·1)."""


def _patient_answer(row: Any) -> Patient:
    return Patient.model_validate(
        {
            name: _ciphertext_as_text(row[name]) if name in PATIENT_CIPHERTEXT else row[name]
            for name in PATIENT_FIELDS
        }
    )


def _audit_event(
    clinic_id: uuid.UUID, patient_id: uuid.UUID, head: Any, request: Request
) -> dict[str, Any]:
    """The next event of the clinic's chain after ``head``: every column of clinicguard's
    event for this read, with a cheap hash (SHA-256 over the previous hash and the request
    id) instead of clinicguard's canonical encoding."""
    request_id = secrets.token_hex(16)  # clinicguard.core.ids.new_request_id
    return {
        "clinic_id": clinic_id,
        "seq": head.seq,
        "id": uuid.uuid4(),
        "occurred_at": datetime.now(UTC),
        "actor_id": BENCH_ACTOR_ID,
        "actor_role": BENCH_ROLE,
        "session_id": BENCH_SESSION_ID,
        "request_id": request_id,
        "ip": request.client.host if request.client else None,
        "user_agent": request.headers.get("user-agent", "")[:256],
        "event_type": "clinic:patient:read",
        "resource_type": "patient",
        "resource_id": str(patient_id),
        "patient_id": patient_id,
        "action": "read",
        "outcome": "success",
        "reason": None,
        "details": AUDIT_DETAILS,
        "risk_score": AUDIT_RISK[0],
        "risk_level": AUDIT_RISK[1],
        "compliance": False,
        "requires_review": False,
        "prev_hash": head.hash,
        "hash": hashlib.sha256(f"{head.hash}|{request_id}".encode()).hexdigest(),
    }


def create_app() -> FastAPI:
    """The uvicorn factory (one app per worker process)."""
    engine = create_engine(
        os.environ["BENCH_BARE_DATABASE_URL"],
        pool_size=DB_POOL_SIZE,
        statement_timeout_ms=DB_STATEMENT_TIMEOUT_MS,
        hide_parameters=True,
    )
    sessions = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
    pool = aioredis.BlockingConnectionPool.from_url(
        os.environ["BENCH_BARE_REDIS_URL"],
        max_connections=REDIS_MAX_CONNECTIONS,
        timeout=REDIS_TIMEOUT_SECONDS,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        health_check_interval=30,
        decode_responses=False,
    )
    redis = aioredis.Redis(connection_pool=pool)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await redis.aclose()
            await engine.dispose()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/healthz", response_model=Liveness)
    async def healthz() -> Liveness:
        return Liveness()

    async def select_one() -> None:
        async with sessions() as session, session.begin():
            await session.execute(text("SELECT 1"))

    @app.get("/readyz", response_model=Readiness)
    async def readyz(response: Response) -> Readiness:
        results = await asyncio.gather(
            asyncio.wait_for(select_one(), PROBE_TIMEOUT_SECONDS),
            asyncio.wait_for(redis.ping(), PROBE_TIMEOUT_SECONDS),
            return_exceptions=True,
        )
        if any(isinstance(r, BaseException) for r in results):
            response.status_code = 503
            return Readiness(status="unavailable")
        return Readiness(status="ready")

    @app.get("/records/{record_id}", response_model=Record)
    async def read_record(record_id: uuid.UUID) -> Record:
        async with sessions() as session, session.begin():
            row = (await session.execute(SELECT_RECORD, {"id": record_id})).mappings().first()
            if row is None:
                raise HTTPException(status_code=404)
            await session.execute(
                INSERT_EVENT,
                {
                    "id": uuid.uuid4(),
                    "record_id": record_id,
                    "clinic_id": row["clinic_id"],
                    "actor": "bench",
                    "action": "records:read",
                },
            )
        return Record.model_validate(dict(row))

    @app.get("/users/{user_id}", response_model=Me)
    async def read_user(user_id: uuid.UUID) -> Me:
        async with sessions() as session, session.begin():
            row = (await session.execute(SELECT_USER, {"id": user_id})).mappings().first()
        if row is None:
            raise HTTPException(status_code=404)
        return Me(
            id=row["id"],
            email=row["email"],
            full_name=row["full_name"],
            role="physician",
            clinic_id=BENCH_CLINIC_ID,
            mfa_enabled=row["mfa_enabled"],
            scopes=["full"],
        )

    @app.get("/patients/{clinic_id}/{patient_id}", response_model=Patient)
    async def read_patient(clinic_id: uuid.UUID, patient_id: uuid.UUID) -> Patient:
        async with sessions() as session, session.begin():
            await session.execute(
                SET_TENANT, {"clinic_id": str(clinic_id), "user_id": "", "role": BENCH_ROLE}
            )
            row = (
                (await session.execute(SELECT_PATIENT, {"clinic_id": clinic_id, "id": patient_id}))
                .mappings()
                .first()
            )
        if row is None:
            raise HTTPException(status_code=404)
        return _patient_answer(row)

    @app.get("/patients/{clinic_id}/{patient_id}/audited", response_model=Patient)
    async def read_patient_audited(
        clinic_id: uuid.UUID, patient_id: uuid.UUID, request: Request
    ) -> Patient:
        async with sessions() as session, session.begin():
            await session.execute(
                SET_TENANT, {"clinic_id": str(clinic_id), "user_id": "", "role": BENCH_ROLE}
            )
            row = (
                (await session.execute(SELECT_PATIENT, {"clinic_id": clinic_id, "id": patient_id}))
                .mappings()
                .first()
            )
            if row is None:
                raise HTTPException(status_code=404)
            head = (await session.execute(ADVANCE_HEAD, {"clinic_id": clinic_id})).one_or_none()
            if head is None:  # the clinic's first event
                await session.execute(ENSURE_HEAD, {"clinic_id": clinic_id, "genesis": GENESIS})
                head = (await session.execute(ADVANCE_HEAD, {"clinic_id": clinic_id})).one()
            event = _audit_event(clinic_id, patient_id, head, request)
            await session.execute(APPEND_AUDIT_EVENT, event)
        return _patient_answer(row)

    return app
