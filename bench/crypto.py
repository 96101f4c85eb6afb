"""``field-crypto``: what opening and masking one patient record costs, in-process, next to
AES-GCM alone on the same ciphertexts with the same key (issue 5's aim: at most 2x), and
the same for sealing.

Run by the harness as ``python -m bench.crypto`` (bench/inprocess.py) with the run's
configuration. It builds clinicguard's services as a ``clinicguard`` command does, loads the
demo patients' rows from the run's database (``demo seed`` fills every encrypted column:
CPF, phone, e-mail, address, allergies, medications, medical conditions) and opens each
once, so the clinics' field keys are unwrapped and cached as in a serving worker. Then,
per record (one patient row: ``PATIENT_OUT``'s 12 fields, 7 of them ciphertexts), it times
a ladder of steps, each adding one layer of clinicguard's read path to the one before:

- AES-GCM alone: ``AESGCM.decrypt`` of the 7 ciphertexts, nonce, ciphertext and associated
  data already split, one ``AESGCM`` object per key (the floor);
- the same with an ``AESGCM(key)`` made per value, as ``crypto.fields.decrypt`` does;
- ``crypto.fields.decrypt`` (header check, associated data built from the place, the
  plaintext decoded);
- ``FieldEncryption.open`` (async; the header parsed again, the key looked up in the
  ring's cache, the failure path armed);
- ``clinic.protection.open_from`` over the record's 12 fields (a ``Place`` per encrypted
  value), the ORM row as ``select(Patient)`` loads it;
- ``authz.service.shape`` on top, with a decision that masks CPF, phone and e-mail and hides
  nothing: the body of ``ClinicDataService._reveal``, what one patient read costs.

And the write side: AES-GCM alone (a random nonce each), ``FieldEncryption.seal`` of the 7
values, and ``clinic.protection.seal_into`` (the 7 seals plus the CPF and e-mail blind
indexes, set on a transient ``Patient``).

Each step runs on the 6 demo records in turn, each call timed alone (``perf_counter_ns``);
the steps take turns, ``--rounds`` times, for ``--duration`` seconds in all (split evenly),
after ``--warmup`` seconds spread over them. Garbage collection stays on, as in a server.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select

from bench import inprocess
from bench.inprocess import Figures, InProcessSpec, Samples, time_async, time_sync
from clinicguard.authz.interfaces import Decision, Obligations
from clinicguard.authz.service import shape
from clinicguard.clinic.models import ENCRYPTED, Patient
from clinicguard.clinic.protection import open_from, seal_into
from clinicguard.clinic.service import PATIENT_OUT
from clinicguard.crypto import fields
from clinicguard.crypto.fields import Place
from clinicguard.crypto.keyring import FIELD
from clinicguard.crypto.service import FieldEncryption
from clinicguard.store.interfaces import TenantContext

RATIO_AIM = 2.0
"""Issue 5: decrypting (and masking) a record costs at most twice AES-GCM alone."""
MASKED = frozenset({"cpf", "phone", "email"})
DECISION = Decision(
    allowed=True,
    permission="patients:read",
    role="physician",
    rule="bench-field-crypto",
    reason="the whole record, CPF, phone and e-mail masked",
    obligations=Obligations(mask=MASKED),
)
"""No rule of the policy shows all seven values with three masked (the care-team physician
sees them unmasked, the masking roles have the clinical ones hidden): this decision makes
the full record go through both decryption and masking."""
HEADER_BYTES = fields.MIN_BLOB - fields.NONCE_BYTES - fields.TAG_BYTES
TABLE = "patients"
COLUMNS = tuple(ENCRYPTED[TABLE])


@dataclass
class _Record:
    """One demo patient's row, and the same values taken apart for the raw steps."""

    row: Patient
    key: bytes
    aead: AESGCM
    places: list[Place]
    blobs: list[bytes]
    parts: list[tuple[bytes, bytes, bytes]]
    """(nonce, ciphertext + tag, associated data) of each ciphertext."""
    plaintexts: list[bytes]
    values: dict[str, str]
    target: Patient
    """A transient row (same clinic and id, no session) that ``seal_into`` writes to."""


async def _records(fe: FieldEncryption, demo: dict[str, Any], db: Any) -> list[_Record]:
    """The demo patients' rows as the read path loads them, every encrypted value present;
    opened once each (the keys unwrapped and cached) and checked against raw AES-GCM."""
    records = []
    for clinic in demo["clinics"]:
        clinic_id = uuid.UUID(clinic["id"])
        async with db.transaction(TenantContext.system(clinic_id)) as session:
            rows = (
                await session.scalars(
                    select(Patient).where(Patient.clinic_id == clinic_id).order_by(Patient.id)
                )
            ).all()
        for row in rows:
            blobs = [getattr(row, name) for name in COLUMNS]
            if any(blob is None for blob in blobs):
                continue
            places = [Place(row.clinic_id, TABLE, name, row.id) for name in COLUMNS]
            values = await open_from(fe, TABLE, row, COLUMNS)
            version = fields.header_of(blobs[0]).version
            key = await fe.ring.key(clinic_id, FIELD, version)
            parts = [
                (
                    blob[HEADER_BYTES : HEADER_BYTES + fields.NONCE_BYTES],
                    blob[HEADER_BYTES + fields.NONCE_BYTES :],
                    blob[:HEADER_BYTES] + b"|" + place.encode(),
                )
                for place, blob in zip(places, blobs, strict=True)
            ]
            aead = AESGCM(key)
            plaintexts = [aead.decrypt(*part) for part in parts]
            if [p.decode() for p in plaintexts] != [values[name] for name in COLUMNS]:
                raise RuntimeError("raw AES-GCM and FieldEncryption.open disagree")
            records.append(
                _Record(
                    row=row,
                    key=key,
                    aead=aead,
                    places=places,
                    blobs=blobs,
                    parts=parts,
                    plaintexts=plaintexts,
                    values=values,
                    target=Patient(id=row.id, clinic_id=row.clinic_id),
                )
            )
    if not records:
        raise RuntimeError("no demo patient with every encrypted column filled")
    return records


# --- the steps ---------------------------------------------------------------------------


def _aes_gcm(r: _Record) -> None:
    aead = r.aead
    for nonce, data, associated in r.parts:
        aead.decrypt(nonce, data, associated)


def _aes_gcm_per_value(r: _Record) -> None:
    key = r.key
    for nonce, data, associated in r.parts:
        AESGCM(key).decrypt(nonce, data, associated)


def _fields_decrypt(r: _Record) -> None:
    key = r.key
    for place, blob in zip(r.places, r.blobs, strict=True):
        fields.decrypt(key, place, blob).decode()


def _aes_gcm_encrypt(r: _Record) -> None:
    aead = r.aead
    for (_nonce, _data, associated), plaintext in zip(r.parts, r.plaintexts, strict=True):
        aead.encrypt(os.urandom(fields.NONCE_BYTES), plaintext, associated)


def _async_steps(fe: FieldEncryption) -> dict[str, Callable[[_Record], Awaitable[object]]]:
    async def field_open(r: _Record) -> None:
        for place, blob in zip(r.places, r.blobs, strict=True):
            await fe.open(place, blob)

    async def open_record(r: _Record) -> None:
        await open_from(fe, TABLE, r.row, PATIENT_OUT)

    async def reveal(r: _Record) -> None:
        # clinicguard.clinic.service.ClinicDataService._reveal, for the patients table
        shown = [n for n in PATIENT_OUT if n not in DECISION.obligations.hide]
        shape(await open_from(fe, TABLE, r.row, shown), DECISION)

    async def field_seal(r: _Record) -> None:
        for place, name in zip(r.places, COLUMNS, strict=True):
            await fe.seal(place, r.values[name])

    async def seal_record(r: _Record) -> None:
        await seal_into(fe, TABLE, r.target, r.values)

    return {
        "fields_open": field_open,
        "open_from": open_record,
        "reveal": reveal,
        "seal": field_seal,
        "seal_into": seal_record,
    }


SYNC_STEPS: dict[str, Callable[[_Record], object]] = {
    "aes_gcm": _aes_gcm,
    "aes_gcm_new_object": _aes_gcm_per_value,
    "fields_decrypt": _fields_decrypt,
    "aes_gcm_encrypt": _aes_gcm_encrypt,
}
LABELS = {
    "aes_gcm": "decrypt  AES-GCM alone, x7 (one AESGCM object per key)",
    "aes_gcm_new_object": "         + an AESGCM(key) per value",
    "fields_decrypt": "         crypto.fields.decrypt x7 (+ header, AD, decode)",
    "fields_open": "         FieldEncryption.open x7 (+ async, key lookup)",
    "open_from": "         protection.open_from, the record's 12 fields",
    "reveal": "         + authz shape, CPF/phone/e-mail masked (_reveal)",
    "aes_gcm_encrypt": "encrypt  AES-GCM alone, x7 (+ a random nonce each)",
    "seal": "         FieldEncryption.seal x7",
    "seal_into": "         protection.seal_into (+ CPF, e-mail blind indexes)",
}
ORDER = tuple(LABELS)


def _ratio(steps: dict[str, dict[str, Any]], top: str, floor: str, stat: str) -> float | None:
    a, b = steps[top].get(stat), steps[floor].get(stat)
    return round(a / b, 2) if a and b else None


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


async def measure(spec: InProcessSpec) -> Figures:
    async with inprocess.clinicguard_services() as services:
        fe = services.fields
        records = await _records(fe, spec.demo, services.db)
        async_steps = _async_steps(fe)
        samples = {name: Samples() for name in ORDER}
        overhead = Samples()

        async def run(name: str, seconds: float, into: Samples) -> None:
            if name in SYNC_STEPS:
                time_sync(SYNC_STEPS[name], records, seconds, into)
            else:
                await time_async(async_steps[name], records, seconds, into)

        inprocess.progress(
            f"field-crypto: {len(records)} records, {len(ORDER)} steps, {spec.rounds} rounds"
        )
        for name in ORDER:  # warm-up: unmeasured
            await run(name, spec.warmup_seconds / len(ORDER), Samples())
        window = spec.duration_seconds / spec.rounds / len(ORDER)
        for _ in range(spec.rounds):
            time_sync(lambda _r: None, records, min(window, 0.2), overhead)
            for name in ORDER:
                await run(name, window, samples[name])

    steps = {name: samples[name].summary() for name in ORDER}
    ratios = {
        "reveal_over_aes_gcm": {s: _ratio(steps, "reveal", "aes_gcm", s) for s in STATS},
        "fields_open_over_aes_gcm": {s: _ratio(steps, "fields_open", "aes_gcm", s) for s in STATS},
        "seal_over_aes_gcm_encrypt": {
            s: _ratio(steps, "seal", "aes_gcm_encrypt", s) for s in STATS
        },
        "seal_into_over_aes_gcm_encrypt": {
            s: _ratio(steps, "seal_into", "aes_gcm_encrypt", s) for s in STATS
        },
    }
    timer = overhead.summary()
    width = max(map(len, LABELS.values()))
    lines = [
        f"  per patient record ({len(PATIENT_OUT)} fields, {len(COLUMNS)} of them ciphertexts; "
        f"the {len(records)} demo patients in turn):",
        f"  {'':{width}}  {'p50 µs':>8}  {'mean µs':>8}  {'samples':>8}",
    ]
    for name in ORDER:
        s = steps[name]
        lines.append(
            f"  {LABELS[name]:{width}}  {s.get('p50_us', 0):8.2f}  {s.get('mean_us', 0):8.2f}  "
            f"{s.get('samples', 0):8,}"
        )
    reveal, seal, seal_into_ = (
        ratios["reveal_over_aes_gcm"],
        ratios["seal_over_aes_gcm_encrypt"],
        ratios["seal_into_over_aes_gcm_encrypt"],
    )
    lines += [
        f"  decrypt + mask / AES-GCM alone: p50 {_x(reveal['p50_us'])}, mean "
        f"{_x(reveal['mean_us'])} (aim ≤ {RATIO_AIM:g}x)",
        f"  seal x7 / AES-GCM alone: p50 {_x(seal['p50_us'])}, mean {_x(seal['mean_us'])}; "
        f"seal_into: p50 {_x(seal_into_['p50_us'])}, mean {_x(seal_into_['mean_us'])}",
        f"  (timing one call costs ≈ {timer.get('p50_us', 0):.2f} µs, included in every row)",
    ]
    return Figures(
        values={
            "unit": "µs per patient record",
            "fields_per_record": len(PATIENT_OUT),
            "ciphertexts_per_record": len(COLUMNS),
            "records": len(records),
            "masked": sorted(MASKED),
            "steps": steps,
            "ratios": ratios,
            "aim_ratio": RATIO_AIM,
            "timer_overhead": timer,
        },
        lines=lines,
    )


STATS = ("p50_us", "mean_us")

if __name__ == "__main__":
    sys.exit(inprocess.main(measure))
