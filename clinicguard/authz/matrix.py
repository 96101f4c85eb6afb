"""The permission matrix (roles x permissions, with conditions), generated from the policy
into docs/permission-matrix.md; a test keeps the committed file equal to the policy."""

from __future__ import annotations

from clinicguard.authz.engine import PolicyEngine
from clinicguard.authz.interfaces import Permission


def _cell(engine: PolicyEngine, role: str, permission: Permission) -> str:
    rules = engine.conditions_for(role, permission)
    if any(not allow for _, allow in rules):
        return "denied"
    parts = []
    for rule, _ in rules:
        text = " and ".join(c.value for c in rule.conditions) or "yes"
        extras = []
        if rule.obligations.mask:
            extras.append("masked: " + ", ".join(sorted(rule.obligations.mask)))
        if rule.obligations.hide:
            extras.append("hidden: " + ", ".join(sorted(rule.obligations.hide)))
        if rule.obligations.review:
            extras.append("reviewed")
        parts.append(text + (f" ({'; '.join(extras)})" if extras else ""))
    return " / ".join(parts) if parts else "—"


def permission_matrix(engine: PolicyEngine) -> str:
    """Markdown: one table per resource; a cell lists the alternatives that allow it
    (conditions, masks, hidden fields), first match first."""
    lines = [
        "# Permission matrix",
        "",
        "Generated from `clinicguard/authz/policy.toml` by `clinicguard policy matrix`; do not",
        "edit by hand (a test compares this file with the policy). A cell lists the",
        "alternatives that allow the action, first match first: `yes` (always), the",
        "conditions that must all hold, and the obligations (masked or hidden fields,",
        "reviewed access). `—` is deny by default; `denied` is an explicit deny rule.",
        "",
    ]
    roles = engine.roles
    resources: dict[str, list[Permission]] = {}
    for permission in Permission:
        resources.setdefault(permission.value.split(":")[0], []).append(permission)
    for resource, permissions in resources.items():
        lines += [
            f"## {resource}",
            "",
            "| action | " + " | ".join(roles) + " |",
            "|---|" + "---|" * len(roles),
        ]
        for permission in permissions:
            cells = [_cell(engine, role, permission) for role in roles]
            lines.append(f"| {permission.value.split(':')[1]} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
