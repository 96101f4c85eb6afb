"""The session store on its own: creation order survives the expiry of old sessions."""

from __future__ import annotations

import uuid

from clinicguard.auth.sessions import SessionStore
from clinicguard.core.clock import FrozenClock
from clinicguard.crypto.secretbox import Hasher
from clinicguard.store.kv import MemoryKeyValueStore


async def test_a_new_session_is_never_the_one_trimmed_after_old_ones_expired() -> None:
    """The per-user sequence outlives every session it orders: eight hours after the first
    sign-in, a new sign-in is still the newest and the oldest live session is the one ended
    at the limit (not the new one)."""
    clock = FrozenClock()
    kv = MemoryKeyValueStore(monotonic=clock.monotonic)
    store = SessionStore(
        kv,
        clock,
        idle_timeout=10_000,
        absolute_timeout=300,
        max_per_user=1,
        hasher=Hasher.from_secret("test-secret-" * 4, "sessions"),
    )
    user = uuid.uuid4()

    async def sign_in() -> str:
        session, _ = await store.create(
            user_id=user,
            clinic_id=None,
            role="nurse",
            mfa_level=1,
            scope="full",
            ip="127.0.0.1",
            device="curl",
        )
        return session.sid

    await sign_in()
    clock.advance(200)
    second = await sign_in()
    clock.advance(200)  # the first sign-in is now past its absolute lifetime
    third = await sign_in()
    assert await store.get(user, third) is not None, "the newest sign-in was trimmed"
    assert await store.get(user, second) is None
    assert [s.sid for s in await store.list(user)] == [third]
