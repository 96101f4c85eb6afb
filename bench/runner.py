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
from bench.inprocess import InProcessSpec
from bench.loadgen import LoadResult, LoadSpec
from bench.measurement import Measurement, Round, ScenarioResult
from bench.scenarios import (
    Background,
    BenchContext,
    Findings,
    HttpRequest,
    LoadWindow,
    Scenario,
    Side,
    Target,
)
from bench.servers import (
    PROJECT_ROOT,
    ProcessFailed,
    Server,
    run_bench_module,
    run_clinicguard,
    start_bare,
    start_clinicguard,
)

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
BACKGROUND_DEADLINE_SLACK_SECONDS = 1.0
"""A background task's deadline: the round's warm-up + measured window from the moment the
generator is told to go, plus this (it normally stops earlier, when the window closes)."""
BACKGROUND_STOP_SECONDS = 10.0
"""How long after the round a background task may take to return before it is cancelled
(and the round fails)."""
LOGIN_FAILURES_PER_IP = 10_000
"""The server's per-IP sign-in window (default 20): every bench sign-in comes from 127.0.0.1,
and attempts in flight hold a slot until their password is checked, so the login storm's
20 concurrent sign-ins would sit exactly on the default limit."""


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
def bench_services() -> Iterator[services.BenchDatabase]:
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


def make_clinicguard_env(db: services.BenchDatabase, work_dir: Path) -> dict[str, str]:
    """The one configuration of the run's clinicguard commands and server: the seeded TOTP
    seeds and the keys made by the migrations are sealed with this master key."""
    return {
        "CLINICGUARD_ENV": "test",
        "CLINICGUARD_DATABASE_URL": db.app_url,
        "CLINICGUARD_MIGRATION_DATABASE_URL": db.owner_url,
        "CLINICGUARD_KEY_VAULT_URL": db.vault_url,
        "CLINICGUARD_REDIS_URL": services.REDIS_URL,
        "CLINICGUARD_DATA_DIR": str(work_dir / "data"),
        "CLINICGUARD_SECRET_KEY": secrets.token_urlsafe(48),
        "CLINICGUARD_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "CLINICGUARD_LOGIN_FAILURES_PER_IP": str(LOGIN_FAILURES_PER_IP),
    }


async def prepare_database(
    db: services.BenchDatabase, clinicguard_env: dict[str, str], work_dir: Path
) -> tuple[services.BenchRows, dict[str, Any]]:
    """Migrate (schema and grants, as the owner), add the bare app's tables, seed the demo
    data set; return the bench tables' ids and the demo credentials. Through clinicguard's
    own commands, so the bench prepares the database exactly as an operator would."""
    _progress("migrating, and seeding the demo data set")
    await run_clinicguard(["migrate"], clinicguard_env)
    rows = await asyncio.to_thread(services.add_bench_schema, db)
    credentials = work_dir / "demo-credentials.json"
    await run_clinicguard(["demo", "seed", "--out", str(credentials)], clinicguard_env)
    demo: dict[str, Any] = json.loads(credentials.read_text())
    return rows, demo


@contextlib.asynccontextmanager
async def _servers(
    options: RunOptions,
    db: services.BenchDatabase,
    clinicguard_env: dict[str, str],
    log_dir: Path,
) -> AsyncIterator[dict[Target, Server]]:
    """The servers the chosen scenarios need, healthy; stopped on the way out."""
    wanted = {side.target for s in options.scenarios for side in s.measured_sides()}
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


@dataclass
class _Prepared:
    """A side ready to be loaded: its requests, rendered, and its background task's state."""

    side: Side
    measurement: Measurement
    server: Server
    ctx: BenchContext
    requests: list[bytes]
    background_state: Any = None

    @property
    def background(self) -> Background | None:
        return self.side.endpoint.background


class _BackgroundRound:
    """A side's background task over one round (does nothing for a side without one)."""

    def __init__(self, side: _Prepared) -> None:
        self._side = side
        self._window: LoadWindow | None = None
        self._task: asyncio.Task[dict[str, Any]] | None = None

    def start(self, seconds: float) -> None:
        """The generator was told to go: start the task, to stop within ``seconds`` (the
        round's warm-up and measured window) plus BACKGROUND_DEADLINE_SLACK_SECONDS."""
        background = self._side.background
        if background is None:
            return
        self._window = LoadWindow(
            deadline=time.monotonic() + seconds + BACKGROUND_DEADLINE_SLACK_SECONDS
        )
        self._task = asyncio.create_task(
            background.run(self._side.ctx, self._side.background_state, self._window)
        )

    def window_opened(self) -> None:
        if self._window is not None:
            self._window.measure_from = time.monotonic()

    def window_closed(self) -> None:
        if self._window is not None:
            self._window.measure_to = time.monotonic()
            self._window.finished.set()

    async def result(self) -> dict[str, Any] | None:
        """What the task returned (None without one); RuntimeError when it failed or did not
        stop within BACKGROUND_STOP_SECONDS after the round."""
        if self._task is None or self._window is None:
            return None
        self._window.finished.set()
        try:
            async with asyncio.timeout(BACKGROUND_STOP_SECONDS):
                return await asyncio.shield(self._task)
        except TimeoutError as exc:
            raise RuntimeError(
                f"the background task did not stop within {BACKGROUND_STOP_SECONDS:g} s "
                "after the round"
            ) from exc
        except Exception as exc:
            raise RuntimeError(f"the background task failed: {type(exc).__name__}: {exc}") from exc

    async def stop(self) -> None:
        """Cancel the task if it is still running (failure, Ctrl-C, overrun)."""
        if self._window is not None:
            self._window.finished.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


async def _load(options: RunOptions, side: _Prepared) -> Round:
    """Run the load generator in its own process (and session, so that Ctrl-C reaches only
    the harness, which kills it); sample the server and the machine as the measured window
    opens and closes. A side with a background task starts it when the generator is told
    to go (warm-up included) and tells it when the measured window opens and closes."""
    server, requests = side.server, side.requests
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
    keep: list[int] = []
    background = _BackgroundRound(side)
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
                    background.start(options.warmup_seconds + spec.duration_seconds)
                elif text == "phase measure":
                    background.window_opened()
                    cpu_start, machine_start = server.cpu_seconds(), procfs.machine_cpu_ticks()
                    # The generator's connections only: a background task may hold others.
                    connections = server.connections_per_worker(keep or None)
                elif text == "phase done":
                    cpu_end, machine_end = server.cpu_seconds(), procfs.machine_cpu_ticks()
                    background.window_closed()
                elif text.startswith("{"):
                    result = LoadResult.from_json(text)
            await process.wait()
            errors = (await stderr).decode(errors="replace")
        background_summary = await background.result()
    finally:
        await background.stop()
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
        background=background_summary,
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


async def _prepare_side(side: Side, server: Server, ctx: BenchContext, label: str) -> _Prepared:
    """Run the side's setup, build its requests, check the first one answers 2xx, then run
    its background task's setup (if any); each setup gets SETUP_TIMEOUT_SECONDS."""
    started = time.monotonic()
    async with asyncio.timeout(SETUP_TIMEOUT_SECONDS):
        requests = await side.endpoint.requests(ctx)
        await _smoke_check(ctx, requests[0])
    prepared = _Prepared(
        side,
        Measurement(side.target, side.label),
        server,
        ctx,
        [r.render(server.port) for r in requests],
    )
    if prepared.background is not None and prepared.background.setup is not None:
        async with asyncio.timeout(SETUP_TIMEOUT_SECONDS):
            prepared.background_state = await prepared.background.setup(ctx)
    if (took := time.monotonic() - started) >= 1:
        _progress(f"{label}: set up in {took:.1f} s")
    return prepared


async def _measure_scenario(
    options: RunOptions,
    scenario: Scenario,
    servers: dict[Target, Server],
    contexts: dict[Target, BenchContext],
    cache: dict[str, Any],
) -> ScenarioResult:
    """Prepare each side, then measure them in alternating rounds. A side that fails stops
    there (and says why); the others go on. Then the scenario's own figures, if any."""
    sides: list[_Prepared] = []
    measurements = []
    for side in scenario.measured_sides():
        try:
            prepared = await _prepare_side(
                side, servers[side.target], contexts[side.target], f"{scenario.name}/{side.label}"
            )
        except Exception as exc:  # noqa: BLE001  # one broken scenario must not cost the others
            measurement = Measurement(side.target, side.label, error=f"{type(exc).__name__}: {exc}")
            measurements.append(measurement)
            _progress(f"{scenario.name}/{side.label}: FAILED: {measurement.error}")
            continue
        measurements.append(prepared.measurement)
        sides.append(prepared)
    window = options.duration_seconds / options.rounds
    for round_number in range(1, options.rounds + 1):
        for prepared in sides:
            measurement = prepared.measurement
            if measurement.error:
                continue
            label = f"{scenario.name}/{measurement.label}"
            _progress(
                f"{label} round {round_number}/{options.rounds}: warm-up "
                f"{options.warmup_seconds:g} s, {window:.3g} s measured, "
                f"{options.connections} connections"
                + (", with its background load" if prepared.background else "")
            )
            try:
                measurement.rounds.append(await _load(options, prepared))
            except Exception as exc:  # noqa: BLE001  # as above
                measurement.error = f"{type(exc).__name__}: {exc}"
                _progress(f"{label}: FAILED: {measurement.error}")
    result = ScenarioResult(scenario, measurements)
    if scenario.figures is not None:
        try:
            result.findings = scenario.figures(result, cache)
        except Exception as exc:  # noqa: BLE001  # the table still prints
            result.findings_error = f"{type(exc).__name__}: {exc}"
            _progress(f"{scenario.name}: figures FAILED: {result.findings_error}")
    return result


async def _measure_in_process(
    options: RunOptions,
    scenario: Scenario,
    clinicguard_env: dict[str, str],
    demo: dict[str, Any],
) -> ScenarioResult:
    """Run an in-process scenario's module in a process of its own with the run's
    configuration; its figures are the scenario's (a failure fails the scenario, and the
    others go on)."""
    assert scenario.in_process is not None  # noqa: S101  # the caller checked
    result = ScenarioResult(scenario, [])
    spec = InProcessSpec(
        duration_seconds=options.duration_seconds,
        rounds=options.rounds,
        warmup_seconds=options.warmup_seconds,
        demo=demo,
    )
    _progress(f"{scenario.name}: in-process ({scenario.in_process.module})")
    started = time.monotonic()
    try:
        line = await run_bench_module(
            scenario.in_process.module,
            spec.to_json(),
            clinicguard_env,
            scenario.in_process.timeout_seconds,
        )
        figures = json.loads(line)
        result.findings = Findings(values=figures["values"], lines=figures["lines"])
    except (ProcessFailed, ValueError, KeyError, TypeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        _progress(f"{scenario.name}: FAILED: {result.error}")
    _progress(f"{scenario.name}: done in {time.monotonic() - started:.1f} s")
    return result


async def _run(options: RunOptions, work_dir: Path) -> list[ScenarioResult]:
    if (task := asyncio.current_task()) is not None:
        # SIGTERM unwinds like Ctrl-C: servers stopped, database dropped, Redis flushed.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with bench_services() as db:
        clinicguard_env = make_clinicguard_env(db, work_dir)
        rows, demo = await prepare_database(db, clinicguard_env, work_dir)
        cache: dict[str, Any] = {}  # one for the whole run, shared by every setup
        async with _servers(options, db, clinicguard_env, work_dir) as servers:
            contexts = {
                target: BenchContext(
                    target,
                    server.base_url,
                    demo,
                    rows.record_ids,
                    user_ids=rows.user_ids,
                    cache=cache,
                    clinicguard_env=clinicguard_env,
                )
                for target, server in servers.items()
            }
            return [
                await _measure_in_process(options, scenario, clinicguard_env, demo)
                if scenario.in_process is not None
                else await _measure_scenario(options, scenario, servers, contexts, cache)
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
