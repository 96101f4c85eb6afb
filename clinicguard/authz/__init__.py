"""Authorization: the policy engine (roles, permissions, conditions, obligations)."""
