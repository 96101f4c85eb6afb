"""Masking of identifiers for roles that may know a value exists but not read it.

Masks keep just enough to tell records apart (the middle of a CPF, the last four digits of a
phone, the first letter and domain of an email, a name's initials); everything else is
replaced. Masking happens on the plaintext, after decryption, and never for a hidden field
(hidden fields are not read at all).
"""

from __future__ import annotations

import re
from collections.abc import Callable

_DIGITS = re.compile(r"\D")


def mask_cpf(value: str) -> str:
    """``***.456.789-**``: the middle six digits of eleven."""
    digits = _DIGITS.sub("", value)
    if len(digits) != 11:
        return "***.***.***-**"
    return f"***.{digits[3:6]}.{digits[6:9]}-**"


def mask_phone(value: str) -> str:
    """``(**) *****-1234``: the last four digits."""
    digits = _DIGITS.sub("", value)
    if len(digits) < 8:
        return "(**) *****-****"
    return f"(**) *****-{digits[-4:]}"


def mask_email(value: str) -> str:
    """``j***@domain.com``: the first character of the local part and the domain."""
    local, at, domain = value.partition("@")
    if not at or not local or not domain:
        return "***"
    return f"{local[0]}***@{domain}"


def mask_name(value: str) -> str:
    """``M. S. T.``: initials only."""
    return " ".join(f"{word[0].upper()}." for word in value.split() if word[:1].isalpha())


def mask_text(_value: str) -> str:
    """Free text shows only that something is there."""
    return "***"


#: How each maskable field is masked (other fields fall back to mask_text).
MASKS: dict[str, Callable[[str], str]] = {
    "cpf": mask_cpf,
    "phone": mask_phone,
    "email": mask_email,
    "full_name": mask_name,
}


def mask(field: str, value: str) -> str:
    return MASKS.get(field, mask_text)(value)
