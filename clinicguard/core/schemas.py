"""Base for request bodies: unknown fields are refused (422), never silently dropped; and
the plain-text field type that refuses control characters."""

from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def contains_control_characters(value: str) -> bool:
    """Control (Cc) and format (Cf: bidi overrides, zero-width) characters: NUL is refused
    by PostgreSQL outright; the others hide or reorder text in logs and screens."""
    return any(unicodedata.category(c) in ("Cc", "Cf") for c in value)


def _no_control_characters(value: str) -> str:
    if contains_control_characters(value):
        raise ValueError("Must not contain control or invisible formatting characters.")
    return value


PlainText = Annotated[str, AfterValidator(_no_control_characters)]
