"""RFC 9457 problem+json: building answers and the exception handlers (mapped once, here)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from clinicguard.core.context import current_request
from clinicguard.core.errors import (
    BadRequest,
    FieldError,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ProblemError,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
)
from clinicguard.core.logging import get_logger

PROBLEM_MEDIA_TYPE = "application/problem+json"
_KNOWN = {s.value for s in HTTPStatus}
log = get_logger("clinicguard.http")

_STATUS_ERRORS: dict[int, type[ProblemError]] = {
    400: BadRequest,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    401: Unauthorized,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: ValidationFailed,
}


def problem_body(exc: ProblemError) -> dict[str, Any]:
    ctx = current_request()
    body: dict[str, Any] = {
        "type": exc.type_uri,
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
        "request_id": ctx.request_id if ctx else None,
    }
    if exc.errors:
        body["errors"] = [{"field": e.field, "message": e.message} for e in exc.errors]
    return body


def problem_bytes(exc: ProblemError) -> bytes:
    return json.dumps(problem_body(exc), ensure_ascii=False, separators=(",", ":")).encode()


def problem_response(exc: ProblemError) -> Response:
    return Response(
        content=problem_bytes(exc),
        status_code=exc.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=exc.headers or None,
    )


def _field(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def _message(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return "Unknown field."
    if kind == "missing":
        return "Field required."
    # pydantic's messages describe the rule, never the submitted value (which may be a secret).
    return str(error.get("msg", "Invalid value.")).removeprefix("Value error, ")


def validation_problem(errors: Sequence[dict[str, Any]]) -> ProblemError:
    if any(e.get("type") == "json_invalid" for e in errors):
        return BadRequest("The request body is not valid JSON.")
    return ValidationFailed(
        errors=[FieldError(_field(e.get("loc", ())), _message(e)) for e in errors]
    )


async def _on_problem(_request: Request, exc: Exception) -> Response:
    if not isinstance(exc, ProblemError):  # registered for ProblemError only
        raise exc
    return problem_response(exc)


async def _on_validation(_request: Request, exc: Exception) -> Response:
    if not isinstance(exc, RequestValidationError):
        raise exc
    return problem_response(validation_problem(exc.errors()))


async def _on_http_exception(_request: Request, exc: Exception) -> Response:
    if not isinstance(exc, StarletteHTTPException):
        raise exc
    cls = _STATUS_ERRORS.get(exc.status_code)
    problem: ProblemError
    if cls is None:
        phrase = HTTPStatus(exc.status_code).phrase if exc.status_code in _KNOWN else "Error"
        problem = ProblemError(phrase + ".")
        problem.status = exc.status_code  # type: ignore[misc]
        problem.title = phrase  # type: ignore[misc]
        problem.slug = phrase.lower().replace(" ", "-").replace("'", "")  # type: ignore[misc]
    else:
        problem = cls()
    problem.headers.update(exc.headers or {})
    return problem_response(problem)


def install_exception_handlers(app: FastAPI) -> None:
    """Every error a route can raise becomes problem+json; unexpected ones are handled by the
    pipeline's error boundary (500, logged with the request id, no internals)."""
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
