"""The command line: ``python -m bench [--scenario NAME ...] [--workers N] ...``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence

import psycopg
import redis

from bench import services
from bench.report import format_table, write_json
from bench.runner import RunOptions, run
from bench.scenarios import SCENARIOS
from bench.servers import ProcessFailed


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be above 0")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Load clinicguard and a bare FastAPI app doing the same database work, "
        "on this machine, and print throughput, p50/p99 latency and their ratio.",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        metavar="NAME",
        help="a scenario to run (repeatable; default: all, see --list)",
    )
    parser.add_argument(
        "--workers", type=_bounded_int(1, 64), default=2, help="worker processes per server"
    )
    parser.add_argument(
        "--connections",
        type=_bounded_int(1, 1024),
        default=32,
        help="keep-alive connections the load generator keeps busy",
    )
    parser.add_argument(
        "--duration",
        type=_positive_float,
        default=10.0,
        help="measured seconds per target, over all its rounds",
    )
    parser.add_argument(
        "--rounds",
        type=_bounded_int(1, 100),
        default=3,
        help="rounds per target, alternating clinicguard and bare (the duration is split)",
    )
    parser.add_argument(
        "--warmup",
        type=_non_negative_float,
        default=1.0,
        help="unmeasured seconds of load before each round",
    )
    parser.add_argument(
        "--max-requests",
        type=_bounded_int(1, 100_000_000),
        default=5_000_000,
        help="measured requests per target at most (the window closes early when reached)",
    )
    parser.add_argument(
        "--request-timeout",
        type=_positive_float,
        default=10.0,
        help="seconds a request may take before it counts as failed",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every measurement completed, 1 when one failed, 2 when
    PostgreSQL, Redis or a server could not be used."""
    args = build_parser().parse_args(argv)
    if args.list:
        width = max(map(len, SCENARIOS))
        for scenario in SCENARIOS.values():
            print(f"{scenario.name:{width}}  {scenario.description}")
        return 0
    options = RunOptions(
        scenarios=[SCENARIOS[name] for name in dict.fromkeys(args.scenario or SCENARIOS)],
        workers=args.workers,
        connections=args.connections,
        duration_seconds=args.duration,
        rounds=args.rounds,
        warmup_seconds=args.warmup,
        max_requests=args.max_requests,
        request_timeout_seconds=args.request_timeout,
    )
    try:
        results, report = run(options)
    except psycopg.OperationalError as exc:
        print(f"PostgreSQL is not usable ({services.PG_ADMIN_URL}): {exc}", file=sys.stderr)
        return 2
    except (redis.RedisError, OSError) as exc:
        print(f"Redis is not usable ({services.REDIS_URL}): {exc}", file=sys.stderr)
        return 2
    except ProcessFailed as exc:
        print(f"clinicguard or the bare app failed: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; servers stopped and the bench database dropped", file=sys.stderr)
        return 130
    print(format_table(results))
    print(f"results written to {write_json(report)}")
    failed = any(r.failed for r in results)
    return 1 if failed else 0
