"""``audit-append``: what appending one audit event costs inside the access's transaction,
and how many events per second one clinic's chain takes when requests append at once.

Run by the harness as ``python -m bench.audit_append`` (bench/inprocess.py) with the run's
configuration, against the run's PostgreSQL database as the application role (row-level
security on). It builds clinicguard's services as a ``clinicguard`` command does and uses
their ``AuditRecorder`` (``services.audit``, with its checkpoint signer and policy) and
``Database``; each chain is a clinic id of its own (fresh, so it starts at the genesis; the
trail's tables do not refer to ``clinics``), each transaction scoped as a physician of that
clinic would be, a request context bound (request id, client IP, user agent) as the HTTP
pipeline does. The entry is a care-team physician's patient read, as
``clinic.auditing.AccessAudit`` builds it.

1. Sequential, one transaction at a time on one chain, two variants taking turns
   (``--rounds`` times, ``--duration`` / 2 seconds in all, after ``--warmup``):

   - ``transaction``: ``Database.transaction(tenant)`` — the pool's checkout (pre-ping),
     ``BEGIN``, the tenant's ``set_config``, ``COMMIT`` — and nothing in it;
   - ``transaction + append``: the same with ``AuditRecorder.record`` inside (head row
     advanced and locked by ``UPDATE … RETURNING``, the event hashed and written by the
     head's final ``UPDATE``),
     whose own duration is timed too (``record()`` alone, before the commit).

   The difference of the two is the audit's in-transaction cost per request: the recorder's
   Python and statements, and a commit that now writes (flushes the WAL) where an empty
   one did not.
2. Concurrent, ``CONCURRENCY`` tasks in this process each appending in a loop (one
   transaction per event), ``--duration`` / 2 seconds in all over three configurations,
   taking turns ``--rounds`` times: all tasks on one clinic (every append waits for the
   clinic's head lock), each task on a clinic of its own (no lock shared), and, for
   reference, the same 16 tasks running empty transactions (the process's and the
   database's ceiling without any append).
3. Every chain written is verified (``verify_chain``: links, hashes, checkpoints, head).
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from bench import inprocess
from bench.inprocess import Figures, InProcessSpec, Samples
from clinicguard.audit.models import AuditCheckpoint
from clinicguard.audit.recorder import AuditRecorder
from clinicguard.audit.trail import AuditEntry, AuditEventType
from clinicguard.audit.verify import verify_chain
from clinicguard.core.context import RequestContext, bind_request, unbind_request
from clinicguard.core.ids import new_request_id
from clinicguard.store.db import Database
from clinicguard.store.interfaces import TenantContext

CONCURRENCY = 16
"""Tasks appending at once (the load generator's 32 connections over 2 workers: 16 each)."""
ROLE = "physician"
CLIENT_IP = "127.0.0.1"
USER_AGENT = "clinicguard-bench"
ERRORS_KEPT = 5


@dataclass(frozen=True)
class _Actor:
    """The recorder's ``Actor``: who read the patient."""

    user_id: uuid.UUID
    role: str
    session_id: str


@dataclass(frozen=True)
class _Chain:
    """One clinic's chain, its transaction scope, and the read it records."""

    clinic_id: uuid.UUID
    tenant: TenantContext
    actor: _Actor
    entry: AuditEntry


def _chain() -> _Chain:
    clinic_id, user_id, patient_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    # clinicguard.clinic.auditing.AccessAudit.record, for a care-team physician's read
    entry = AuditEntry(
        event_type=AuditEventType.PATIENT_READ,
        action="read",
        outcome="success",
        resource_type="patient",
        resource_id=str(patient_id),
        patient_id=patient_id,
        details={"permission": "patients:read", "rule": "clinician-clinical-care-team"},
    )
    return _Chain(
        clinic_id=clinic_id,
        tenant=TenantContext(clinic_id, user_id, ROLE),
        actor=_Actor(user_id, ROLE, secrets.token_urlsafe(16)),
        entry=entry,
    )


@dataclass
class _Tally:
    """What the loops measured: transaction durations, ``record()`` durations, errors."""

    transactions: Samples = field(default_factory=Samples)
    appends: Samples = field(default_factory=Samples)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    """This process's CPU time over the loops (all threads)."""
    errors: int = 0
    error_messages: list[str] = field(default_factory=list)

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        if len(self.error_messages) < ERRORS_KEPT:
            self.error_messages.append(f"{type(exc).__name__}: {exc}"[:300])


Op = Callable[[_Chain, _Tally], Awaitable[None]]


def _operations(db: Database, recorder: AuditRecorder) -> tuple[Op, Op]:
    clock = time.perf_counter_ns

    async def empty(chain: _Chain, tally: _Tally) -> None:
        token = bind_request(RequestContext(new_request_id(), CLIENT_IP, USER_AGENT))
        try:
            started = clock()
            async with db.transaction(chain.tenant):
                pass
            tally.transactions.ns.append(clock() - started)
        finally:
            unbind_request(token)

    async def append(chain: _Chain, tally: _Tally) -> None:
        token = bind_request(RequestContext(new_request_id(), CLIENT_IP, USER_AGENT))
        try:
            started = clock()
            async with db.transaction(chain.tenant) as session:
                before = clock()
                await recorder.record(session, chain.clinic_id, chain.actor, chain.entry)
                tally.appends.ns.append(clock() - before)
            tally.transactions.ns.append(clock() - started)
        finally:
            unbind_request(token)

    return empty, append


async def _loop(op: Op, chains: list[_Chain], seconds: float, tally: _Tally) -> None:
    """One task per chain (a chain may be listed several times), each running ``op`` in a
    loop for ``seconds``; errors are counted and the loop goes on."""
    deadline = time.monotonic() + seconds

    async def task(chain: _Chain) -> None:
        while time.monotonic() < deadline:
            try:
                await op(chain, tally)
            except Exception as exc:  # noqa: BLE001  # counted and reported, not fatal
                tally.failed(exc)
                await asyncio.sleep(0.01)

    started, cpu = time.monotonic(), time.process_time()
    await asyncio.gather(*(task(chain) for chain in chains))
    tally.seconds += time.monotonic() - started
    tally.cpu_seconds += time.process_time() - cpu


def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _summary(samples: Samples) -> dict[str, Any]:
    return samples.summary()


async def _checkpoints(db: Database, chain: _Chain) -> int:
    async with db.transaction(TenantContext.system(chain.clinic_id)) as session:
        count = await session.scalar(
            select(func.count())
            .select_from(AuditCheckpoint)
            .where(AuditCheckpoint.clinic_id == chain.clinic_id)
        )
    return int(count or 0)


async def measure(spec: InProcessSpec) -> Figures:
    async with inprocess.clinicguard_services() as services:
        db, recorder = services.db, services.audit
        if db.dialect != "postgresql":
            raise RuntimeError(f"audit-append measures PostgreSQL, not {db.dialect}")
        empty, append = _operations(db, recorder)
        sequential_chain = _chain()
        one_clinic = _chain()
        spread = [_chain() for _ in range(CONCURRENCY)]
        configs: dict[str, tuple[Op, list[_Chain]]] = {
            "one_clinic": (append, [one_clinic] * CONCURRENCY),
            "spread": (append, spread),
            "no_append": (empty, spread),
        }

        inprocess.progress(
            f"audit-append: sequential (transaction vs transaction + append), {spec.rounds} "
            f"round(s), then {CONCURRENCY} concurrent tasks: one clinic, {CONCURRENCY} "
            "clinics, no append"
        )
        sequential = {"transaction": (_Tally(), empty), "append": (_Tally(), append)}
        warm = _Tally()
        # Warm-up: the pool's connections opened, the chains created at the genesis and
        # their first checkpoint signed (due at a chain's first append).
        await _loop(append, [sequential_chain], spec.warmup_seconds / 2, warm)
        await _loop(append, [one_clinic, *spread], spec.warmup_seconds / 2, warm)
        window = spec.duration_seconds / 2 / spec.rounds / len(sequential)
        for _ in range(spec.rounds):
            for tally, op in sequential.values():
                await _loop(op, [sequential_chain], window, tally)

        concurrent = {name: _Tally() for name in configs}
        window = spec.duration_seconds / 2 / spec.rounds / len(configs)
        for _ in range(spec.rounds):
            for name, (op, chains) in configs.items():
                await _loop(op, chains, window, concurrent[name])

        inprocess.progress("audit-append: verifying the chains written")
        chains = [sequential_chain, one_clinic, *spread]
        verified = [await verify_chain(db, chain.clinic_id) for chain in chains]
        checkpoints = sum([await _checkpoints(db, chain) for chain in chains])

    tx = _summary(sequential["transaction"][0].transactions)
    with_append = _summary(sequential["append"][0].transactions)
    record_alone = _summary(sequential["append"][0].appends)

    def minus(stat: str) -> float | None:
        a, b = with_append.get(stat), tx.get(stat)
        return None if a is None or b is None else round(a - b, 1)

    cost = {"p50_us": minus("p50_us"), "p99_us": minus("p99_us"), "mean_us": minus("mean_us")}

    def rate(tally: _Tally) -> float | None:
        done = len(tally.transactions.ns)
        return round(done / tally.seconds, 1) if tally.seconds else None

    rates = {name: rate(t) for name, t in concurrent.items()}
    cpu_busy = {
        name: round(100 * t.cpu_seconds / t.seconds) if t.seconds else None
        for name, t in concurrent.items()
    }
    latencies = {name: _summary(t.transactions) for name, t in concurrent.items()}
    errors = {name: t.errors for name, t in {**concurrent, "warm-up": warm}.items()}
    errors |= {f"sequential_{name}": t.errors for name, (t, _op) in sequential.items()}
    messages = [m for t in (*concurrent.values(), warm) for m in t.error_messages]
    messages += [m for t, _op in sequential.values() for m in t.error_messages]
    broken = [
        f"{c.clinic_id}: {v.reason} (seq {v.first_broken_seq})"
        for c, v in zip(chains, verified, strict=True)
        if not v.ok
    ]
    events_checked = sum(v.checked for v in verified)
    one, many = rates["one_clinic"], rates["spread"]
    lock_ratio = round(one / many, 2) if one and many else None

    width = 52

    def row(label: str, s: dict[str, Any]) -> str:
        return (
            f"  {label:<{width}} {_us(s.get('p50_us')):>8} {_us(s.get('p99_us')):>8} "
            f"{_us(s.get('mean_us')):>8} {s.get('samples', 0):>8,}"
        )

    lines = [
        f"  {'sequential, one chain, one transaction at a time:':<{width}} {'p50 µs':>8} "
        f"{'p99 µs':>8} {'mean µs':>8} {'samples':>8}",
        row("transaction (checkout, BEGIN, set_config, COMMIT)", tx),
        row("transaction + AuditRecorder.record", with_append),
        row("  record() alone (before the commit)", record_alone),
        f"  audit in-transaction cost per request: p50 +{_us(cost['p50_us'])} µs, p99 "
        f"+{_us(cost['p99_us'])} µs, mean +{_us(cost['mean_us'])} µs (with append minus "
        "without: statements, hashing, the commit's WAL flush)",
        f"  {f'{CONCURRENCY} concurrent tasks, one transaction per event:':<{width}} "
        f"{'events/s':>8} {'p50 µs':>8} {'p99 µs':>8} {'process CPU':>12}",
    ]
    for name, label in (
        ("one_clinic", "appends to one clinic (its head lock)"),
        ("spread", f"appends spread over {CONCURRENCY} clinics"),
        ("no_append", "empty transactions (no append, reference)"),
    ):
        s = latencies[name]
        lines.append(
            f"  {label:<{width}} {rates[name] or 0:>8,.0f} {_us(s.get('p50_us')):>8} "
            f"{_us(s.get('p99_us')):>8} {cpu_busy[name] or 0:>11}%"
        )
    lines.append(
        f"  one clinic / {CONCURRENCY} clinics: {lock_ratio if lock_ratio is not None else 'n/a'}x "
        "the events per second (the per-clinic lock's cost under contention)"
    )
    lines.append(
        f"  chains verified: {sum(v.ok for v in verified)}/{len(verified)} ok, "
        f"{events_checked:,} events, {checkpoints} checkpoint(s) signed"
        + ("" if not broken else f"; BROKEN: {'; '.join(broken)}")
    )
    if any(errors.values()):
        lines.append(f"  errors: {errors}; first: {messages[:ERRORS_KEPT]}")
    return Figures(
        values={
            "concurrency": CONCURRENCY,
            "sequential": {
                "transaction": tx,
                "transaction_with_append": with_append,
                "record_alone": record_alone,
            },
            "audit_cost_us": cost,
            "concurrent_events_per_second": rates,
            "concurrent_latency": latencies,
            "concurrent_process_cpu_percent": cpu_busy,
            "one_clinic_over_spread": lock_ratio,
            "chains_verified": len(verified) - len(broken),
            "chains": len(verified),
            "chains_broken": broken,
            "events_checked": events_checked,
            "checkpoints_signed": checkpoints,
            "errors": errors,
            "error_messages": messages[:ERRORS_KEPT],
        },
        lines=lines,
    )


if __name__ == "__main__":
    sys.exit(inprocess.main(measure))
