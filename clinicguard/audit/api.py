"""The audit API (thin: parse, call the service with the principal, answer): the clinic's
trail, its export, its verification, the review queue, and a patient's access log."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import AwareDatetime

from clinicguard.audit import schemas as s
from clinicguard.audit.queries import (
    FHIR_NDJSON,
    JSONL,
    AccessLog,
    AuditTrail,
    TrailFilters,
)
from clinicguard.audit.reviews import ReviewQueue
from clinicguard.auth.deps import FullPerson
from clinicguard.store.paging import DEFAULT_LIMIT, MAX_LIMIT

security = APIRouter(prefix="/api/v1/security", tags=["audit"])
patients = APIRouter(prefix="/api/v1", tags=["audit"])
_ERRORS: dict[int | str, dict[str, str]] = {
    401: {"description": "Missing, invalid, expired or revoked credentials"},
    403: {"description": "The policy does not allow it (the denial is recorded)"},
}


async def get_trail(request: Request) -> AuditTrail:
    service: AuditTrail = request.app.state.services.audit_trail
    return service


async def get_reviews(request: Request) -> ReviewQueue:
    service: ReviewQueue = request.app.state.services.reviews
    return service


async def get_access_log(request: Request) -> AccessLog:
    service: AccessLog = request.app.state.services.access_log
    return service


Trail = Annotated[AuditTrail, Depends(get_trail)]
Reviews = Annotated[ReviewQueue, Depends(get_reviews)]
Log = Annotated[AccessLog, Depends(get_access_log)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str | None, Query(min_length=1, max_length=200)]
From = Annotated[AwareDatetime | None, Query(alias="from")]
To = Annotated[AwareDatetime | None, Query(alias="to")]


def _page(items: list[dict[str, Any]], next_cursor: str | None) -> dict[str, Any]:
    return {"items": items, "next_cursor": next_cursor}


@security.get("/audit-logs", response_model=s.EventPage, responses=_ERRORS)
async def audit_logs(
    *,
    principal: FullPerson,
    trail: Trail,
    user_id: uuid.UUID | None = None,
    patient_id: uuid.UUID | None = None,
    start: From = None,
    end: To = None,
    event_type: Annotated[str | None, Query(min_length=3, max_length=64)] = None,
    risk_level: s.RiskLevelName | None = None,
    requires_review: bool | None = None,
    outcome: s.OutcomeName | None = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """The clinic's audit events, newest first (``user_id``: the actor; ``patient_id``:
    events naming the patient or listing them). The query itself is recorded."""
    filters = TrailFilters(
        user_id=user_id,
        patient_id=patient_id,
        start=start,
        end=end,
        event_type=event_type,
        risk_level=risk_level,
        requires_review=requires_review,
        outcome=outcome,
    )
    return _page(*await trail.search(principal, filters, limit=limit, cursor=cursor))


@security.get(
    "/audit-logs/export",
    response_class=StreamingResponse,
    responses={
        **_ERRORS,
        200: {
            "description": "One event per line",
            "content": {JSONL: {}, FHIR_NDJSON: {}},
        },
        422: {"description": "A reversed window, or one longer than 366 days"},
    },
)
async def export_audit_logs(
    principal: FullPerson,
    trail: Trail,
    fmt: Annotated[s.ExportFormat, Query(alias="format")] = "jsonl",
    start: From = None,
    end: To = None,
) -> StreamingResponse:
    """The clinic's events from ``from`` to ``to`` (default: the last 30 days; at most
    366 days) in chain order, streamed: ``jsonl`` carries every column and the hashes (an
    auditor re-verifies the chain), ``fhir`` one FHIR R4 AuditEvent per line. The export
    is recorded, for review, before the first line is sent."""
    export = await trail.export(principal, fmt, start, end)
    return StreamingResponse(
        export.lines,
        media_type=export.media_type,
        headers={"Content-Disposition": f'attachment; filename="{export.filename}"'},
    )


@security.get("/audit/verify", response_model=s.VerificationOut, responses=_ERRORS)
async def verify_audit_chain(principal: FullPerson, trail: Trail) -> dict[str, Any]:
    """Verify the clinic's hash chain; names the first broken event."""
    return await trail.verify(principal)


@security.get("/reviews", response_model=s.EventPage, responses=_ERRORS)
async def review_queue(
    principal: FullPerson,
    reviews: Reviews,
    status_filter: Annotated[s.ReviewStatus, Query(alias="status")] = "pending",
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Events to review (asked for review, high or critical risk, compliance-relevant,
    deletions and exports), newest first, with their decisions."""
    return _page(*await reviews.list(principal, status_filter, limit=limit, cursor=cursor))


@security.post(
    "/reviews/{event_id}",
    status_code=status.HTTP_201_CREATED,
    response_model=s.ReviewOut,
    responses={
        **_ERRORS,
        403: {"description": "Not allowed, or the reviewer acted in the event"},
        404: {"description": "Missing, or another clinic's (indistinguishable)"},
        409: {"description": "Not in the review queue, or already decided"},
    },
)
async def decide_review(
    principal: FullPerson, reviews: Reviews, event_id: uuid.UUID, body: s.ReviewIn
) -> dict[str, Any]:
    """Approve or reject one event of the queue (once); the decision is recorded in the
    trail in the same transaction."""
    return await reviews.decide(principal, event_id, body.decision, body.note)


@patients.get(
    "/patients/{patient_id}/access-log",
    response_model=s.AccessLogPage,
    responses={**_ERRORS, 404: {"description": "Missing, or another clinic's, or not yours"}},
)
async def access_log(
    principal: FullPerson,
    log: Log,
    patient_id: uuid.UUID,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Who touched this patient's data, when, what and why, newest first (the patient
    themselves, the clinic's administrators and compliance officers)."""
    return _page(*await log.read(principal, patient_id, limit=limit, cursor=cursor))
