"""Second factors without HTTP: RFC 6238 vectors, the replay-proof TOTP verifier on both
key-value stores, backup codes and sealed TOTP seeds."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
import uuid
from datetime import UTC, datetime

import pyotp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clinicguard.auth.mfa import (
    ACCEPT_STEPS,
    BACKUP_CODE_COUNT,
    DIGITS,
    SKEW_STEPS,
    STEP_SECONDS,
    BackupCodeHasher,
    TotpSeeds,
    TotpVerifier,
    looks_like_backup_code,
    matching_offsets,
    new_backup_codes,
    new_seed,
    normalize_backup_code,
    provisioning_uri,
    qr_svg,
)
from clinicguard.crypto.interfaces import DecryptionFailed
from clinicguard.store.interfaces import KeyValueStore

#: RFC 6238 appendix B: the SHA-1 seed is the ASCII string "12345678901234567890".
RFC_SEED = base64.b32encode(b"12345678901234567890").decode()
RFC_VECTORS = [
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
]
#: A fixed instant 10 s into a time step, so step arithmetic below is exact.
AT = datetime.fromtimestamp(1_700_000_010, UTC)
BACKUP_FORMAT = re.compile(r"^[a-hjkmnp-z2-9]{5}-[a-hjkmnp-z2-9]{5}$")


def key(byte: int = 7) -> bytes:
    return bytes([byte]) * 32


def code_at(seed: str, at: datetime, steps: int = 0) -> str:
    return pyotp.TOTP(seed).at(at.timestamp() + steps * STEP_SECONDS)


# --- RFC 6238 ----------------------------------------------------------------------------


def test_parameters_are_rfc6238_sha1_six_digits_thirty_seconds() -> None:
    """The accepted window is +-1 step and the skew hint reaches +-10 steps."""
    assert (STEP_SECONDS, DIGITS, ACCEPT_STEPS, SKEW_STEPS) == (30, 6, 1, 10)


@pytest.mark.parametrize(("timestamp", "expected"), RFC_VECTORS)
def test_pyotp_reproduces_rfc6238_appendix_b(timestamp: int, expected: str) -> None:
    """pyotp (SHA-1, 8 digits, 30 s) gives the RFC 6238 appendix B codes."""
    assert pyotp.TOTP(RFC_SEED, digits=8, interval=30, digest=hashlib.sha1).at(timestamp) == (
        expected
    )


@pytest.mark.parametrize(("timestamp", "expected"), RFC_VECTORS)
def test_matching_offsets_finds_rfc6238_code_at_offset_zero(timestamp: int, expected: str) -> None:
    """Our 6-digit check accepts the RFC vector (its last 6 digits) at exactly that time."""
    at = datetime.fromtimestamp(timestamp, UTC)
    assert pyotp.TOTP(RFC_SEED).at(timestamp) == expected[-6:]
    assert matching_offsets(RFC_SEED, expected[-6:], at, ACCEPT_STEPS) == [0]
    if timestamp > SKEW_STEPS * STEP_SECONDS:  # pyotp refuses times before the epoch
        assert 0 in matching_offsets(RFC_SEED, expected[-6:], at, SKEW_STEPS)


@pytest.mark.parametrize(("timestamp", "expected"), RFC_VECTORS)
def test_rfc6238_eight_digit_code_is_never_accepted(timestamp: int, expected: str) -> None:
    """Only 6-digit codes are compared: the full 8-digit RFC code is not a valid input."""
    at = datetime.fromtimestamp(timestamp, UTC)
    assert matching_offsets(RFC_SEED, expected, at, ACCEPT_STEPS) == []


def test_matching_offsets_reports_the_step_distance() -> None:
    """A code from k steps away is found at offset k (the skew detection relies on it)."""
    for steps in (-10, -5, -1, 1, 5, 10):
        assert steps in matching_offsets(RFC_SEED, code_at(RFC_SEED, AT, steps), AT, SKEW_STEPS)
    assert matching_offsets(RFC_SEED, code_at(RFC_SEED, AT, 11), AT, SKEW_STEPS) == []


@given(code=st.text(max_size=12), radius=st.integers(min_value=0, max_value=3))
def test_matching_offsets_never_raises_and_stays_in_radius(code: str, radius: int) -> None:
    """Arbitrary input is only ever a (possibly empty) list of offsets within the radius."""
    offsets = matching_offsets(RFC_SEED, code, AT, radius)
    assert all(-radius <= o <= radius for o in offsets)
    if len(code) != DIGITS or not code.isdigit():
        assert offsets == []


def test_provisioning_uri_describes_our_parameters() -> None:
    """The otpauth URI carries the seed, the issuer and SHA-1 / 6 digits / 30 s."""
    seed = new_seed()
    uri = provisioning_uri(seed, "ana@clinica.example.com")
    assert uri.startswith("otpauth://totp/clinicguard:ana%40clinica.example.com?")
    assert "issuer=clinicguard" in uri
    parsed = pyotp.parse_uri(uri)
    assert (parsed.secret, parsed.digits, parsed.interval) == (seed, 6, 30)
    assert parsed.digest().name == "sha1"


def test_qr_svg_is_an_svg_document() -> None:
    """The enrolment QR code is an SVG document encoding the otpauth URI."""
    svg = qr_svg(provisioning_uri(new_seed(), "ana@clinica.example.com"))
    assert svg.startswith("<svg")
    assert svg.rstrip().endswith("</svg>")


@pytest.mark.parametrize("code", ["١٢٣٤٥٦", "12345６", "²³⁴⁵⁶⁷"])
def test_non_ascii_digits_are_refused_not_an_error(code: str) -> None:
    """Arabic-Indic, full-width or superscript digits are refused, never an exception."""
    assert matching_offsets(RFC_SEED, code, AT, SKEW_STEPS) == []


# --- TotpVerifier on both key-value stores ---------------------------------------------------


async def test_code_is_accepted_once(kv_store: KeyValueStore) -> None:
    """A valid code is accepted the first time and refused as a replay afterwards."""
    verifier, user = TotpVerifier(kv_store), uuid.uuid4()
    code = code_at(RFC_SEED, AT)
    first = await verifier.check(user, RFC_SEED, code, AT)
    assert first.accepted
    assert not first.replayed
    again = await verifier.check(user, RFC_SEED, code, AT)
    assert not again.accepted
    assert again.replayed


async def test_replay_is_refused_for_the_whole_validity_window(kv_store: KeyValueStore) -> None:
    """The same code, presented again 30 s later (still within +-1 step), is refused."""
    verifier, user = TotpVerifier(kv_store), uuid.uuid4()
    code = code_at(RFC_SEED, AT)
    assert (await verifier.check(user, RFC_SEED, code, AT)).accepted
    later = datetime.fromtimestamp(AT.timestamp() + STEP_SECONDS, UTC)
    result = await verifier.check(user, RFC_SEED, code, later)
    assert not result.accepted
    assert result.replayed


@pytest.mark.parametrize("steps", [-1, 1])
async def test_neighbouring_step_is_accepted(kv_store: KeyValueStore, steps: int) -> None:
    """A code from one step before or after is accepted (RFC 6238 network delay window)."""
    verifier = TotpVerifier(kv_store)
    result = await verifier.check(uuid.uuid4(), RFC_SEED, code_at(RFC_SEED, AT, steps), AT)
    assert result.accepted


async def test_step_older_than_the_last_accepted_is_refused(kv_store: KeyValueStore) -> None:
    """After the next step's code was accepted, the current (older) step's code is refused."""
    verifier, user = TotpVerifier(kv_store), uuid.uuid4()
    assert (await verifier.check(user, RFC_SEED, code_at(RFC_SEED, AT, 1), AT)).accepted
    older = await verifier.check(user, RFC_SEED, code_at(RFC_SEED, AT, 0), AT)
    assert not older.accepted
    assert older.replayed
    still_older = await verifier.check(user, RFC_SEED, code_at(RFC_SEED, AT, -1), AT)
    assert not still_older.accepted


async def test_replay_state_is_per_user(kv_store: KeyValueStore) -> None:
    """One user's accepted step does not consume another user's code for that step."""
    verifier = TotpVerifier(kv_store)
    code = code_at(RFC_SEED, AT)
    assert (await verifier.check(uuid.uuid4(), RFC_SEED, code, AT)).accepted
    assert (await verifier.check(uuid.uuid4(), RFC_SEED, code, AT)).accepted


@pytest.mark.parametrize("steps", [-10, -5, -2, 2, 5, 10])
async def test_code_within_ten_steps_but_not_one_is_clock_skew(
    kv_store: KeyValueStore, steps: int
) -> None:
    """A code 2..10 steps away is refused and flagged as the authenticator's clock skew."""
    verifier, user = TotpVerifier(kv_store), uuid.uuid4()
    result = await verifier.check(user, RFC_SEED, code_at(RFC_SEED, AT, steps), AT)
    assert not result.accepted
    assert result.clock_skew
    assert not result.replayed
    # A skewed code consumes nothing: the current code still works.
    assert (await verifier.check(user, RFC_SEED, code_at(RFC_SEED, AT), AT)).accepted


@pytest.mark.parametrize("steps", [-12, 11, 40])
async def test_code_beyond_ten_steps_is_plain_wrong(kv_store: KeyValueStore, steps: int) -> None:
    """A code further than 10 steps away is simply wrong (no skew hint)."""
    result = await TotpVerifier(kv_store).check(
        uuid.uuid4(), RFC_SEED, code_at(RFC_SEED, AT, steps), AT
    )
    assert (result.accepted, result.replayed, result.clock_skew) == (False, False, False)


async def test_fifty_concurrent_uses_of_one_code_accept_exactly_one(
    kv_store: KeyValueStore,
) -> None:
    """Racing uses of one code: exactly one is accepted, every other is a replay."""
    verifier, user = TotpVerifier(kv_store), uuid.uuid4()
    code = code_at(RFC_SEED, AT)
    results = await asyncio.gather(*(verifier.check(user, RFC_SEED, code, AT) for _ in range(50)))
    assert sum(r.accepted for r in results) == 1
    assert all(r.replayed for r in results if not r.accepted)


# --- backup codes --------------------------------------------------------------------------


def test_backup_codes_are_ten_distinct_and_well_formed() -> None:
    """Ten codes of 10 unambiguous characters (xxxxx-xxxxx), all different."""
    codes = new_backup_codes()
    assert len(codes) == BACKUP_CODE_COUNT == 10
    assert len(set(codes)) == 10
    for code in codes:
        assert BACKUP_FORMAT.match(code), code
        assert not set(code) & set("01ilo")
        assert looks_like_backup_code(code)


def test_backup_codes_are_random_across_sets() -> None:
    """Codes never repeat across many generated sets (they are random, not derived)."""
    seen = [code for _ in range(50) for code in new_backup_codes()]
    assert len(set(seen)) == len(seen)


@pytest.mark.parametrize(
    "typed", ["abcde-fghjk", " ABCDE-FGHJK ", "abcdefghjk", "abcde fghjk", "AbCdE-fGhJk\t"]
)
def test_backup_code_normalization(typed: str) -> None:
    """Case, dashes and surrounding or inner spaces do not matter when typing a code."""
    assert normalize_backup_code(typed) == "abcdefghjk"
    assert looks_like_backup_code(typed)


@pytest.mark.parametrize(
    "typed",
    ["", "123456", "abcde-fghj", "abcde-fghjkm", "abcde-fghj0", "abcde-fghjo", "ábcde-fghjk"],
)
def test_non_backup_codes_are_recognised(typed: str) -> None:
    """TOTP codes, wrong lengths and ambiguous characters do not look like backup codes."""
    assert not looks_like_backup_code(typed)


def test_backup_code_hash_is_keyed_per_user_and_master_key() -> None:
    """The stored digest depends on the user and the master key, never reveals the code."""
    code = new_backup_codes()[0]
    alice, bob = uuid.uuid4(), uuid.uuid4()
    hasher = BackupCodeHasher(key(1))
    digest = hasher.digest(alice, code)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest == hasher.digest(alice, code.upper().replace("-", " "))
    assert digest != hasher.digest(bob, code)
    assert digest != BackupCodeHasher(key(2)).digest(alice, code)
    assert digest != hasher.digest(alice, new_backup_codes()[0])
    normalized = normalize_backup_code(code)
    assert normalized not in digest
    for plain in (code, normalized, f"{alice}:{normalized}"):
        assert digest != hashlib.sha256(plain.encode()).hexdigest()


# --- sealed TOTP seeds ---------------------------------------------------------------------


def test_new_seed_is_160_bits_or_more_of_base32() -> None:
    """A fresh seed is base32 and at least RFC 4226's recommended 160 bits."""
    seed = new_seed()
    assert len(base64.b32decode(seed)) >= 20
    assert seed != new_seed()


def test_sealed_seed_opens_only_for_the_same_user() -> None:
    """A seed sealed for one user opens for that user and for nobody else."""
    seeds, owner = TotpSeeds(key()), uuid.uuid4()
    seed = new_seed()
    sealed = seeds.seal(owner, seed)
    assert seed.encode() not in sealed
    assert seeds.seal(owner, seed) != sealed  # a fresh nonce each time
    assert seeds.open(owner, sealed) == seed
    with pytest.raises(DecryptionFailed):
        seeds.open(uuid.uuid4(), sealed)
    with pytest.raises(DecryptionFailed):
        TotpSeeds(key(8)).open(owner, sealed)


def test_tampered_sealed_seed_raises_decryption_failed() -> None:
    """Any flipped byte (version, nonce, ciphertext, tag) or truncation is refused."""
    seeds, owner = TotpSeeds(key()), uuid.uuid4()
    sealed = seeds.seal(owner, new_seed())
    for index in (0, 1, 12, 13, len(sealed) // 2, len(sealed) - 1):
        tampered = bytearray(sealed)
        tampered[index] ^= 0x01
        with pytest.raises(DecryptionFailed):
            seeds.open(owner, bytes(tampered))
    for blob in (sealed[:-1], sealed[:20], b"", secrets.token_bytes(len(sealed))):
        with pytest.raises(DecryptionFailed):
            seeds.open(owner, blob)
