"""CPF check digits, normalization and generation."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clinicguard.clinic.cpf import format_cpf, generate_cpf, is_valid_cpf, normalize_cpf


@pytest.mark.parametrize("cpf", ["529.982.247-25", "52998224725", "111.444.777-35", "11144477735"])
def test_known_valid_cpfs(cpf: str) -> None:
    assert is_valid_cpf(cpf)


@pytest.mark.parametrize(
    "cpf",
    [
        "529.982.247-24",  # wrong second digit
        "529.982.247-15",  # wrong first digit
        "111.111.111-11",  # repeated digits pass the arithmetic but are never issued
        "000.000.000-00",
        "5299822472",  # too short
        "529982247250",  # too long
        "529.982.247-2a",
        "529 982 247 25",
        "",
        "１１１４４４７７７３５",  # full-width digits are not ASCII digits
    ],
)
def test_invalid_cpfs(cpf: str) -> None:
    assert not is_valid_cpf(cpf)


@given(st.integers(min_value=0, max_value=2**32))
def test_generated_cpfs_are_valid_in_both_forms(seed: int) -> None:
    cpf = generate_cpf(random.Random(seed))
    assert len(cpf) == 11
    assert is_valid_cpf(cpf)
    assert is_valid_cpf(format_cpf(cpf))
    assert normalize_cpf(format_cpf(cpf)) == cpf


@given(st.integers(min_value=0, max_value=2**32), st.integers(min_value=9, max_value=10))
def test_changing_a_check_digit_breaks_the_check(seed: int, position: int) -> None:
    """The check digits are determined by the base digits (the mod-11 scheme does not catch
    every single-digit change of the base, so only this is a property)."""
    cpf = generate_cpf(random.Random(seed))
    digit = (int(cpf[position]) + 1) % 10
    tampered = cpf[:position] + str(digit) + cpf[position + 1 :]
    assert not is_valid_cpf(tampered)


@given(st.text(max_size=30))
def test_validator_never_raises(value: str) -> None:
    is_valid_cpf(value)
