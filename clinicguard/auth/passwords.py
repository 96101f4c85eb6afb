"""Password hashing with argon2id, off the event loop.

Hashing is deliberately slow (memory-hard), so it runs in a small bounded thread pool: a
burst of logins queues there instead of stalling every other request on the event loop.
Legacy bcrypt hashes (imported accounts) verify, and report that they need rehashing, so
the next successful login replaces them with argon2id.
"""

from __future__ import annotations

import asyncio
import secrets
import string
from concurrent.futures import ThreadPoolExecutor

import bcrypt
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
_SPECIALS = "!@#$%&*+-=?"

#: OWASP's minimum for argon2id: 19 MiB, 2 iterations, 1 lane.
DEFAULT_MEMORY_KIB = 19_456
DEFAULT_TIME_COST = 2
DEFAULT_PARALLELISM = 1


class Argon2PasswordHasher:
    def __init__(
        self,
        *,
        memory_kib: int = DEFAULT_MEMORY_KIB,
        time_cost: int = DEFAULT_TIME_COST,
        parallelism: int = DEFAULT_PARALLELISM,
        max_threads: int = 2,
    ) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="argon2")
        self._dummy_hash = self._hasher.hash("clinicguard-dummy-password-for-timing")

    async def hash(self, password: str) -> str:
        """A fresh argon2id hash (random salt) of ``password``."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        """Whether ``password`` matches; False (never an exception) for a malformed hash."""
        loop = asyncio.get_running_loop()

        def _verify() -> bool:
            if password_hash.startswith(_BCRYPT_PREFIXES):
                try:
                    return bcrypt.checkpw(password.encode(), password_hash.encode())
                except ValueError:  # over bcrypt's 72 bytes, or a malformed hash
                    return False
            try:
                return self._hasher.verify(password_hash, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        return await loop.run_in_executor(self._pool, _verify)

    async def verify_dummy(self, password: str) -> None:
        """Spend the same work as a real verification (unknown accounts), so response time
        does not tell whether an email is registered."""
        await self.verify(self._dummy_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        """True for bcrypt and for argon2 hashes made with other (older) parameters."""
        if password_hash.startswith(_BCRYPT_PREFIXES):
            return True
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def generate_password(length: int = 20) -> str:
    """A random password with upper, lower, digit and special characters (``secrets``)."""
    alphabet = string.ascii_letters + string.digits + _SPECIALS
    while True:
        candidate = "".join(secrets.choice(alphabet) for _ in range(length))
        if (
            any(c.isupper() for c in candidate)
            and any(c.islower() for c in candidate)
            and any(c.isdigit() for c in candidate)
            and any(c in _SPECIALS for c in candidate)
        ):
            return candidate
