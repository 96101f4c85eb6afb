"""The scenarios: each names a clinicguard request and the bare endpoint it is compared with.

A scenario is two :class:`Endpoint` values, ``clinicguard`` (served by ``clinicguard serve``)
and ``bare`` (served from :mod:`bench.bare`); the harness loads each in turn with the same
connections and duration and prints the ratio. ``clinicguard`` may be left out to measure
the bare side alone (``baseline`` does: it is the reference later scenarios compare with).

An endpoint's ``request`` is either a fixed :class:`HttpRequest` or a factory
``(ctx, state, i) -> HttpRequest`` called for ``i`` in ``range(variants)`` before the load
starts; the load generator cycles through those pre-rendered requests. ``state`` is what
the endpoint's optional async ``setup(ctx)`` returned (``None`` without one): for example
the ``Authorization`` header of a user it logged in as. ``ctx`` (:class:`BenchContext`)
carries the target's base URL, an HTTP client factory, the demo data set's credentials, the
bare app's row ids and a way to run ``clinicguard`` commands with the server's
configuration.

A scenario may instead name its ``sides`` (:class:`Side`: a label, a server and an endpoint)
and which two to ``compare``, for example the same clinicguard request measured quiet and
under load; an endpoint may run a :class:`Background` task next to each of its rounds (the
login storm); and ``figures`` may derive scenario-specific numbers from the measurements
(the cost of authentication in µs), printed under the ratio and written to the JSON.
Or a scenario is :class:`InProcess`: no server and no load, a module of its own run as a
process with the run's configuration, whose figures are the scenario's (``field-crypto``,
``reencrypt``; see bench/inprocess.py).

Adding a scenario (about ten lines; see bench/README.md for a logged-in example)::

    register(
        Scenario(
            name="nurse-patient-read",
            description="GET one patient as a care-team nurse vs the same tenant-scoped SELECT",
            clinicguard=Endpoint(
                setup=my_login_setup,  # async (ctx) -> {"Authorization": "Bearer …"}
                request=lambda ctx, headers, i: HttpRequest(
                    "GET", f"/api/v1/patients/{ctx.demo['clinics'][0]['patients'][i % 3]['id']}",
                    headers=headers,
                ),
            ),
            bare=Endpoint(
                request=lambda ctx, _state, i: HttpRequest(
                    "GET", f"/patients/{ctx.demo['clinics'][0]['id']}"
                    f"/{ctx.demo['clinics'][0]['patients'][i % 3]['id']}",
                ),
            ),
        )
    )
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import httpx

from bench import services, signins
from bench.bare import PATIENT_CIPHERTEXT
from bench.loadgen import latency_summary
from bench.servers import run_clinicguard
from clinicguard.clinic.models import ENCRYPTED

if TYPE_CHECKING:
    from bench.measurement import Measurement, ScenarioResult


class Target(StrEnum):
    """Which server a measurement loads."""

    CLINICGUARD = "clinicguard"
    BARE = "bare"


@dataclass(frozen=True)
class HttpRequest:
    """One HTTP/1.1 request, rendered once to bytes before the load starts."""

    method: str = "GET"
    path: str = "/"
    headers: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    """A JSON body (sent with ``Content-Type: application/json``); None for no body."""

    def body(self) -> bytes:
        if self.json is None:
            return b""
        return json.dumps(self.json, separators=(",", ":")).encode()

    def all_headers(self) -> dict[str, str]:
        """The request's own headers plus the JSON content type when it has a body."""
        headers = dict(self.headers)
        if self.json is not None:
            headers.setdefault("Content-Type", "application/json")
        return headers

    def render(self, port: int) -> bytes:
        """The request as sent on a keep-alive connection to 127.0.0.1:``port``."""
        body = self.body()
        lines = [
            f"{self.method} {self.path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "User-Agent: clinicguard-bench",
            "Accept: application/json",
        ]
        lines += [f"{name}: {value}" for name, value in self.all_headers().items()]
        if body or self.method in {"POST", "PUT", "PATCH"}:
            lines.append(f"Content-Length: {len(body)}")
        for line in lines:
            if "\r" in line or "\n" in line:
                raise ValueError(f"line break in a request line or header: {line!r}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True)
class BenchContext:
    """What a setup step and a request factory may use, for one target of one run."""

    target: Target
    base_url: str
    """http://127.0.0.1:<port> of the server under load."""
    demo: Mapping[str, Any]
    """The demo data set's credentials (API.md's credentials-file shape): clinics, users
    (email, password, role, totp_secret, care_team), patients and the platform admin."""
    record_ids: Sequence[str]
    """Primary keys of ``bench.records`` (the bare app's ``GET /records/{id}``)."""
    user_ids: Sequence[str] = ()
    """Primary keys of ``bench.users`` (the bare app's ``GET /users/{id}``)."""
    cache: dict[str, Any] = field(default_factory=dict)
    """Shared by every setup of the run: keep tokens here, since a TOTP code is accepted
    once and logging the same user in twice within its 30 s step would be refused."""
    clinicguard_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    """The CLINICGUARD_* configuration of the run's clinicguard server (keys included)."""

    def client(self, timeout: float = 10.0) -> httpx.AsyncClient:
        """An HTTP client for setup calls to the target (use it as ``async with``)."""
        return httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    async def clinicguard(self, *args: str) -> str:
        """Run ``clinicguard <args>`` with the server's configuration (for example ``users
        create``); return what it printed on stdout. Raises ProcessFailed when it fails."""
        return await run_clinicguard(args, self.clinicguard_env)


Setup = Callable[[BenchContext], Awaitable[Any]]
RequestFactory = Callable[[BenchContext, Any, int], HttpRequest]


@dataclass
class LoadWindow:
    """One round of a side's load, as its :class:`Background` task sees it. Times are
    ``time.monotonic()`` seconds of the harness's process."""

    deadline: float
    """The background must have stopped by then: the end of the round's warm-up and
    measured window (it is cancelled a few seconds later)."""
    measure_from: float | None = None
    """When the measured window opened (None until it does)."""
    measure_to: float | None = None
    """When it closed (None until it does)."""
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the load generator is done (or failed): stop now."""

    def running(self) -> bool:
        """Whether the background should keep going."""
        return not self.finished.is_set() and time.monotonic() < self.deadline

    async def wait(self) -> None:
        """Return when the round is over (the generator is done, or the deadline passed)."""
        remaining = self.deadline - time.monotonic()
        if remaining > 0 and not self.finished.is_set():
            try:
                async with asyncio.timeout(remaining):
                    await self.finished.wait()
            except TimeoutError:
                pass

    def measured(self, when: float) -> bool:
        """Whether ``when`` fell inside the measured window (exact once it has closed)."""
        if self.measure_from is None or when < self.measure_from:
            return False
        return self.measure_to is None or when <= self.measure_to


BackgroundRun = Callable[[BenchContext, Any, LoadWindow], Coroutine[Any, Any, dict[str, Any]]]


@dataclass(frozen=True)
class Background:
    """Load that a side runs from the harness's own process next to each of its rounds,
    for example sign-ins while the side's reads are measured.

    ``run(ctx, state, window)`` starts when the load generator starts sending (warm-up
    included), must stop by itself by ``window.deadline`` (or sooner, when
    ``window.finished`` is set), may only talk to ``ctx.base_url``, and returns a JSON-able
    summary kept with the round (``background`` in the JSON). ``state`` is what the optional
    ``setup(ctx)`` returned, once per side, before the load."""

    run: BackgroundRun
    setup: Setup | None = None


@dataclass(frozen=True)
class Endpoint:
    """One side of a scenario: how to build the requests sent to one server."""

    request: HttpRequest | RequestFactory
    setup: Setup | None = None
    """Runs once before the load (bounded by a timeout); its result is the factory's
    ``state``."""
    variants: int = 100
    """How many requests a factory builds (a fixed request is one); they are cycled."""
    background: Background | None = None
    """Load run next to each of this side's rounds (see :class:`Background`)."""

    async def requests(self, ctx: BenchContext) -> list[HttpRequest]:
        """Run the setup, then build the requests the load generator will cycle through."""
        state = await self.setup(ctx) if self.setup is not None else None
        if isinstance(self.request, HttpRequest):
            return [self.request]
        return [self.request(ctx, state, i) for i in range(self.variants)]


@dataclass(frozen=True)
class Side:
    """One measured side of a scenario: its label (the table's ``target`` column), the
    server it loads and how."""

    label: str
    target: Target
    endpoint: Endpoint


@dataclass(frozen=True)
class Findings:
    """Numbers a scenario derives from its measurements: ``values`` go to the JSON (as
    ``figures``), ``lines`` are printed under the scenario's ratio."""

    values: dict[str, Any]
    lines: list[str]


Figures = Callable[["ScenarioResult", Mapping[str, Any]], Findings]
"""``(result, cache) -> Findings``: ``cache`` is the run's :attr:`BenchContext.cache`, where
a setup may have left what it measured."""


@dataclass(frozen=True)
class InProcess:
    """A scenario measured inside one Python process instead of by load on a server:
    ``module`` (e.g. ``bench.crypto``) is run as ``python -m module`` with the run's
    clinicguard configuration and returns its figures (see bench/inprocess.py)."""

    module: str
    timeout_seconds: float = 600.0
    """The process is killed (and the scenario fails) after this long."""


@dataclass(frozen=True)
class Scenario:
    """A clinicguard request measured next to a bare endpoint doing the same database work
    (or, with ``sides``, any set of requests measured in turn and compared; or, with
    ``in_process``, figures measured in a process of their own, no server involved)."""

    name: str
    description: str
    bare: Endpoint | None = None
    clinicguard: Endpoint | None = None
    """None: measure the bare side alone (a reference figure, no ratio)."""
    sides: tuple[Side, ...] = ()
    """Instead of ``clinicguard`` and ``bare``: named sides on either server, measured in
    this order, round after round."""
    compare: tuple[str, str] = ("clinicguard", "bare")
    """The ratio printed under the table: the first side's figures over the second's."""
    figures: Figures | None = None
    in_process: InProcess | None = None
    """Instead of sides: figures measured in a process of its own (no server, no load)."""

    def __post_init__(self) -> None:
        if self.sides and (self.bare is not None or self.clinicguard is not None):
            raise ValueError(f"{self.name}: give either sides or clinicguard/bare, not both")
        if self.in_process is not None:
            if self.measured_sides() or self.figures is not None:
                raise ValueError(f"{self.name}: an in-process scenario has no sides or figures")
            return
        labels = [side.label for side in self.measured_sides()]
        if not labels or len(set(labels)) != len(labels):
            raise ValueError(f"{self.name}: needs at least one side, with distinct labels")

    def measured_sides(self) -> list[Side]:
        """The sides to load, in order (clinicguard before bare)."""
        if self.sides:
            return list(self.sides)
        pairs = [(Target.CLINICGUARD, self.clinicguard), (Target.BARE, self.bare)]
        return [Side(str(t), t, endpoint) for t, endpoint in pairs if endpoint is not None]


SCENARIOS: dict[str, Scenario] = {}
"""Every scenario, in the order a default run measures them."""


def register(scenario: Scenario) -> Scenario:
    """Add ``scenario`` to the registry (names are unique)."""
    if scenario.name in SCENARIOS:
        raise ValueError(f"scenario {scenario.name!r} is registered twice")
    SCENARIOS[scenario.name] = scenario
    return scenario


BARE_SELECT_INSERT = Endpoint(
    request=lambda ctx, _state, i: HttpRequest(
        "GET", f"/records/{ctx.record_ids[i % len(ctx.record_ids)]}"
    ),
)
"""The bare app's primary-key SELECT plus INSERT in one transaction: the counterpart of a
clinicguard read that writes its audit event in the same transaction."""

register(
    Scenario(
        name="baseline",
        description="bare FastAPI: primary-key SELECT + INSERT in one transaction "
        "(the reference figure for scenarios that read a row and audit it)",
        bare=BARE_SELECT_INSERT,
    )
)

register(
    Scenario(
        name="pipeline",
        description="GET /healthz through clinicguard's whole middleware pipeline vs a bare "
        "FastAPI route returning the same JSON: the cost of the HTTP pipeline",
        clinicguard=Endpoint(HttpRequest("GET", "/healthz")),
        bare=Endpoint(HttpRequest("GET", "/healthz")),
    )
)

register(
    Scenario(
        name="db",
        description="GET /readyz (SELECT 1 in a transaction + Redis PING) through clinicguard "
        "vs the bare equivalent",
        clinicguard=Endpoint(HttpRequest("GET", "/readyz")),
        bare=Endpoint(HttpRequest("GET", "/readyz")),
    )
)

# --- authentication ----------------------------------------------------------------------

ME_PATH = "/api/v1/me"
AUTH_COST_AIM_US = 250
"""Issue 3: authentication costs at most 0.25 ms per request at p50 ..."""
KV_ROUND_TRIPS_AIM = 1
"""... and one key-value round trip (the session's GETEX)."""
STORM_ACCOUNTS = 20
"""Accounts without MFA made for the login storm (one sign-in in flight each)."""
STORM_CONCURRENCY = 20
"""Sign-ins the storm keeps in flight."""
STORM_REQUEST_TIMEOUT_SECONDS = 10.0
STORM_P99_AIM = 3.0
"""Issue 3: the reads' p99 under the storm at most 3x the quiet p99."""
_KV_PROBE = "auth-me:kv-probe"
_UNLOADED = "auth-me:unloaded:"


async def access_token(ctx: BenchContext, user: Mapping[str, Any]) -> str:
    """An access token of a demo user with TOTP (an entry of ``ctx.demo``'s users), signed
    in once per run: a TOTP code is accepted once per user, so every setup must get its
    tokens here (kept in ``ctx.cache["access-tokens"]`` by email). A token lives 15 minutes
    and its session idles out after 30: enough for a run."""
    tokens: dict[str, str] = ctx.cache.setdefault("access-tokens", {})
    if user["email"] not in tokens:
        async with ctx.client() as http:
            tokens[user["email"]] = await signins.sign_in_with_totp(http, user)
    return tokens[user["email"]]


async def physician_tokens(ctx: BenchContext) -> list[str]:
    """Access tokens of every demo physician (both clinics), in the demo file's order."""
    return [
        await access_token(ctx, user)
        for clinic in ctx.demo["clinics"]
        for user in clinic["users"]
        if user["role"] == "physician"
    ]


def _me(_ctx: BenchContext, tokens: list[str], i: int) -> HttpRequest:
    return HttpRequest(
        "GET", ME_PATH, headers={"Authorization": f"Bearer {tokens[i % len(tokens)]}"}
    )


def _bare_user(ctx: BenchContext, _state: object, i: int) -> HttpRequest:
    return HttpRequest("GET", f"/users/{ctx.user_ids[i % len(ctx.user_ids)]}")


async def _probe_unloaded(
    ctx: BenchContext, requests: list[HttpRequest], prefix: str = _UNLOADED
) -> None:
    """(Once per side) the side's latency with nothing else running, for the figures; kept
    in ``ctx.cache`` under ``prefix`` + the side's target."""
    if prefix + ctx.target not in ctx.cache:
        ctx.cache[prefix + ctx.target] = await signins.unloaded_latency(ctx.base_url, requests)


async def _me_with_probes(ctx: BenchContext) -> list[str]:
    """The physicians' tokens; and, before the load, how many key-value commands one
    GET /me costs and its unloaded latency."""
    tokens = await physician_tokens(ctx)
    if _KV_PROBE not in ctx.cache:
        headers = {"Authorization": f"Bearer {tokens[0]}"}
        ctx.cache[_KV_PROBE] = await signins.kv_commands_per_request(
            ctx.base_url, ME_PATH, headers, services.REDIS_URL
        )
    await _probe_unloaded(ctx, [_me(ctx, tokens, i) for i in range(len(tokens))])
    return tokens


async def _bare_with_probe(ctx: BenchContext) -> None:
    """Before the load: the bare endpoint's unloaded latency."""
    await _probe_unloaded(ctx, [_bare_user(ctx, None, i) for i in range(len(ctx.user_ids))])


ME_READS = Endpoint(setup=physician_tokens, request=_me)
"""clinicguard's ``GET /api/v1/me`` with the Bearer tokens of the demo physicians."""


def _signed(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:+,.0f} {unit}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


@dataclass(frozen=True)
class _Difference:
    """clinicguard's figures minus bare's: loaded p50 and server CPU per request (µs), and
    the unloaded p50s the setups' probes measured (ms) and their difference (µs)."""

    p50_us: int | None
    cpu_us: int | None
    unloaded: dict[str, float]
    unloaded_us: int | None


def _difference(
    result: ScenarioResult, cache: Mapping[str, Any], unloaded_prefix: str
) -> _Difference:
    cg, bare = result.side("clinicguard"), result.side("bare")
    p50_us = cpu_us = None
    if cg is not None and bare is not None and cg.requests and bare.requests:
        p50_us = round((cg.latency_ms()["p50"] - bare.latency_ms()["p50"]) * 1000)
        cg_cpu, bare_cpu = cg.server_cpu_us_per_request, bare.server_cpu_us_per_request
        if cg_cpu is not None and bare_cpu is not None:
            cpu_us = round(cg_cpu - bare_cpu)
    unloaded = {
        side: cache[unloaded_prefix + side]["latency_ms"]["p50"]
        for side in ("clinicguard", "bare")
        if unloaded_prefix + side in cache
    }
    unloaded_us = (
        round((unloaded["clinicguard"] - unloaded["bare"]) * 1000) if len(unloaded) == 2 else None
    )
    return _Difference(p50_us, cpu_us, unloaded, unloaded_us)


def _unloaded_line(diff: _Difference) -> str:
    return (
        f"  unloaded (one connection, one request at a time) p50: clinicguard "
        f"{_ms(diff.unloaded.get('clinicguard'))}, bare {_ms(diff.unloaded.get('bare'))}: "
        f"{_signed(diff.unloaded_us, 'µs')}"
    )


def _kv_probe(cache: Mapping[str, Any], key: str) -> tuple[dict[str, Any], str]:
    """The key-value probe a setup left under ``key``, and how to print it."""
    probe: dict[str, Any] = dict(cache.get(key) or {"error": "not measured"})
    if "error" in probe:
        return probe, f"n/a ({probe['error']})"
    per_command = ", ".join(f"{name} {n:.2f}" for name, n in probe["by_command"].items())
    return probe, f"{probe['commands_per_request']:.2f} ({per_command or 'none'})"


def _auth_cost(result: ScenarioResult, cache: Mapping[str, Any]) -> Findings:
    """What authenticating costs a request: clinicguard's p50 and server CPU per request
    minus the bare endpoint's (the same SELECT, no authentication), and the key-value
    commands per request counted by the probe."""
    diff = _difference(result, cache, _UNLOADED)
    p50_us, cpu_us = diff.p50_us, diff.cpu_us
    probe, kv = _kv_probe(cache, _KV_PROBE)
    return Findings(
        values={
            "auth_cost_p50_us": p50_us,
            "auth_cost_cpu_us_per_request": cpu_us,
            "auth_cost_unloaded_p50_us": diff.unloaded_us,
            "unloaded_p50_ms": diff.unloaded,
            "aim_p50_us": AUTH_COST_AIM_US,
            "kv_commands_per_request": probe.get("commands_per_request"),
            "kv_probe": probe,
            "aim_kv_round_trips": KV_ROUND_TRIPS_AIM,
        },
        lines=[
            f"  authentication per request: p50 {_signed(p50_us, 'µs')} (aim ≤ "
            f"{AUTH_COST_AIM_US} µs), server CPU {_signed(cpu_us, 'µs')} (clinicguard minus bare)",
            _unloaded_line(diff),
            f"  key-value commands per GET /me: {kv} (aim: {KV_ROUND_TRIPS_AIM} round trip)",
        ],
    )


register(
    Scenario(
        name="auth-me",
        description="GET /api/v1/me with a physician's Bearer token (signature check cached "
        "per token, session GETEX, PK SELECT of the user) vs the same SELECT unauthenticated: "
        "the cost of authentication",
        clinicguard=Endpoint(setup=_me_with_probes, request=_me),
        bare=Endpoint(setup=_bare_with_probe, request=_bare_user),
        figures=_auth_cost,
    )
)


async def _storm_accounts(ctx: BenchContext) -> list[dict[str, str]]:
    """STORM_ACCOUNTS receptionists of the first demo clinic, made with ``clinicguard users
    create`` (no MFA: a sign-in is one argon2 verification); one is signed in as a check."""
    if "storm-accounts" not in ctx.cache:
        created = await signins.create_accounts(
            ctx, STORM_ACCOUNTS, clinic=ctx.demo["clinics"][0], role="receptionist"
        )
        async with ctx.client() as http:
            await signins.check_sign_in(http, created[0])
        ctx.cache["storm-accounts"] = created
    accounts: list[dict[str, str]] = ctx.cache["storm-accounts"]
    return accounts


async def _storm(
    ctx: BenchContext, accounts: list[dict[str, str]], window: LoadWindow
) -> dict[str, Any]:
    return await signins.login_storm(
        ctx.base_url,
        accounts,
        window,
        concurrency=STORM_CONCURRENCY,
        request_timeout=STORM_REQUEST_TIMEOUT_SECONDS,
    )


def _cpu_per_signin(
    quiet: Measurement | None, storm: Measurement | None, signins_measured: int
) -> float | None:
    """Server CPU per sign-in, in ms: the storm rounds' server CPU minus what their reads
    would have cost at the quiet rounds' CPU per request (an estimate: contention makes the
    reads themselves dearer under the storm)."""
    if quiet is None or storm is None or not signins_measured:
        return None
    quiet_cpu = quiet.server_cpu_us_per_request
    storm_cpu = [r.server_cpu_seconds for r in storm.rounds]
    if quiet_cpu is None or None in storm_cpu:
        return None
    spent = sum(c for c in storm_cpu if c is not None) - quiet_cpu * storm.requests / 1e6
    return round(spent / signins_measured * 1000, 1)


def _storm_figures(result: ScenarioResult, _cache: Mapping[str, Any]) -> Findings:
    """The reads' p50/p99 quiet and under the storm, the p99 ratio, and the sign-ins the
    storm completed in the measured windows (and over the whole storm)."""
    quiet, storm = result.side("quiet"), result.side("storm")
    values: dict[str, Any] = {
        "concurrent_signins": STORM_CONCURRENCY,
        "aim_p99_ratio": STORM_P99_AIM,
    }
    lines = []
    if quiet is not None and storm is not None and quiet.requests and storm.requests:
        q, s = quiet.latency_ms(), storm.latency_ms()
        ratio = round(s["p99"] / q["p99"], 2) if q["p99"] else None
        values |= {
            "quiet_p50_ms": q["p50"],
            "quiet_p99_ms": q["p99"],
            "storm_p50_ms": s["p50"],
            "storm_p99_ms": s["p99"],
            "p99_ratio": ratio,
        }
        lines.append(
            f"  reads quiet p50 {q['p50']:.2f} ms, p99 {q['p99']:.2f} ms; under "
            f"{STORM_CONCURRENCY} concurrent sign-ins p50 {s['p50']:.2f} ms, p99 "
            f"{s['p99']:.2f} ms: p99 {'n/a' if ratio is None else f'{ratio:.2f}x'} "
            f"(aim ≤ {STORM_P99_AIM:g}x)"
        )
    storms = [r.background for r in storm.rounds if r.background] if storm else []
    if storms:
        measured = [b["measured"] for b in storms]
        seconds = sum(m["seconds"] or 0.0 for m in measured)
        histogram: Counter[int] = Counter()
        for m in measured:
            histogram.update({int(k): v for k, v in m["latency_histogram_us"].items()})
        outcomes: Counter[str] = Counter()
        for b in storms:
            outcomes.update(b["outcomes"])
        signin_latency = latency_summary(histogram)
        signin_cpu_ms = _cpu_per_signin(quiet, storm, sum(m["signins"] for m in measured))
        values |= {
            "signin_server_cpu_ms_estimate": signin_cpu_ms,
            "signins_measured": sum(m["signins"] for m in measured),
            "signin_errors_measured": sum(m["errors"] for m in measured),
            "signins_per_second": round(sum(m["signins"] for m in measured) / seconds, 1)
            if seconds
            else None,
            "signin_latency_ms": signin_latency,
            "signins_total": sum(b["signins"] for b in storms),
            "signin_errors_total": sum(b["errors"] for b in storms),
            "signin_outcomes_total": dict(outcomes),
        }
        lines.append(
            f"  sign-ins completed in the measured windows: {values['signins_measured']:,} "
            f"({values['signins_per_second'] or 0:,.1f}/s, p50 {signin_latency['p50']:.0f} ms, "
            f"p99 {signin_latency['p99']:.0f} ms), errors {values['signin_errors_measured']:,}; "
            f"whole storm {values['signins_total']:,}, errors {values['signin_errors_total']:,}"
        )
        if signin_cpu_ms is not None:
            lines.append(
                f"  server CPU per sign-in ≈ {signin_cpu_ms:.1f} ms (the storm rounds' server CPU "
                "minus their reads at the quiet cpu µs/req; the storm row's cpu µs/req includes it)"
            )
    return Findings(values=values, lines=lines)


register(
    Scenario(
        name="login-storm",
        description=f"GET /api/v1/me (as auth-me) quiet, then while {STORM_CONCURRENCY} "
        "sign-ins (argon2id each) stay in flight: the reads' p99 under a login storm",
        sides=(
            Side("quiet", Target.CLINICGUARD, ME_READS),
            Side(
                "storm",
                Target.CLINICGUARD,
                Endpoint(
                    setup=physician_tokens,
                    request=_me,
                    background=Background(run=_storm, setup=_storm_accounts),
                ),
            ),
        ),
        compare=("storm", "quiet"),
        figures=_storm_figures,
    )
)


# --- clinic data --------------------------------------------------------------------------

_PATIENT_KV_PROBE = "patient-read:kv-probe"
_PATIENT_UNLOADED = "patient-read:unloaded:"
CLINICAL_FIELDS = ("allergies", "medications", "medical_conditions")
"""What the policy shows a physician only on the patient's care team within clinic hours
(``clinician-clinical-care-team``); any other clinician rule hides them."""


@dataclass(frozen=True)
class PatientRead:
    """One patient read: the care-team physician of the patient's clinic, and the ids."""

    physician: Mapping[str, Any]
    clinic_id: str
    patient_id: str


def care_team_reads(ctx: BenchContext) -> list[PatientRead]:
    """Every demo patient (both clinics), each with their clinic's care-team physician: the
    demo puts that physician on the care team of every patient of the clinic, and opens
    the demo clinics 24 hours a day, so the policy allows the full record at any hour."""
    reads = []
    for clinic in ctx.demo["clinics"]:
        physician = next(u for u in clinic["users"] if u["role"] == "physician" and u["care_team"])
        reads += [PatientRead(physician, clinic["id"], p["id"]) for p in clinic["patients"]]
    return reads


def _patient_path(read: PatientRead) -> str:
    return f"/api/v1/patients/{read.patient_id}"


def _patient(_ctx: BenchContext, reads: list[tuple[PatientRead, str]], i: int) -> HttpRequest:
    read, token = reads[i % len(reads)]
    return HttpRequest("GET", _patient_path(read), headers={"Authorization": f"Bearer {token}"})


def _bare_patient(ctx: BenchContext, _state: object, i: int) -> HttpRequest:
    reads = care_team_reads(ctx)
    read = reads[i % len(reads)]
    return HttpRequest("GET", f"/patients/{read.clinic_id}/{read.patient_id}")


async def _check_full_record(ctx: BenchContext, requests: list[HttpRequest]) -> None:
    """Every read answers 200 with the clinical fields: the care-team rule allowed it (a
    demographics-only answer is a 200 too, and would measure another decision)."""
    async with ctx.client() as http:
        for request in requests:
            response = await http.get(request.path, headers=request.all_headers())
            if response.status_code != 200:
                raise RuntimeError(
                    f"GET {request.path} answered {response.status_code}: {response.text[:300]}"
                )
            missing = [name for name in CLINICAL_FIELDS if name not in response.json()]
            if missing:
                raise RuntimeError(
                    f"GET {request.path} left out {', '.join(missing)}: not allowed as the "
                    "patient's care team (clinic hours? care team?)"
                )


async def _patient_reads(
    ctx: BenchContext, unloaded_prefix: str = _PATIENT_UNLOADED
) -> list[tuple[PatientRead, str]]:
    """The care-team physicians signed in (MFA, once per run) with the patients they read;
    a check that each read gets the full record; and, before the load, the key-value
    commands one read costs and its unloaded latency (kept under ``unloaded_prefix``)."""
    reads = [(read, await access_token(ctx, read.physician)) for read in care_team_reads(ctx)]
    requests = [_patient(ctx, reads, i) for i in range(len(reads))]
    await _check_full_record(ctx, requests)
    if _PATIENT_KV_PROBE not in ctx.cache:
        ctx.cache[_PATIENT_KV_PROBE] = await signins.kv_commands_per_request(
            ctx.base_url, requests[0].path, requests[0].headers, services.REDIS_URL
        )
    await _probe_unloaded(ctx, requests, unloaded_prefix)
    return reads


async def _patient_reads_with_probes(ctx: BenchContext) -> list[tuple[PatientRead, str]]:
    return await _patient_reads(ctx, _PATIENT_UNLOADED)


def _check_bare_ciphertext_columns() -> None:
    """The bare endpoints know every encrypted column of ``patients`` (they answer them
    base64-encoded, not decrypted)."""
    if set(PATIENT_CIPHERTEXT) != set(ENCRYPTED["patients"]):
        raise RuntimeError(
            "bench/bare.py PATIENT_CIPHERTEXT differs from clinicguard's encrypted patient "
            f"columns: {sorted(PATIENT_CIPHERTEXT)} vs {sorted(ENCRYPTED['patients'])}"
        )


async def _bare_patient_with_probe(ctx: BenchContext) -> None:
    """Before the load: the check of the encrypted columns, and the unloaded latency."""
    _check_bare_ciphertext_columns()
    requests = [_bare_patient(ctx, None, i) for i in range(len(care_team_reads(ctx)))]
    await _probe_unloaded(ctx, requests, _PATIENT_UNLOADED)


def _patient_read_cost(result: ScenarioResult, cache: Mapping[str, Any]) -> Findings:
    """What clinicguard adds to reading one patient row: p50 and server CPU per request
    minus the bare endpoint's (the same tenant-scoped SELECT, nobody signed in), and the
    key-value commands one read costs."""
    diff = _difference(result, cache, _PATIENT_UNLOADED)
    probe, kv = _kv_probe(cache, _PATIENT_KV_PROBE)
    return Findings(
        values={
            "added_p50_us": diff.p50_us,
            "added_cpu_us_per_request": diff.cpu_us,
            "added_unloaded_p50_us": diff.unloaded_us,
            "unloaded_p50_ms": diff.unloaded,
            "kv_commands_per_request": probe.get("commands_per_request"),
            "kv_probe": probe,
        },
        lines=[
            f"  authentication + authorization per read: p50 {_signed(diff.p50_us, 'µs')}, "
            f"server CPU {_signed(diff.cpu_us, 'µs')} (clinicguard minus bare: pipeline, "
            "token, policy, the care-team SELECT, decryption, the audit write)",
            _unloaded_line(diff),
            f"  key-value commands per GET /patients/{{id}}: {kv}",
        ],
    )


register(
    Scenario(
        name="patient-read",
        description="GET /api/v1/patients/{id} as the patient's care-team physician "
        "(session GETEX, tenant-scoped transaction: the patient row, the care-team and "
        "break-glass facts; policy, decryption and shaping) vs the same row's SELECT in a "
        "tenant-scoped transaction unauthenticated, its ciphertexts answered base64-encoded: "
        "what reading a patient adds (the audit write included)",
        clinicguard=Endpoint(setup=_patient_reads_with_probes, request=_patient),
        bare=Endpoint(setup=_bare_patient_with_probe, request=_bare_patient),
        figures=_patient_read_cost,
    )
)


# --- the audited patient read -------------------------------------------------------------

_AUDITED_UNLOADED = "patient-read-audited:unloaded:"
AUDITED_READ_AIM = 0.70
"""The issue's aim: a secured patient read at least 0.70x the throughput of the bare
SELECT + audit INSERT."""


def _bare_audited_patient(ctx: BenchContext, _state: object, i: int) -> HttpRequest:
    reads = care_team_reads(ctx)
    read = reads[i % len(reads)]
    return HttpRequest("GET", f"/patients/{read.clinic_id}/{read.patient_id}/audited")


async def _audited_reads_with_probes(ctx: BenchContext) -> list[tuple[PatientRead, str]]:
    return await _patient_reads(ctx, _AUDITED_UNLOADED)


async def _bare_audited_with_probe(ctx: BenchContext) -> None:
    """Before the load: the check of the encrypted columns, and the unloaded latency of the
    audited bare read (each probe request appends to the clinic's chain, as clinicguard's)."""
    _check_bare_ciphertext_columns()
    requests = [_bare_audited_patient(ctx, None, i) for i in range(len(care_team_reads(ctx)))]
    await _probe_unloaded(ctx, requests, _AUDITED_UNLOADED)


def _cores_busy(m: Measurement | None) -> tuple[float | None, float | None]:
    """A side's server CPU in cores (CPU per request x requests per second) and how busy
    the whole machine was (the mean of its rounds, percent of every core)."""
    if m is None or not m.requests:
        return None, None
    cpu = m.server_cpu_us_per_request
    busy = [r.machine_cpu_busy_percent for r in m.rounds if r.machine_cpu_busy_percent]
    return (
        None if cpu is None else round(cpu * m.rps / 1e6, 2),
        round(sum(busy) / len(busy), 1) if busy else None,
    )


def _audited_read_cost(result: ScenarioResult, cache: Mapping[str, Any]) -> Findings:
    """The throughput ratio against the aim, and what clinicguard adds to a read when both
    sides write the same audit event in the read's transaction; and how busy each server
    was (a server far from its cores' worth of CPU is waiting: on the database, or on a
    clinic's audit head, which every read of that clinic locks until it commits)."""
    diff = _difference(result, cache, _AUDITED_UNLOADED)
    usage = {label: _cores_busy(result.side(label)) for label in ("clinicguard", "bare")}
    ratios = result.ratios() or {}
    throughput = ratios.get("throughput")
    verdict = (
        "n/a"
        if throughput is None
        else f"{throughput:.2f}x (aim ≥ {AUDITED_READ_AIM:.2f}x: "
        f"{'met' if throughput >= AUDITED_READ_AIM else 'not met'})"
    )
    return Findings(
        values={
            "throughput_ratio": throughput,
            "aim_throughput_ratio": AUDITED_READ_AIM,
            "aim_met": None if throughput is None else throughput >= AUDITED_READ_AIM,
            "added_p50_us": diff.p50_us,
            "added_cpu_us_per_request": diff.cpu_us,
            "added_unloaded_p50_us": diff.unloaded_us,
            "unloaded_p50_ms": diff.unloaded,
            "server_cpu_cores": {label: u[0] for label, u in usage.items()},
            "machine_busy_percent": {label: u[1] for label, u in usage.items()},
        },
        lines=[
            f"  secured patient read / bare SELECT+INSERT (both audited): throughput {verdict}",
            "  server CPU in use (cores): "
            + ", ".join(
                f"{label} {'n/a' if cores is None else f'{cores:.2f}'} (machine "
                f"{'n/a' if busy is None else f'{busy:.0f}'}% busy)"
                for label, (cores, busy) in usage.items()
            ),
            f"  added per read beyond the audit write: p50 {_signed(diff.p50_us, 'µs')}, "
            f"server CPU {_signed(diff.cpu_us, 'µs')} (clinicguard minus bare: pipeline, "
            "token, policy, the care-team facts, decryption, the event's canonical hash)",
            _unloaded_line(diff),
        ],
    )


register(
    Scenario(
        name="patient-read-audited",
        description="secured patient read vs bare SELECT+INSERT: GET /api/v1/patients/{id} "
        "as in patient-read (its audit event appended in the read's transaction) vs the bare "
        "tenant-scoped SELECT plus the same audit write in the same transaction (head row "
        "advanced and locked by UPDATE … RETURNING, one audit_events row written by the "
        "head's UPDATE; a cheap hash): "
        f"throughput ratio, aim ≥ {AUDITED_READ_AIM:.2f}",
        clinicguard=Endpoint(setup=_audited_reads_with_probes, request=_patient),
        bare=Endpoint(setup=_bare_audited_with_probe, request=_bare_audited_patient),
        figures=_audited_read_cost,
    )
)


# --- field encryption (in-process) --------------------------------------------------------

register(
    Scenario(
        name="field-crypto",
        description="in-process, per patient record (12 fields, 7 ciphertexts): "
        "FieldEncryption.open + masking, step by step, vs AES-GCM alone on the same "
        "ciphertexts with the same key (aim ≤ 2x); the same for sealing",
        in_process=InProcess("bench.crypto"),
    )
)

register(
    Scenario(
        name="reencrypt",
        description="in-process against the run's PostgreSQL: a clinic of its own with 2,000 "
        "patients (a record and a prescription each), its field key rotated, then "
        "`keys reencrypt`'s maintenance.reencrypt with batch 200 and 1000: rows per second",
        in_process=InProcess("bench.reencrypt", timeout_seconds=1200.0),
    )
)

register(
    Scenario(
        name="audit-append",
        description="in-process against the run's PostgreSQL: AuditRecorder.record in a "
        "tenant transaction (append + commit) vs the same transaction without it, p50/p99 "
        "µs and their difference; then 16 concurrent appenders on one clinic's chain (its "
        "head lock) vs spread over 16 clinics: events per second; the chains verified",
        in_process=InProcess("bench.audit_append"),
    )
)
