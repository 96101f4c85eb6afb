"""The password policy: every broken rule named at once, clinic overrides that only tighten,
and the breached-password checks (offline corpus, k-anonymity range API), failing closed."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clinicguard.auth import policy as policy_module
from clinicguard.auth.interfaces import BreachCheckUnavailable
from clinicguard.auth.policy import (
    DEFAULT_CORPUS,
    MAX_PASSWORD_BYTES,
    OfflineBreachedPasswordChecker,
    PasswordPolicy,
    RangeApiBreachedPasswordChecker,
    check_password,
    personal_words,
    rule_violations,
)

LENGTH = "Must be at least 12 characters long."
UPPER = "Must contain an upper-case letter."
LOWER = "Must contain a lower-case letter."
DIGIT = "Must contain a digit."
SPECIAL = "Must contain a special character."
PERSONAL = "Must not contain your name, email or clinic name."
WEAK = "Is too easy to guess; use a longer passphrase."
BREACHED = "Appears in a known data breach; choose another."
UNCHECKED = "Could not be checked against known breaches right now; try again."
STRONG = "Tr0mbone#Lunar-Azul9"
RANGE_URL = "https://range.example/range/"
TIGHTENED = ("min_length", "min_strength", "history", "expiry_days")


def sha1(password: str) -> str:
    return hashlib.sha1(password.encode(), usedforsecurity=False).hexdigest().upper()


class RecordingChecker:
    """A breach source that answers as told and remembers what it was asked."""

    def __init__(self, *, breached: bool = False, unavailable: bool = False) -> None:
        self.breached = breached
        self.unavailable = unavailable
        self.asked: list[str] = []

    async def is_breached(self, password: str) -> bool:
        self.asked.append(password)
        if self.unavailable:
            raise BreachCheckUnavailable("down")
        return self.breached


def personal() -> list[str]:
    return personal_words(
        "Maria Conceição Souza", "maria.souza@clinica.example.com", ["Clínica Vida Plena"]
    )


# --- composition, personal data, strength ---------------------------------------------------


def test_every_broken_rule_is_named_at_once() -> None:
    """A password breaking all rules gets one reason per rule, not only the first."""
    reasons = rule_violations("conceicao", PasswordPolicy(), personal())
    assert reasons == [LENGTH, UPPER, DIGIT, SPECIAL, PERSONAL, WEAK]


@pytest.mark.parametrize(
    ("password", "expected"),
    [
        ("tr0mbone#lunar-azul9", [UPPER]),
        ("TR0MBONE#LUNAR-AZUL9", [LOWER]),
        ("Trombone#Lunar-Azul", [DIGIT]),
        ("Tr0mboneLunarAzul9x", [SPECIAL]),
        ("Tr0#Lu-a9", [LENGTH]),
    ],
)
def test_each_composition_rule_is_reported_alone(password: str, expected: list[str]) -> None:
    """Each composition rule is checked on its own (a strong password missing one class)."""
    reasons = rule_violations(password, PasswordPolicy(min_strength=0), personal())
    assert reasons == expected


def test_a_strong_password_passes() -> None:
    """A long, mixed, unpersonal passphrase breaks no rule."""
    assert rule_violations(STRONG, PasswordPolicy(), personal()) == []


@pytest.mark.parametrize(
    "password",
    [
        "Conceição-Tr0mbone#Lunar",  # name, with its accents
        "CONCEICAO-Tr0mbone#Lunar",  # name, accents dropped and upper-cased
        "Tr0mbone#Souza-Lunar",  # surname
        "Tr0mbone#maria-Lunar",  # email local part / first name
        "Tr0mbone#Plena-Lunar",  # clinic name
        "Tr0mbone#vída-Lunar",  # clinic name with an accent the clinic does not have
    ],
)
def test_personal_words_are_refused_accent_and_case_insensitively(password: str) -> None:
    """Name, email and clinic name are refused however they are accented or capitalised."""
    assert PERSONAL in rule_violations(password, PasswordPolicy(min_strength=0), personal())


def test_personal_words_come_from_name_email_and_clinic() -> None:
    """The personal words are folded to ASCII lower case; short words and titles are not."""
    words = personal_words("Dra. Ana Conceição", "ana.lu@x.example", ["Clínica São Luís"])
    assert "conceicao" in words
    assert "ana" in words
    assert "sao" in words
    assert "luis" in words
    assert "dra" not in words
    assert "clinica" not in words
    assert "lu" not in words


@pytest.mark.parametrize("password", ["TrombõneLunar9x", "ConceiçãoAzul42"])
def test_an_accented_letter_is_not_a_special_character(password: str) -> None:
    """Letters with diacritics are letters: they do not satisfy the special-character rule."""
    assert SPECIAL in rule_violations(password, PasswordPolicy(min_strength=0), [])


@pytest.mark.parametrize("password", ["Pássword1234", "Pãssword1234"])
def test_diacritics_do_not_hide_a_guessable_password(password: str) -> None:
    """An accent on a common password does not make it strong."""
    assert WEAK in rule_violations(password, PasswordPolicy(), [])


def test_zxcvbn_strength_is_enforced() -> None:
    """A password that satisfies composition but is guessable is refused as too weak."""
    assert rule_violations("Password123!", PasswordPolicy(), []) == [WEAK]
    assert rule_violations("Password123!", PasswordPolicy(min_strength=0), []) == []


def test_over_long_password_is_named_without_further_analysis() -> None:
    """Over the maximum length only the length is reported (nothing else is analysed)."""
    assert rule_violations("a" * 129, PasswordPolicy(), []) == [
        "Must be at most 128 characters long."
    ]


# --- clinic overrides only tighten -----------------------------------------------------------

override_values = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**6),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
override_keys = st.sampled_from(
    [
        *TIGHTENED,
        "max_length",
        "require_upper",
        "require_lower",
        "require_digit",
        "require_special",
        "unknown",
        "",
    ]
)
overrides_strategy = st.one_of(
    st.none(), st.dictionaries(override_keys, override_values, max_size=8)
)
base_policies = st.builds(
    PasswordPolicy,
    min_length=st.integers(8, 64),
    min_strength=st.integers(0, 4),
    history=st.integers(0, 24),
    expiry_days=st.integers(0, 365),
)
#: Production keeps expiry on (90 days); base 0 ("never") is covered by the tests below.
expiring_policies = base_policies.filter(lambda p: p.expiry_days > 0)


def assert_not_looser(result: PasswordPolicy, base: PasswordPolicy) -> None:
    assert result.min_length >= base.min_length
    assert result.min_strength >= base.min_strength
    assert result.history >= base.history
    if base.expiry_days > 0:
        assert 0 < result.expiry_days <= base.expiry_days
    else:
        assert result.expiry_days >= 0
    for name in (
        "max_length",
        "require_upper",
        "require_lower",
        "require_digit",
        "require_special",
    ):
        assert getattr(result, name) == getattr(base, name)


@given(base=expiring_policies, overrides=overrides_strategy)
def test_tightened_by_never_loosens(base: PasswordPolicy, overrides: dict[str, Any] | None) -> None:
    """No override (of any value or type) makes a rule weaker; flags cannot be switched off."""
    assert_not_looser(base.tightened_by(overrides), base)


@given(base=expiring_policies, overrides=st.lists(overrides_strategy, max_size=4))
def test_combined_takes_the_strictest(
    base: PasswordPolicy, overrides: list[dict[str, Any] | None]
) -> None:
    """A person at several clinics gets, rule by rule, the strictest of them all."""
    combined = base.combined(overrides)
    assert_not_looser(combined, base)
    singles = [base.tightened_by(o) for o in overrides] or [base]
    assert combined.min_length == max(p.min_length for p in singles)
    assert combined.min_strength == max(p.min_strength for p in singles)
    assert combined.history == max(p.history for p in singles)
    expiries = [p.expiry_days for p in singles if p.expiry_days > 0]
    assert combined.expiry_days == (min(expiries) if expiries else 0)
    assert combined == base.combined(list(reversed(overrides)))


def test_wrong_types_and_looser_values_are_ignored() -> None:
    """Strings, floats, booleans and looser numbers leave the policy as it was."""
    base = PasswordPolicy()
    hostile = {
        "min_length": "4",
        "min_strength": 1.5,
        "history": True,
        "expiry_days": 0,
        "require_upper": False,
        "max_length": 4096,
    }
    assert base.tightened_by(hostile) == base
    assert base.tightened_by({"min_length": 4, "history": 1, "expiry_days": 365}) == base
    assert base.tightened_by({"min_length": 16, "expiry_days": 30}) == PasswordPolicy(
        min_length=16, expiry_days=30
    )


@given(overrides=st.dictionaries(st.just("expiry_days"), st.integers(0, 10**6), max_size=1))
def test_no_expiry_base_accepts_a_positive_clinic_expiry(overrides: dict[str, int]) -> None:
    """With expiry off in settings (0), a clinic may turn it on with a period of 1 day to 10
    years; anything outside that is ignored (it is not a policy, it is a typo)."""
    result = PasswordPolicy(expiry_days=0).tightened_by(overrides)
    value = overrides.get("expiry_days", 0)
    assert result.expiry_days == (value if 1 <= value <= 3650 else 0)


@pytest.mark.parametrize("value", [-1, -90])
def test_negative_expiry_is_not_taken_as_stricter(value: int) -> None:
    """A negative expiry is not a valid (stricter) expiry: it is ignored like other junk."""
    result = PasswordPolicy(expiry_days=0).tightened_by({"expiry_days": value})
    assert result.expiry_days >= 0


def test_dataclass_has_the_specified_defaults() -> None:
    """The defaults are the specification's: 12-128, all classes, score 3, 5, 90 days."""
    policy = PasswordPolicy()
    assert {f.name: getattr(policy, f.name) for f in fields(policy)} == {
        "min_length": 12,
        "max_length": 128,
        "require_upper": True,
        "require_lower": True,
        "require_digit": True,
        "require_special": True,
        "min_strength": 3,
        "history": 5,
        "expiry_days": 90,
    }


# --- offline breached corpus -------------------------------------------------------------------

hashes_strategy = st.sets(
    st.binary(min_size=20, max_size=20).map(lambda b: b.hex().upper()), min_size=1, max_size=60
)


def write_corpus(directory: Path, hashes: Sequence[str], *, counts: bool) -> Path:
    path = directory / "corpus.txt"
    lines = [f"{h}:{i + 1}" if counts else h for i, h in enumerate(sorted(hashes))]
    path.write_text("\n".join(lines) + "\n")
    return path


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(present=hashes_strategy, absent=hashes_strategy, counts=st.booleans())
def test_offline_checker_finds_every_line_and_nothing_else(
    present: set[str], absent: set[str], counts: bool
) -> None:
    """Binary search over a sorted corpus (plain or HIBP HASH:COUNT) finds exactly its lines."""
    with tempfile.TemporaryDirectory() as tmp:
        checker = OfflineBreachedPasswordChecker(
            write_corpus(Path(tmp), sorted(present), counts=counts)
        )
        for digest in present:
            assert checker.contains(digest)
            assert checker.contains(digest.lower())
        for digest in absent - present:
            assert not checker.contains(digest)


@pytest.mark.parametrize("counts", [False, True])
def test_offline_checker_first_last_and_outside_lines(tmp_path: Path, counts: bool) -> None:
    """The first and last lines are found; hashes sorting before or after the corpus are not."""
    hashes = ["1" * 40, "5" * 40, "A" * 40]
    checker = OfflineBreachedPasswordChecker(write_corpus(tmp_path, hashes, counts=counts))
    assert checker.contains("1" * 40)
    assert checker.contains("A" * 40)
    assert checker.contains("5" * 40)
    assert not checker.contains("0" * 40)
    assert not checker.contains("F" * 40)
    assert not checker.contains("6" * 40)


def test_offline_checker_single_line_without_final_newline(tmp_path: Path) -> None:
    """A one-line corpus without a trailing newline still matches its only hash."""
    path = tmp_path / "one.txt"
    path.write_text("B" * 40 + ":3")
    checker = OfflineBreachedPasswordChecker(path)
    assert checker.contains("B" * 40)
    assert not checker.contains("C" * 40)
    assert not checker.contains("A" * 40)


def test_offline_checker_reads_hibp_crlf_lines(tmp_path: Path) -> None:
    """The Pwned Passwords download (HASH:COUNT with CRLF line ends) is read as it is."""
    password = "correct horse battery staple"
    hashes = sorted({sha1(password), "0" * 40, "F" * 40})
    path = tmp_path / "pwned.txt"
    path.write_bytes("".join(f"{h}:{i}\r\n" for i, h in enumerate(hashes, 1)).encode())
    checker = OfflineBreachedPasswordChecker(path)
    assert checker.contains(sha1(password))
    assert not checker.contains(sha1(password + "!"))


@pytest.mark.parametrize("password", ["Password123!", "Senha@2025", "123456"])
async def test_shipped_corpus_flags_common_passwords(password: str) -> None:
    """The corpus shipped with the package knows common and Brazilian passwords."""
    assert await OfflineBreachedPasswordChecker(DEFAULT_CORPUS).is_breached(password)


async def test_shipped_corpus_does_not_flag_a_random_passphrase() -> None:
    """A strong passphrase is not in the shipped corpus."""
    assert not await OfflineBreachedPasswordChecker(DEFAULT_CORPUS).is_breached(STRONG)


def test_shipped_corpus_is_sorted_uppercase_sha1() -> None:
    """The shipped corpus is in the format the binary search needs: sorted uppercase SHA-1."""
    lines = DEFAULT_CORPUS.read_text().splitlines()
    assert lines == sorted(lines)
    assert all(len(line) == 40 and line == line.upper() for line in lines)
    assert len(lines) == len(set(lines))


# --- k-anonymity range API ---------------------------------------------------------------------


def range_checker(handler: Any) -> RangeApiBreachedPasswordChecker:
    return RangeApiBreachedPasswordChecker(RANGE_URL, transport=httpx.MockTransport(handler))


async def test_range_api_sends_only_the_five_character_prefix() -> None:
    """Only the first 5 hex characters of the SHA-1 leave the process."""
    password = "Senha@2025"
    digest = sha1(password)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text=f"{digest[5:]}:42\r\n{'0' * 35}:0\r\n")

    checker = range_checker(handler)
    try:
        assert await checker.is_breached(password)
    finally:
        await checker.close()
    assert len(seen) == 1
    request = seen[0]
    assert request.method == "GET"
    assert str(request.url) == f"{RANGE_URL}{digest[:5]}"
    assert request.content == b""
    sent = str(request.url) + "".join(f"{k}:{v}" for k, v in request.headers.items())
    assert digest[5:] not in sent.upper()
    assert password not in sent
    assert request.headers["add-padding"] == "true"


async def test_range_api_padding_lines_do_not_count() -> None:
    """A padded answer line "SUFFIX:0" is not a breach; a missing suffix is not either."""
    password = STRONG
    digest = sha1(password)
    checker = range_checker(
        lambda request: httpx.Response(200, text=f"{'A' * 35}:7\r\n{digest[5:]}:0\r\n")
    )
    try:
        assert not await checker.is_breached(password)
        assert not await checker.is_breached("another passphrase entirely")
    finally:
        await checker.close()


async def test_range_api_lowercase_answer_matches() -> None:
    """Suffixes are compared case-insensitively."""
    digest = sha1(STRONG)
    checker = range_checker(lambda request: httpx.Response(200, text=f"{digest[5:].lower()}:3"))
    try:
        assert await checker.is_breached(STRONG)
    finally:
        await checker.close()


@pytest.mark.parametrize("failure", ["connect", "timeout", "status"])
async def test_range_api_failure_raises_unavailable(failure: str) -> None:
    """A transport error, timeout or error status is BreachCheckUnavailable, never 'clean'."""

    def handler(request: httpx.Request) -> httpx.Response:
        if failure == "connect":
            raise httpx.ConnectError("refused", request=request)
        if failure == "timeout":
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(503, text="")

    checker = range_checker(handler)
    try:
        with pytest.raises(BreachCheckUnavailable):
            await checker.is_breached(STRONG)
    finally:
        await checker.close()


# --- check_password -----------------------------------------------------------------------------


async def test_check_password_fails_closed_when_breach_source_is_down() -> None:
    """An unreachable breach source refuses the new password instead of skipping the check."""
    checker = RecordingChecker(unavailable=True)
    reasons = await check_password(STRONG, PasswordPolicy(), [], checker)
    assert reasons == [UNCHECKED]
    assert checker.asked == [STRONG]


async def test_check_password_names_breach_with_other_rules() -> None:
    """A breached password gets the breach reason in addition to every other broken rule."""
    reasons = await check_password(
        "Password123!", PasswordPolicy(), [], OfflineBreachedPasswordChecker()
    )
    assert reasons == [WEAK, BREACHED]


async def test_check_password_accepts_a_strong_clean_password() -> None:
    """A strong password the breach source does not know passes."""
    assert await check_password(STRONG, PasswordPolicy(), personal(), RecordingChecker()) == []


@pytest.mark.parametrize(
    "password",
    [
        "A" * (MAX_PASSWORD_BYTES + 1),
        "ç" * (MAX_PASSWORD_BYTES // 2 + 1),  # 513 characters, 1026 bytes
        "Tr0mbone#" + "x" * 100_000,
    ],
)
async def test_over_one_kib_is_refused_before_analysis(
    password: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over 1 KiB (in UTF-8 bytes) is refused before zxcvbn or the breach source run."""

    def no_analysis(*args: object, **kwargs: object) -> dict[str, Any]:
        raise AssertionError("zxcvbn must not run on an over-long password")

    monkeypatch.setattr(policy_module, "zxcvbn", no_analysis)
    checker = RecordingChecker()
    reasons = await check_password(password, PasswordPolicy(), [], checker)
    assert reasons == ["Must be at most 128 characters long."]
    assert checker.asked == []
