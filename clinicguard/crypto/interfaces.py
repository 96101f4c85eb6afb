"""Crypto failures (typed, and saying nothing about the key or the data)."""

from __future__ import annotations

from clinicguard.core.errors import ProblemError


class DecryptionFailed(ProblemError):
    """A ciphertext did not authenticate: tampered, truncated, moved to another place, or
    sealed under another key. Never answered with a placeholder."""

    status = 500
    slug = "decryption-failed"
    title = "Stored data could not be read"
    default_detail = "Stored data failed an integrity check; the incident has been recorded."
