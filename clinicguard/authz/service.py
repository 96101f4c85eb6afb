"""Asking the policy on behalf of one request: API-key scopes first, then the engine; every
denial is a typed security event naming the rule (or the default deny) that made it. An
allowed access is recorded by the feature that performs it, in the access's own
transaction, with the decision (a break-glass decision puts it in the review queue)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clinicguard.authz.engine import PolicyEngine
from clinicguard.authz.interfaces import (
    AccessDenied,
    Condition,
    Decision,
    Permission,
    PolicyContext,
)
from clinicguard.core.errors import FieldError
from clinicguard.core.events import (
    DetailValue,
    Outcome,
    SecurityEvent,
    SecurityEventSink,
    SecurityEventType,
    Severity,
)
from clinicguard.core.masking import mask
from clinicguard.core.principal import Principal

API_KEY_SCOPE_RULE = "api-key-scope"
DEFAULT_DENY = "default-deny"

Facts = Mapping[Condition, bool]


class Authorizer:
    def __init__(self, engine: PolicyEngine, events: SecurityEventSink) -> None:
        self.engine = engine
        self._events = events

    def decide(
        self, principal: Principal, permission: Permission, facts: Facts | None = None
    ) -> Decision:
        role = str(principal.role)
        if principal.auth_method == "api_key" and permission not in principal.scopes:
            return Decision(
                False, permission, role, API_KEY_SCOPE_RULE, "the API key's scopes exclude it"
            )
        return self.engine.decide(role, permission, PolicyContext(dict(facts or {})))

    def could_allow(self, principal: Principal, permission: Permission) -> bool:
        if principal.auth_method == "api_key" and permission not in principal.scopes:
            return False
        return self.engine.could_allow(str(principal.role), permission)

    async def require(
        self,
        principal: Principal,
        permission: Permission,
        facts: Facts | None = None,
        *,
        target: Mapping[str, DetailValue] | None = None,
        forbidden_fields: tuple[str, ...] = (),
    ) -> Decision:
        """The allow decision, or AccessDenied (403) after recording the denial.
        ``target`` names what was asked for (ids, never data); ``forbidden_fields`` are
        named in the answer (a change touching fields the caller may not change)."""
        decision = self.decide(principal, permission, facts)
        if not decision.allowed:
            raise await self.denied(principal, decision, target, forbidden_fields)
        return decision

    async def require_possible(
        self,
        principal: Principal,
        permission: Permission,
        target: Mapping[str, DetailValue] | None = None,
    ) -> None:
        """403 at once when no facts could allow ``permission`` to this principal (before
        anything is looked up, so the answer says nothing about what exists)."""
        if not self.could_allow(principal, permission):
            raise await self.denied(principal, self.decide(principal, permission), target, ())

    async def denied(
        self,
        principal: Principal,
        decision: Decision,
        target: Mapping[str, DetailValue] | None,
        forbidden_fields: tuple[str, ...],
    ) -> AccessDenied:
        """Record the denial and return the error to raise."""
        await self._record(
            SecurityEventType.AUTHZ_ACCESS_DENIED,
            Outcome.DENIED,
            Severity.LOW,
            principal,
            {
                "permission": decision.permission,
                "role": decision.role,
                "rule": decision.rule or DEFAULT_DENY,
                "reason": decision.reason,
                "fields": ",".join(forbidden_fields) or None,
                **(target or {}),
            },
        )
        if forbidden_fields:
            return AccessDenied(
                "You may not change these fields: " + ", ".join(forbidden_fields) + ".",
                errors=[
                    FieldError(f"body.{name}", "You may not change this field.")
                    for name in forbidden_fields
                ],
            )
        return AccessDenied()

    async def _record(
        self,
        kind: SecurityEventType,
        outcome: Outcome,
        severity: Severity,
        principal: Principal,
        details: Mapping[str, DetailValue],
    ) -> None:
        await self._events.record(
            SecurityEvent.by(
                principal,
                kind,
                outcome,
                severity,
                {k: v for k, v in details.items() if v is not None},
            )
        )


def shape(values: Mapping[str, Any], decision: Decision) -> dict[str, Any]:
    """An answer as the decision's obligations allow: hidden fields absent, masked fields
    masked (None stays None: that nothing is stored is not a secret)."""
    obligations = decision.obligations
    shaped: dict[str, Any] = {}
    for name, value in values.items():
        if name in obligations.hide:
            continue
        masked = name in obligations.mask and isinstance(value, str)
        shaped[name] = mask(name, value) if masked else value
    return shaped
