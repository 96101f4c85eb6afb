"""A small closed-loop HTTP/1.1 load generator on raw asyncio (no extra packages).

It runs in its own process (``python -m bench.loadgen``), so it never shares an event loop
with a server: it reads a :class:`LoadSpec` as one JSON line on stdin, opens a fixed number
of keep-alive connections to 127.0.0.1, and on each connection sends one request, waits for
the whole response, and sends the next (closed loop, like wrk's connections). Requests are
pre-rendered bytes, cycled per connection, so the hot loop does no formatting.

The line protocol with the harness, on stdout: ``phase connected <count>`` once every
connection (spares included) is open and idle; the generator then waits for ``go`` on
stdin, optionally followed by the local ports of the connections to keep (the harness picks
them so that each worker holds its share; the rest are closed). Then a warm-up (pools
filled, results thrown away) and the measured window, bounded by a duration and a request
count: ``phase measure`` as it opens (the harness samples the servers there), ``phase
done`` as it closes, and one JSON line, a :class:`LoadResult`.

Every wait is bounded: connects and requests time out (counted as errors, and the
connection is replaced), and the harness kills the process if it overruns.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import resource
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field
from typing import cast

#: Host the generator may connect to; the harness never loads anything but this machine.
LOOPBACK = "127.0.0.1"
_HEAD_END = b"\r\n\r\n"
_RECONNECT_PAUSE_SECONDS = 0.05
_WATCHDOG_INTERVAL_SECONDS = 0.25
CONNECT_STAGGER_SECONDS = 0.005
LATENCY_PERCENTILES = {"p50": 0.50, "p90": 0.90, "p99": 0.99, "p99.9": 0.999}


@dataclass(frozen=True)
class LoadSpec:
    """What to send, to which port, and for how long."""

    port: int
    requests: list[bytes]
    """Complete HTTP/1.1 requests (head and body); connection ``k`` starts at ``k % len``."""
    connections: int = 32
    spare_connections: int = 0
    """Opened as well, for the caller to choose ``connections`` among (the rest close)."""
    warmup_seconds: float = 2.0
    duration_seconds: float = 10.0
    max_requests: int = 5_000_000
    """Measured requests at most (the window closes early when they are done)."""
    request_timeout_seconds: float = 10.0

    def to_json(self) -> str:
        data = asdict(self)
        data["requests"] = [base64.b64encode(r).decode() for r in self.requests]
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> LoadSpec:
        data = json.loads(text)
        data["requests"] = [base64.b64decode(r) for r in data["requests"]]
        return cls(**data)


@dataclass
class LoadResult:
    """What one measured window produced (latencies in milliseconds)."""

    requests: int = 0
    """Responses received inside the window, whatever their status."""
    ok: int = 0
    """2xx responses."""
    non_2xx: int = 0
    failures: int = 0
    """Requests with no response: connect errors, resets, timeouts, malformed answers."""
    elapsed_seconds: float = 0.0
    rps: float = 0.0
    """Responses per second, any status (wrk's figure); ``ok`` over elapsed is not it."""
    latency_ms: dict[str, float] = field(default_factory=dict)
    """mean, p50, p90, p99, p99.9 and max of the responses in the window (to three
    significant figures: :func:`latency_summary` of the histogram)."""
    latency_histogram_us: dict[str, int] = field(default_factory=dict)
    """Response counts by latency in microseconds to three significant figures, so that
    windows can be merged."""
    statuses: dict[str, int] = field(default_factory=dict)
    failure_kinds: dict[str, int] = field(default_factory=dict)
    reconnects: dict[str, int] = field(default_factory=dict)
    """Connections replaced after the load started (warm-up included), by cause."""
    loadgen_cpu_percent: float = 0.0
    """This process's CPU time over the window, in percent of one core (100 = saturated)."""

    @property
    def errors(self) -> int:
        """Everything that was not a 2xx answer."""
        return self.non_2xx + self.failures

    @classmethod
    def from_json(cls, text: str) -> LoadResult:
        return cls(**json.loads(text))


def bucket_us(latency_ns: int) -> int:
    """The latency in microseconds, rounded to three significant figures."""
    micros = max(1, latency_ns // 1000)
    scale = int(10 ** max(0, len(str(micros)) - 3))
    return round(micros / scale) * scale


def _histogram_percentile(histogram: Mapping[int, int], total: int, fraction: float) -> float:
    """Nearest-rank percentile of a non-empty histogram, in its buckets' unit."""
    rank, seen = max(1, math.ceil(fraction * total)), 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return bucket
    return max(histogram)


def latency_summary(histogram: Mapping[int, int]) -> dict[str, float]:
    """mean, p50, p90, p99, p99.9 and max, in milliseconds, of a latency histogram
    (microsecond buckets to counts; all 0 for an empty one)."""
    total = sum(histogram.values())
    if not total:
        return dict.fromkeys(("mean", *LATENCY_PERCENTILES, "max"), 0.0)
    summary = {"mean": sum(b * n for b, n in histogram.items()) / total / 1000}
    for name, fraction in LATENCY_PERCENTILES.items():
        summary[name] = _histogram_percentile(histogram, total, fraction) / 1000
    summary["max"] = max(histogram) / 1000
    return {name: round(value, 3) for name, value in summary.items()}


class _Window:
    """The shared clock and tallies. Nothing is sent before :meth:`start`; what happens
    between it and ``measure_from`` is warm-up."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.go = asyncio.Event()
        self.all_connected = asyncio.Event()
        self.measure_from = self.stop_at = math.inf
        self.stopping = False
        self.sent_in_window = 0
        self.latencies_ns: list[int] = []
        self.statuses: Counter[int] = Counter()
        self.failures: Counter[str] = Counter()
        self.reconnects: Counter[str] = Counter()

    def start(self) -> None:
        """Open the warm-up (the measured window follows it) and let every connection go."""
        self.measure_from = time.perf_counter() + self.spec.warmup_seconds
        self.stop_at = self.measure_from + self.spec.duration_seconds
        self.go.set()

    def may_send(self, now: float) -> bool:
        """Whether another request may start (time left, and request budget left)."""
        if self.stopping or now >= self.stop_at:
            return False
        if now >= self.measure_from:
            if self.sent_in_window >= self.spec.max_requests:
                return False
            self.sent_in_window += 1
        return True

    def record(self, status: int, latency_ns: int, finished: float) -> None:
        if finished >= self.measure_from:
            self.statuses[status] += 1
            self.latencies_ns.append(latency_ns)

    def fail(self, kind: str, finished: float) -> None:
        if finished >= self.measure_from:
            self.failures[kind] += 1


class _ResponseError(Exception):
    """The server's answer could not be read as HTTP/1.1."""


class _Client(asyncio.Protocol):
    """One keep-alive connection running the closed loop until the window closes."""

    def __init__(self, window: _Window, requests: list[bytes], offset: int) -> None:
        self.window = window
        self.requests = requests
        self.next_index = offset % len(requests)
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sent_at_ns = 0
        self.in_flight = False
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @property
    def local_port(self) -> int | None:
        sockname = self.transport.get_extra_info("sockname") if self.transport else None
        return int(sockname[1]) if sockname else None

    def itself(self) -> _Client:
        """The protocol factory handed to ``create_connection`` (this one connection)."""
        return self

    def start(self) -> None:
        """Send the first request (the loop goes on from each response)."""
        if not self.done.done():
            self._send_next()

    # asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # create_connection: a stream

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            while self.in_flight and self._take_response():
                pass
        except _ResponseError:
            self._finish("malformed")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.in_flight:
            self.window.fail("reset", time.perf_counter())
            self.in_flight = False
        self._resolve("closed")

    # the loop -------------------------------------------------------------------------------
    def _send_next(self) -> None:
        if self.transport is None or not self.window.may_send(time.perf_counter()):
            self._finish("window")
            return
        request = self.requests[self.next_index]
        self.next_index = (self.next_index + 1) % len(self.requests)
        self.in_flight = True
        self.sent_at_ns = time.perf_counter_ns()
        self.transport.write(request)

    def _take_response(self) -> bool:
        """Consume one complete response from the buffer; False when more bytes are needed."""
        head_end = self.buffer.find(_HEAD_END)
        if head_end < 0:
            return False
        head = bytes(self.buffer[:head_end]).lower()
        if not head.startswith(b"http/1.1 ") or len(head) < 12 or not head[9:12].isdigit():
            raise _ResponseError
        status = int(head[9:12])
        body_start = head_end + len(_HEAD_END)
        if b"\r\ntransfer-encoding: chunked" in head:
            end = _chunked_end(self.buffer, body_start)
        else:
            end = body_start + _content_length(head)
        if end < 0 or len(self.buffer) < end:
            return False
        finished = time.perf_counter()
        self.window.record(status, time.perf_counter_ns() - self.sent_at_ns, finished)
        del self.buffer[:end]
        self.in_flight = False
        if b"\r\nconnection: close" in head:
            self._finish("server-close")
        else:
            self._send_next()
        return True

    def stalled(self, now_ns: int, timeout_ns: int) -> bool:
        return self.in_flight and now_ns - self.sent_at_ns > timeout_ns

    def abort(self, kind: str) -> None:
        """Give up on the request in flight (counted as ``kind``) and drop the connection."""
        if self.in_flight:
            self.window.fail(kind, time.perf_counter())
            self.in_flight = False
        self._finish(kind)

    def _finish(self, reason: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if reason in {"window", "dropped"}:
                self.transport.close()  # a clean end: nothing is in flight
            else:
                self.transport.abort()
        self._resolve(reason)

    def _resolve(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_result(reason)


def _content_length(head: bytes) -> int:
    marker = b"\r\ncontent-length:"
    at = head.find(marker)
    if at < 0:
        return 0  # a response without a body (204, 304) or one we cannot frame
    line_end = head.find(b"\r\n", at + len(marker))
    value = head[at + len(marker) : line_end if line_end >= 0 else len(head)].strip()
    if not value.isdigit():
        raise _ResponseError
    return int(value)


def _chunked_end(buffer: bytearray, start: int) -> int:
    """Where a chunked body that begins at ``start`` ends (-1: not all of it is here yet)."""
    position = start
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return -1
        size_text = bytes(buffer[position:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as exc:
            raise _ResponseError from exc
        position = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", position - 2)
            return -1 if trailer_end < 0 else trailer_end + 4
        position += size + 2
        if position > len(buffer):
            return -1


async def _connection_loop(window: _Window, offset: int, clients: set[_Client]) -> None:
    """Keep one connection slot busy until the window closes, reconnecting after failures."""
    loop = asyncio.get_running_loop()
    spec = window.spec
    while not window.stopping and time.perf_counter() < window.stop_at:
        client = _Client(window, spec.requests, offset)
        try:
            await asyncio.wait_for(
                loop.create_connection(client.itself, LOOPBACK, spec.port),
                timeout=spec.request_timeout_seconds,
            )
        except (OSError, TimeoutError):
            window.fail("connect", time.perf_counter())
            await asyncio.sleep(_RECONNECT_PAUSE_SECONDS)
            continue
        clients.add(client)
        if len(clients) >= spec.connections + spec.spare_connections:
            window.all_connected.set()
        try:
            await window.go.wait()
            client.start()
            reason = await client.done
        finally:
            clients.discard(client)
        if reason in {"window", "dropped"}:
            return
        window.reconnects[reason] += 1
        offset = client.next_index
        if reason != "server-close":
            await asyncio.sleep(_RECONNECT_PAUSE_SECONDS)


async def _watchdog(window: _Window, clients: set[_Client]) -> None:
    """Abort requests that outlive the request timeout (their connection is replaced)."""
    timeout_ns = int(window.spec.request_timeout_seconds * 1e9)
    while True:
        now_ns = time.perf_counter_ns()
        for client in list(clients):
            if client.stalled(now_ns, timeout_ns):
                client.abort("timeout")
        await asyncio.sleep(_WATCHDOG_INTERVAL_SECONDS)


def _announce(phase: str) -> None:
    sys.stdout.write(f"phase {phase}\n")
    sys.stdout.flush()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


Selector = Callable[[list[int]], Awaitable[Collection[int] | None]]
"""Given the local ports of the open connections, the ports of those to keep (None: any
``connections`` of them)."""


async def run_load(spec: LoadSpec, select: Selector | None = None) -> LoadResult:
    """Drive the load described by ``spec`` and summarise the measured window."""
    if not spec.requests:
        raise ValueError("no requests to send")
    window = _Window(spec)
    clients: set[_Client] = set()
    watchdog = asyncio.create_task(_watchdog(window, clients))
    # Every connection is opened, one at a time, before any request is sent. Connections
    # opened in a burst, or while requests run, mostly land on one worker (the kernel wakes
    # the worker that was last active); idle, one by one, they spread about evenly.
    loops = []
    for k in range(spec.connections + spec.spare_connections):
        loops.append(asyncio.create_task(_connection_loop(window, k, clients)))
        await asyncio.sleep(CONNECT_STAGGER_SECONDS)
    with contextlib.suppress(TimeoutError):  # start with those that could connect
        await asyncio.wait_for(window.all_connected.wait(), spec.request_timeout_seconds)
    ports = sorted(p for client in clients if (p := client.local_port) is not None)
    chosen = await select(ports) if select is not None else None
    keep = set(ports[: spec.connections] if chosen is None else chosen)
    for client in list(clients):
        if client.local_port not in keep:
            client.abort("dropped")
    window.start()
    await asyncio.sleep(max(0.0, window.measure_from - time.perf_counter()))
    _announce("measure")
    cpu_start, measured_from = _cpu_seconds(), time.perf_counter()
    # Connections stop sending at ``stop_at``; responses in flight then still count, and a
    # request that never answers is cut by the watchdog, so this wait is bounded.
    grace = spec.request_timeout_seconds + 2 * _WATCHDOG_INTERVAL_SECONDS + 1
    _done, pending = await asyncio.wait(loops, timeout=spec.duration_seconds + grace)
    window.stopping = True
    for client in list(clients):
        client.abort("timeout")
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    measured_to, cpu_end = time.perf_counter(), _cpu_seconds()
    watchdog.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watchdog
    _announce("done")
    return _summarise(window, measured_to - measured_from, cpu_end - cpu_start)


def _summarise(window: _Window, elapsed: float, cpu_seconds: float) -> LoadResult:
    histogram = Counter(map(bucket_us, window.latencies_ns))
    ok = sum(n for status, n in window.statuses.items() if 200 <= status < 300)
    answered = len(window.latencies_ns)
    return LoadResult(
        requests=answered,
        ok=ok,
        non_2xx=answered - ok,
        failures=sum(window.failures.values()),
        elapsed_seconds=elapsed,
        rps=answered / elapsed if elapsed > 0 else 0.0,
        latency_ms=latency_summary(histogram),
        latency_histogram_us={str(k): v for k, v in sorted(histogram.items())},
        statuses={str(k): v for k, v in sorted(window.statuses.items())},
        failure_kinds=dict(window.failures),
        reconnects=dict(window.reconnects),
        loadgen_cpu_percent=round(100 * cpu_seconds / elapsed, 1) if elapsed > 0 else 0.0,
    )


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (it ships with uvicorn[standard]): the generator should cost the
    machine as little CPU as it can, since it shares the cores with the servers."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _ask_harness(ports: list[int]) -> Collection[int] | None:
    """Say how many connections are open; wait for ``go [port ...]`` on stdin (end of
    input, or ``go`` alone: keep any of them)."""
    _announce(f"connected {len(ports)}")
    words = (await asyncio.to_thread(sys.stdin.readline)).split()
    if words[:1] not in ([], ["go"]):
        raise ValueError(f"expected 'go [port ...]' on stdin, not {words!r}")
    return [int(w) for w in words[1:]] or None


def main() -> None:
    """Read a LoadSpec from stdin, run it, print the result as one JSON line."""
    spec = LoadSpec.from_json(sys.stdin.readline())
    with asyncio.Runner(loop_factory=_new_event_loop) as runner:
        result = runner.run(run_load(spec, _ask_harness))
    sys.stdout.write(json.dumps(asdict(result)) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
