"""Signing in for the authentication scenarios: demo users through password + TOTP, storm
accounts made with ``clinicguard users create``, the login storm that runs next to measured
reads; and two probes run before the load: the key-value commands a request costs, and a
request's latency with nothing else running.

Everything here talks to 127.0.0.1 only (the target's base URL, and the bench's own Redis
database for the probe).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import pyotp
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from bench.loadgen import LOOPBACK, bucket_us, latency_summary

if TYPE_CHECKING:
    from bench.scenarios import BenchContext, HttpRequest, LoadWindow

LOGIN_PATH = "/api/v1/auth/login"
MFA_VERIFY_PATH = "/api/v1/auth/mfa/verify"
ACCOUNT_CREATE_CONCURRENCY = 4
"""``clinicguard users create`` processes at a time (each imports clinicguard and hashes a
password: about a second of CPU on this machine)."""
STORM_ERROR_PAUSE_SECONDS = 0.05
"""A storm connection that got an error waits this long, so a broken server is not
hammered with fast failures."""
STORM_STOP_GRACE_SECONDS = 3.0
"""Sign-ins still in flight when the round ends may finish within this, then are cancelled."""


def _loopback_only(base_url: str) -> None:
    if urlsplit(base_url).hostname != LOOPBACK:
        raise ValueError(f"the bench only loads {LOOPBACK}, not {base_url}")


def _explain(response: httpx.Response) -> str:
    return f"{response.request.method} {response.request.url.path} answered " + (
        f"{response.status_code}: {response.text[:300]}"
    )


async def sign_in_with_totp(http: httpx.AsyncClient, user: Mapping[str, Any]) -> str:
    """Sign a demo user with TOTP in (API.md: login, then the challenge); return the access
    token. A TOTP code is accepted once per user: sign each user in once per run."""
    step = await http.post(LOGIN_PATH, json={"email": user["email"], "password": user["password"]})
    if step.status_code != 200 or "mfa_token" not in step.json():
        raise RuntimeError(f"{user['email']}: expected an MFA challenge; {_explain(step)}")
    code = pyotp.TOTP(user["totp_secret"]).now()
    tokens = await http.post(
        MFA_VERIFY_PATH, json={"mfa_token": step.json()["mfa_token"], "code": code}
    )
    if tokens.status_code != 200:
        raise RuntimeError(f"{user['email']}: {_explain(tokens)}")
    token: str = tokens.json()["access_token"]
    return token


async def create_accounts(
    ctx: BenchContext, count: int, *, clinic: Mapping[str, Any], role: str
) -> list[dict[str, str]]:
    """``count`` accounts without MFA at ``clinic``, each made by ``clinicguard users create``
    (as an operator would) and signed in with the one-time password it printed; returns
    their email and password."""
    domain = next(u["email"] for u in clinic["users"] if u["role"] == role).split("@", 1)[1]
    gate = asyncio.Semaphore(ACCOUNT_CREATE_CONCURRENCY)

    async def create(k: int) -> dict[str, str]:
        email = f"bench.storm{k:02d}@{domain}"
        async with gate:
            printed = await ctx.clinicguard(
                "users",
                "create",
                "--role",
                role,
                "--clinic",
                str(clinic["id"]),
                "--email",
                email,
                "--name",
                f"Recepção Bench {k:02d}",
            )
        lines = printed.split()
        if not lines:
            raise RuntimeError(f"clinicguard users create printed no password for {email}")
        return {"email": email, "password": lines[-1]}

    return list(await asyncio.gather(*(create(k) for k in range(count))))


async def check_sign_in(http: httpx.AsyncClient, account: Mapping[str, str]) -> None:
    """One sign-in of a storm account: 200 with tokens (a one-time password asks for a
    change, which is still a full argon2 sign-in), else RuntimeError."""
    response = await http.post(
        LOGIN_PATH, json={"email": account["email"], "password": account["password"]}
    )
    if response.status_code != 200 or "access_token" not in response.json():
        raise RuntimeError(f"storm account {account['email']}: {_explain(response)}")


class _Tally:
    """Outcomes and latencies of sign-ins, all of them and those of the measured window."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.measured: Counter[str] = Counter()
        self.histogram: Counter[int] = Counter()
        self.measured_histogram: Counter[int] = Counter()

    def add(self, outcome: str, seconds: float, *, measured: bool) -> None:
        bucket = bucket_us(int(seconds * 1e9))
        self.outcomes[outcome] += 1
        self.histogram[bucket] += 1
        if measured:
            self.measured[outcome] += 1
            self.measured_histogram[bucket] += 1


def _ok(outcomes: Mapping[str, int]) -> int:
    return sum(n for outcome, n in outcomes.items() if outcome.startswith("2"))


async def login_storm(
    base_url: str,
    accounts: Sequence[Mapping[str, str]],
    window: LoadWindow,
    *,
    concurrency: int,
    request_timeout: float,
) -> dict[str, Any]:
    """Keep ``concurrency`` sign-ins in flight (closed loop: each connection signs its
    account in again as soon as the previous answer is read) until the round ends, at
    ``window.deadline`` at the latest; return the outcomes, in all and within the measured
    window. Connection ``k`` signs account ``k % len(accounts)`` in, so each account has
    at most ``ceil(concurrency / len(accounts))`` attempts in flight."""
    _loopback_only(base_url)
    if not accounts:
        raise ValueError("the login storm needs accounts")
    tally = _Tally()
    started = time.monotonic()

    async def sign_in_again_and_again(http: httpx.AsyncClient, account: Mapping[str, str]) -> None:
        body = {"email": account["email"], "password": account["password"]}
        while window.running():
            sent = time.monotonic()
            try:
                outcome = str((await http.post(LOGIN_PATH, json=body)).status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            answered = time.monotonic()
            tally.add(outcome, answered - sent, measured=window.measured(answered))
            if not outcome.startswith("2"):
                await asyncio.sleep(STORM_ERROR_PAUSE_SECONDS)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=request_timeout, limits=limits) as http:
        tasks = [
            asyncio.create_task(sign_in_again_and_again(http, accounts[k % len(accounts)]))
            for k in range(concurrency)
        ]
        try:
            await window.wait()
            _done, cut = await asyncio.wait(tasks, timeout=STORM_STOP_GRACE_SECONDS)
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [r for r in results if isinstance(r, Exception)]
    if failures:
        raise failures[0]
    measured_seconds = (
        window.measure_to - window.measure_from
        if window.measure_from is not None and window.measure_to is not None
        else None
    )
    measured_ok = _ok(tally.measured)
    return {
        "concurrency": concurrency,
        "accounts": len(accounts),
        "signins": _ok(tally.outcomes),
        "errors": sum(tally.outcomes.values()) - _ok(tally.outcomes),
        "outcomes": dict(tally.outcomes),
        "latency_ms": latency_summary(tally.histogram),
        "cut_at_stop": len(cut),
        "ran_seconds": round(time.monotonic() - started, 3),
        "measured": {
            "seconds": measured_seconds,
            "signins": measured_ok,
            "errors": sum(tally.measured.values()) - measured_ok,
            "outcomes": dict(tally.measured),
            "signins_per_second": round(measured_ok / measured_seconds, 1)
            if measured_seconds
            else None,
            "latency_ms": latency_summary(tally.measured_histogram),
            "latency_histogram_us": {
                str(k): v for k, v in sorted(tally.measured_histogram.items())
            },
        },
    }


async def kv_commands_per_request(
    base_url: str,
    path: str,
    headers: Mapping[str, str],
    redis_url: str,
    *,
    requests: int = 50,
) -> dict[str, Any]:
    """How many key-value commands one request costs: ``requests`` sequential requests on
    one keep-alive connection (after three unmeasured ones, which fill that worker's token
    signature cache) while Redis MONITOR lists the commands reaching the bench's database
    (Lua's own calls left out: a script is one round trip). Every command the servers send
    meanwhile counts, so the figure is an upper bound; MONITOR costs Redis time, so this
    runs before the load, never during it. ``{"error": …}`` when MONITOR is refused."""
    _loopback_only(base_url)
    # Two clients: the marker's connection is opened (and has selected its database)
    # before MONITOR starts, so the probe's own commands are not counted.
    client = aioredis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)
    watcher = aioredis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)
    database = int(client.connection_pool.connection_kwargs.get("db", 0))
    marker = f"clinicguard-bench-probe-{secrets.token_hex(4)}"
    commands: Counter[str] = Counter()
    try:
        await client.ping()
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            for _ in range(3):
                (await http.get(path, headers=dict(headers))).raise_for_status()
            async with watcher.monitor() as monitor:

                async def collect() -> None:
                    async for info in monitor.listen():
                        if marker in info["command"]:
                            return
                        if info["db"] == database and info["client_type"] != "lua":
                            commands[info["command"].split(" ", 1)[0].upper()] += 1

                collector = asyncio.create_task(collect())
                try:
                    for _ in range(requests):
                        (await http.get(path, headers=dict(headers))).raise_for_status()
                    await client.echo(marker)  # MONITOR lists commands in order: the last one
                    async with asyncio.timeout(10):
                        await collector
                finally:
                    collector.cancel()
    except (RedisError, OSError, TimeoutError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        await client.aclose()
        await watcher.aclose()
    return {
        "requests": requests,
        "commands_per_request": round(sum(commands.values()) / requests, 3),
        "by_command": {name: round(n / requests, 3) for name, n in commands.most_common()},
    }


async def unloaded_latency(
    base_url: str, requests: Sequence[HttpRequest], *, count: int = 200, warmup: int = 20
) -> dict[str, Any]:
    """Latency with no other load: ``count`` requests one after another on one keep-alive
    connection (cycling through ``requests``, after ``warmup`` unmeasured ones), timed in
    this process. What a request costs a caller when nothing queues, unlike the p50 of a
    closed loop, which grows with the connections (latency ≈ connections ÷ throughput)."""
    _loopback_only(base_url)
    histogram: Counter[int] = Counter()
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        for k in range(warmup + count):
            request = requests[k % len(requests)]
            sent = time.perf_counter_ns()
            response = await http.request(
                request.method, request.path, headers=request.all_headers(), content=request.body()
            )
            elapsed = time.perf_counter_ns() - sent
            response.raise_for_status()
            if k >= warmup:
                histogram[bucket_us(elapsed)] += 1
    return {"requests": count, "latency_ms": latency_summary(histogram)}
