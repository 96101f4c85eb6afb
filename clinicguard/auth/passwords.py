"""Password hashing with argon2id, off the event loop.

Hashing is deliberately slow (memory-hard), so it runs in a small bounded thread pool: a
burst of logins queues there instead of stalling every other request on the event loop.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

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

    async def hash(self, password: str) -> str:
        """A fresh argon2id hash (random salt) of ``password``."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        """Whether ``password`` matches; False (never an exception) for a malformed hash."""
        loop = asyncio.get_running_loop()

        def _verify() -> bool:
            try:
                return self._hasher.verify(password_hash, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        return await loop.run_in_executor(self._pool, _verify)

    def needs_rehash(self, password_hash: str) -> bool:
        """True when the hash was made with other (older) parameters."""
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
