"""The request context: who asked, from where, under which request id.

Set once by the first pipeline step and read anywhere (logs, audit) through a context
variable, so services do not need the HTTP request to know the request id or client IP.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class RequestContext:
    request_id: str
    client_ip: str
    user_agent: str = ""
    started_at: datetime | None = None
    extra: dict[str, str] = field(default_factory=dict)


_current: ContextVar[RequestContext | None] = ContextVar("clinicguard_request", default=None)


def current_request() -> RequestContext | None:
    """The context of the request being served, or None outside a request (CLI, workers)."""
    return _current.get()


def bind_request(ctx: RequestContext) -> object:
    """Make ``ctx`` current; returns the token to pass to :func:`unbind_request`."""
    return _current.set(ctx)


def unbind_request(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]
