"""Health probes: public, and they say nothing an attacker could use (status only)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response

from clinicguard.core.errors import ServiceUnavailable
from clinicguard.http.schemas import Liveness, Readiness
from clinicguard.store.deps import DatabaseDep, KeyValueDep

router = APIRouter(tags=["health"])
PROBE_TIMEOUT_SECONDS = 2.0


@router.get("/healthz", response_model=Liveness)
async def healthz() -> Liveness:
    """Liveness: the process serves requests."""
    return Liveness()


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A dependency does not answer"}},
)
async def readyz(db: DatabaseDep, kv: KeyValueDep, response: Response) -> Readiness:
    """Readiness: the database and the key-value store answer within the probe timeout."""
    # Both probes run to completion (each bounded), so none is left behind on failure.
    results = await asyncio.gather(
        asyncio.wait_for(db.ping(), PROBE_TIMEOUT_SECONDS),
        asyncio.wait_for(kv.ping(), PROBE_TIMEOUT_SECONDS),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        for failure in failures:
            if not isinstance(failure, ServiceUnavailable | TimeoutError):
                raise failure
        response.status_code = 503
        return Readiness(status="unavailable")
    return Readiness(status="ready")
