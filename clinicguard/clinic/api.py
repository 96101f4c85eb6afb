"""The clinic data API (thin: parse, call the service with the principal, answer).

Answers leave out what the policy hides (absent, not null) and carry masked values where it
masks; ``response_model_exclude_unset`` keeps absent fields absent.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request, Response, status
from pydantic import AwareDatetime

from clinicguard.auth.deps import CurrentPrincipal, FullPerson
from clinicguard.authz.interfaces import Permission
from clinicguard.authz.service import Authorizer
from clinicguard.clinic import schemas as s
from clinicguard.clinic.files import PatientFileService
from clinicguard.clinic.service import ClinicDataService
from clinicguard.clinic.staff import StaffService
from clinicguard.core.errors import FieldError, ValidationFailed
from clinicguard.core.schemas import PlainText
from clinicguard.crypto.service import FieldEncryption
from clinicguard.store.paging import DEFAULT_LIMIT, MAX_LIMIT

router = APIRouter(prefix="/api/v1", tags=["clinic data"])
_ERRORS: dict[int | str, dict[str, str]] = {
    401: {"description": "Missing, invalid, expired or revoked credentials"},
    403: {"description": "The policy does not allow it (the denial is recorded)"},
    404: {"description": "Missing, or another clinic's (indistinguishable)"},
}


async def get_clinic_data(request: Request) -> ClinicDataService:
    service: ClinicDataService = request.app.state.services.clinic
    return service


async def get_staff(request: Request) -> StaffService:
    service: StaffService = request.app.state.services.staff
    return service


Data = Annotated[ClinicDataService, Depends(get_clinic_data)]
Staff = Annotated[StaffService, Depends(get_staff)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str | None, Query(min_length=1, max_length=200)]


def _page(items: list[dict[str, Any]], next_cursor: str | None) -> dict[str, Any]:
    return {"items": items, "next_cursor": next_cursor}


# --- patients ----------------------------------------------------------------------------


@router.get(
    "/patients",
    response_model=s.Page[s.PatientOut],
    response_model_exclude_unset=True,
    responses=_ERRORS,
)
async def list_patients(
    *,
    principal: CurrentPrincipal,
    data: Data,
    cpf: Annotated[str | None, Query(min_length=11, max_length=14)] = None,
    q: Annotated[PlainText | None, Query(min_length=2, max_length=100)] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Patients of the active clinic; ``cpf`` finds one by exact CPF (formatted or bare),
    ``q`` searches names."""
    if cpf is not None:
        try:
            cpf = s.check_cpf(cpf)
        except ValueError as exc:
            raise ValidationFailed(errors=[FieldError("query.cpf", str(exc))]) from exc
    return _page(*await data.list_patients(principal, cpf=cpf, q=q, limit=limit, cursor=cursor))


@router.post(
    "/patients",
    status_code=status.HTTP_201_CREATED,
    response_model=s.PatientOut,
    response_model_exclude_unset=True,
    responses=_ERRORS,
)
async def create_patient(
    principal: CurrentPrincipal, data: Data, body: s.PatientCreate
) -> dict[str, Any]:
    return await data.create_patient(principal, body)


@router.get(
    "/patients/{patient_id}",
    response_model=s.PatientOut,
    response_model_exclude_unset=True,
    responses=_ERRORS,
)
async def get_patient(
    principal: CurrentPrincipal, data: Data, patient_id: uuid.UUID
) -> dict[str, Any]:
    return await data.get_patient(principal, patient_id)


@router.patch(
    "/patients/{patient_id}",
    response_model=s.PatientOut,
    response_model_exclude_unset=True,
    responses=_ERRORS,
)
async def update_patient(
    principal: CurrentPrincipal, data: Data, patient_id: uuid.UUID, body: s.PatientUpdate
) -> dict[str, Any]:
    """403 naming the fields when the change touches fields the caller may not change."""
    return await data.update_patient(principal, patient_id, body)


# --- clinical records and prescriptions --------------------------------------------------


@router.get(
    "/patients/{patient_id}/records",
    response_model=s.Page[s.RecordOut],
    response_model_exclude_unset=True,
    responses=_ERRORS,
)
async def list_records(
    principal: CurrentPrincipal,
    data: Data,
    patient_id: uuid.UUID,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    return _page(*await data.list_records(principal, patient_id, limit, cursor))


@router.post(
    "/patients/{patient_id}/records",
    status_code=status.HTTP_201_CREATED,
    response_model=s.RecordOut,
    responses=_ERRORS,
)
async def create_record(
    principal: FullPerson, data: Data, patient_id: uuid.UUID, body: s.RecordCreate
) -> dict[str, Any]:
    """Physicians write any kind of entry; nurses write nursing notes."""
    return await data.create_record(principal, patient_id, body)


@router.get(
    "/records/{record_id}",
    response_model=s.RecordOut,
    response_model_exclude_unset=True,
    responses=_ERRORS,
)
async def get_record(
    principal: CurrentPrincipal, data: Data, record_id: uuid.UUID
) -> dict[str, Any]:
    return await data.get_record(principal, record_id)


@router.get(
    "/patients/{patient_id}/prescriptions",
    response_model=s.Page[s.PrescriptionOut],
    response_model_exclude_unset=True,
    responses=_ERRORS,
)
async def list_prescriptions(
    principal: CurrentPrincipal,
    data: Data,
    patient_id: uuid.UUID,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    return _page(*await data.list_prescriptions(principal, patient_id, limit, cursor))


@router.post(
    "/patients/{patient_id}/prescriptions",
    status_code=status.HTTP_201_CREATED,
    response_model=s.PrescriptionOut,
    responses=_ERRORS,
)
async def create_prescription(
    principal: FullPerson, data: Data, patient_id: uuid.UUID, body: s.PrescriptionCreate
) -> dict[str, Any]:
    return await data.create_prescription(principal, patient_id, body)


# --- patients' files ----------------------------------------------------------------------


async def get_files(request: Request) -> PatientFileService:
    service: PatientFileService = request.app.state.services.files
    return service


Files = Annotated[PatientFileService, Depends(get_files)]
#: Uploads are multipart/form-data (every other API body is JSON) and may be larger.
UPLOAD_PATH = re.compile(r"/api/v1/patients/[^/]+/files")


@router.post(
    "/patients/{patient_id}/files",
    status_code=status.HTTP_201_CREATED,
    response_model=s.FileOut,
    responses={
        **_ERRORS,
        413: {"description": "Over the upload limit"},
        415: {"description": "Not a JPEG, PNG, WebP or PDF (by content)"},
        429: {"description": "More than 10 uploads a minute"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                }
            },
        }
    },
)
async def upload_file(
    principal: FullPerson, files: Files, patient_id: uuid.UUID, request: Request
) -> dict[str, Any]:
    """A photo or document for the patient's record (multipart/form-data, one part named
    ``file``). The type is decided by content; images are re-encoded without metadata;
    the file is stored encrypted under the patient's own key."""
    body = await request.body()
    return await files.upload(principal, patient_id, body, request.headers.get("content-type", ""))


@router.get("/patients/{patient_id}/files", response_model=list[s.FileOut], responses=_ERRORS)
async def list_files(
    principal: CurrentPrincipal, files: Files, patient_id: uuid.UUID
) -> list[dict[str, Any]]:
    return await files.list(principal, patient_id)


@router.get(
    "/files/{file_id}",
    response_class=Response,
    responses={**_ERRORS, 200: {"content": {"application/octet-stream": {}}}},
)
async def download_file(principal: CurrentPrincipal, files: Files, file_id: uuid.UUID) -> Response:
    """The file, always as an attachment (never rendered by the browser in our origin)."""
    found = await files.download(principal, file_id)
    return Response(
        content=found.content,
        media_type=found.media_type,
        headers={
            "Content-Disposition": content_disposition(found.filename),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
        },
    )


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback and the UTF-8 name (RFC 6266 / 5987)."""
    ascii_name = filename.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"


# --- break-glass -------------------------------------------------------------------------


@router.post(
    "/patients/{patient_id}/emergency-access",
    status_code=status.HTTP_201_CREATED,
    response_model=s.EmergencyGrantOut,
    responses=_ERRORS,
)
async def request_emergency_access(
    principal: FullPerson, data: Data, patient_id: uuid.UUID, body: s.EmergencyAccessRequest
) -> dict[str, Any]:
    """A 60-minute grant to this patient's clinical data for the caller; recorded at once
    as a high-severity event, and every access under it is marked for review."""
    return await data.request_emergency_access(principal, patient_id, body.justification)


@router.get("/emergency-access", response_model=s.Page[s.EmergencyGrantOut], responses=_ERRORS)
async def list_emergency_grants(
    principal: FullPerson,
    data: Data,
    status_filter: Annotated[Literal["open", "past", "all"], Query(alias="status")] = "all",
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """The clinic's break-glass grants (clinic administrators and compliance officers)."""
    return _page(*await data.list_emergency_grants(principal, status_filter, limit, cursor))


# --- appointments ------------------------------------------------------------------------


@router.get(
    "/appointments",
    response_model=s.Page[s.AppointmentOut],
    response_model_exclude_unset=True,
    responses=_ERRORS,
)
async def list_appointments(
    *,
    principal: CurrentPrincipal,
    data: Data,
    patient_id: uuid.UUID | None = None,
    professional_id: uuid.UUID | None = None,
    starts_from: Annotated[AwareDatetime | None, Query(alias="from")] = None,
    starts_to: Annotated[AwareDatetime | None, Query(alias="to")] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    return _page(
        *await data.list_appointments(
            principal,
            patient_id=patient_id,
            professional_id=professional_id,
            starts_from=starts_from,
            starts_to=starts_to,
            limit=limit,
            cursor=cursor,
        )
    )


@router.post(
    "/appointments",
    status_code=status.HTTP_201_CREATED,
    response_model=s.AppointmentOut,
    response_model_exclude_unset=True,
    responses={**_ERRORS, 409: {"description": "Overlaps the professional's schedule"}},
)
async def create_appointment(
    principal: CurrentPrincipal, data: Data, body: s.AppointmentCreate
) -> dict[str, Any]:
    return await data.create_appointment(principal, body)


@router.patch(
    "/appointments/{appointment_id}",
    response_model=s.AppointmentOut,
    response_model_exclude_unset=True,
    responses={**_ERRORS, 409: {"description": "Overlap, finished, or changed meanwhile"}},
)
async def update_appointment(
    principal: CurrentPrincipal,
    data: Data,
    appointment_id: uuid.UUID,
    body: s.AppointmentUpdate,
) -> dict[str, Any]:
    return await data.update_appointment(principal, appointment_id, body)


# --- treatments --------------------------------------------------------------------------


@router.get("/treatments", response_model=list[s.TreatmentOut], responses=_ERRORS)
async def list_treatments(principal: CurrentPrincipal, data: Data) -> list[dict[str, Any]]:
    return await data.list_treatments(principal)


@router.post(
    "/treatments",
    status_code=status.HTTP_201_CREATED,
    response_model=s.TreatmentOut,
    responses=_ERRORS,
)
async def create_treatment(
    principal: FullPerson, data: Data, body: s.TreatmentCreate
) -> dict[str, Any]:
    return await data.create_treatment(principal, body)


# --- staff -------------------------------------------------------------------------------


@router.get("/users", response_model=list[s.StaffOut], responses=_ERRORS)
async def list_staff(principal: FullPerson, staff: Staff) -> list[dict[str, Any]]:
    return await staff.list(principal)


@router.post(
    "/users",
    status_code=status.HTTP_201_CREATED,
    response_model=s.StaffOut,
    responses={**_ERRORS, 409: {"description": "Already a member"}},
)
async def create_staff(principal: FullPerson, staff: Staff, body: s.StaffCreate) -> dict[str, Any]:
    """Add a person to the clinic's staff. A new account gets a password-setup link by
    mail; the administrator never sees a password."""
    return await staff.create(principal, body)


@router.patch(
    "/users/{user_id}",
    response_model=s.StaffOut,
    responses={**_ERRORS, 409: {"description": "Own membership, or the last administrator"}},
)
async def update_staff(
    principal: FullPerson, staff: Staff, user_id: uuid.UUID, body: s.StaffUpdate
) -> dict[str, Any]:
    """Change a member's role or (de)activate them; their sessions end at once."""
    return await staff.update(principal, user_id, body)


# --- security operations ------------------------------------------------------------------

security = APIRouter(prefix="/api/v1/security", tags=["security operations"])


async def get_authorizer(request: Request) -> Authorizer:
    authorizer: Authorizer = request.app.state.services.authorizer
    return authorizer


async def get_fields(request: Request) -> FieldEncryption:
    fields: FieldEncryption = request.app.state.services.fields
    return fields


@security.post("/encryption/test", response_model=s.EncryptionTestOut, responses=_ERRORS)
async def encryption_test(
    principal: FullPerson,
    authorizer: Annotated[Authorizer, Depends(get_authorizer)],
    fields: Annotated[FieldEncryption, Depends(get_fields)],
    body: s.EncryptionTestIn,
) -> dict[str, Any]:
    """Encrypt and decrypt ``data`` in memory with the active key (the clinic's field key;
    the KEK for platform administrators). The data is never stored or logged."""
    await authorizer.require(principal, Permission.ENCRYPTION_TEST)
    return {"ok": True, "key_id": await fields.self_test(principal.clinic_id, body.data)}
