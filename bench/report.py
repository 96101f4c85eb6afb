"""The results: a plain-text table for the terminal and a JSON file under bench/results/."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.measurement import Measurement, ScenarioResult

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_COLUMNS = (
    "scenario",
    "target",
    "req/s",
    "p50 ms",
    "p99 ms",
    "errors",
    "cpu µs/req",
    "conns/worker",
)
_RIGHT_ALIGNED = frozenset(_COLUMNS[2:])


def _row(scenario: str, m: Measurement) -> tuple[str, ...]:
    if not m.rounds:
        return (scenario, m.label, "failed", "", "", "", "", "")
    cpu, spread, latency = m.server_cpu_us_per_request, m.connections_per_worker, m.latency_ms()
    return (
        scenario,
        m.label,
        f"{m.rps:,.0f}",
        f"{latency['p50']:.2f}",
        f"{latency['p99']:.2f}",
        f"{m.errors:,}",
        "n/a" if cpu is None else f"{cpu:,.0f}",
        "n/a" if spread is None else "/".join(map(str, spread)),
    )


def _ratio_line(result: ScenarioResult) -> str | None:
    if result.scenario.in_process is not None:
        return None  # no sides: its figures follow
    ratios = result.ratios()
    if ratios is None:
        if len(result.scenario.measured_sides()) == 1:
            return "  reference only (no clinicguard side): later scenarios compare with it"
        return "  ratio: n/a (a side failed)"
    parts = [f"throughput {ratios['throughput']:.2f}x"] if "throughput" in ratios else []
    parts += [f"{k} {ratios[k]:.2f}x" for k in ("p50", "p99") if k in ratios]
    if "server_cpu_per_request" in ratios:
        parts.append(f"cpu/req {ratios['server_cpu_per_request']:.2f}x")
    first, second = result.scenario.compare
    return f"  {first} / {second}: " + ", ".join(parts)


def format_table(results: Sequence[ScenarioResult]) -> str:
    """Scenario, side, throughput, p50/p99 latency, errors (non-2xx and failed requests),
    server CPU per request and the connections each worker held, with the clinicguard/bare
    ratio (or the scenario's own pair) and the scenario's own figures under each scenario."""
    blocks: list[list[tuple[str, ...]]] = [
        [_row(r.scenario.name, m) for m in r.measurements]
        if r.scenario.in_process is None
        else [(r.scenario.name, "in-process", *("",) * (len(_COLUMNS) - 2))]
        for r in results
    ]
    widths = [
        max(len(col), *(len(row[i]) for block in blocks for row in block))
        for i, col in enumerate(_COLUMNS)
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(w) if col in _RIGHT_ALIGNED else cell.ljust(w)
            for cell, w, col in zip(cells, widths, _COLUMNS, strict=True)
        ).rstrip()

    out = [line(_COLUMNS), line(["-" * w for w in widths])]
    for result, block in zip(results, blocks, strict=True):
        out += [line(row) for row in block]
        if (ratio := _ratio_line(result)) is not None:
            out.append(ratio)
        if result.findings is not None:
            out += result.findings.lines
        if result.findings_error:
            out.append(f"  figures failed: {result.findings_error}")
        out += [f"  {m.label} failed: {m.error}" for m in result.measurements if m.error]
        if result.error:
            out.append(f"  failed: {result.error}")
    out.append(
        "throughput ratio below 1 and latency/cpu ratios above 1 mean clinicguard (or the first"
        " side named) is slower; cpu µs/req is the server's processes only (not PostgreSQL,"
        " Redis or the load generator)"
    )
    return "\n".join(out)


def write_json(report: dict[str, Any], directory: Path = RESULTS_DIR) -> Path:
    """Write the report as bench/results/<UTC timestamp>.json (git-ignored)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return path
