"""Second factors: TOTP (RFC 6238) and single-use backup codes.

TOTP: SHA-1, 6 digits, 30 s steps, accepted within +-1 step; each time step is accepted
once per user (and never a step older than the last accepted one), so a code seen over a
shoulder or in a log cannot be replayed. A code that matches within +-10 steps but not +-1
means the authenticator's clock is off, and the answer says so. Seeds are stored sealed
(AES-GCM under a key derived from the master key, bound to the user id).
"""

from __future__ import annotations

import hmac
import io
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

import pyotp
import segno

from clinicguard.crypto.secretbox import Hasher, SecretBox
from clinicguard.store.interfaces import KeyValueStore

STEP_SECONDS = 30
DIGITS = 6
ACCEPT_STEPS = 1
SKEW_STEPS = 10
BACKUP_CODE_COUNT = 10
_BACKUP_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i
_REPLAY_TTL = (2 * SKEW_STEPS + 2) * STEP_SECONDS


@dataclass(frozen=True, slots=True)
class TotpCheck:
    accepted: bool
    replayed: bool = False
    clock_skew: bool = False


class TotpSeeds:
    def __init__(self, master_key: bytes) -> None:
        self._box = SecretBox(master_key, "totp-seed")

    def seal(self, user_id: uuid.UUID, seed: str) -> bytes:
        return self._box.seal(seed.encode(), str(user_id))

    def open(self, user_id: uuid.UUID, sealed: bytes) -> str:
        return self._box.open(sealed, str(user_id)).decode()


def new_seed() -> str:
    return pyotp.random_base32(length=32)


def provisioning_uri(seed: str, account: str, issuer: str = "clinicguard") -> str:
    return pyotp.TOTP(seed, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=account, issuer_name=issuer
    )


def qr_svg(uri: str) -> str:
    buffer = io.BytesIO()  # segno writes bytes
    segno.make(uri, error="m").save(buffer, kind="svg", scale=4, xmldecl=False, svgns=True)
    return buffer.getvalue().decode()


def matching_offsets(seed: str, code: str, at: datetime, radius: int) -> list[int]:
    """Step offsets (within +-radius of ``at``) whose code equals ``code``, compared in
    constant time per candidate."""
    # ASCII digits only: str.isdigit() also accepts other scripts' digits ("١٢٣٤٥٦").
    if len(code) != DIGITS or not (code.isascii() and code.isdigit()):
        return []
    totp = pyotp.TOTP(seed, digits=DIGITS, interval=STEP_SECONDS)
    found = []
    for offset in range(-radius, radius + 1):
        candidate = totp.at(at.timestamp() + offset * STEP_SECONDS)
        if hmac.compare_digest(candidate, code):
            found.append(offset)
    return found


class TotpVerifier:
    def __init__(self, kv: KeyValueStore) -> None:
        self._kv = kv

    async def check(self, user_id: uuid.UUID, seed: str, code: str, at: datetime) -> TotpCheck:
        offsets = matching_offsets(seed, code, at, SKEW_STEPS)
        near = [o for o in offsets if abs(o) <= ACCEPT_STEPS]
        if not near:
            return TotpCheck(accepted=False, clock_skew=bool(offsets))
        step = int(at.timestamp()) // STEP_SECONDS + near[0]
        tag = f"cg:{{u:{user_id}}}:totp"
        last_raw = await self._kv.get(f"{tag}:last")
        if last_raw is not None and step <= int(last_raw):
            return TotpCheck(accepted=False, replayed=True)
        # Claim the step atomically: of two concurrent uses of one code, one wins.
        if not await self._kv.set(f"{tag}:{step}", b"1", ttl=_REPLAY_TTL, only_if_absent=True):
            return TotpCheck(accepted=False, replayed=True)
        await self._kv.set(f"{tag}:last", str(step).encode(), ttl=_REPLAY_TTL)
        return TotpCheck(accepted=True)


def new_backup_codes() -> list[str]:
    def one() -> str:
        raw = "".join(secrets.choice(_BACKUP_ALPHABET) for _ in range(10))
        return f"{raw[:5]}-{raw[5:]}"

    return [one() for _ in range(BACKUP_CODE_COUNT)]


def normalize_backup_code(code: str) -> str:
    return code.strip().lower().replace("-", "").replace(" ", "")


class BackupCodeHasher:
    """Backup codes carry ~49 bits of randomness: a keyed hash (HMAC) stores them safely and
    cheaply; the database never holds a usable code."""

    def __init__(self, master_key: bytes) -> None:
        self._hasher = Hasher(master_key, "backup-code")

    def digest(self, user_id: uuid.UUID, code: str) -> str:
        return self._hasher.hexdigest(f"{user_id}:{normalize_backup_code(code)}")


def looks_like_backup_code(code: str) -> bool:
    normalized = normalize_backup_code(code)
    return len(normalized) == 10 and all(c in _BACKUP_ALPHABET for c in normalized)
