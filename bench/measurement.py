"""What a run measured: rounds, their merge per target, and the ratio per scenario.

Each target is measured in several rounds, alternating with the other target of its
scenario, so that both sides see the same background noise of a shared machine; a
target's figures merge its rounds (requests and time summed, latency histograms added).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.loadgen import LoadResult, latency_summary
from bench.scenarios import Scenario, Target


@dataclass(frozen=True)
class Round:
    """One load generator run against one target, and what the harness sampled around it."""

    load: LoadResult
    server_cpu_seconds: float | None
    """Supervisor + workers over the measured window (not PostgreSQL, Redis or the load
    generator); None off Linux."""
    machine_cpu_busy_percent: float | None
    """All cores, every process (other sessions' too), over the measured window."""
    connections_per_worker: list[int] | None
    """The generator's connections each worker held as the window opened."""


@dataclass
class Measurement:
    """One target of one scenario, over all its rounds."""

    target: Target
    rounds: list[Round] = field(default_factory=list)
    error: str | None = None

    @property
    def requests(self) -> int:
        return sum(r.load.requests for r in self.rounds)

    @property
    def rps(self) -> float:
        """Responses per second over all measured windows."""
        elapsed = sum(r.load.elapsed_seconds for r in self.rounds)
        return self.requests / elapsed if elapsed > 0 else 0.0

    @property
    def errors(self) -> int:
        """Non-2xx answers and requests without an answer."""
        return sum(r.load.errors for r in self.rounds)

    def latency_ms(self) -> dict[str, float]:
        """mean, percentiles and max of every response of every round (to three
        significant figures)."""
        histogram: Counter[int] = Counter()
        for r in self.rounds:
            histogram.update({int(k): v for k, v in r.load.latency_histogram_us.items()})
        return latency_summary(histogram)

    @property
    def server_cpu_us_per_request(self) -> float | None:
        """Server CPU time per response; None off Linux."""
        cpu = [r.server_cpu_seconds for r in self.rounds]
        if not cpu or None in cpu or not self.requests:
            return None
        return sum(c for c in cpu if c is not None) / self.requests * 1e6

    @property
    def connections_per_worker(self) -> list[int] | None:
        """The most uneven spread any round had (the one that would distort the figures)."""
        spreads = [r.connections_per_worker for r in self.rounds if r.connections_per_worker]
        return max(spreads, key=lambda s: s[0] - s[-1], default=None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": str(self.target),
            "error": self.error,
            "requests": self.requests,
            "rps": round(self.rps, 1),
            "errors": self.errors,
            "latency_ms": self.latency_ms(),
            "server_cpu_us_per_request": self.server_cpu_us_per_request,
            "rounds": [asdict(r) for r in self.rounds],
        }


@dataclass
class ScenarioResult:
    scenario: Scenario
    measurements: list[Measurement]

    def get(self, target: Target) -> Measurement | None:
        return next((m for m in self.measurements if m.target is target), None)

    def ratios(self) -> dict[str, float] | None:
        """clinicguard over bare: throughput (below 1 is slower), latencies and CPU per
        request (above 1 is slower); None unless both sides were measured."""
        cg, bare = self.get(Target.CLINICGUARD), self.get(Target.BARE)
        if cg is None or bare is None or not cg.requests or not bare.requests:
            return None
        cg_latency, bare_latency = cg.latency_ms(), bare.latency_ms()
        pairs = {
            "throughput": (cg.rps, bare.rps),
            "p50": (cg_latency["p50"], bare_latency["p50"]),
            "p99": (cg_latency["p99"], bare_latency["p99"]),
            "server_cpu_per_request": (
                cg.server_cpu_us_per_request,
                bare.server_cpu_us_per_request,
            ),
        }
        return {name: round(a / b, 3) for name, (a, b) in pairs.items() if a and b}

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.scenario.name,
            "description": self.scenario.description,
            "measurements": [m.as_dict() for m in self.measurements],
            "ratio_clinicguard_over_bare": self.ratios(),
        }
