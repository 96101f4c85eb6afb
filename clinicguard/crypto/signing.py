"""Asymmetric signing keys: generation, PEM and public JWKs for tokens; Ed25519 signing and
verification for the audit trail's checkpoints."""

from __future__ import annotations

import base64
import functools
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519


class SigningAlgorithm(StrEnum):
    ES256 = "ES256"
    EDDSA = "EdDSA"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def generate_private_pem(algorithm: SigningAlgorithm) -> bytes:
    """A new private key as unencrypted PKCS#8 PEM (callers seal it before storing)."""
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    if algorithm is SigningAlgorithm.ES256:
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(private_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(private_pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_jwk(public_key_pem: bytes, kid: str, algorithm: SigningAlgorithm) -> dict[str, Any]:
    """The RFC 7517 JWK of a public key (for /.well-known/jwks.json)."""
    key = serialization.load_pem_public_key(public_key_pem)
    if isinstance(key, ec.EllipticCurvePublicKey):
        numbers = key.public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64url(numbers.x.to_bytes(32, "big")),
            "y": _b64url(numbers.y.to_bytes(32, "big")),
            "kid": kid,
            "alg": str(algorithm),
            "use": "sig",
        }
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _b64url(raw),
            "kid": kid,
            "alg": str(algorithm),
            "use": "sig",
        }
    raise ValueError("unsupported key type")


def ed25519_private_pem() -> bytes:
    """A new Ed25519 private key as unencrypted PKCS#8 PEM (callers seal it before storing)."""
    return generate_private_pem(SigningAlgorithm.EDDSA)


def ed25519_sign(private_pem: bytes, message: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``message``; raises ValueError when the PEM is not
    an Ed25519 private key."""
    key = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key.sign(message)


@functools.lru_cache(maxsize=64)
def _ed25519_public(public_key_pem: bytes) -> ed25519.Ed25519PublicKey | None:
    try:
        key = serialization.load_pem_public_key(public_key_pem)
    except ValueError:
        return None
    return key if isinstance(key, ed25519.Ed25519PublicKey) else None


def ed25519_verify(public_key_pem: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is the Ed25519 signature of ``message`` under the public key.
    False (never an exception) for a wrong signature, a malformed one, or a key that is
    not an Ed25519 public key."""
    key = _ed25519_public(public_key_pem)
    if key is None:
        return False
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True
