"""The trail's vocabulary: every security event maps to an entry, and details, reasons and
user agents are masked before they are written."""

from __future__ import annotations

import random
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clinicguard.audit.trail import (
    RiskLevel,
    entry_of,
    mask_details,
    mask_value,
    risk,
)
from clinicguard.clinic.cpf import generate_cpf
from clinicguard.core.events import Outcome, SecurityEvent, SecurityEventType, Severity


@pytest.mark.parametrize("kind", list(SecurityEventType))
def test_every_security_event_type_maps_to_an_entry(kind: SecurityEventType) -> None:
    event = SecurityEvent(kind, Outcome.SUCCESS, Severity.HIGH, details={"review": True})
    entry = entry_of(event)
    assert entry.event_type == kind
    assert entry.action
    assert len(entry.action) <= 16
    assert entry.resource_type
    assert len(entry.resource_type) <= 32
    assert entry.requires_review
    assert risk(entry, "physician")[1] in (RiskLevel.HIGH, RiskLevel.CRITICAL)


def test_severity_is_the_risk_floor_and_review_follows_it() -> None:
    low = entry_of(SecurityEvent(SecurityEventType.AUTH_LOGIN_SUCCESS, Outcome.SUCCESS))
    assert not low.requires_review
    assert risk(low, "physician")[1] in (RiskLevel.LOW, RiskLevel.MEDIUM)
    critical = entry_of(
        SecurityEvent(SecurityEventType.CRYPTO_DECRYPT_FAILED, Outcome.FAILURE, Severity.CRITICAL)
    )
    assert critical.requires_review
    assert critical.compliance
    assert risk(critical, None) == (max(risk(critical, None)[0], 75), RiskLevel.CRITICAL)


def test_patient_and_reason_leave_the_details() -> None:
    patient = uuid.uuid4()
    entry = entry_of(
        SecurityEvent(
            SecurityEventType.AUTHZ_ACCESS_DENIED,
            Outcome.DENIED,
            details={"patient_id": str(patient), "reason": "no rule", "rule": "default-deny"},
        )
    )
    assert entry.patient_id == patient
    assert entry.reason == "no rule"
    assert dict(entry.details) == {"patient_id": str(patient), "rule": "default-deny"}


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("CPF 529.982.247-25 na recepção", "CPF ***.982.247-** na recepção"),
        ("52998224725", "***.982.247-**"),
        ("ligar para (11) 98765-4321", "ligar para (**) *****-4321"),
        ("+5511987654321", "(**) *****-4321"),
        ("ana.souza@example.com escreveu", "a***@example.com escreveu"),
        ("nada aqui", "nada aqui"),
    ],
)
def test_identifiers_in_texts_are_masked(text: str, masked: str) -> None:
    assert mask_value(text) == masked


def test_ids_secrets_and_clinical_names() -> None:
    ids = ",".join(str(uuid.uuid4()) for _ in range(3))
    details = mask_details(
        {
            "patient_ids": ids,
            "prefix": "123456789012",
            "password": "hunter2-hunter2",
            "diagnosis": "Psoríase",
            "notes": "texto",
            "where": "query.q",
            "count": 3,
        }
    )
    assert details == {
        "patient_ids": ids,
        "prefix": "123456789012",
        "password": "[redacted]",
        "diagnosis": "[redacted]",
        "notes": "[redacted]",
        "where": "query.q",
        "count": 3,
    }


@given(st.integers(0, 2**32), st.text(max_size=40), st.text(max_size=40))
def test_no_cpf_survives_in_any_text(seed: int, before: str, after: str) -> None:
    cpf = generate_cpf(random.Random(seed))
    digits = "".join(c for c in cpf if c.isdigit())
    for form in (cpf, digits):
        out = mask_value(f"{before} {form} {after}")
        assert form not in out
