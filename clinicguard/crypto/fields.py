"""The stored form of an encrypted field: self-describing, versioned, bound to its place.

Format version 1 (bytes)::

    0x01 | key kind (1) | key version (4, big-endian) | nonce (12) | ciphertext + tag (16)

``key kind`` says which key sealed it: the clinic's data key (``CLINIC``, with its version)
or the patient's own key (``SUBJECT``, with its generation: a new one after a shredding),
for highly sensitive data that crypto-shredding must reach. The
associated data is the header plus the value's place — clinic, table, column and row id —
so a ciphertext copied to another row, column or clinic does not open, and a header edited
to name another key does not either.
"""

from __future__ import annotations

import functools
import os
import struct
import uuid
from dataclasses import dataclass
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clinicguard.crypto.interfaces import DecryptionFailed

FORMAT_V1 = 1
_HEADER = struct.Struct(">BBI")
NONCE_BYTES = 12
TAG_BYTES = 16
MIN_BLOB = _HEADER.size + NONCE_BYTES + TAG_BYTES


class KeyKind(IntEnum):
    CLINIC = 1
    SUBJECT = 2


_KINDS = frozenset(int(k) for k in KeyKind)


@dataclass(frozen=True, slots=True)
class Place:
    """Where a value lives: its associated data."""

    clinic_id: uuid.UUID
    table: str
    column: str
    row_id: uuid.UUID

    def encode(self) -> bytes:
        return f"{self.clinic_id}|{self.table}|{self.column}|{self.row_id}".encode()


@dataclass(frozen=True, slots=True)
class Header:
    kind: KeyKind
    version: int


def header_of(blob: bytes) -> Header:
    """The key a stored value names; DecryptionFailed when it is not a v1 value."""
    kind, version = parse_header(blob)
    return Header(KeyKind(kind), version)


def parse_header(blob: bytes) -> tuple[int, int]:
    """(kind, version) of a stored value, checked; the fast form of :func:`header_of`."""
    if len(blob) < MIN_BLOB:
        raise DecryptionFailed()
    fmt, kind, version = _HEADER.unpack_from(blob)
    if fmt != FORMAT_V1 or kind not in _KINDS or version < 1:
        raise DecryptionFailed()
    return kind, version


@functools.lru_cache(maxsize=8192)
def _aead(key: bytes) -> AESGCM:
    """One cipher object per key (building it costs more than decrypting a short value)."""
    return AESGCM(key)


def encrypt(key: bytes, header: Header, place: Place, plaintext: bytes) -> bytes:
    """AES-256-GCM with a fresh random 96-bit nonce."""
    head = _HEADER.pack(FORMAT_V1, header.kind, header.version)
    nonce = os.urandom(NONCE_BYTES)
    return head + nonce + _aead(key).encrypt(nonce, plaintext, head + b"|" + place.encode())


def decrypt(key: bytes, place: Place, blob: bytes) -> bytes:
    """Inverse of :func:`encrypt`; DecryptionFailed for anything that does not
    authenticate (tampered, truncated, moved, another key)."""
    parse_header(blob)
    return decrypt_at(key, place.encode(), blob)


def decrypt_at(key: bytes, place: bytes, blob: bytes) -> bytes:
    """:func:`decrypt` with the place already encoded and the header already checked."""
    head = blob[: _HEADER.size]
    nonce = blob[_HEADER.size : _HEADER.size + NONCE_BYTES]
    try:
        return _aead(key).decrypt(nonce, blob[_HEADER.size + NONCE_BYTES :], head + b"|" + place)
    except InvalidTag as exc:
        raise DecryptionFailed() from exc
