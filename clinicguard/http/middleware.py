"""The pipeline's pure-ASGI middleware. Each class is one step of DESIGN.md's request
pipeline; :mod:`clinicguard.http.pipeline` puts them in order."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import structlog
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clinicguard.core.context import RequestContext, bind_request, unbind_request
from clinicguard.core.errors import (
    BadRequest,
    PayloadTooLarge,
    ProblemError,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from clinicguard.core.ids import is_acceptable_request_id, new_request_id
from clinicguard.core.logging import get_logger
from clinicguard.http.client_ip import IPNetwork, is_trusted, resolve_client_ip
from clinicguard.http.headers import ProfileTable
from clinicguard.http.problems import PROBLEM_MEDIA_TYPE, problem_bytes

log = get_logger("clinicguard.http")
_USER_AGENT_MAX = 256


async def send_problem(send: Send, exc: ProblemError) -> None:
    """Answer with a problem before the application ran (middleware-level refusals)."""
    body = problem_bytes(exc)
    headers = [
        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestContextMiddleware:
    """Step 1: request id, client IP (trusted proxies only), start time; adds X-Request-ID."""

    def __init__(self, app: ASGIApp, *, trusted_proxies: Sequence[IPNetwork]) -> None:
        self.app = app
        self.trusted = tuple(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        peer = scope["client"][0] if scope.get("client") else "unknown"
        incoming_id = headers.get("x-request-id", "")
        request_id = (
            incoming_id
            if incoming_id
            and is_trusted(peer, self.trusted)
            and is_acceptable_request_id(incoming_id)
            else new_request_id()
        )
        ctx = RequestContext(
            request_id=request_id,
            # Every X-Forwarded-For line, joined in order: a proxy that appends its own line
            # after the client's must not let the client's line decide.
            client_ip=resolve_client_ip(
                peer, ",".join(headers.getlist("x-forwarded-for")) or None, self.trusted
            ),
            user_agent=headers.get("user-agent", "")[:_USER_AGENT_MAX],
            started_at=datetime.now(UTC),
        )
        scope.setdefault("state", {})["request_context"] = ctx
        token = bind_request(ctx)
        structlog.contextvars.bind_contextvars(request_id=request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"server"]
                raw.append((b"x-request-id", request_id.encode()))
                message["headers"] = raw
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            structlog.contextvars.unbind_contextvars("request_id")
            unbind_request(token)


class ErrorBoundaryMiddleware:
    """An exception nothing else handled becomes a 500 problem with the request id and no
    internals (inside the security headers step, so it gets them too), logged once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled_error", path=scope.get("path"))
            if not started:
                await send_problem(send, ProblemError())


class SecurityHeadersMiddleware:
    """Step 10 (applied to every answer, errors included): the path's header profile."""

    def __init__(self, app: ASGIApp, *, profiles: ProfileTable) -> None:
        self.app = app
        self.profiles = profiles

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.profiles.headers_for(scope["path"])
        names = {name for name, _ in extra}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message["headers"] = raw + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413: at once from Content-Length, and while
    streaming for chunked bodies that lie or omit it."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        overrides: Sequence[tuple[re.Pattern[str], int]] = (),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.overrides = tuple(overrides)
        """(path pattern, limit) for routes that take larger bodies (file uploads)."""

    def _limit(self, path: str) -> int:
        return next((n for p, n in self.overrides if p.fullmatch(path)), self.max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope["path"])
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                await send_problem(send, BadRequest("The Content-Length header is invalid."))
                return
            if int(declared) > limit:
                await send_problem(send, PayloadTooLarge())
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException passes through FastAPI's body parsing unchanged and is
                    # rendered by the exception handlers as a 413 problem.
                    raise StarletteHTTPException(413)
            return message

        await self.app(scope, limited_receive, send)


_JSON_TYPE = re.compile(r"^application/(?:[\w.+-]+\+)?json$")


class JsonBodyMiddleware:
    """API bodies are JSON: a body with another content type is refused with 415 before any
    parser sees it (paths in ``multipart_paths`` may instead send multipart/form-data)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        prefix: str = "/api/",
        multipart_paths: Sequence[re.Pattern[str]] = (),
    ) -> None:
        self.app = app
        self.prefix = prefix
        self.multipart_paths = tuple(multipart_paths)

    def _acceptable(self, path: str, content_type: str) -> bool:
        media_type, _, params = content_type.partition(";")
        media_type = media_type.strip().lower()
        charset = re.search(r"charset=\"?([\w-]+)", params, re.IGNORECASE)
        if _JSON_TYPE.fullmatch(media_type):
            return charset is None or charset.group(1).lower() in ("utf-8", "utf8")
        return media_type == "multipart/form-data" and any(
            p.fullmatch(path) for p in self.multipart_paths
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            headers = Headers(scope=scope)
            has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
            if has_body and not self._acceptable(scope["path"], headers.get("content-type", "")):
                await send_problem(send, UnsupportedMediaType())
                return
        await self.app(scope, receive, send)


class AdmissionControlMiddleware:
    """Step 4: a bound on requests in flight in this process. Past it, new requests get a
    503 with Retry-After instead of queueing without end; ``exempt`` paths (health probes)
    are always admitted."""

    def __init__(self, app: ASGIApp, *, max_in_flight: int, exempt: Callable[[str], bool]) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.exempt = exempt
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            busy = ServiceUnavailable("The server is at capacity; try again shortly.")
            busy.headers["Retry-After"] = "1"
            await send_problem(send, busy)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class ProblemCORSMiddleware(CORSMiddleware):
    """Starlette's CORS handling (allowlist only), with refused preflights answered as
    problem+json like every other error."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        refused = BadRequest("This cross-origin request is not allowed.")
        headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower() not in ("content-length", "content-type")
        }
        return Response(problem_bytes(refused), 400, headers, PROBLEM_MEDIA_TYPE)
