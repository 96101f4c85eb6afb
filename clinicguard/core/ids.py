"""Identifiers: UUIDs for resources, opaque random strings for request ids."""

from __future__ import annotations

import re
import secrets
import uuid

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


def new_id() -> uuid.UUID:
    """A random (v4) UUID: ids are never guessable from one another."""
    return uuid.uuid4()


def new_request_id() -> str:
    return secrets.token_hex(16)


def is_acceptable_request_id(value: str) -> bool:
    """A forwarded request id is kept only if it is short and made of safe characters
    (it ends up in logs and headers; anything else could inject or flood them)."""
    return bool(_REQUEST_ID.fullmatch(value))
