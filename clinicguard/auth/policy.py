"""The password policy and breached-password checks.

Defaults come from settings (our specification: 12-128 characters, upper, lower, digit and
special, not the user's name, email or clinic, zxcvbn score >= 3, none of the last 5,
expiry after 90 days); each clinic may only tighten them (``clinics.security_policy``), and
a person working at several clinics gets the strictest combination.
"""

from __future__ import annotations

import asyncio
import mmap
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from zxcvbn import zxcvbn

from clinicguard.auth.interfaces import BreachCheckUnavailable, BreachedPasswordChecker
from clinicguard.crypto.secretbox import sha1_hex

MAX_PASSWORD_BYTES = 1024
"""Anything longer is refused before any hashing or analysis (a cheap denial of service)."""
DEFAULT_CORPUS = Path(__file__).resolve().parent / "data" / "breached-sha1.txt"
#: The bounds a clinic override must stay within (an override outside them is ignored, so a
#: clinic can neither loosen the policy nor make it impossible to satisfy).
_TIGHTEN_BOUNDS = {
    "min_length": (1, 128),
    "min_strength": (0, 4),
    "history": (0, 24),
    "expiry_days": (1, 3650),
}


@dataclass(frozen=True, slots=True)
class PasswordPolicy:
    min_length: int = 12
    max_length: int = 128
    require_upper: bool = True
    require_lower: bool = True
    require_digit: bool = True
    require_special: bool = True
    min_strength: int = 3
    history: int = 5
    expiry_days: int = 90

    def tightened_by(self, overrides: Mapping[str, Any] | None) -> PasswordPolicy:
        """This policy made stricter (never looser) by a clinic's overrides."""
        if not overrides:
            return self
        changes: dict[str, Any] = {}
        for name, (low, high) in _TIGHTEN_BOUNDS.items():
            value = overrides.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                continue
            current = getattr(self, name)
            if name == "expiry_days":
                # 0 means "never expires": any (positive) period is stricter than that.
                changes[name] = value if current == 0 else min(current, value)
            elif name == "min_length":
                changes[name] = min(max(current, value), self.max_length)
            else:
                changes[name] = max(current, value)
        return replace(self, **changes)

    def combined(self, clinic_overrides: Iterable[Mapping[str, Any] | None]) -> PasswordPolicy:
        policy = self
        for overrides in clinic_overrides:
            policy = policy.tightened_by(overrides)
        return policy


def _fold(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return plain.casefold()


def personal_words(full_name: str, email: str, clinic_names: Sequence[str]) -> list[str]:
    """The parts of a person's identity a password must not contain (3+ letters)."""
    words: list[str] = []
    for text in (full_name, email.split("@", 1)[0], *clinic_names):
        words.extend(w for w in re.split(r"[^a-z0-9]+", _fold(text)) if len(w) >= 3)
    stop = {"dra", "enf", "clinica", "clinic", "the", "dos", "das", "de"}
    return sorted({w for w in words if w not in stop})


def rule_violations(password: str, policy: PasswordPolicy, personal: Sequence[str]) -> list[str]:
    """Every composition, personal-data and strength rule the password breaks (CPU only:
    zxcvbn runs here, so call it through :func:`check_password` off the event loop)."""
    reasons: list[str] = []
    if len(password) < policy.min_length:
        reasons.append(f"Must be at least {policy.min_length} characters long.")
    if len(password) > policy.max_length:
        reasons.append(f"Must be at most {policy.max_length} characters long.")
        return reasons  # nothing else is analysed on an over-long value
    if policy.require_upper and not any(c.isupper() for c in password):
        reasons.append("Must contain an upper-case letter.")
    if policy.require_lower and not any(c.islower() for c in password):
        reasons.append("Must contain a lower-case letter.")
    if policy.require_digit and not any(c.isdigit() for c in password):
        reasons.append("Must contain a digit.")
    # A special character is neither a letter nor a digit in any script (an accented letter
    # is a letter) nor white space.
    if policy.require_special and not any(not c.isalnum() and not c.isspace() for c in password):
        reasons.append("Must contain a special character.")
    folded = _fold(password)
    if any(word in folded for word in personal):
        reasons.append("Must not contain your name, email or clinic name.")
    # Scored as typed and with accents removed: "Pássword1234" is as guessable as
    # "Password1234", and the weaker of the two scores counts.
    plain = unicodedata.normalize("NFKD", password).encode("ascii", "ignore").decode()
    score = min(
        int(zxcvbn(candidate[:128], user_inputs=list(personal))["score"])
        for candidate in {password, plain}
        if candidate
    )
    if score < policy.min_strength:
        reasons.append("Is too easy to guess; use a longer passphrase.")
    return reasons


class OfflineBreachedPasswordChecker:
    """Binary search in a sorted file of uppercase SHA-1 hashes (one per line, optionally
    ``HASH:COUNT`` as the Pwned Passwords download has it), memory-mapped, so the full
    corpus works as well as the small one shipped with the package."""

    def __init__(self, path: Path = DEFAULT_CORPUS) -> None:
        self._path = path
        with path.open("rb") as fh:
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)

    def _line_at(self, offset: int) -> tuple[bytes, int]:
        start = self._map.rfind(b"\n", 0, offset) + 1
        end = self._map.find(b"\n", offset)
        end = len(self._map) if end == -1 else end
        return self._map[start:end].split(b":", 1)[0].strip(), end + 1

    def contains(self, sha1: str) -> bool:
        target = sha1.upper().encode()
        low, high = 0, len(self._map)
        while low < high:
            mid = (low + high) // 2
            line, _ = self._line_at(mid)
            if line == target:
                return True
            if line < target:
                low = self._map.find(b"\n", mid) + 1 or len(self._map)
            else:
                high = self._map.rfind(b"\n", 0, mid) if mid else 0
                high = max(high, 0)
        return False

    async def is_breached(self, password: str) -> bool:
        return self.contains(sha1_hex(password))


class RangeApiBreachedPasswordChecker:
    """k-anonymity range API (Pwned Passwords): only the first 5 hex characters of the
    SHA-1 leave the process. Off by default (needs the internet)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 3.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout,
            transport=transport,
            headers={"Add-Padding": "true", "User-Agent": "clinicguard"},
        )

    async def is_breached(self, password: str) -> bool:
        digest = sha1_hex(password)
        try:
            response = await self._client.get(digest[:5])
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise BreachCheckUnavailable(str(type(exc).__name__)) from exc
        suffix = digest[5:]
        for line in response.text.splitlines():
            candidate, _, count = line.partition(":")
            if candidate.strip().upper() == suffix and count.strip() not in ("", "0"):
                return True
        return False

    async def close(self) -> None:
        await self._client.aclose()


class NoBreachedPasswordChecker:
    """Explicitly configured off (``breached_password_checker=none``)."""

    async def is_breached(self, password: str) -> bool:
        return False


def create_breach_checker(
    kind: str, range_url: str, corpus: Path | None = None
) -> BreachedPasswordChecker:
    if kind == "offline":
        return OfflineBreachedPasswordChecker(corpus or DEFAULT_CORPUS)
    if kind == "range-api":
        return RangeApiBreachedPasswordChecker(range_url)
    return NoBreachedPasswordChecker()


async def check_password(
    password: str,
    policy: PasswordPolicy,
    personal: Sequence[str],
    breached: BreachedPasswordChecker,
) -> list[str]:
    """Every rule a new password breaks, including 'appears in a breach' (which fails
    closed: an unreachable breach source refuses the password rather than skip the check)."""
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        return [f"Must be at most {policy.max_length} characters long."]
    reasons = await asyncio.to_thread(rule_violations, password, policy, personal)
    try:
        if await breached.is_breached(password):
            reasons.append("Appears in a known data breach; choose another.")
    except BreachCheckUnavailable:
        reasons.append("Could not be checked against known breaches right now; try again.")
    return reasons
