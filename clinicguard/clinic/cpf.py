"""CPF (Cadastro de Pessoas Físicas): check digits, normalization, generation."""

from __future__ import annotations

import random
import re

_NON_DIGITS = re.compile(r"[^0-9]")
# ASCII digits only: \d would also accept other scripts' digits (full-width, Devanagari).
_FORMATTED = re.compile(r"^[0-9]{3}\.?[0-9]{3}\.?[0-9]{3}-?[0-9]{2}$")


def _check_digit(digits: list[int]) -> int:
    weight = len(digits) + 1
    total = sum(d * (weight - i) for i, d in enumerate(digits))
    rest = (total * 10) % 11
    return 0 if rest == 10 else rest


def normalize_cpf(value: str) -> str:
    """Digits only (``123.456.789-09`` -> ``12345678909``); shape is not checked here."""
    return _NON_DIGITS.sub("", value)


def is_valid_cpf(value: str) -> bool:
    """True for an 11-digit CPF (bare or formatted) whose two check digits are right.
    Repeated-digit numbers (``111.111.111-11``) pass the arithmetic but are not issued."""
    if not _FORMATTED.fullmatch(value.strip()):
        return False
    digits = [int(c) for c in normalize_cpf(value)]
    if len(set(digits)) == 1:
        return False
    return digits[9] == _check_digit(digits[:9]) and digits[10] == _check_digit(digits[:10])


def format_cpf(value: str) -> str:
    d = normalize_cpf(value)
    return f"{d[:3]}.{d[3:6]}.{d[6:9]}-{d[9:]}"


def generate_cpf(rng: random.Random) -> str:
    """A random valid CPF (11 digits), for demo and test data."""
    while True:
        base = [rng.randrange(10) for _ in range(9)]
        if len(set(base)) > 1:
            break
    base.append(_check_digit(base))
    base.append(_check_digit(base))
    return "".join(map(str, base))
