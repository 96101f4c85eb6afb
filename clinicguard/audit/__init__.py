"""The audit trail. For now: the durable store of security events."""
