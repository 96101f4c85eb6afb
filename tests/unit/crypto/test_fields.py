"""The stored form of an encrypted field (crypto.fields, format v1).

``0x01 | kind | version (4) | nonce (12) | ciphertext + tag``, AES-256-GCM, the associated
data being the header plus the value's place (clinic | table | column | row). Proven here:
a value opens only with its key, in its place, exactly as written; any single flipped bit,
any truncation or extension, a header naming another key or format, a move to another
clinic, table, column or row, and another key all fail with DecryptionFailed; the nonce is
fresh for every encryption.
"""

from __future__ import annotations

import os
import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clinicguard.crypto import fields
from clinicguard.crypto.fields import (
    FORMAT_V1,
    MIN_BLOB,
    NONCE_BYTES,
    TAG_BYTES,
    Header,
    KeyKind,
    Place,
    header_of,
)
from clinicguard.crypto.interfaces import DecryptionFailed

HEADER_BYTES = 6
KEY = bytes(range(32))
CLINIC = uuid.UUID("11111111-1111-4111-8111-111111111111")
ROW = uuid.UUID("22222222-2222-4222-8222-222222222222")
PLACE = Place(CLINIC, "patients", "allergies", ROW)
HEADER = Header(KeyKind.CLINIC, 3)

places = st.builds(
    Place,
    st.uuids(),
    st.sampled_from(["patients", "medical_records", "prescriptions", "appointments"]),
    st.sampled_from(["cpf", "allergies", "diagnosis", "notes", "reason"]),
    st.uuids(),
)
headers = st.builds(Header, st.sampled_from(list(KeyKind)), st.integers(1, 2**32 - 1))
keys = st.binary(min_size=32, max_size=32)


def seal(plaintext: bytes = b"Dipirona", *, header: Header = HEADER) -> bytes:
    return fields.encrypt(KEY, header, PLACE, plaintext)


# --- round trip and layout -------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(key=keys, header=headers, place=places, plaintext=st.binary(max_size=512))
def test_round_trip_gives_back_exactly_the_plaintext(
    key: bytes, header: Header, place: Place, plaintext: bytes
) -> None:
    blob = fields.encrypt(key, header, place, plaintext)
    assert fields.decrypt(key, place, blob) == plaintext
    assert header_of(blob) == header


@settings(max_examples=100, deadline=None)
@given(header=headers, plaintext=st.binary(max_size=256))
def test_layout_is_format_kind_version_nonce_ciphertext_tag(
    header: Header, plaintext: bytes
) -> None:
    blob = fields.encrypt(KEY, header, PLACE, plaintext)
    assert blob[0] == FORMAT_V1
    assert blob[1] == header.kind
    assert struct.unpack(">I", blob[2:6])[0] == header.version
    assert len(blob) == HEADER_BYTES + NONCE_BYTES + len(plaintext) + TAG_BYTES
    if len(plaintext) >= 8:  # a shorter one turns up in random bytes by chance
        assert plaintext not in blob[HEADER_BYTES + NONCE_BYTES :]


def test_empty_plaintext_is_a_minimal_blob_that_still_authenticates() -> None:
    blob = seal(b"")
    assert len(blob) == MIN_BLOB
    assert fields.decrypt(KEY, PLACE, blob) == b""


def test_nonce_is_fresh_for_every_encryption() -> None:
    """The same value in the same place under the same key never gives the same bytes (a
    repeated GCM nonce would leak the XOR of the plaintexts and the authentication key)."""
    blobs = [seal(b"same value") for _ in range(200)]
    nonces = {b[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES] for b in blobs}
    assert len(nonces) == len(blobs)
    assert len(set(blobs)) == len(blobs)
    assert all(fields.decrypt(KEY, PLACE, b) == b"same value" for b in blobs)


# --- tampering ---------------------------------------------------------------------------------


def test_every_single_bit_flip_anywhere_fails() -> None:
    """Header, nonce, ciphertext and tag: no single flipped bit goes unnoticed."""
    blob = seal(b"Alergia a penicilina")
    for position in range(len(blob)):
        for bit in range(8):
            tampered = bytearray(blob)
            tampered[position] ^= 1 << bit
            with pytest.raises(DecryptionFailed):
                fields.decrypt(KEY, PLACE, bytes(tampered))


@settings(max_examples=200, deadline=None)
@given(plaintext=st.binary(max_size=64), data=st.data())
def test_any_bit_flip_fails_for_any_value(plaintext: bytes, data: st.DataObject) -> None:
    blob = fields.encrypt(KEY, HEADER, PLACE, plaintext)
    position = data.draw(st.integers(0, len(blob) - 1))
    bit = data.draw(st.integers(0, 7))
    tampered = bytearray(blob)
    tampered[position] ^= 1 << bit
    with pytest.raises(DecryptionFailed):
        fields.decrypt(KEY, PLACE, bytes(tampered))


def test_every_truncation_fails() -> None:
    blob = seal(b"Hipertensao")
    for length in range(len(blob)):
        with pytest.raises(DecryptionFailed):
            fields.decrypt(KEY, PLACE, blob[:length])


@pytest.mark.parametrize("extra", [b"\x00", b"\x00" * 16, os.urandom(7)])
def test_extended_blob_fails(extra: bytes) -> None:
    with pytest.raises(DecryptionFailed):
        fields.decrypt(KEY, PLACE, seal() + extra)


@pytest.mark.parametrize(
    "header",
    [
        Header(KeyKind.CLINIC, 2),
        Header(KeyKind.CLINIC, 4),
        Header(KeyKind.CLINIC, 2**32 - 1),
        Header(KeyKind.SUBJECT, 3),
    ],
    ids=["older-version", "newer-version", "max-version", "other-kind"],
)
def test_header_edited_to_name_another_key_fails(header: Header) -> None:
    """The header is authenticated: relabelling a value as another version or another kind
    of key (even when that key is the very one that sealed it) does not open it."""
    blob = seal()
    edited = struct.pack(">BBI", FORMAT_V1, header.kind, header.version) + blob[HEADER_BYTES:]
    assert header_of(edited) == header  # a well-formed header...
    with pytest.raises(DecryptionFailed):
        fields.decrypt(KEY, PLACE, edited)  # ...that does not authenticate


@pytest.mark.parametrize(
    "head",
    [
        struct.pack(">BBI", 0, KeyKind.CLINIC, 3),
        struct.pack(">BBI", 2, KeyKind.CLINIC, 3),
        struct.pack(">BBI", FORMAT_V1, 0, 3),
        struct.pack(">BBI", FORMAT_V1, 3, 3),
        struct.pack(">BBI", FORMAT_V1, KeyKind.CLINIC, 0),
    ],
    ids=["format-0", "format-2", "kind-0", "kind-3", "version-0"],
)
def test_malformed_header_is_refused_before_any_key_is_used(head: bytes) -> None:
    blob = head + seal()[HEADER_BYTES:]
    with pytest.raises(DecryptionFailed):
        header_of(blob)
    with pytest.raises(DecryptionFailed):
        fields.decrypt(KEY, PLACE, blob)


@pytest.mark.parametrize("length", [0, 1, HEADER_BYTES, MIN_BLOB - 1])
def test_header_of_refuses_short_values(length: int) -> None:
    with pytest.raises(DecryptionFailed):
        header_of(seal()[:length])


@pytest.mark.parametrize(
    "moved",
    [
        Place(uuid.uuid4(), PLACE.table, PLACE.column, PLACE.row_id),
        Place(PLACE.clinic_id, "medical_records", PLACE.column, PLACE.row_id),
        Place(PLACE.clinic_id, PLACE.table, "medications", PLACE.row_id),
        Place(PLACE.clinic_id, PLACE.table, PLACE.column, uuid.uuid4()),
    ],
    ids=["other-clinic", "other-table", "other-column", "other-row"],
)
def test_value_moved_to_another_place_fails(moved: Place) -> None:
    blob = seal()
    assert fields.decrypt(KEY, PLACE, blob) == b"Dipirona"
    with pytest.raises(DecryptionFailed):
        fields.decrypt(KEY, moved, blob)


def test_place_encoding_cannot_be_shifted_between_parts() -> None:
    """The place's parts are separated, so moving characters from one to the next is a
    different place (the table and column names contain no separator)."""
    a = Place(CLINIC, "patients", "cpf", ROW)
    b = Place(CLINIC, "patient", "scpf", ROW)
    assert a.encode() != b.encode()
    with pytest.raises(DecryptionFailed):
        fields.decrypt(KEY, b, fields.encrypt(KEY, HEADER, a, b"x"))


def test_another_key_fails() -> None:
    blob = seal()
    for other in (os.urandom(32), KEY[:-1] + bytes([KEY[-1] ^ 1])):
        with pytest.raises(DecryptionFailed):
            fields.decrypt(other, PLACE, blob)


def test_failure_says_nothing_about_the_key_or_the_value() -> None:
    blob = seal(b"segredo clinico")
    with pytest.raises(DecryptionFailed) as failure:
        fields.decrypt(os.urandom(32), PLACE, blob)
    text = str(failure.value) + repr(failure.value)
    assert "segredo" not in text
    assert blob.hex() not in text
    assert KEY.hex() not in text
    assert failure.value.status == 500
    assert failure.value.type_uri == "urn:clinicguard:problem:decryption-failed"
