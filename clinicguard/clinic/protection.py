"""The clinic's classified columns, sealed and opened in their place (every writer of
clinical rows goes through here: the services, the demo seed and the tests' factories)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from clinicguard.clinic.cpf import normalize_cpf
from clinicguard.clinic.models import BINARY_COLUMNS, ENCRYPTED, Sensitivity
from clinicguard.crypto.fields import Place
from clinicguard.crypto.service import FieldEncryption


def subject_of(table: str, row: Any, sensitivity: Sensitivity) -> uuid.UUID | None:
    """The patient whose own key seals a highly sensitive value (None: the clinic's key)."""
    if sensitivity is not Sensitivity.HIGHLY_SENSITIVE:
        return None
    subject: uuid.UUID = row.id if table == "patients" else row.patient_id
    return subject


async def seal_into(
    fields: FieldEncryption, table: str, row: Any, values: Mapping[str, Any]
) -> None:
    """Set ``values`` on ``row`` (which has its clinic and id), encrypting the classified
    ones; patients' CPF and e-mail blind indexes follow their values."""
    encrypted = ENCRYPTED[table]
    for name, value in values.items():
        stored = value
        if name in encrypted:
            stored = await fields.seal(
                Place(row.clinic_id, table, name, row.id),
                value,
                subject=subject_of(table, row, encrypted[name]),
            )
        setattr(row, name, stored)
    if table == "patients":
        if "cpf" in values:
            row.cpf_index = await fields.blind_index(
                row.clinic_id, "cpf", normalize_cpf(values["cpf"])
            )
        if "email" in values:
            email = values["email"]
            row.email_index = (
                None
                if email is None
                else await fields.blind_index(row.clinic_id, "email", email.strip().lower())
            )


async def open_from(
    fields: FieldEncryption, table: str, row: Any, names: Iterable[str]
) -> dict[str, Any]:
    """``names`` of ``row``, the classified ones decrypted (only those asked for: a hidden
    field is never decrypted)."""
    encrypted = ENCRYPTED[table]
    values: dict[str, Any] = {}
    sealed: dict[str, tuple[bytes | None, uuid.UUID | None, bool]] = {}
    for name in names:
        if name in encrypted:
            subject = subject_of(table, row, encrypted[name])
            sealed[name] = (getattr(row, name), subject, (table, name) in BINARY_COLUMNS)
        values[name] = getattr(row, name)
    if sealed:
        values.update(await fields.open_row(row.clinic_id, table, row.id, sealed))
    return values
