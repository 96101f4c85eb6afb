"""Signed tokens: a key ring in the database (one signing key per purpose), strict
verification, and a per-token signature cache.

Each purpose (access, refresh, mfa-pending, password reset) has its own keys and audience,
so a token minted for one job is worthless for another. Keys are asymmetric (ES256 by
default, EdDSA allowed) with a ``kid``; private keys are stored sealed under the master key.
A rotation makes a new key sign at once; the old key keeps verifying until the last token
it can have signed expires. Verification accepts exactly the configured algorithm.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import jwt
from sqlalchemy import select, update

from clinicguard.auth.interfaces import TokenInvalid
from clinicguard.auth.models import SigningKey
from clinicguard.core.clock import Clock
from clinicguard.crypto.secretbox import SecretBox
from clinicguard.crypto.signing import (
    SigningAlgorithm,
    generate_private_pem,
    public_jwk,
    public_pem,
)
from clinicguard.store.db import Database

MAX_TOKEN_BYTES = 4096
KEY_CACHE_SECONDS = 30.0
UNKNOWN_KID_REFRESH_SECONDS = 5.0
LEEWAY_SECONDS = 5


class TokenPurpose(StrEnum):
    ACCESS = "access"
    REFRESH = "refresh"
    MFA = "mfa"
    RESET = "reset"


#: Claims every token of a purpose must carry (a token without one is refused).
REQUIRED_CLAIMS: dict[TokenPurpose, list[str]] = {
    TokenPurpose.ACCESS: ["exp", "iat", "sub", "sid", "jti", "iss", "aud"],
    TokenPurpose.REFRESH: ["exp", "iat", "sub", "sid", "jti", "iss", "aud"],
    TokenPurpose.MFA: ["exp", "iat", "sub", "jti", "iss", "aud"],
    TokenPurpose.RESET: ["exp", "iat", "sub", "jti", "iss", "aud", "pwh"],
}


def audience(purpose: TokenPurpose) -> str:
    return f"clinicguard:{purpose}"


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str
    purpose: TokenPurpose
    algorithm: str
    public_pem: bytes
    verify_until: datetime | None
    retired: bool
    signing_key: Any = None  # prepared private key, for the active key only
    verifying_key: Any = None


class SigningKeyRing:
    """Signing keys shared by every instance through the database, cached briefly."""

    def __init__(
        self,
        db: Database,
        *,
        master_key: bytes,
        algorithm: str,
        clock: Clock,
        lifetimes: dict[TokenPurpose, int],
    ) -> None:
        self._db = db
        self._box = SecretBox(master_key, "signing-key")
        self._algorithm = SigningAlgorithm(algorithm)
        self._clock = clock
        self._lifetimes = lifetimes
        self._keys: dict[str, _Key] = {}
        self._active: dict[TokenPurpose, _Key] = {}
        self._loaded_at = float("-inf")

    @property
    def algorithm(self) -> str:
        return str(self._algorithm)

    def _verify_window(self, purpose: TokenPurpose) -> timedelta:
        # Other instances may keep signing with a retired key until their cache refreshes.
        return timedelta(seconds=self._lifetimes[purpose] + KEY_CACHE_SECONDS + LEEWAY_SECONDS)

    async def _load(self) -> None:
        now = self._clock.now()
        async with self._db.transaction() as session:
            rows = (await session.scalars(select(SigningKey).order_by(SigningKey.created_at))).all()
        keys: dict[str, _Key] = {}
        active: dict[TokenPurpose, _Key] = {}
        algo = jwt.get_algorithm_by_name(str(self._algorithm))
        for row in rows:
            if row.verify_until is not None and row.verify_until <= now:
                continue
            purpose = TokenPurpose(row.purpose)
            key = _Key(
                kid=row.kid,
                purpose=purpose,
                algorithm=row.algorithm,
                public_pem=row.public_pem.encode(),
                verify_until=row.verify_until,
                retired=row.retired_at is not None,
                verifying_key=algo.prepare_key(row.public_pem.encode())
                if row.algorithm == str(self._algorithm)
                else None,
            )
            if not key.retired and row.algorithm == str(self._algorithm):
                private = self._box.open(row.private_sealed, row.kid)
                key = replace(key, signing_key=algo.prepare_key(private))
                active[purpose] = key  # rows are oldest first: the newest wins
            keys[row.kid] = key
        self._keys, self._active = keys, active
        self._loaded_at = self._clock.monotonic()

    async def _fresh(self, *, force: bool = False) -> None:
        age = self._clock.monotonic() - self._loaded_at
        if force or age > KEY_CACHE_SECONDS:
            await self._load()

    async def _create(self, purpose: TokenPurpose) -> str:
        kid = f"{purpose}-{self._clock.now():%Y%m%d}-{secrets.token_hex(4)}"
        private = generate_private_pem(self._algorithm)
        async with self._db.transaction() as session:
            session.add(
                SigningKey(
                    kid=kid,
                    purpose=str(purpose),
                    algorithm=str(self._algorithm),
                    public_pem=public_pem(private).decode(),
                    private_sealed=self._box.seal(private, kid),
                    created_at=self._clock.now(),
                )
            )
        return kid

    async def signing_key(self, purpose: TokenPurpose) -> _Key:
        await self._fresh()
        if purpose not in self._active:
            # No key of the configured algorithm yet (first start, or the algorithm was
            # changed): keys of another algorithm retire rather than wait to be revived.
            await self._retire_active(purpose)
            await self._create(purpose)
            await self._fresh(force=True)
        return self._active[purpose]

    async def _retire_active(self, purpose: TokenPurpose) -> None:
        now = self._clock.now()
        async with self._db.transaction() as session:
            await session.execute(
                update(SigningKey)
                .where(SigningKey.purpose == str(purpose), SigningKey.retired_at.is_(None))
                .values(retired_at=now, verify_until=now + self._verify_window(purpose))
            )

    async def verification_key(self, kid: str) -> _Key | None:
        await self._fresh()
        key = self._keys.get(kid)
        if key is None and self._clock.monotonic() - self._loaded_at > UNKNOWN_KID_REFRESH_SECONDS:
            # A key created by another instance moments ago; unknown kids cannot make us
            # query the database more than once every few seconds.
            await self._fresh(force=True)
            key = self._keys.get(kid)
        if key is None or key.verifying_key is None:
            return None
        if key.verify_until is not None and key.verify_until <= self._clock.now():
            return None
        return key

    async def rotate(self) -> list[str]:
        """A new signing key for every purpose; the previous ones retire (they verify until
        the last token they can have signed has expired)."""
        new: list[str] = []
        for purpose in TokenPurpose:
            await self._retire_active(purpose)
            new.append(await self._create(purpose))
        await self._fresh(force=True)
        return new

    async def revoke(self, kid: str) -> bool:
        """Stop a key verifying now (a leaked key): every token it signed dies at once on
        this instance, and on the others within the key cache period. When it was the
        signing key, its purpose gets a new one. False when no such key exists."""
        now = self._clock.now()
        async with self._db.transaction() as session:
            row = await session.get(SigningKey, kid)
            if row is None:
                return False
            row.retired_at = row.retired_at or now
            row.verify_until = now
            purpose = TokenPurpose(row.purpose)
        await self._fresh(force=True)
        await self.signing_key(purpose)
        return True

    async def jwks(self) -> list[dict[str, Any]]:
        """Public keys of every key that still verifies (all purposes)."""
        await self._fresh()
        return [
            public_jwk(k.public_pem, k.kid, SigningAlgorithm(k.algorithm))
            for k in self._keys.values()
            if k.verifying_key is not None
        ]


class TokenService:
    def __init__(
        self,
        ring: SigningKeyRing,
        *,
        issuer: str,
        clock: Clock,
        lifetimes: dict[TokenPurpose, int],
        cache_size: int = 10_000,
    ) -> None:
        self._ring = ring
        self._issuer = issuer
        self._clock = clock
        self._lifetimes = lifetimes
        self._cache: OrderedDict[bytes, tuple[dict[str, Any], float, str]] = OrderedDict()
        self._cache_size = cache_size

    def lifetime(self, purpose: TokenPurpose) -> int:
        return self._lifetimes[purpose]

    async def issue(
        self,
        purpose: TokenPurpose,
        subject: uuid.UUID,
        *,
        expires_at: datetime | None = None,
        **claims: Any,
    ) -> tuple[str, dict[str, Any]]:
        """A signed token and its claims (``jti`` is fresh; ``exp`` is the purpose's
        lifetime unless an earlier ``expires_at`` is given, such as a session's end)."""
        key = await self._ring.signing_key(purpose)
        now = self._clock.now()
        exp = now + timedelta(seconds=self._lifetimes[purpose])
        if expires_at is not None:
            exp = min(exp, expires_at)
        payload = {
            "iss": self._issuer,
            "aud": audience(purpose),
            "sub": str(subject),
            "iat": int(now.timestamp()),
            "exp": int(exp.timestamp()),
            "jti": secrets.token_urlsafe(16),
            **claims,
        }
        token = jwt.encode(
            payload,
            key.signing_key,
            algorithm=key.algorithm,
            headers={"kid": key.kid, "typ": "JWT"},
        )
        return token, payload

    async def verify(self, token: str, purpose: TokenPurpose) -> dict[str, Any]:
        """The claims of a valid token of this purpose; raises TokenInvalid otherwise
        (malformed, oversized, unknown or mismatched kid, other algorithm, bad signature,
        wrong issuer or audience, missing claims, not yet valid, expired)."""
        if not token or len(token) > MAX_TOKEN_BYTES or not token.isascii():
            raise TokenInvalid()
        cache_key = hashlib.sha256(f"{purpose}:{token}".encode()).digest()
        cached = self._cache.get(cache_key)
        now = self._clock.now().timestamp()
        # A cache hit still needs its key to verify (rotation windows end; an in-memory look-up).
        if (
            cached is not None
            and cached[1] > now
            and await self._ring.verification_key(cached[2]) is not None
        ):
            self._cache.move_to_end(cache_key)
            return cached[0]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenInvalid() from exc
        kid, alg = header.get("kid"), header.get("alg")
        if not isinstance(kid, str) or alg != self._ring.algorithm:
            raise TokenInvalid()
        key = await self._ring.verification_key(kid)
        if key is None or key.purpose is not purpose:
            raise TokenInvalid()
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.verifying_key,
                algorithms=[self._ring.algorithm],
                audience=audience(purpose),
                issuer=self._issuer,
                leeway=LEEWAY_SECONDS,
                # Time claims are checked below against the service's clock (the same clock
                # that issued them), not the wall clock inside PyJWT.
                options={
                    "require": REQUIRED_CLAIMS[purpose],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
            if float(claims["exp"]) + LEEWAY_SECONDS <= now:
                raise jwt.ExpiredSignatureError()
            if float(claims.get("nbf", 0)) - LEEWAY_SECONDS > now:
                raise jwt.ImmatureSignatureError()
            if float(claims["iat"]) - LEEWAY_SECONDS > now:
                raise jwt.ImmatureSignatureError()
            uuid.UUID(str(claims["sub"]))
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise TokenInvalid() from exc
        if purpose is TokenPurpose.ACCESS:
            # Only the signature check is cached; the session is checked on every request.
            self._cache[cache_key] = (claims, float(claims["exp"]), kid)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return claims
