"""Authenticated encryption of small secrets under a key derived from the master key.

Used for secrets the application must read back (TOTP seeds, signing keys, short-lived
cached token pairs). Format, version 1: ``0x01 | nonce (12) | ciphertext+tag``; the
associated data binds each value to its place (purpose and owner), so a value copied
elsewhere does not open. Patient-field encryption with per-clinic data keys is the key
ring's job (it reuses :func:`seal` / :func:`open_sealed`).
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from clinicguard.crypto.interfaces import DecryptionFailed

FORMAT_V1 = 1
NONCE_BYTES = 12
KEY_BYTES = 32


def derive_key(master_key: bytes, purpose: str, length: int = KEY_BYTES) -> bytes:
    """A subkey for one purpose (HKDF-SHA256): keys for different jobs never coincide."""
    if len(master_key) < KEY_BYTES:
        raise ValueError("the master key must be at least 32 bytes")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=purpose.encode()).derive(
        master_key
    )


def seal(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """AES-256-GCM with a fresh random 96-bit nonce."""
    nonce = os.urandom(NONCE_BYTES)
    return bytes([FORMAT_V1]) + nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def open_sealed(key: bytes, blob: bytes, associated_data: bytes) -> bytes:
    """Inverse of :func:`seal`; raises DecryptionFailed for anything that does not
    authenticate (wrong format, truncation, tampering, other key or other place)."""
    if len(blob) < 1 + NONCE_BYTES + 16 or blob[0] != FORMAT_V1:
        raise DecryptionFailed()
    nonce, body = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
    try:
        return AESGCM(key).decrypt(nonce, body, associated_data)
    except InvalidTag as exc:
        raise DecryptionFailed() from exc


class SecretBox:
    """``seal``/``open`` under one derived key, bound to a purpose."""

    def __init__(self, master_key: bytes, purpose: str) -> None:
        self._key = derive_key(master_key, f"secretbox:{purpose}")
        self._purpose = purpose.encode()

    def seal(self, plaintext: bytes, owner: str) -> bytes:
        return seal(self._key, plaintext, self._purpose + b"|" + owner.encode())

    def open(self, blob: bytes, owner: str) -> bytes:
        return open_sealed(self._key, blob, self._purpose + b"|" + owner.encode())


class Hasher:
    """Keyed hashing (HMAC-SHA256) for values that must be found but not reversed: token
    and code digests, identifiers in key-value keys. Unkeyed SHA-256 of a low-entropy value
    (an email, a CPF) is reversible by enumeration; a keyed one is not."""

    def __init__(self, master_key: bytes, purpose: str) -> None:
        self._key = derive_key(master_key, f"hmac:{purpose}")

    @classmethod
    def from_secret(cls, secret: str, purpose: str) -> Hasher:
        """Keyed by the application secret (CLINICGUARD_SECRET_KEY) instead of the master
        key: for short-lived state (sessions, device trust, login counters) that may be
        invalidated by rotating that secret without touching stored data."""
        if not secret:
            raise ValueError("the application secret (CLINICGUARD_SECRET_KEY) is empty")
        hasher = cls.__new__(cls)
        hasher._key = HKDF(
            algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=f"hmac:{purpose}".encode()
        ).derive(secret.encode())
        return hasher

    def digest(self, value: str | bytes) -> bytes:
        data = value.encode() if isinstance(value, str) else value
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def hexdigest(self, value: str | bytes, length: int = 64) -> str:
        return self.digest(value).hex()[:length]

    def matches(self, value: str | bytes, expected_hex: str) -> bool:
        """Constant-time comparison against a stored hex digest."""
        return hmac.compare_digest(self.hexdigest(value, len(expected_hex)), expected_hex)


def sha1_hex(value: str) -> str:
    """SHA-1 (uppercase hex) as breached-password corpora and range APIs use it; never a
    protection of ours, only their lookup key."""
    return hashlib.sha1(value.encode(), usedforsecurity=False).hexdigest().upper()


def constant_time_equals(a: str | bytes, b: str | bytes) -> bool:
    a_bytes = a.encode() if isinstance(a, str) else a
    b_bytes = b.encode() if isinstance(b, str) else b
    return hmac.compare_digest(a_bytes, b_bytes)
