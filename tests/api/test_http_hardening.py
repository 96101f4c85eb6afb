"""HTTP hardening as an attacker meets it: headers on every answer, problem+json for every
error without internals, body limits, JSON-only bodies, request ids and client IPs that a
client cannot forge, CORS from an allowlist, and a bound on requests in flight.

A few probe routes are mounted on the real app (same pipeline, same handlers) so the error
paths that the public API reaches only later can be exercised now.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, HTTPException, Request

from clinicguard.app import create_app
from clinicguard.core.context import current_request
from clinicguard.core.schemas import StrictModel
from clinicguard.settings import Settings
from tests.conftest import client_for

PROBLEM = "application/problem+json"
REQUIRED_HEADERS = {
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "strict-transport-security": "max-age=31536000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cache-control": "no-store",
}
SECRET_IN_EXCEPTION = "SELECT cpf FROM patients -- s3cr3t-internal"


class Credentials(StrictModel):
    email: str
    password: str
    remember: bool = False


probe = APIRouter(prefix="/api/v1/_probe")


@probe.post("/echo")
async def echo(body: Credentials) -> dict[str, str]:
    return {"email": body.email}


@probe.get("/boom")
async def boom() -> None:
    raise RuntimeError(SECRET_IN_EXCEPTION)


@probe.get("/whoami")
async def whoami() -> dict[str, str]:
    ctx = current_request()
    assert ctx is not None
    return {"client_ip": ctx.client_ip, "request_id": ctx.request_id}


@probe.get("/teapot")
async def teapot() -> None:
    raise HTTPException(418)


@probe.get("/slow")
async def slow(request: Request) -> dict[str, str]:
    await asyncio.wait_for(request.app.state.release.wait(), 5)
    return {"status": "done"}


def with_probe(app: FastAPI) -> FastAPI:
    app.include_router(probe)
    app.state.release = asyncio.Event()
    return app


@pytest.fixture
async def make_client(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Any]]:
    """Build an app with settings overrides and a client at a given peer address."""
    stack: list[Any] = []
    apps: list[FastAPI] = []

    async def build(peer: str = "203.0.113.10", **overrides: Any) -> httpx.AsyncClient:
        app = with_probe(create_app(make_settings(**overrides)))
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = client_for(app, peer)
        stack.append((lifespan, client))
        apps.append(app)
        return client

    build.apps = apps  # type: ignore[attr-defined]
    yield build
    for lifespan, client in reversed(stack):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


@pytest.fixture
async def http(make_client: Callable[..., Any]) -> httpx.AsyncClient:
    client: httpx.AsyncClient = await make_client()
    return client


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:clinicguard:problem:")
    assert body["title"]
    assert body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def assert_security_headers(response: httpx.Response) -> None:
    for name, value in REQUIRED_HEADERS.items():
        assert response.headers.get(name) == value, name
    assert "permissions-policy" in response.headers
    assert response.headers["x-request-id"]
    assert "server" not in response.headers
    assert "x-xss-protection" not in response.headers


async def test_every_kind_of_answer_carries_the_security_headers(http: httpx.AsyncClient) -> None:
    answers = [
        await http.get("/healthz"),
        await http.get("/readyz"),
        await http.get("/api/openapi.json"),
        await http.get("/no/such/route"),
        await http.delete("/healthz"),
        await http.post(
            "/api/v1/_probe/echo", content=b"{", headers={"content-type": "application/json"}
        ),
        await http.post("/api/v1/_probe/echo", json={"email": "a@b.c"}),
        await http.post(
            "/api/v1/_probe/echo", content=b"x=1", headers={"content-type": "text/plain"}
        ),
        await http.get("/api/v1/_probe/boom"),
    ]
    assert sorted({r.status_code for r in answers}) == [200, 400, 404, 405, 415, 422, 500]
    for response in answers:
        assert_security_headers(response)


async def test_unknown_route_is_a_404_problem(http: httpx.AsyncClient) -> None:
    assert_problem(await http.get("/api/v1/patients/../../etc/passwd"), 404)
    assert_problem(await http.get("/api/v2/anything"), 404)


async def test_wrong_method_is_a_405_problem_with_allow(http: httpx.AsyncClient) -> None:
    response = await http.put("/healthz")
    assert_problem(response, 405)
    assert "GET" in response.headers["allow"]


async def test_malformed_json_is_a_400_problem(http: httpx.AsyncClient) -> None:
    for raw in (b"{", b'{"email": "a@b.c",}', b"\xff\xfe\x00garbage", b"nul\x00l"):
        response = await http.post(
            "/api/v1/_probe/echo", content=raw, headers={"content-type": "application/json"}
        )
        assert_problem(response, 400)


async def test_unknown_and_missing_fields_are_422_naming_each_field(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post(
        "/api/v1/_probe/echo",
        json={"email": "a@b.c", "password": "hunter2-Secret!", "is_admin": True, "clinic_id": "x"},
    )
    body = assert_problem(response, 422)
    fields = {e["field"]: e["message"] for e in body["errors"]}
    assert fields == {"body.is_admin": "Unknown field.", "body.clinic_id": "Unknown field."}

    missing = assert_problem(
        await http.post("/api/v1/_probe/echo", json={"remember": "maybe"}), 422
    )
    named = {e["field"] for e in missing["errors"]}
    assert named == {"body.email", "body.password", "body.remember"}


async def test_validation_errors_never_echo_submitted_values(http: httpx.AsyncClient) -> None:
    secret = "correct-horse-battery-staple-9!"
    response = await http.post(
        "/api/v1/_probe/echo", json={"email": ["x"], "password": {"p": secret}}
    )
    assert_problem(response, 422)
    assert secret not in response.text


async def test_a_json_array_where_an_object_belongs_is_422(http: httpx.AsyncClient) -> None:
    assert_problem(await http.post("/api/v1/_probe/echo", json=[1, 2, 3]), 422)


async def test_server_errors_reveal_no_internals(http: httpx.AsyncClient) -> None:
    response = await http.get("/api/v1/_probe/boom")
    body = assert_problem(response, 500)
    assert SECRET_IN_EXCEPTION not in response.text
    assert "RuntimeError" not in response.text
    assert "Traceback" not in response.text
    assert set(body) == {"type", "title", "status", "detail", "request_id"}


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/json; charset=latin-1",
        "",
    ],
)
async def test_non_json_bodies_are_415(http: httpx.AsyncClient, content_type: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = await http.post(
        "/api/v1/_probe/echo", content=b'{"email":"a@b.c","password":"x"}', headers=headers
    )
    assert_problem(response, 415)


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "application/merge-patch+json"],
)
async def test_json_media_types_are_accepted(http: httpx.AsyncClient, content_type: str) -> None:
    response = await http.post(
        "/api/v1/_probe/echo",
        content=json.dumps({"email": "a@b.c", "password": "x"}).encode(),
        headers={"content-type": content_type},
    )
    assert response.status_code == 200


async def test_oversized_body_is_413_from_content_length(make_client: Callable[..., Any]) -> None:
    http = await make_client(max_body_bytes=2048)
    payload = json.dumps({"email": "a@b.c", "password": "x" * 4096}).encode()
    response = await http.post(
        "/api/v1/_probe/echo", content=payload, headers={"content-type": "application/json"}
    )
    assert_problem(response, 413)


async def test_oversized_chunked_body_is_413_while_streaming(
    make_client: Callable[..., Any],
) -> None:
    """A client that sends no Content-Length (chunked) is cut off when it passes the limit."""
    http = await make_client(max_body_bytes=2048)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"email": "a@b.c", "password": "'
        for _ in range(10):
            yield b"x" * 1024
        yield b'"}'

    response = await http.post(
        "/api/v1/_probe/echo", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_problem(response, 413)


async def test_request_id_is_generated_and_a_client_cannot_choose_it(
    http: httpx.AsyncClient,
) -> None:
    first = await http.get("/api/v1/_probe/whoami")
    second = await http.get("/api/v1/_probe/whoami")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert first.json()["request_id"] == first.headers["x-request-id"]
    forged = await http.get("/api/v1/_probe/whoami", headers={"x-request-id": "attacker-chosen-id"})
    assert forged.headers["x-request-id"] != "attacker-chosen-id"


async def test_trusted_proxy_may_forward_a_well_formed_request_id(
    make_client: Callable[..., Any],
) -> None:
    http = await make_client(peer="10.0.0.5", trusted_proxies="10.0.0.0/8")
    response = await http.get("/api/v1/_probe/whoami", headers={"x-request-id": "lb-req-0001"})
    assert response.headers["x-request-id"] == "lb-req-0001"
    hostile = await http.get("/api/v1/_probe/whoami", headers={"x-request-id": "x" * 500})
    assert hostile.headers["x-request-id"] != "x" * 500
    assert len(hostile.headers["x-request-id"]) == 32


async def test_forwarded_for_is_ignored_from_untrusted_peers(
    make_client: Callable[..., Any],
) -> None:
    http = await make_client(peer="203.0.113.10", trusted_proxies="10.0.0.0/8")
    response = await http.get("/api/v1/_probe/whoami", headers={"x-forwarded-for": "1.2.3.4"})
    assert response.json()["client_ip"] == "203.0.113.10"


async def test_forwarded_for_is_read_through_trusted_proxies(
    make_client: Callable[..., Any],
) -> None:
    http = await make_client(peer="10.0.0.5", trusted_proxies="10.0.0.0/8")
    # The client forged the leftmost entry; the trusted proxy appended the real peer.
    response = await http.get(
        "/api/v1/_probe/whoami", headers={"x-forwarded-for": "6.6.6.6, 198.51.100.7, 10.0.0.9"}
    )
    assert response.json()["client_ip"] == "198.51.100.7"


async def test_forwarded_for_split_over_several_lines_cannot_be_spoofed(
    make_client: Callable[..., Any],
) -> None:
    """A proxy that appends its own X-Forwarded-For line after the client's forged one: the
    lines are read together, right to left, so the forged value never wins."""
    http = await make_client(peer="10.0.0.5", trusted_proxies="10.0.0.0/8")
    response = await http.get(
        "/api/v1/_probe/whoami",
        headers=[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "198.51.100.7")],
    )
    assert response.json()["client_ip"] == "198.51.100.7"


async def test_unusual_http_exceptions_keep_a_truthful_problem_type(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("/api/v1/_probe/teapot")
    body = assert_problem(response, 418)
    assert body["title"] == "I'm a Teapot"
    assert "internal" not in body["type"]


async def test_cors_allows_only_listed_origins(make_client: Callable[..., Any]) -> None:
    http = await make_client(
        cors_origins="https://console.clinic.example", cors_allow_credentials=True
    )
    allowed = await http.get("/healthz", headers={"origin": "https://console.clinic.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://console.clinic.example"
    assert allowed.headers["access-control-allow-credentials"] == "true"
    denied = await http.get("/healthz", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in denied.headers
    preflight = await http.options(
        "/api/v1/_probe/echo",
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
    )
    assert_problem(preflight, 400)
    ok = await http.options(
        "/api/v1/_probe/echo",
        headers={
            "origin": "https://console.clinic.example",
            "access-control-request-method": "POST",
        },
    )
    assert ok.status_code == 200
    assert_security_headers(ok)


async def test_cors_wildcard_is_never_combined_with_credentials(
    make_client: Callable[..., Any],
) -> None:
    http = await make_client(cors_origins="*", cors_allow_credentials=True)
    response = await http.get("/healthz", headers={"origin": "https://evil.example"})
    assert response.headers.get("access-control-allow-origin") not in ("*", "https://evil.example")


async def test_requests_past_the_in_flight_bound_are_shed_with_503(
    make_client: Callable[..., Any],
) -> None:
    http = await make_client(max_in_flight_requests=1)
    release: asyncio.Event = make_client.apps[-1].state.release  # type: ignore[attr-defined]
    slow = asyncio.create_task(http.get("/api/v1/_probe/slow"))
    for _ in range(100):
        await asyncio.sleep(0.01)
        shed = await http.get("/api/v1/_probe/whoami")
        if shed.status_code == 503:
            break
    assert_problem(shed, 503)
    assert shed.headers["retry-after"] == "1"
    assert (await http.get("/healthz")).status_code == 200, "probes are always admitted"
    release.set()
    assert (await slow).status_code == 200
    assert (await http.get("/api/v1/_probe/whoami")).status_code == 200


async def test_openapi_is_served_and_docs_only_outside_production(
    http: httpx.AsyncClient, make_settings: Callable[..., Settings]
) -> None:
    spec = await http.get("/api/openapi.json")
    assert spec.status_code == 200
    assert spec.json()["openapi"].startswith("3.")
    docs = await http.get("/api/docs")
    assert docs.status_code == 200
    csp = docs.headers["content-security-policy"]
    assert "'sha256-" in csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp

    production = create_app(make_settings(env="production"))  # no lifespan: routes only
    async with client_for(production) as prod:
        assert_problem(await prod.get("/api/docs"), 404)
