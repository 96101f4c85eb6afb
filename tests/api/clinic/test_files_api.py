"""Patients' files through the API: type by content, metadata stripped, stored encrypted,
served as attachments, governed like clinical records, bad files refused cleanly."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import select

from clinicguard.clinic.models import PatientFile
from clinicguard.store.interfaces import TenantContext
from tests.audit_trail import trail_events
from tests.conftest import AuthWorld
from tests.factories.clinical import ClinicSet, add_clinic_set


def jpeg_with_gps() -> bytes:
    exif = Image.Exif()
    exif[0x010E] = "ImageDescription-PHI-marker"
    exif[0x010F] = "Camera-of-the-clinic"
    out = io.BytesIO()
    Image.new("RGB", (32, 16), "teal").save(out, "JPEG", exif=exif.tobytes())
    return out.getvalue()


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(out, "PNG")
    return out.getvalue()


PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"


async def upload(
    world: AuthWorld, a: ClinicSet, who: str, data: bytes, name: str, *, index: int = 1
) -> httpx.Response:
    return await world.client.post(
        f"/api/v1/patients/{a.patients[index].id}/files",
        files={"file": (name, data, "application/octet-stream")},
        headers=await a.headers(world, who),
    )


async def test_a_photo_is_re_encoded_without_metadata_and_stored_encrypted(
    world: AuthWorld,
) -> None:
    """201; the stored bytes are ciphertext; the download is a JPEG without EXIF/GPS, as an
    attachment with nosniff; the name keeps one extension of the detected type."""
    a = await add_clinic_set(world)
    original = jpeg_with_gps()
    response = await upload(world, a, "physician", original, "Foto antes.JPEG")
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert created["media_type"] == "image/jpeg"
    assert created["filename"] == "Foto antes.jpg"
    async with world.services.db.transaction(TenantContext.system(a.clinic_id)) as s:
        row = await s.scalar(select(PatientFile))
    assert row is not None
    assert b"PHI-marker" not in row.content
    assert row.content[:1] == b"\x01"
    assert b"Foto" not in row.filename
    got = await world.client.get(
        f"/api/v1/files/{created['id']}", headers=await a.headers(world, "physician")
    )
    assert got.status_code == 200
    assert got.headers["content-type"] == "image/jpeg"
    assert got.headers["content-disposition"].startswith("attachment;")
    assert got.headers["x-content-type-options"] == "nosniff"
    assert b"PHI-marker" not in got.content
    with Image.open(io.BytesIO(got.content)) as image:
        assert image.format == "JPEG"
        assert not image.getexif()
    listed = await world.client.get(
        f"/api/v1/patients/{a.patients[1].id}/files", headers=await a.headers(world, "physician")
    )
    assert [f["filename"] for f in listed.json()] == ["Foto antes.jpg"]


@pytest.mark.parametrize(
    ("data", "name", "status", "signal"),
    [
        (b"", "vazio.jpg", 422, None),
        (b"MZ\x90\x00 not an image", "programa.jpg", 415, None),
        (b"<html><script>alert(1)</script></html>", "pagina.png", 415, None),
        (png(), "laudo.pdf.exe", 422, None),
        (png(), "foto.jpg", 422, None),  # the name says JPEG, the content is PNG
        (png() + b"<script>alert(1)</script>", "poliglota.png", 422, "upload.polyglot"),
        (
            PDF.replace(b"/Type/Catalog", b"/Type/Catalog/OpenAction<</S/JavaScript/JS(x)>>"),
            "ativo.pdf",
            422,
            "upload.pdf-active-content",
        ),
        (PDF + b"<html><body>x</body></html>", "misto.pdf", 422, "upload.polyglot"),
        (b"\xff\xd8\xff\xe0 truncated jpeg", "quebrado.jpg", 422, None),
    ],
)
async def test_bad_files_are_refused_and_nothing_is_stored(
    world: AuthWorld, data: bytes, name: str, status: int, signal: str | None
) -> None:
    """A clear problem answer, an attack-signal event where it is one, and no row."""
    a = await add_clinic_set(world)
    response = await upload(world, a, "physician", data, name)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    async with world.services.db.transaction(TenantContext.system(a.clinic_id)) as s:
        assert (await s.scalars(select(PatientFile))).all() == []
    events = await trail_events(
        world.services.db, types="input:attack:suspected", clinic_id=a.clinic_id
    )
    assert [e.details["detectors"] for e in events] == ([signal] if signal else [])


async def test_a_pdf_is_kept_as_sent(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    response = await upload(world, a, "physician", PDF, "exame de sangue.pdf")
    assert response.status_code == 201, response.text
    got = await world.client.get(
        f"/api/v1/files/{response.json()['id']}", headers=await a.headers(world, "physician")
    )
    assert got.content == PDF
    assert got.headers["content-type"] == "application/pdf"


async def test_files_follow_the_clinical_policy(world: AuthWorld) -> None:
    """Off the care team: 403 to upload, 404 for a file id (like a record out of reach);
    receptionist and clinic_admin: 403; another clinic: 404; the patient reads their
    own."""
    a = await add_clinic_set(world)
    b = await add_clinic_set(world)
    created = await upload(world, a, "physician", PDF, "laudo.pdf", index=0)
    assert created.status_code == 201
    file_id = created.json()["id"]
    for who in ("physician_off", "receptionist", "clinic_admin"):
        assert (await upload(world, a, who, PDF, "x.pdf")).status_code == 403, who
    assert (
        await world.client.get(
            f"/api/v1/files/{file_id}", headers=await a.headers(world, "physician_off")
        )
    ).status_code == 404
    assert (
        await world.client.get(
            f"/api/v1/files/{file_id}", headers=await b.headers(world, "physician")
        )
    ).status_code == 404
    own = await world.client.get(
        f"/api/v1/files/{file_id}", headers=await a.headers(world, "patient")
    )
    assert own.status_code == 200
    assert own.content == PDF


async def test_uploads_are_limited_to_ten_a_minute(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    codes = [(await upload(world, a, "physician", PDF, "l.pdf")).status_code for _ in range(11)]
    assert codes[:10] == [201] * 10
    assert codes[10] == 429


async def test_an_over_size_upload_is_413(world: AuthWorld) -> None:
    a = await add_clinic_set(world)
    big = b"%PDF-1.4\n" + b"0" * (world.services.settings.upload_max_bytes + 1) + b"%%EOF"
    response = await upload(world, a, "physician", big, "grande.pdf")
    assert response.status_code == 413
