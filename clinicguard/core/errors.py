"""Domain errors and their RFC 9457 problem shape.

Every error clinicguard raises on purpose is a :class:`ProblemError` (or a subclass a feature
declares in its ``interfaces.py``). Each class names its HTTP status, a stable problem ``type``
slug and a human title; the HTTP layer maps them to ``application/problem+json`` in one place.
``detail`` is written for the client: it never carries internals (SQL, stack traces, library
names, secrets or PHI).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

PROBLEM_TYPE_BASE = "urn:clinicguard:problem:"


@dataclass(frozen=True, slots=True)
class FieldError:
    """One rule a request field broke: ``field`` is a dotted path (``body.email``)."""

    field: str
    message: str


class ProblemError(Exception):
    """Base class of every error that becomes a problem+json answer."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal server error"
    default_detail: ClassVar[str] = "The server could not complete the request."

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: Sequence[FieldError] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        self.detail = detail or self.default_detail
        self.errors = tuple(errors)
        self.headers = dict(headers or {})
        super().__init__(self.detail)

    @property
    def type_uri(self) -> str:
        return PROBLEM_TYPE_BASE + self.slug


class BadRequest(ProblemError):
    status = 400
    slug = "bad-request"
    title = "Bad request"
    default_detail = "The request could not be understood."


class Unauthorized(ProblemError):
    status = 401
    slug = "unauthorized"
    title = "Authentication required"
    default_detail = "Valid credentials are required."

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ProblemError):
    status = 403
    slug = "forbidden"
    title = "Forbidden"
    default_detail = "You are not allowed to do this."


class NotFound(ProblemError):
    """Also the answer for another clinic's resource: the two must be indistinguishable."""

    status = 404
    slug = "not-found"
    title = "Not found"
    default_detail = "The resource does not exist."


class MethodNotAllowed(ProblemError):
    status = 405
    slug = "method-not-allowed"
    title = "Method not allowed"
    default_detail = "This method is not allowed on this resource."


class Conflict(ProblemError):
    status = 409
    slug = "conflict"
    title = "Conflict"
    default_detail = "The request conflicts with the current state of the resource."


class PayloadTooLarge(ProblemError):
    status = 413
    slug = "payload-too-large"
    title = "Payload too large"
    default_detail = "The request body is larger than this server accepts."


class UnsupportedMediaType(ProblemError):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"
    default_detail = "Request bodies must be JSON (Content-Type: application/json)."


class ValidationFailed(ProblemError):
    status = 422
    slug = "validation-failed"
    title = "Validation failed"
    default_detail = "The request has invalid fields."


class TooManyRequests(ProblemError):
    status = 429
    slug = "too-many-requests"
    title = "Too many requests"
    default_detail = "Too many requests; try again later."

    def __init__(self, retry_after_seconds: int, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, int(retry_after_seconds)))})
        self.retry_after_seconds = max(1, int(retry_after_seconds))


class ServiceUnavailable(ProblemError):
    """A dependency (database, key-value store) is down: fail closed, never half-done."""

    status = 503
    slug = "service-unavailable"
    title = "Service unavailable"
    default_detail = "The service is temporarily unavailable; try again shortly."


class ConfigurationError(Exception):
    """The process must not start: every problem found is listed, not only the first."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"clinicguard refuses to start:\n{lines}")
