"""Base for request bodies: unknown fields are refused (422), never silently dropped; and
the plain-text field type that refuses control characters."""

from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _no_control_characters(value: str) -> str:
    # NUL and other control characters have no place in names and identifiers (PostgreSQL
    # refuses NUL outright; others hide text in logs and terminals).
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ValueError("Must not contain control characters.")
    return value


PlainText = Annotated[str, AfterValidator(_no_control_characters)]
