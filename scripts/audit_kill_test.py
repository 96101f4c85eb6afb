"""Proof of no loss: every audited read that got a 200 has exactly one audit event, even
when every server process is killed (SIGKILL) in the middle of the load.

Not a timed test; run it by hand:

    .venv/bin/python scripts/audit_kill_test.py [--seconds N] [--concurrency C] [--workers W]

What it does, with the benchmark's helpers (bench/runner.py, bench/services.py,
bench/servers.py), so the database, roles and configuration are exactly the bench's:

1. A fresh PostgreSQL database owned by ``cg_bench_owner`` (and its key vault), the
   application role ``cg_bench_app`` (row-level security on), ``clinicguard migrate`` and
   ``clinicguard demo seed``; the bench's Redis database (``CLINICGUARD_BENCH_REDIS_URL``,
   db 14 by default, or ``--redis-url``), flushed before and after: do not run it while a
   benchmark runs, and give it a database nothing else uses or flushes (the sessions live
   there: a flush in the middle turns every read into a 401). The server's
   configuration is the bench's plus ``CLINICGUARD_TRUSTED_PROXIES=127.0.0.1/32``, so the
   server keeps the ``X-Request-ID`` this script sends: every request has an id known
   before it is sent, including the ones that never get an answer.
2. ``clinicguard serve --workers W`` in a process group of its own; the care-team physician
   of each demo clinic signs in (password + TOTP); each patient's records are listed.
3. ``--concurrency`` tasks send audited reads in a loop (``GET /api/v1/patients/{id}`` and
   ``GET /api/v1/records/{id}`` in turn); after ``--seconds`` the whole process group is
   sent SIGKILL (the supervisor and every worker at once), mid-load.
4. The server is started again (same database, same Redis: the sessions survive) and the
   same load runs for ``--after`` seconds, then the server stops (SIGTERM).
5. As the database superuser (row-level security does not apply): the events per request
   id. Every request answered 200 must have exactly one event (missing: 0, duplicated: 0);
   a request cut by the kill may have one (its transaction committed before the answer was
   lost) or none; a request answered otherwise should have none. Then ``clinicguard audit
   verify`` (every chain: links, hashes, signed checkpoints, heads), its event count held to
   the rows of ``audit_events``, and each head's sequence to its chain's events.

Exit status 0 when nothing is missing, duplicated or broken; 1 otherwise; 2 when the set-up
failed. The databases are dropped and Redis flushed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REQUEST_TIMEOUT_SECONDS = 10.0
TRUSTED_PROXIES = "127.0.0.1/32"
ACCESS_EVENTS = "clinic:%"
"""The event types of accesses to patient data (``clinic:patient:read``, …); a request may
also have security events (a rejected token, …), counted apart."""
_VERIFIED = re.compile(r"(\d+) chain\(s\) verified, (\d+) events")


def say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@dataclass
class Sent:
    """One request of the load: what it was, when, and what came back."""

    phase: str
    """``setup``, ``before`` (the kill) or ``after`` (the restart)."""
    kind: str
    started: float
    ended: float | None = None
    status: int | None = None
    failure: str | None = None
    echoed: str | None = None
    """The answer's X-Request-ID (must be the id sent)."""
    body: Any = None
    """The answer's JSON (set-up requests only)."""


@dataclass
class Ledger:
    """Every request sent, by request id."""

    prefix: str
    sent: dict[str, Sent] = field(default_factory=dict)
    counter: int = 0

    def new_id(self, phase: str) -> str:
        self.counter += 1
        return f"{self.prefix}-{phase}-{self.counter}"


@dataclass(frozen=True)
class Target:
    kind: str
    path: str
    headers: dict[str, str]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/audit_kill_test.py",
        description="Kill every clinicguard server process mid-load; check that every "
        "audited read answered 200 has exactly one audit event and the chains verify.",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="load before the kill")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--workers", type=int, default=1, help="clinicguard serve --workers")
    parser.add_argument("--after", type=float, default=2.0, help="load after the restart (0: none)")
    parser.add_argument(
        "--redis-url",
        default=None,
        help="a Redis database nothing else uses, flushed before and after (default: the "
        "bench's, CLINICGUARD_BENCH_REDIS_URL or redis://127.0.0.1:6379/14)",
    )
    parser.add_argument(
        "--logs", type=Path, default=None, help="copy the servers' logs into this directory"
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.concurrency < 1 or args.workers < 1 or args.after < 0:
        parser.error("--seconds > 0, --concurrency >= 1, --workers >= 1, --after >= 0")
    return args


async def _send(http: Any, ledger: Ledger, phase: str, target: Target) -> Sent:
    """GET ``target`` with a request id of the ledger's; the outcome is kept there."""
    import httpx

    request_id = ledger.new_id(phase)
    sent = ledger.sent[request_id] = Sent(phase, target.kind, time.monotonic())
    try:
        response = await http.get(
            target.path, headers={**target.headers, "X-Request-ID": request_id}
        )
        sent.status, sent.echoed = response.status_code, response.headers.get("x-request-id")
        if phase == "setup" and response.status_code == 200:
            sent.body = response.json()
        elif response.status_code != 200:
            sent.body = response.text[:300]
    except httpx.HTTPError as exc:
        sent.failure = type(exc).__name__
    sent.ended = time.monotonic()
    return sent


async def _load(
    base_url: str,
    ledger: Ledger,
    phase: str,
    targets: list[Target],
    *,
    concurrency: int,
    stop: asyncio.Event,
) -> None:
    """``concurrency`` tasks sending ``targets`` in turn until ``stop`` is set; a task stops
    at its first request without an answer (the server is gone)."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=REQUEST_TIMEOUT_SECONDS, limits=limits
    ) as http:

        async def task(offset: int) -> None:
            n = offset
            while not stop.is_set():
                sent = await _send(http, ledger, phase, targets[n % len(targets)])
                n += 1
                if sent.failure is not None:
                    return

        await asyncio.gather(*(task(k) for k in range(concurrency)))


async def _targets(base_url: str, demo: dict[str, Any], ledger: Ledger) -> list[Target]:
    """Sign each clinic's care-team physician in; list each patient's records (audited
    requests too, in the ledger); the reads the load cycles through."""
    import httpx

    from bench.scenarios import BenchContext, access_token, care_team_reads
    from bench.scenarios import Target as Server

    ctx = BenchContext(Server.CLINICGUARD, base_url, demo, record_ids=())
    targets: list[Target] = []
    records: list[Target] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_SECONDS) as http:
        for read in care_team_reads(ctx):
            headers = {"Authorization": f"Bearer {await access_token(ctx, read.physician)}"}
            targets.append(Target("patient", f"/api/v1/patients/{read.patient_id}", headers))
            listing = Target("records", f"/api/v1/patients/{read.patient_id}/records", headers)
            sent = await _send(http, ledger, "setup", listing)
            if sent.status != 200:
                raise RuntimeError(
                    f"GET {listing.path} answered {sent.status or sent.failure}: {sent.body}"
                )
            records += [
                Target("record", f"/api/v1/records/{item['id']}", headers)
                for item in sent.body["items"]
            ]
        for target in targets + records:  # every read answers 200 before the load
            sent = await _send(http, ledger, "setup", target)
            if sent.status != 200:
                raise RuntimeError(
                    f"GET {target.path} answered {sent.status or sent.failure}: {sent.body}"
                )
    mixed = [t for pair in zip(targets, records, strict=False) for t in pair]
    return mixed + targets[len(mixed) // 2 :] + records[len(mixed) // 2 :]


def _events(
    admin_url: str, prefix: str
) -> tuple[Counter[str], Counter[str], list[tuple[Any, ...]], int]:
    """As the superuser: access events and other (security) events per request id of this
    run, each chain's head against its events, and the number of rows in audit_events."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT request_id, count(*) FILTER (WHERE event_type LIKE %s),"
            " count(*) FILTER (WHERE event_type NOT LIKE %s)"
            " FROM audit_events WHERE request_id LIKE %s GROUP BY request_id",
            (ACCESS_EVENTS, ACCESS_EVENTS, prefix + "-%"),
        ).fetchall()
        heads = conn.execute(
            "SELECT h.clinic_id, h.seq, count(e.seq), coalesce(max(e.seq), 0),"
            " coalesce(min(e.seq), 0) FROM audit_heads h"
            " LEFT JOIN audit_events e ON e.clinic_id = h.clinic_id"
            " GROUP BY h.clinic_id, h.seq ORDER BY h.clinic_id"
        ).fetchall()
        row = conn.execute("SELECT count(*) FROM audit_events").fetchone()
    access = Counter({str(rid): int(n) for rid, n, _other in rows if n})
    other = Counter({str(rid): int(n) for rid, _n, n in rows if n})
    return access, other, heads, int(row[0]) if row else 0


async def _kill_and_restart(
    args: argparse.Namespace,
    env: dict[str, str],
    work_dir: Path,
    demo: dict[str, Any],
    ledger: Ledger,
) -> tuple[float, str]:
    """Serve, load, SIGKILL the process group mid-load, serve again, load, stop. Returns
    when the kill came and the servers' logs (for tracebacks)."""
    from bench import servers

    (work_dir / "first").mkdir()
    (work_dir / "restarted").mkdir()
    server = servers.start_clinicguard(args.workers, env, work_dir / "first")
    restarted: servers.Server | None = None
    try:
        await server.wait_healthy()
        say(f"clinicguard serve --workers {args.workers} on {server.base_url}")
        targets = await _targets(server.base_url, demo, ledger)
        say(
            f"{len(targets)} audited reads in turn, {args.concurrency} in flight; SIGKILL "
            f"to the server's process group after {args.seconds:g} s"
        )
        stop = asyncio.Event()
        load = asyncio.create_task(
            _load(
                server.base_url, ledger, "before", targets, concurrency=args.concurrency, stop=stop
            )
        )
        await asyncio.sleep(args.seconds)
        in_flight = sum(1 for s in ledger.sent.values() if s.phase == "before" and s.ended is None)
        os.killpg(server.process.pid, signal.SIGKILL)  # the supervisor and every worker
        killed_at = time.monotonic()
        stop.set()
        await load
        server.process.wait(10)
        say(f"killed (SIGKILL to process group {server.process.pid}) with {in_flight} in flight")

        restarted = servers.start_clinicguard(args.workers, env, work_dir / "restarted")
        await restarted.wait_healthy()
        say(f"restarted on {restarted.base_url}")
        if args.after > 0:
            stop = asyncio.Event()
            load = asyncio.create_task(
                _load(
                    restarted.base_url,
                    ledger,
                    "after",
                    targets,
                    concurrency=args.concurrency,
                    stop=stop,
                )
            )
            await asyncio.sleep(args.after)
            stop.set()
            await load
    finally:
        server.stop()
        if restarted is not None:
            restarted.stop()
    logs = ""
    for name, path in (("killed", server.log_path), ("restarted", restarted.log_path)):
        if path.exists():
            logs += path.read_text(errors="replace")
            if args.logs is not None:
                args.logs.mkdir(parents=True, exist_ok=True)
                (args.logs / f"clinicguard-{name}.log").write_bytes(path.read_bytes())
    return killed_at, logs


async def _verify(env: dict[str, str], total_events: int) -> bool:
    """``clinicguard audit verify`` (every chain); its event count held to audit_events'."""
    from bench import servers

    try:
        output, ok = await servers.run_clinicguard(["audit", "verify"], env), True
    except servers.ProcessFailed as exc:
        output, ok = str(exc), False
    say(f"  chain verification (clinicguard audit verify): {output.strip()}")
    match = _VERIFIED.search(output)
    if match is None:
        return False
    if int(match.group(2)) != total_events:
        say(
            f"  verification walked {match.group(2)} events of the {total_events} in "
            "audit_events: FAILED (chains left out)"
        )
        return False
    return ok


async def _run(args: argparse.Namespace, work_dir: Path) -> int:
    from bench import runner

    ledger = Ledger(prefix=f"kill{secrets.token_hex(4)}")
    with runner.bench_services() as db:
        env = runner.make_clinicguard_env(db, work_dir)
        env["CLINICGUARD_TRUSTED_PROXIES"] = TRUSTED_PROXIES
        _rows, demo = await runner.prepare_database(db, env, work_dir)
        killed_at, logs = await _kill_and_restart(args, env, work_dir, demo, ledger)
        per_request, security, heads, total_events = _events(db.admin_url, ledger.prefix)
        failed = _report(
            args,
            ledger,
            per_request=per_request,
            security=security,
            heads=heads,
            total_events=total_events,
            killed_at=killed_at,
        )
        failed = not await _verify(env, total_events) or failed
        tracebacks = logs.count("Traceback")
        say(f"  tracebacks in the servers' logs: {tracebacks}")
        if tracebacks:
            say(f"--- the servers' logs (tail)\n{logs[-6000:]}")
        say(f"result: {'FAILED' if failed else 'PASSED'}")
        return 1 if failed else 0


def _report(
    args: argparse.Namespace,
    ledger: Ledger,
    *,
    per_request: Counter[str],
    security: Counter[str],
    heads: list[tuple[Any, ...]],
    total_events: int,
    killed_at: float,
) -> bool:
    """Print the counts; return whether anything is missing, duplicated or inconsistent."""
    ok200 = {rid: s for rid, s in ledger.sent.items() if s.status == 200}
    other = {rid: s for rid, s in ledger.sent.items() if s.status not in (None, 200)}
    unanswered = {rid: s for rid, s in ledger.sent.items() if s.status is None}
    cut = {rid: s for rid, s in unanswered.items() if s.started <= killed_at}
    refused = {rid: s for rid, s in unanswered.items() if s.started > killed_at}
    missing = [rid for rid in ok200 if per_request[rid] == 0]
    duplicated = [rid for rid in ledger.sent if per_request[rid] > 1]
    not_echoed = [rid for rid, s in ok200.items() if s.echoed != rid]
    unknown = [rid for rid in per_request if rid not in ledger.sent]
    by_phase = Counter(s.phase for s in ok200.values())
    by_kind = Counter(s.kind for s in ok200.values())
    failures = Counter(s.failure for s in unanswered.values())
    unexpected = [
        rid
        for rid, s in unanswered.items()
        if s.phase != "before"
        or (s.ended is not None and s.ended < killed_at)
        or (rid in refused and per_request[rid])
    ]
    say(
        f"audit kill test: --workers {args.workers} --concurrency {args.concurrency} "
        f"--seconds {args.seconds:g} --after {args.after:g}"
    )
    say(f"  requests sent: {len(ledger.sent):,}")
    say(
        f"  200s received: {len(ok200):,} (setup {by_phase['setup']:,}, before the kill "
        f"{by_phase['before']:,}, after the restart {by_phase['after']:,}; "
        + ", ".join(f"{k} {n:,}" for k, n in sorted(by_kind.items()))
        + ")"
    )
    say(f"  access events found for them: {sum(min(per_request[r], 1) for r in ok200):,}")
    say(f"  missing (200 without an event): {len(missing)}")
    say(f"  duplicated (a request id with more than one access event): {len(duplicated)}")
    say(
        f"  no answer: {len(unanswered):,} — in flight at the kill {len(cut):,}, sent after "
        f"it (refused) {len(refused):,}; {dict(failures)}"
    )
    extra = sum(1 for rid in unanswered if per_request[rid])
    say(
        f"  extra events without a received answer: {extra:,} (committed before the kill, "
        f"the answer lost), of the {len(cut):,} in flight"
    )
    accessed_not_ok = [rid for rid in other if per_request[rid]]
    say(
        f"  other answers: {dict(Counter(s.status for s in other.values()))}; access events "
        f"for them: {len(accessed_not_ok)}, security events for them: "
        f"{sum(security[rid] for rid in other):,}"
        + (f"; first: {next(iter(other.values())).body}" if other else "")
    )
    ours, theirs = sum(per_request.values()), sum(security.values())
    say(
        f"  events with this run's request ids: {ours:,} access, {theirs:,} security; other "
        f"events (sign-ins): {total_events - ours - theirs:,}"
    )
    gaps = [h for h in heads if not (h[1] == h[2] == h[3] and (h[2] == 0 or h[4] == 1))]
    say(
        f"  chains: {len(heads)} heads, {total_events:,} events in audit_events; heads at "
        f"their last event with no gap: {'yes' if not gaps else f'NO: {gaps}'}"
    )
    failed = bool(
        missing or duplicated or not_echoed or unknown or gaps or unexpected or accessed_not_ok
    )
    for label, ids in (
        ("MISSING", missing),
        ("DUPLICATED", duplicated),
        ("X-Request-ID not echoed", not_echoed),
        ("events for request ids never sent", unknown),
        ("no answer outside the kill, or an event for a request refused", unexpected),
        ("an access event for a request answered other than 200", accessed_not_ok),
    ):
        if ids:
            sample = ", ".join(
                f"{rid} ({ledger.sent[rid].kind} "
                f"{ledger.sent[rid].status or ledger.sent[rid].failure})"
                if rid in ledger.sent
                else rid
                for rid in ids[:10]
            )
            say(f"  {label}: {len(ids)}: {sample}")
    return failed


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # The bench's helpers read their Redis database from the environment at import.
    if args.redis_url:
        os.environ["CLINICGUARD_BENCH_REDIS_URL"] = args.redis_url
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))
    from bench.servers import ProcessFailed

    with tempfile.TemporaryDirectory(prefix="clinicguard-killtest-") as work_dir:
        try:
            return asyncio.run(_run(args, Path(work_dir)))
        except (ProcessFailed, RuntimeError, OSError) as exc:
            say(f"set-up failed: {type(exc).__name__}: {exc}")
            return 2
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
