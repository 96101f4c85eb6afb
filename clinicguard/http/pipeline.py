"""The request pipeline of DESIGN.md, in one place and in order.

Outermost first. Steps 1-4 and 10 are middleware built here; step 5 (authentication) is
the ``CurrentPrincipal`` dependency of each protected route, because only routes know
whether they need a principal; steps 6-9 (authorize, tenant-scoped data access, decrypt and
mask, audit in the same transaction) happen inside the services a route calls.

    1.  request context  — request id, client IP via trusted proxies
    10. security headers — the path's header profile on every answer, errors included
        CORS             — allowlisted origins only (so error answers are readable by them)
        error boundary   — anything unhandled becomes a 500 problem without internals
        input gates      — body size (413), JSON-only API bodies (415)
    2.  blocklist        — IP / account blocks          (added by the detection feature)
    3.  rate limit       — per route class and identity (added by the ratelimit feature)
        input signals    — SQL-injection / XSS / traversal detectors over path, query and
                           JSON body: an ``input:attack:suspected`` event, never a refusal
    4.  admission        — bound on requests in flight, 503 past it
    5.  authenticate     — route dependency (auth feature)

A feature that fills a step passes its middleware entry in ``steps`` under the step's name;
the order above never depends on the order features are wired in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from enum import StrEnum

from starlette.middleware import Middleware

from clinicguard.http.headers import ProfileTable
from clinicguard.http.middleware import (
    AdmissionControlMiddleware,
    BodyLimitMiddleware,
    ErrorBoundaryMiddleware,
    JsonBodyMiddleware,
    ProblemCORSMiddleware,
    RequestContextMiddleware,
    SecurityHeadersMiddleware,
)
from clinicguard.http.signals import InputSignalsMiddleware
from clinicguard.settings import Settings

#: Paths that are always admitted and never rate limited (load balancer probes).
PROBE_PATHS = frozenset({"/healthz", "/readyz"})


class Step(StrEnum):
    BLOCKLIST = "blocklist"
    RATE_LIMIT = "rate_limit"


def pipeline_middleware(
    settings: Settings,
    *,
    profiles: ProfileTable,
    steps: Mapping[Step, Middleware] | None = None,
    multipart_paths: Sequence[re.Pattern[str]] = (),
    large_bodies: Sequence[tuple[re.Pattern[str], int]] = (),
) -> list[Middleware]:
    """The pipeline as Starlette middleware entries, outermost first."""
    steps = steps or {}
    origins = list(settings.cors_origins)
    if settings.cors_allow_credentials:
        # A wildcard with credentials would reflect any origin; production refuses it and
        # here it is dropped rather than honoured.
        origins = [o for o in origins if o != "*"]
    return [
        Middleware(RequestContextMiddleware, trusted_proxies=settings.trusted_proxies),
        Middleware(SecurityHeadersMiddleware, profiles=profiles),
        Middleware(
            ProblemCORSMiddleware,
            allow_origins=origins,
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-CSRF-Token", "X-Request-ID"],
            expose_headers=[
                "X-Request-ID",
                "Retry-After",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
            ],
            max_age=600,
        ),
        Middleware(ErrorBoundaryMiddleware),
        Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, overrides=large_bodies),
        Middleware(JsonBodyMiddleware, multipart_paths=multipart_paths),
        *(steps[step] for step in (Step.BLOCKLIST, Step.RATE_LIMIT) if step in steps),
        # After the input gates (only size-bounded JSON is parsed) and after blocklist and
        # rate limit (a refused flood costs no scanning); a signal, never a refusal.
        Middleware(InputSignalsMiddleware),
        Middleware(
            AdmissionControlMiddleware,
            max_in_flight=settings.max_in_flight_requests,
            exempt=lambda path: path in PROBE_PATHS,
        ),
    ]
