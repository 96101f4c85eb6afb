"""Key-encryption keys (KEKs): where they come from, and wrapping data keys with them.

A :class:`KeyProvider` holds the KEKs, outside the database. Data keys (DEKs) are random
256-bit keys stored in the database only wrapped (AES-256-GCM under a KEK, bound to the
key's place: clinic, purpose and version), so a database dump without the KEK opens
nothing. Providers:

- :class:`MasterKeyProvider` — one KEK derived from ``CLINICGUARD_MASTER_KEY`` (HKDF, its
  own purpose); zero configuration. It cannot rotate the KEK without rotating the master
  key, so deployments that rotate KEKs use a file or a KMS.
- :class:`FileKeyProvider` — named KEKs in a JSON file readable by the owner only
  (``{"active": "kek-2026-11", "keys": {"kek-2026-11": "<base64 32 bytes>", ...}}``); a
  new active KEK plus ``clinicguard keys rewrap`` rotates it (the DEKs are rewrapped, no
  data is re-encrypted).
- A KMS provider implements the same Protocol (wrap and unwrap calls to the KMS).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import stat
from pathlib import Path
from typing import Protocol

from clinicguard.core.errors import ConfigurationError
from clinicguard.crypto.interfaces import DecryptionFailed
from clinicguard.crypto.secretbox import KEY_BYTES, derive_key, open_sealed, seal


class UnknownKek(DecryptionFailed):
    """A data key was wrapped by a KEK the provider does not hold (lost, or not configured)."""


class KeyProvider(Protocol):
    def active_kek_id(self) -> str:
        """The KEK new and rewrapped data keys are wrapped with."""
        ...

    def kek_ids(self) -> list[str]:
        """Every KEK this provider can unwrap with."""
        ...

    def wrap(self, kek_id: str, key: bytes, context: bytes) -> bytes:
        """``key`` sealed under the KEK, bound to ``context``."""
        ...

    def unwrap(self, kek_id: str, wrapped: bytes, context: bytes) -> bytes:
        """Inverse of :meth:`wrap`; UnknownKek or DecryptionFailed when it does not open."""
        ...


def _fingerprint(key: bytes) -> str:
    return hashlib.sha256(b"clinicguard-kek-id|" + key).hexdigest()[:12]


class _StaticKeys:
    """KEKs held in memory by id (the shared half of the providers)."""

    def __init__(self, keys: dict[str, bytes], active: str) -> None:
        if active not in keys:
            raise ConfigurationError([f"the active KEK {active!r} is not among the keys"])
        self._keys = keys
        self._active = active

    def active_kek_id(self) -> str:
        return self._active

    def kek_ids(self) -> list[str]:
        return sorted(self._keys)

    def wrap(self, kek_id: str, key: bytes, context: bytes) -> bytes:
        return seal(self._key(kek_id), key, b"dek|" + context)

    def unwrap(self, kek_id: str, wrapped: bytes, context: bytes) -> bytes:
        return open_sealed(self._key(kek_id), wrapped, b"dek|" + context)

    def _key(self, kek_id: str) -> bytes:
        try:
            return self._keys[kek_id]
        except KeyError:
            raise UnknownKek() from None


class MasterKeyProvider(_StaticKeys):
    def __init__(self, master_key: bytes) -> None:
        kek = derive_key(master_key, "kek:data-keys")
        kek_id = f"master-{_fingerprint(kek)}"
        super().__init__({kek_id: kek}, kek_id)


class FileKeyProvider(_StaticKeys):
    def __init__(self, path: Path) -> None:
        problems: list[str] = []
        try:
            mode = path.stat().st_mode
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigurationError([f"cannot read the KEK file {path}: {exc}"]) from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            problems.append(f"the KEK file {path} is readable by others (chmod 600)")
        keys: dict[str, bytes] = {}
        entries = raw.get("keys") if isinstance(raw, dict) else None
        if not isinstance(entries, dict) or not entries:
            problems.append(f"the KEK file {path} has no keys")
            entries = {}
        for kek_id, encoded in entries.items():
            try:
                key = base64.b64decode(str(encoded), validate=True)
            except (binascii.Error, ValueError):
                key = b""
            if len(key) != KEY_BYTES or not str(kek_id).strip():
                problems.append(f"KEK {kek_id!r} in {path} is not base64 of 32 bytes")
            keys[str(kek_id)] = key
        active = raw.get("active") if isinstance(raw, dict) else None
        if not isinstance(active, str) or active not in keys:
            problems.append(f"the KEK file {path} names no active key among its keys")
        if problems:
            raise ConfigurationError(problems)
        super().__init__(keys, str(active))


def create_key_provider(kind: str, master_key: bytes, kek_file: Path | None) -> KeyProvider:
    if kind == "file":
        if kek_file is None:
            raise ConfigurationError(["CLINICGUARD_KEK_FILE is required with the file provider"])
        return FileKeyProvider(kek_file)
    return MasterKeyProvider(master_key)
