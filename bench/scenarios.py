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
carries the target's base URL, an HTTP client factory, the demo data set's credentials and
the bare app's record ids.

Adding a scenario (about ten lines; see bench/README.md for a logged-in example)::

    register(
        Scenario(
            name="patient-read",
            description="GET one patient (authz, decrypt, mask, audit) vs PK SELECT + INSERT",
            clinicguard=Endpoint(
                setup=my_login_setup,  # async (ctx) -> {"Authorization": "Bearer …"}
                request=lambda ctx, headers, i: HttpRequest(
                    "GET", f"/api/v1/patients/{ctx.demo['clinics'][0]['patients'][i % 3]['id']}",
                    headers=headers,
                ),
            ),
            bare=BARE_SELECT_INSERT,
        )
    )
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import httpx


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
    cache: dict[str, Any] = field(default_factory=dict)
    """Shared by every setup of the run: keep tokens here, since a TOTP code is accepted
    once and logging the same user in twice within its 30 s step would be refused."""

    def client(self, timeout: float = 10.0) -> httpx.AsyncClient:
        """An HTTP client for setup calls to the target (use it as ``async with``)."""
        return httpx.AsyncClient(base_url=self.base_url, timeout=timeout)


Setup = Callable[[BenchContext], Awaitable[Any]]
RequestFactory = Callable[[BenchContext, Any, int], HttpRequest]


@dataclass(frozen=True)
class Endpoint:
    """One side of a scenario: how to build the requests sent to one server."""

    request: HttpRequest | RequestFactory
    setup: Setup | None = None
    """Runs once before the load (bounded by a timeout); its result is the factory's
    ``state``."""
    variants: int = 100
    """How many requests a factory builds (a fixed request is one); they are cycled."""

    async def requests(self, ctx: BenchContext) -> list[HttpRequest]:
        """Run the setup, then build the requests the load generator will cycle through."""
        state = await self.setup(ctx) if self.setup is not None else None
        if isinstance(self.request, HttpRequest):
            return [self.request]
        return [self.request(ctx, state, i) for i in range(self.variants)]


@dataclass(frozen=True)
class Scenario:
    """A clinicguard request measured next to a bare endpoint doing the same database work."""

    name: str
    description: str
    bare: Endpoint
    clinicguard: Endpoint | None = None
    """None: measure the bare side alone (a reference figure, no ratio)."""

    def endpoints(self) -> list[tuple[Target, Endpoint]]:
        """The targets to load, clinicguard first."""
        sides = [(Target.CLINICGUARD, self.clinicguard), (Target.BARE, self.bare)]
        return [(target, endpoint) for target, endpoint in sides if endpoint is not None]


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
