"""What a run measured: rounds, their merge per side, and the ratio per scenario.

Each side (usually a target: clinicguard or bare) is measured in several rounds,
alternating with the other sides of its scenario, so that all see the same background
noise of a shared machine; a side's figures merge its rounds (requests and time summed,
latency histograms added).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.loadgen import LoadResult, latency_summary
from bench.scenarios import Findings, Scenario, Target


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
    background: dict[str, Any] | None = None
    """What the side's background task (if any) reported for this round."""


@dataclass
class Measurement:
    """One side of one scenario, over all its rounds."""

    target: Target
    """The server it loaded."""
    label: str
    """The side's name (``clinicguard``, ``bare``, or a scenario's own, e.g. ``storm``)."""
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
            "side": self.label,
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
    findings: Findings | None = None
    """The scenario's own figures (``Scenario.figures``), once computed."""
    findings_error: str | None = None
    error: str | None = None
    """Why an in-process scenario failed (a load scenario's sides say it themselves)."""

    @property
    def failed(self) -> bool:
        """Whether a measurement of this scenario did not complete."""
        return self.error is not None or any(m.error for m in self.measurements)

    def side(self, label: str) -> Measurement | None:
        return next((m for m in self.measurements if m.label == label), None)

    def get(self, target: Target) -> Measurement | None:
        """The first side that loaded ``target``."""
        return next((m for m in self.measurements if m.target is target), None)

    def ratios(self) -> dict[str, float] | None:
        """The scenario's ``compare`` pair, first over second (clinicguard over bare unless
        it says otherwise): throughput (below 1 is slower), latencies and CPU per request
        (above 1 is slower); None unless both sides were measured."""
        first, second = (self.side(label) for label in self.scenario.compare)
        if first is None or second is None or not first.requests or not second.requests:
            return None
        first_latency, second_latency = first.latency_ms(), second.latency_ms()
        pairs = {
            "throughput": (first.rps, second.rps),
            "p50": (first_latency["p50"], second_latency["p50"]),
            "p99": (first_latency["p99"], second_latency["p99"]),
            "server_cpu_per_request": (
                first.server_cpu_us_per_request,
                second.server_cpu_us_per_request,
            ),
        }
        return {name: round(a / b, 3) for name, (a, b) in pairs.items() if a and b}

    def as_dict(self) -> dict[str, Any]:
        ratios = self.ratios()
        first, second = self.scenario.compare
        return {
            "name": self.scenario.name,
            "description": self.scenario.description,
            "kind": "in-process" if self.scenario.in_process is not None else "load",
            "error": self.error,
            "measurements": [m.as_dict() for m in self.measurements],
            "ratio_clinicguard_over_bare": ratios
            if self.scenario.compare == ("clinicguard", "bare")
            else None,
            "ratio": None if ratios is None else {"of": f"{first} / {second}", **ratios},
            "figures": None if self.findings is None else self.findings.values,
            "figures_error": self.findings_error,
        }
