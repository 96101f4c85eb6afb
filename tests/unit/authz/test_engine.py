"""The policy engine: deny by default, deny wins, first matching allow decides with its
obligations, and the shipped policy says what the role intent says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clinicguard.authz.engine import PolicyEngine
from clinicguard.authz.interfaces import (
    AuditLevel,
    Condition,
    Permission,
    PolicyContext,
    PolicyError,
)
from clinicguard.authz.matrix import permission_matrix
from clinicguard.core.principal import Role

ENGINE = PolicyEngine.load()
C = Condition
CARE = {C.CARE_TEAM: True, C.WITHIN_CLINIC_HOURS: True}
CLINICAL_FIELDS = {"allergies", "medications", "medical_conditions"}
ROOT = Path(__file__).resolve().parents[3]


def decide(role: str, permission: str, **facts: bool) -> Any:
    return ENGINE.decide(role, permission, PolicyContext({C(k): v for k, v in facts.items()}))


# (role, permission, facts, allowed) from the role intent of the authorization issue.
INTENT = [
    # platform_admin: clinics and platform security, no patient data
    ("platform_admin", "clinics:manage", {}, True),
    ("platform_admin", "patients:read", {"emergency_grant": True}, False),
    ("platform_admin", "records:read", {"care_team": True, "within_clinic_hours": True}, False),
    # clinic_admin: staff, settings, audit, API keys; demographics; never clinical records
    ("clinic_admin", "users:manage", {}, True),
    ("clinic_admin", "api_keys:manage", {}, True),
    ("clinic_admin", "audit:read", {}, True),
    ("clinic_admin", "patients:read", {}, True),
    ("clinic_admin", "records:read", {"emergency_grant": True}, False),
    ("clinic_admin", "prescriptions:read", {}, False),
    # physician: clinical access for their care team, during clinic hours, or break-glass
    ("physician", "records:read", {"care_team": True, "within_clinic_hours": True}, True),
    ("physician", "records:read", {"care_team": True}, False),
    ("physician", "records:read", {"within_clinic_hours": True}, False),
    ("physician", "records:read", {"emergency_grant": True}, True),
    ("physician", "prescriptions:create", {"care_team": True, "within_clinic_hours": True}, True),
    ("physician", "patients:read", {}, True),
    ("physician", "emergency:request", {}, True),
    ("physician", "users:manage", {}, False),
    ("physician", "treatments:perform", {}, False),
    ("physician", "treatments:perform", {"certified_for_treatment": True}, True),
    # nurse: like physician without prescribing; may add (nursing) notes
    ("nurse", "nursing_notes:create", {"care_team": True, "within_clinic_hours": True}, True),
    ("nurse", "records:create", {"care_team": True, "within_clinic_hours": True}, False),
    ("physician", "records:create", {"care_team": True, "within_clinic_hours": True}, True),
    ("physician", "records:create", {"care_team": True}, False),
    ("nurse", "prescriptions:create", {"care_team": True, "within_clinic_hours": True}, False),
    ("nurse", "prescriptions:create", {"emergency_grant": True}, False),
    # receptionist: demographics (CPF masked) and appointments, no clinical fields
    ("receptionist", "patients:create", {"basic_info_only": True}, True),
    ("receptionist", "patients:create", {}, False),
    # integration (API keys): demographics and scheduling, never clinical content
    ("integration", "patients:read", {}, True),
    ("integration", "appointments:create", {}, True),
    ("integration", "records:read", {"care_team": True, "within_clinic_hours": True}, False),
    ("integration", "patients:update", {"basic_info_only": True}, True),
    ("receptionist", "appointments:update", {}, True),
    # an appointment is a care relation: clinicians book only patients already in their care
    ("physician", "appointments:create", {}, False),
    ("physician", "appointments:create", {"care_team": True}, True),
    ("nurse", "appointments:update", {"emergency_grant": True}, True),
    ("nurse", "appointments:read", {}, True),
    ("receptionist", "records:read", {"care_team": True, "within_clinic_hours": True}, False),
    ("receptionist", "patients:update", {}, False),
    ("receptionist", "patients:update", {"basic_info_only": True}, True),
    # compliance_officer: read-only masked, audit, consents, data-subject requests
    ("compliance_officer", "audit:read", {}, True),
    ("compliance_officer", "dsr:manage", {}, True),
    ("compliance_officer", "patients:create", {}, False),
    ("compliance_officer", "patients:update", {"compliance_related_only": True}, True),
    ("compliance_officer", "records:create", {}, False),
    # patient: own data only
    ("patient", "records:read", {"self": True}, True),
    ("patient", "records:read", {}, False),
    ("patient", "access_log:read", {"self": True}, True),
    ("patient", "patients:list", {"self": True}, False),
    ("patient", "records:create", {"self": True}, False),
]


@pytest.mark.parametrize(("role", "permission", "facts", "allowed"), INTENT)
def test_role_intent(role: str, permission: str, facts: dict[str, bool], allowed: bool) -> None:
    assert decide(role, permission, **facts).allowed is allowed


def test_obligations_shape_what_each_role_sees() -> None:
    receptionist = decide("receptionist", "patients:read")
    assert receptionist.obligations.mask == {"cpf"}
    assert receptionist.obligations.hide >= CLINICAL_FIELDS
    physician_outside = decide("physician", "patients:read")
    assert physician_outside.obligations.hide >= CLINICAL_FIELDS
    physician_caring = decide("physician", "patients:read", **CARE)
    assert physician_caring.obligations.hide == frozenset()
    compliance = decide("compliance_officer", "patients:read")
    assert {"full_name", "cpf"} <= compliance.obligations.mask
    records_meta = decide("compliance_officer", "records:read")
    assert {"diagnosis", "notes", "treatment"} <= records_meta.obligations.hide


def test_break_glass_access_is_reviewed_and_audited_high() -> None:
    decision = decide("nurse", "records:read", emergency_grant=True)
    assert decision.allowed
    assert decision.rule == "clinician-clinical-emergency"
    assert decision.obligations.review is True
    assert decision.obligations.audit is AuditLevel.HIGH
    # with the care team the ordinary rule comes first: no review needed
    assert (
        decide(
            "nurse",
            "records:read",
            emergency_grant=True,
            **{"care_team": True, "within_clinic_hours": True},
        ).obligations.review
        is False
    )


@pytest.mark.parametrize("permission", ["patients:delete", "records:*", "", "PATIENTS:READ"])
def test_unknown_permissions_are_denied(permission: str) -> None:
    decision = decide("physician", permission, **CARE)
    assert not decision.allowed
    assert decision.reason == "unknown permission"


@pytest.mark.parametrize("role", ["staff", "clinician", "root", "system", ""])
def test_unknown_and_abstract_roles_are_denied(role: str) -> None:
    assert not decide(role, "clinic:read").allowed


def test_every_role_is_in_the_policy() -> None:
    assert set(ENGINE.roles) == {r.value for r in Role}


FACTS = st.dictionaries(st.sampled_from(list(Condition)), st.booleans())


@given(
    role=st.sampled_from(ENGINE.roles),
    permission=st.sampled_from(list(Permission)),
    facts=FACTS,
    extra=FACTS,
)
def test_more_facts_never_turn_an_allow_into_a_deny(
    role: str, permission: Permission, facts: dict[Condition, bool], extra: dict[Condition, bool]
) -> None:
    """Conditions only ever enable allow rules: holding more facts cannot lose access."""
    before = ENGINE.decide(role, permission, PolicyContext(facts))
    merged = {**facts, **{k: v for k, v in extra.items() if v}}
    after = ENGINE.decide(role, permission, PolicyContext(merged))
    if before.allowed:
        assert after.allowed


@given(
    role=st.sampled_from(ENGINE.roles), permission=st.sampled_from(list(Permission)), facts=FACTS
)
def test_an_explicit_deny_wins_whatever_the_facts(
    role: str, permission: Permission, facts: dict[Condition, bool]
) -> None:
    denied = any(not allow for _, allow in ENGINE.conditions_for(role, permission))
    decision = ENGINE.decide(role, permission, PolicyContext(facts))
    if denied:
        assert not decision.allowed
        assert decision.rule is not None


def _data(**rule: Any) -> dict[str, Any]:
    base = {"id": "r", "roles": ["nurse"], "effect": "allow", "permissions": ["records:read"]}
    return {"roles": {"nurse": {"inherits": []}}, "rules": [{**base, **rule}]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_data(permissions=["records:erase"]), "records:erase"),
        (_data(conditions=["on_duty"]), "on_duty"),
        (_data(roles=["janitor"]), "unknown role"),
        (_data(effect="maybe"), "effect"),
        (_data(colour="red"), "unknown keys"),
        (_data(effect="deny", conditions=["care_team"]), "deny rules"),
        (_data(audit="extreme"), "extreme"),
        (_data(permissions=[]), "no permissions"),
        (_data(hide=["alergies"]), "unknown fields"),
        (_data(mask=["cpf", "passport"]), "unknown fields"),
        ({"roles": {"wizard": {}}, "rules": []}, "not a role"),
        ({"roles": {"nurse": {"inherits": ["ghost"]}}, "rules": []}, "unknown role ghost"),
        ({"roles": {}, "rules": []}, "no [roles]"),
    ],
)
def test_malformed_policy_data_is_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(message)):
        PolicyEngine.from_data(data)


def test_inheritance_cycles_are_refused() -> None:
    data = {
        "roles": {
            "a": {"abstract": True, "inherits": ["b"]},
            "b": {"abstract": True, "inherits": ["a"]},
        },
        "rules": [],
    }
    with pytest.raises(PolicyError, match="cycle"):
        PolicyEngine.from_data(data)


def test_duplicate_rule_ids_are_refused() -> None:
    data = _data()
    data["rules"].append(dict(data["rules"][0]))
    with pytest.raises(PolicyError, match="duplicate"):
        PolicyEngine.from_data(data)


def test_the_committed_permission_matrix_matches_the_policy() -> None:
    committed = (ROOT / "docs" / "permission-matrix.md").read_text()
    assert committed == permission_matrix(ENGINE), (
        "run: clinicguard policy matrix > docs/permission-matrix.md"
    )


def test_explain_names_the_rules_and_exits_by_decision() -> None:
    run = [
        sys.executable,
        "-m",
        "clinicguard",
        "policy",
        "explain",
        "--role",
        "physician",
        "--permission",
        "records:read",
    ]
    denied = subprocess.run(
        [*run, "--context", '{"care_team": true}'],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert denied.returncode == 1
    assert "DENY" in denied.stdout
    assert "missing: within_clinic_hours" in denied.stdout
    allowed = subprocess.run(
        [*run, "--context", '{"care_team": true, "within_clinic_hours": true}'],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert allowed.returncode == 0
    assert "ALLOW" in allowed.stdout
    assert "clinician-clinical-care-team" in allowed.stdout
    bad = subprocess.run(
        [*run, "--context", '{"on_duty": true}'],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
