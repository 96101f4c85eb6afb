"""One benchmark run: services up, servers up, each scenario's targets loaded in turn,
everything torn down again (also on failure, Ctrl-C or SIGTERM)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import platform
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import procfs, services
from bench.bare import DB_POOL_SIZE
from bench.loadgen import LoadResult, LoadSpec
from bench.measurement import Measurement, Round, ScenarioResult
from bench.scenarios import BenchContext, Endpoint, HttpRequest, Scenario, Target
from bench.servers import PROJECT_ROOT, Server, run_clinicguard, start_bare, start_clinicguard

SETUP_TIMEOUT_SECONDS = 60.0
ACCEPT_TIMEOUT_SECONDS = 5.0
SPARE_CONNECTIONS_PER_CONNECTION = 2
RESULT_LINE_LIMIT_BYTES = 4 << 20
"""The generator's result is one JSON line, latency histogram included."""
CONNECTION_HEADROOM = 10
"""PostgreSQL connections kept free for superusers and the harness itself."""
LOADGEN_SLACK_SECONDS = 30.0
"""How much longer than warm-up + duration + request timeout the generator may take
before it is killed."""


@dataclass(frozen=True)
class RunOptions:
    """What the command line chose."""

    scenarios: Sequence[Scenario]
    workers: int = 2
    connections: int = 32
    duration_seconds: float = 10.0
    """Measured seconds per target, split evenly over the rounds."""
    rounds: int = 3
    """Rounds per target, alternating with the other target of the scenario."""
    warmup_seconds: float = 1.0
    """Unmeasured load before each round."""
    max_requests: int = 5_000_000
    request_timeout_seconds: float = 10.0


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _bench_services() -> Iterator[services.BenchDatabase]:
    """The run's Redis database (flushed) and PostgreSQL database (dropped afterwards)."""
    services.flush_redis()
    db = services.create_database()
    _progress(f"created database {db.name}")
    try:
        yield db
    finally:
        services.drop_database(db)
        services.flush_redis()
        _progress(f"dropped database {db.name}; flushed {services.REDIS_URL}")


def _clinicguard_env(db: services.BenchDatabase, work_dir: Path) -> dict[str, str]:
    """The one configuration of the run's clinicguard commands and server: the seeded TOTP
    seeds and the keys made by the migrations are sealed with this master key."""
    return {
        "CLINICGUARD_ENV": "test",
        "CLINICGUARD_DATABASE_URL": db.app_url,
        "CLINICGUARD_MIGRATION_DATABASE_URL": db.owner_url,
        "CLINICGUARD_REDIS_URL": services.REDIS_URL,
        "CLINICGUARD_DATA_DIR": str(work_dir / "data"),
        "CLINICGUARD_SECRET_KEY": secrets.token_urlsafe(48),
        "CLINICGUARD_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
    }


async def _prepare_database(
    db: services.BenchDatabase, clinicguard_env: dict[str, str], work_dir: Path
) -> tuple[list[str], dict[str, Any]]:
    """Migrate (schema and grants, as the owner), add the bare app's tables, seed the demo
    data set; return the bench record ids and the demo credentials. Through clinicguard's
    own commands, so the bench prepares the database exactly as an operator would."""
    _progress("migrating, and seeding the demo data set")
    await run_clinicguard(["migrate"], clinicguard_env)
    record_ids = await asyncio.to_thread(services.add_bench_schema, db)
    credentials = work_dir / "demo-credentials.json"
    await run_clinicguard(["demo", "seed", "--out", str(credentials)], clinicguard_env)
    demo: dict[str, Any] = json.loads(credentials.read_text())
    return record_ids, demo


@contextlib.asynccontextmanager
async def _servers(
    options: RunOptions,
    db: services.BenchDatabase,
    clinicguard_env: dict[str, str],
    log_dir: Path,
) -> AsyncIterator[dict[Target, Server]]:
    """The servers the chosen scenarios need, healthy; stopped on the way out."""
    wanted = {target for s in options.scenarios for target, _ in s.endpoints()}
    # Each worker's pool may grow to twice its size under load (the overflow).
    needed = len(wanted) * options.workers * 2 * DB_POOL_SIZE
    if needed > (limit := services.max_connections()) - CONNECTION_HEADROOM:
        _progress(
            f"warning: the servers may open {needed} PostgreSQL connections and "
            f"max_connections is {limit}: expect connection errors (fewer --workers help)"
        )
    running: dict[Target, Server] = {}
    try:
        if Target.CLINICGUARD in wanted:
            running[Target.CLINICGUARD] = start_clinicguard(
                options.workers, clinicguard_env, log_dir
            )
        if Target.BARE in wanted:
            running[Target.BARE] = start_bare(
                options.workers,
                {"BENCH_BARE_DATABASE_URL": db.app_url, "BENCH_BARE_REDIS_URL": services.REDIS_URL},
                log_dir,
            )
        await asyncio.gather(*(server.wait_healthy() for server in running.values()))
        for server in running.values():
            _progress(f"{server.name}: {options.workers} worker(s) on {server.base_url}")
        yield running
    finally:
        for server in running.values():
            server.stop()


async def _smoke_check(ctx: BenchContext, request: HttpRequest) -> None:
    """Send one request before loading: a scenario that answers non-2xx fails at once, with
    the answer, instead of producing a table of fast errors."""
    async with ctx.client() as client:
        response = await client.request(
            request.method, request.path, headers=request.all_headers(), content=request.body()
        )
    if not response.is_success:
        raise RuntimeError(
            f"{request.method} {request.path} answered {response.status_code}: "
            f"{response.text[:300]}"
        )


async def _load(options: RunOptions, server: Server, requests: list[bytes]) -> Round:
    """Run the load generator in its own process (and session, so that Ctrl-C reaches only
    the harness, which kills it); sample the server and the machine as the measured window
    opens and closes."""
    spec = LoadSpec(
        port=server.port,
        requests=requests,
        connections=options.connections,
        # Spares to choose from, so that every worker gets its share of the connections even
        # when the kernel hands most of them to one worker (3:1 is not rare on a busy box).
        spare_connections=SPARE_CONNECTIONS_PER_CONNECTION * options.connections
        if options.workers > 1
        else 0,
        warmup_seconds=options.warmup_seconds,
        duration_seconds=options.duration_seconds / options.rounds,
        max_requests=options.max_requests,
        request_timeout_seconds=options.request_timeout_seconds,
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.loadgen",
        cwd=PROJECT_ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        limit=RESULT_LINE_LIMIT_BYTES,
    )
    if process.stdin is None or process.stdout is None or process.stderr is None:
        raise RuntimeError("the load generator's pipes are missing")
    stderr = asyncio.create_task(process.stderr.read())
    budget = (
        options.warmup_seconds
        + options.duration_seconds
        + options.request_timeout_seconds
        + LOADGEN_SLACK_SECONDS
    )
    result: LoadResult | None = None
    cpu_start = cpu_end = None
    machine_start = machine_end = None
    connections = None
    errors = ""
    try:
        async with asyncio.timeout(budget):
            process.stdin.write(spec.to_json().encode() + b"\n")
            await process.stdin.drain()
            async for line in process.stdout:
                text = line.decode().strip()
                if text.startswith("phase connected"):
                    opened = int(text.rsplit(" ", 1)[1])
                    keep = _even_share(await _accepted(server, opened), options)
                    process.stdin.write(f"go {' '.join(map(str, keep))}\n".encode())
                    await process.stdin.drain()
                    process.stdin.close()
                elif text == "phase measure":
                    cpu_start, machine_start = server.cpu_seconds(), procfs.machine_cpu_ticks()
                    connections = server.connections_per_worker()
                elif text == "phase done":
                    cpu_end, machine_end = server.cpu_seconds(), procfs.machine_cpu_ticks()
                elif text.startswith("{"):
                    result = LoadResult.from_json(text)
            await process.wait()
            errors = (await stderr).decode(errors="replace")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        stderr.cancel()
    if result is None:
        raise RuntimeError(
            f"the load generator exited with status {process.returncode}:\n{errors[-2000:]}"
        )
    machine_busy = None
    if machine_start and machine_end and machine_end[1] > machine_start[1]:
        busy, total = (end - start for start, end in zip(machine_start, machine_end, strict=True))
        machine_busy = round(100 * busy / total, 1)
    return Round(
        load=result,
        server_cpu_seconds=None if cpu_start is None or cpu_end is None else cpu_end - cpu_start,
        machine_cpu_busy_percent=machine_busy,
        connections_per_worker=connections,
    )


async def _accepted(server: Server, opened: int) -> list[list[int]] | None:
    """The client ports each worker holds, once the workers have accepted all ``opened``
    connections (a busy worker accepts late), or after ACCEPT_TIMEOUT_SECONDS."""
    deadline = time.monotonic() + ACCEPT_TIMEOUT_SECONDS
    while True:
        held = server.clients_per_worker()
        if held is None or sum(map(len, held)) >= opened or time.monotonic() > deadline:
            return held
        await asyncio.sleep(0.02)


def _even_share(clients_per_worker: list[list[int]] | None, options: RunOptions) -> list[int]:
    """The client ports of ``options.connections`` connections, spread as evenly over the
    workers as the open ones allow (empty when unknown: the generator keeps any)."""
    if not clients_per_worker:
        return []
    keep: list[int] = []
    # Fewest first: a worker short of its share leaves the rest to the others. Workers that
    # got no connection at all are missing from the list, so the others share all of them.
    groups = sorted(clients_per_worker, key=len)
    for index, ports in enumerate(groups):
        left, groups_left = options.connections - len(keep), len(groups) - index
        keep += ports[: -(-left // groups_left)]
    return keep


async def _prepare_side(endpoint: Endpoint, ctx: BenchContext, port: int) -> list[bytes]:
    """Run the side's setup, build its requests, check the first one answers 2xx; return
    them rendered for the load generator."""
    async with asyncio.timeout(SETUP_TIMEOUT_SECONDS):
        requests = await endpoint.requests(ctx)
        await _smoke_check(ctx, requests[0])
    return [r.render(port) for r in requests]


async def _measure_scenario(
    options: RunOptions,
    scenario: Scenario,
    servers: dict[Target, Server],
    contexts: dict[Target, BenchContext],
) -> ScenarioResult:
    """Prepare each side, then measure them in alternating rounds. A side that fails stops
    there (and says why); the others go on."""
    sides: list[tuple[Measurement, Server, list[bytes]]] = []
    measurements = []
    for target, endpoint in scenario.endpoints():
        server, measurement = servers[target], Measurement(target)
        measurements.append(measurement)
        try:
            requests = await _prepare_side(endpoint, contexts[target], server.port)
        except Exception as exc:  # noqa: BLE001  # one broken scenario must not cost the others
            measurement.error = f"{type(exc).__name__}: {exc}"
            _progress(f"{scenario.name}/{target}: FAILED: {measurement.error}")
            continue
        sides.append((measurement, server, requests))
    window = options.duration_seconds / options.rounds
    for round_number in range(1, options.rounds + 1):
        for measurement, server, requests in sides:
            if measurement.error:
                continue
            label = f"{scenario.name}/{measurement.target}"
            _progress(
                f"{label} round {round_number}/{options.rounds}: warm-up "
                f"{options.warmup_seconds:g} s, {window:.3g} s measured, "
                f"{options.connections} connections"
            )
            try:
                measurement.rounds.append(await _load(options, server, requests))
            except Exception as exc:  # noqa: BLE001  # as above
                measurement.error = f"{type(exc).__name__}: {exc}"
                _progress(f"{label}: FAILED: {measurement.error}")
    return ScenarioResult(scenario, measurements)


async def _run(options: RunOptions, work_dir: Path) -> list[ScenarioResult]:
    if (task := asyncio.current_task()) is not None:
        # SIGTERM unwinds like Ctrl-C: servers stopped, database dropped, Redis flushed.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with _bench_services() as db:
        clinicguard_env = _clinicguard_env(db, work_dir)
        record_ids, demo = await _prepare_database(db, clinicguard_env, work_dir)
        cache: dict[str, Any] = {}  # one for the whole run, shared by every setup
        async with _servers(options, db, clinicguard_env, work_dir) as servers:
            contexts = {
                target: BenchContext(target, server.base_url, demo, record_ids, cache)
                for target, server in servers.items()
            }
            return [
                await _measure_scenario(options, scenario, servers, contexts)
                for scenario in options.scenarios
            ]


def run(options: RunOptions) -> tuple[list[ScenarioResult], dict[str, Any]]:
    """Run the benchmark; return the per-scenario results and the JSON report."""
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="clinicguard-bench-") as work_dir:
        results = asyncio.run(_run(options, Path(work_dir)))
    report = {
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "options": {
            "workers": options.workers,
            "connections": options.connections,
            "duration_seconds": options.duration_seconds,
            "rounds": options.rounds,
            "warmup_seconds": options.warmup_seconds,
            "max_requests": options.max_requests,
            "request_timeout_seconds": options.request_timeout_seconds,
        },
        "scenarios": [r.as_dict() for r in results],
    }
    return results, report
