"""The policy engine: loads the policy data, checks it, and decides.

Deny wins over allow; the first matching allow decides (its obligations apply); nothing
matching is a deny; an unknown permission is a deny. Every decision names the rule that
made it, so denials can be explained and audited.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinicguard.authz.interfaces import (
    KNOWN_FIELDS,
    AuditLevel,
    Condition,
    Decision,
    Obligations,
    Permission,
    PolicyContext,
    PolicyError,
)
from clinicguard.core.principal import Role

DEFAULT_POLICY = Path(__file__).resolve().parent / "policy.toml"
_RULE_KEYS = {
    "id",
    "roles",
    "effect",
    "permissions",
    "conditions",
    "hide",
    "mask",
    "audit",
    "review",
    "note",
}


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    roles: frozenset[str]
    allow: bool
    permissions: frozenset[Permission]
    conditions: tuple[Condition, ...]
    obligations: Obligations
    note: str = ""

    def applies(self, permission: Permission, context: PolicyContext) -> bool:
        return permission in self.permissions and all(context.holds(c) for c in self.conditions)


@dataclass(frozen=True, slots=True)
class TraceStep:
    """One rule considered for an explanation."""

    rule: str
    effect: str
    matched: bool
    why: str


def _names(raw: Any, where: str) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise PolicyError(f"{where}: expected a list of names")
    return raw


class PolicyEngine:
    def __init__(
        self, roles: Mapping[str, tuple[bool, tuple[str, ...]]], rules: Sequence[Rule]
    ) -> None:
        self._roles = dict(roles)
        self.rules = tuple(rules)
        self._lineage = {role: self._ancestry(role, ()) for role in self._roles}

    @classmethod
    def load(cls, path: Path = DEFAULT_POLICY) -> PolicyEngine:
        """Read and check policy data; raises PolicyError naming the first problem."""
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise PolicyError(f"cannot read the policy: {exc}") from exc
        return cls.from_data(data)

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> PolicyEngine:
        raw_roles = data.get("roles")
        if not isinstance(raw_roles, dict) or not raw_roles:
            raise PolicyError("the policy has no [roles]")
        roles: dict[str, tuple[bool, tuple[str, ...]]] = {}
        for name, spec in raw_roles.items():
            if not isinstance(spec, dict):
                raise PolicyError(f"role {name}: expected a table")
            abstract = bool(spec.get("abstract", False))
            if not abstract and name not in {r.value for r in Role}:
                raise PolicyError(f"role {name}: not a role of the platform")
            roles[name] = (abstract, tuple(_names(spec.get("inherits", []), f"role {name}")))
        for name, (_, parents) in roles.items():
            for parent in parents:
                if parent not in roles:
                    raise PolicyError(f"role {name}: inherits unknown role {parent}")
        rules: list[Rule] = []
        seen: set[str] = set()
        for index, raw in enumerate(data.get("rules", [])):
            rules.append(cls._rule(raw, index, roles, seen))
        return cls(roles, rules)

    @staticmethod
    def _rule(raw: Any, index: int, roles: Mapping[str, Any], seen: set[str]) -> Rule:
        if not isinstance(raw, dict):
            raise PolicyError(f"rule #{index}: expected a table")
        rule_id = raw.get("id")
        if not isinstance(rule_id, str) or not rule_id or rule_id in seen:
            raise PolicyError(f"rule #{index}: missing or duplicate id")
        seen.add(rule_id)
        unknown_keys = set(raw) - _RULE_KEYS
        if unknown_keys:
            raise PolicyError(f"rule {rule_id}: unknown keys {sorted(unknown_keys)}")
        effect = raw.get("effect")
        if effect not in ("allow", "deny"):
            raise PolicyError(f"rule {rule_id}: effect must be allow or deny")
        rule_roles = _names(raw.get("roles"), f"rule {rule_id} roles")
        for role in rule_roles:
            if role not in roles:
                raise PolicyError(f"rule {rule_id}: unknown role {role}")
        try:
            permissions = frozenset(
                Permission(p) for p in _names(raw.get("permissions"), f"rule {rule_id}")
            )
            conditions = tuple(
                Condition(c) for c in _names(raw.get("conditions", []), f"rule {rule_id}")
            )
            audit = AuditLevel(raw.get("audit", "standard"))
        except ValueError as exc:
            raise PolicyError(f"rule {rule_id}: {exc}") from exc
        if not permissions:
            raise PolicyError(f"rule {rule_id}: no permissions")
        for kind in ("hide", "mask"):
            unknown = set(_names(raw.get(kind, []), f"rule {rule_id} {kind}")) - KNOWN_FIELDS
            if unknown:
                raise PolicyError(f"rule {rule_id}: {kind} names unknown fields {sorted(unknown)}")
        obligations = Obligations(
            hide=frozenset(_names(raw.get("hide", []), f"rule {rule_id} hide")),
            mask=frozenset(_names(raw.get("mask", []), f"rule {rule_id} mask")),
            audit=audit,
            review=bool(raw.get("review", False)),
        )
        if effect == "deny" and (conditions or obligations != Obligations()):
            # A deny with conditions could be read as "allow otherwise"; keep denies plain.
            raise PolicyError(f"rule {rule_id}: deny rules take no conditions or obligations")
        return Rule(
            rule_id,
            frozenset(rule_roles),
            effect == "allow",
            permissions,
            conditions,
            obligations,
            str(raw.get("note", "")),
        )

    def _ancestry(self, role: str, path: tuple[str, ...]) -> tuple[str, ...]:
        if role in path:
            raise PolicyError(f"role inheritance cycle: {' -> '.join((*path, role))}")
        lineage = [role]
        for parent in self._roles[role][1]:
            lineage.extend(r for r in self._ancestry(parent, (*path, role)) if r not in lineage)
        return tuple(lineage)

    @property
    def roles(self) -> list[str]:
        """The roles people hold (not the abstract ones), in policy order."""
        return [name for name, (abstract, _) in self._roles.items() if not abstract]

    def lineage(self, role: str) -> tuple[str, ...]:
        return self._lineage.get(role, ())

    def _candidates(self, role: str) -> Iterable[Rule]:
        lineage = set(self.lineage(role))
        return (rule for rule in self.rules if rule.roles & lineage)

    def decide(self, role: str, permission: str, context: PolicyContext | None = None) -> Decision:
        """Allow or deny ``permission`` for ``role`` given the request's facts."""
        context = context or PolicyContext()
        try:
            wanted = Permission(permission)
        except ValueError:
            return Decision(False, permission, role, None, "unknown permission")
        if role not in self._roles or self._roles[role][0]:
            return Decision(False, permission, role, None, "unknown role")
        candidates = list(self._candidates(role))
        for rule in candidates:
            if not rule.allow and rule.applies(wanted, context):
                return Decision(False, permission, role, rule.id, "denied by rule")
        for rule in candidates:
            if rule.allow and rule.applies(wanted, context):
                return Decision(
                    True, permission, role, rule.id, "allowed by rule", rule.obligations
                )
        return Decision(False, permission, role, None, "no rule allows it (deny by default)")

    def could_allow(self, role: str, permission: Permission) -> bool:
        """Whether any facts at all could make ``permission`` allowed for ``role`` (a role
        that can never read records is told 403 before anything is looked up)."""
        rules = [r for r in self._candidates(role) if permission in r.permissions]
        return any(r.allow for r in rules) and not any(not r.allow for r in rules)

    def explain(
        self, role: str, permission: str, context: PolicyContext | None = None
    ) -> tuple[Decision, list[TraceStep]]:
        """The decision and every rule of the role's lineage that lists the permission,
        with whether it matched and why not."""
        context = context or PolicyContext()
        steps: list[TraceStep] = []
        try:
            wanted: Permission | None = Permission(permission)
        except ValueError:
            wanted = None
        for rule in self._candidates(role):
            if wanted is None or wanted not in rule.permissions:
                continue
            missing = [c.value for c in rule.conditions if not context.holds(c)]
            why = "all conditions hold" if not missing else "missing: " + ", ".join(missing)
            steps.append(TraceStep(rule.id, "allow" if rule.allow else "deny", not missing, why))
        return self.decide(role, permission, context), steps

    def conditions_for(self, role: str, permission: Permission) -> list[tuple[Rule, bool]]:
        """(rule, allow) pairs of the role's lineage that list the permission."""
        return [(r, r.allow) for r in self._candidates(role) if permission in r.permissions]
