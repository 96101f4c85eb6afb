"""The two servers under load, as subprocesses: started, probed, measured, stopped; the
clinicguard commands that prepare the database; and the processes of in-process scenarios.

Each runs in its own session (process group), so the harness can account for the CPU of
the supervisor and all its workers, and, should SIGTERM not end them in time, kill exactly
the processes it started and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import procfs
from bench.loadgen import LOOPBACK

PROJECT_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECONDS = 60.0
COMMAND_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 15.0
"""SIGTERM first (uvicorn drains for up to 10 s), SIGKILL to the group after this."""
_PROBE_INTERVAL_SECONDS = 0.2
_LOG_TAIL_CHARS = 4000
_WORKER_STARTED = "Application startup complete."
"""What uvicorn logs once per worker when its lifespan start-up is done."""


class ProcessFailed(RuntimeError):
    """A server exited or did not become healthy in time, or a clinicguard command failed;
    the message ends with its output."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """One running server (a uvicorn supervisor and its workers)."""

    name: str
    port: int
    workers: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def cpu_seconds(self) -> float | None:
        """CPU time used so far by the supervisor and its workers (None off Linux)."""
        return procfs.session_cpu_seconds(self.process.pid)

    def clients_per_worker(self) -> list[list[int]] | None:
        """For each worker holding connections, the clients' ports of those connections
        (None off Linux)."""
        return procfs.peer_ports_per_process(self.process.pid, self.port)

    def connections_per_worker(self, clients: Collection[int] | None = None) -> list[int] | None:
        """Established connections each worker holds now, largest first (None off Linux);
        with ``clients``, only the connections from those client ports."""
        held = self.clients_per_worker()
        if held is None:
            return None
        if clients is not None:
            wanted = set(clients)
            held = [kept for ports in held if (kept := [p for p in ports if p in wanted])]
        return sorted(map(len, held), reverse=True)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-_LOG_TAIL_CHARS:]
        except OSError:
            return ""

    def _workers_started(self) -> int:
        try:
            return self.log_path.read_text(errors="replace").count(_WORKER_STARTED)
        except OSError:
            return 0

    async def wait_healthy(self) -> None:
        """Return once every worker has started and ``GET /healthz`` answers 200 (one worker
        answering is not enough: a measurement must not begin while the others still
        import); raise ProcessFailed if the process exits or START_TIMEOUT_SECONDS pass."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ProcessFailed(
                        f"{self.name} exited with status {self.process.returncode}:\n"
                        f"{self.log_tail()}"
                    )
                if self._workers_started() >= self.workers:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get("/healthz")).status_code == 200:
                            return
                await asyncio.sleep(_PROBE_INTERVAL_SECONDS)
        raise ProcessFailed(
            f"{self.name} was not healthy after {START_TIMEOUT_SECONDS:.0f} s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM the supervisor (it stops its workers gracefully); SIGKILL the whole
        process group when that takes longer than ``timeout`` or leaves workers behind."""
        group = self.process.pid  # start_new_session: the group id is the leader's pid
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                print(
                    f"{self.name} ignored SIGTERM for {timeout:.0f} s; killing it", file=sys.stderr
                )
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)  # only workers left behind, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


def _spawn(
    name: str,
    argv: list[str],
    *,
    port: int,
    workers: int,
    env: Mapping[str, str],
    log_dir: Path,
) -> Server:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=PROJECT_ROOT,
            env={**_inherited_env(), **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(name=name, port=port, workers=workers, process=process, log_path=log_path)


def _inherited_env() -> dict[str, str]:
    """This process's environment without clinicguard's settings (the Makefile exports
    CLINICGUARD_DATA_DIR, a developer may have more): the servers get exactly ours."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("CLINICGUARD_", "BENCH_"))}


def _clinicguard_command() -> list[str]:
    script = Path(sys.executable).parent / "clinicguard"
    return [str(script)] if script.exists() else [sys.executable, "-m", "clinicguard"]


async def run_clinicguard(args: Sequence[str], env: Mapping[str, str]) -> str:
    """``clinicguard <args>`` with the given CLINICGUARD_* environment; return what it
    printed on stdout (its messages go to stderr; ``users create`` prints the one-time
    password alone on stdout). Raise ProcessFailed when it exits non-zero (it is killed
    after COMMAND_TIMEOUT_SECONDS)."""
    process = await asyncio.create_subprocess_exec(
        *_clinicguard_command(),
        *args,
        cwd=PROJECT_ROOT,
        env={**_inherited_env(), **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT_SECONDS):
            output, messages = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        text = (messages + output).decode(errors="replace")
        raise ProcessFailed(
            f"clinicguard {' '.join(args)} exited with status {process.returncode}:\n"
            f"{text[-_LOG_TAIL_CHARS:]}"
        )
    return output.decode(errors="replace")


async def run_bench_module(
    module: str, stdin: str, env: Mapping[str, str], limit_seconds: float
) -> str:
    """``python -m <module>`` (an in-process scenario, bench/inprocess.py) with the given
    CLINICGUARD_* environment and ``stdin``; its stderr is relayed line by line to ours as it
    comes; return the last line it printed on stdout. Raise ProcessFailed when it exits
    non-zero or prints nothing (it is killed after ``limit_seconds``)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        cwd=PROJECT_ROOT,
        env={**_inherited_env(), **env},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        limit=4 << 20,
    )
    if process.stdin is None or process.stdout is None or process.stderr is None:
        raise RuntimeError(f"{module}: the pipes are missing")
    messages: list[str] = []

    async def relay(stream: asyncio.StreamReader) -> None:
        async for line in stream:
            text = line.decode(errors="replace").rstrip()
            messages.append(text)
            print(text, file=sys.stderr, flush=True)

    relaying = asyncio.create_task(relay(process.stderr))
    try:
        async with asyncio.timeout(limit_seconds):
            process.stdin.write(stdin.encode() + b"\n")
            await process.stdin.drain()
            process.stdin.close()
            output = await process.stdout.read()
            await process.wait()
            await relaying
    except TimeoutError as exc:
        raise ProcessFailed(f"{module} did not finish within {limit_seconds:.0f} s") from exc
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        relaying.cancel()
    lines = output.decode(errors="replace").strip().splitlines()
    if process.returncode != 0 or not lines:
        tail = "\n".join(messages)[-_LOG_TAIL_CHARS:]
        raise ProcessFailed(f"{module} exited with status {process.returncode}:\n{tail}")
    return lines[-1]


def start_clinicguard(workers: int, env: Mapping[str, str], log_dir: Path) -> Server:
    """``clinicguard serve --workers N`` on a free port of 127.0.0.1 (CLINICGUARD_* in env)."""
    port = free_port()
    argv = [
        *_clinicguard_command(),
        "serve",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    return _spawn("clinicguard", argv, port=port, workers=workers, env=env, log_dir=log_dir)


def start_bare(workers: int, env: Mapping[str, str], log_dir: Path) -> Server:
    """The bare app under uvicorn with the server options ``clinicguard serve`` uses
    (uvloop + httptools by default, no access log, no Server header, no proxy headers,
    lifespan on, 10 s graceful shutdown)."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.bare:create_app",
        "--factory",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--no-server-header",
        "--no-proxy-headers",
        "--lifespan",
        "on",
        "--timeout-graceful-shutdown",
        "10",
    ]
    env = {**env, "PYTHONPATH": str(PROJECT_ROOT)}
    return _spawn("bare", argv, port=port, workers=workers, env=env, log_dir=log_dir)
