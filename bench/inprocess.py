"""In-process scenarios: figures measured inside one Python process, with no server and no
load generator (``field-crypto``, ``reencrypt``).

The harness runs such a scenario's module as a process of its own (``python -m
bench.crypto``), with the run's clinicguard configuration in its environment (the same
``CLINICGUARD_*`` variables the server and the ``clinicguard`` commands get, and nothing
else of the caller's), so :func:`clinicguard_services` builds clinicguard's services exactly
as the CLI does. The protocol:

- stdin: one JSON line, an :class:`InProcessSpec` (the run's options and the demo
  credentials);
- stderr: progress messages, relayed by the harness as they come;
- stdout: the figures, one JSON line ``{"values": {...}, "lines": [...]}`` (the JSON's
  ``figures`` and the lines printed under the table), last.

A module exposes ``async def measure(spec) -> Figures`` and ends with
``sys.exit(inprocess.main(measure))``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from clinicguard.settings import load_settings
from clinicguard.wiring import Services, build_services

T = TypeVar("T")


@dataclass(frozen=True)
class InProcessSpec:
    """What the harness tells an in-process scenario (from the command line and the run)."""

    duration_seconds: float
    """``--duration``: measured seconds (what a scenario does with it, its module says)."""
    rounds: int
    """``--rounds``: the variants of a scenario take turns this many times."""
    warmup_seconds: float
    demo: dict[str, Any] = field(default_factory=dict)
    """The demo data set's credentials (clinics, users, patients)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> InProcessSpec:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Figures:
    """An in-process scenario's result: ``values`` for the JSON, ``lines`` for the table."""

    values: dict[str, Any]
    lines: list[str]


def progress(message: str) -> None:
    """A progress message (the harness relays stderr as it comes)."""
    print(message, file=sys.stderr, flush=True)


@asynccontextmanager
async def clinicguard_services() -> AsyncIterator[Services]:
    """clinicguard's services from this process's environment (the run's configuration),
    as a ``clinicguard`` command builds them; closed on the way out (which also writes the
    data keys' pending encryption counts)."""
    services = build_services(load_settings())
    try:
        yield services
    finally:
        await services.close()


def main(measure: Callable[[InProcessSpec], Coroutine[Any, Any, Figures]]) -> int:
    """Read the spec from stdin, measure, print the figures as the last line of stdout."""
    spec = InProcessSpec.from_json(sys.stdin.readline())
    figures = asyncio.run(measure(spec))
    print(json.dumps({"values": figures.values, "lines": figures.lines}, ensure_ascii=False))
    return 0


# --- timing ------------------------------------------------------------------------------


@dataclass
class Samples:
    """Durations of one operation, in nanoseconds, over every round."""

    ns: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, float | int]:
        """p50, mean, p99 and min in µs (three significant figures' worth), and the count."""
        if not self.ns:
            return {"samples": 0}
        ordered = sorted(self.ns)
        return {
            "p50_us": round(statistics.median(ordered) / 1000, 3),
            "mean_us": round(statistics.fmean(ordered) / 1000, 3),
            "p99_us": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000, 3),
            "min_us": round(ordered[0] / 1000, 3),
            "samples": len(ordered),
        }


def time_sync(op: Callable[[T], object], items: Sequence[T], seconds: float, into: Samples) -> None:
    """Call ``op`` on ``items`` in turn for ``seconds``, timing each call alone."""
    clock = time.perf_counter_ns
    samples = into.ns
    count = len(items)
    deadline = clock() + int(seconds * 1e9)
    i = 0
    while True:
        item = items[i % count]
        i += 1
        started = clock()
        op(item)
        ended = clock()
        samples.append(ended - started)
        if ended >= deadline:
            return


async def time_async(
    op: Callable[[T], Awaitable[object]], items: Sequence[T], seconds: float, into: Samples
) -> None:
    """As :func:`time_sync`, awaiting ``op`` (the coroutine's creation is timed too)."""
    clock = time.perf_counter_ns
    samples = into.ns
    count = len(items)
    deadline = clock() + int(seconds * 1e9)
    i = 0
    while True:
        item = items[i % count]
        i += 1
        started = clock()
        await op(item)
        ended = clock()
        samples.append(ended - started)
        if ended >= deadline:
            return
