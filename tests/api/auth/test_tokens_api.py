"""The JWT attack matrix through the HTTP API (both backends): every forged, foreign,
malformed, expired or revoked credential presented to a protected route is a 401
problem+json with ``WWW-Authenticate: Bearer``; rotation keeps issued tokens working."""

from __future__ import annotations

import base64
import hmac
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from clinicguard.auth.models import SigningKey
from clinicguard.auth.tokens import TokenPurpose
from clinicguard.core.principal import Role
from clinicguard.crypto.secretbox import SecretBox
from tests.conftest import AuthWorld
from tests.factories.people import Person, add_clinic, add_person

ME = "/api/v1/me"
#: Routes that take no credentials by design.
PUBLIC = re.compile(
    r"^(/api/v1/auth/(login|mfa/verify|refresh|password/forgot|password/reset|console/.*)"
    r"|/healthz|/readyz|/\.well-known/jwks\.json)$"
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return jwt.get_unverified_header(token), claims


def assert_unauthorized(response: httpx.Response, case: str = "") -> None:
    """A 401 problem+json that asks for a Bearer token."""
    assert response.status_code == 401, (case, response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json"), case
    assert response.headers.get("www-authenticate") == "Bearer", case
    body = response.json()
    assert body["status"] == 401, case
    assert body["type"].startswith("urn:clinicguard:problem:"), case


@dataclass
class SignedIn:
    """A receptionist with a live session, and the material an attacker forges from."""

    world: AuthWorld
    person: Person
    tokens: dict[str, Any]
    header: dict[str, Any]
    claims: dict[str, Any]
    keys: dict[str, SigningKey]
    """Signing-key rows by kid."""

    @property
    def access(self) -> str:
        return str(self.tokens["access_token"])

    def private_pem(self, kid: str) -> bytes:
        """A stored key opened with the master key (what only the server can do)."""
        box = SecretBox(self.world.services.settings.master_key_bytes(), "signing-key")
        return box.open(self.keys[kid].private_sealed, kid)

    def kid_of(self, purpose: TokenPurpose) -> str:
        return next(
            k
            for k, row in self.keys.items()
            if row.purpose == str(purpose) and row.retired_at is None
        )

    def sign(
        self,
        claims: dict[str, Any],
        *,
        purpose: TokenPurpose = TokenPurpose.ACCESS,
        kid: str | None = None,
        drop_kid: bool = False,
        extra_headers: dict[str, Any] | None = None,
    ) -> str:
        """``claims`` signed with the real key of ``purpose`` (the header's kid may lie)."""
        real_kid = self.kid_of(purpose)
        headers: dict[str, Any] = {"kid": kid or real_kid, "typ": "JWT", **(extra_headers or {})}
        if drop_kid:
            headers.pop("kid")
        return jwt.encode(claims, self.private_pem(real_kid), algorithm="ES256", headers=headers)

    def with_claims(self, **changes: Any) -> dict[str, Any]:
        claims = {**self.claims, **changes}
        return {k: v for k, v in claims.items() if v is not None}

    async def me(self, authorization: str | bytes | None) -> httpx.Response:
        headers = {} if authorization is None else {"authorization": authorization}
        return await self.world.client.get(ME, headers=headers)


async def load_keys(world: AuthWorld) -> dict[str, SigningKey]:
    for purpose in TokenPurpose:
        await world.services.signing_keys.signing_key(purpose)
    async with world.services.db.transaction() as session:
        return {r.kid: r for r in (await session.scalars(select(SigningKey))).all()}


@pytest.fixture
async def signed_in(world: AuthWorld) -> SignedIn:
    clinic = await add_clinic(world.services)
    person = await add_person(world.services, clinic.id, Role.RECEPTIONIST)
    tokens = await world.login(person)
    header, claims = unverified(tokens["access_token"])
    return SignedIn(world, person, tokens, header, claims, await load_keys(world))


async def test_forging_helper_is_sound(signed_in: SignedIn) -> None:
    """Baseline: real claims re-signed with the real key pass, so each refusal is the change."""
    assert (await signed_in.me(f"Bearer {signed_in.access}")).status_code == 200
    resigned = signed_in.sign(signed_in.with_claims(jti=uuid.uuid4().hex))
    response = await signed_in.me(f"Bearer {resigned}")
    assert response.status_code == 200, response.text
    assert response.json()["email"] == signed_in.person.email


async def test_jwt_attack_matrix_is_401(signed_in: SignedIn) -> None:
    """Forged, foreign, malformed or oversized credentials are each a 401 problem+json."""
    s = signed_in
    world = s.world
    access_kid = s.kid_of(TokenPurpose.ACCESS)
    now = int(world.clock.now().timestamp())
    public_pem = s.keys[access_kid].public_pem.encode()
    head_b64, body_b64, sig_b64 = s.access.split(".")
    attacker = ec.generate_private_key(ec.SECP256R1())
    attacker_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(attacker.public_key()))

    def unsigned(alg: str) -> str:
        return f"{b64json({'alg': alg, 'typ': 'JWT', 'kid': access_kid})}.{b64json(s.claims)}."

    def hs256(secret: bytes, header: dict[str, Any], digest: str = "sha256") -> str:
        signing_input = f"{b64json(header)}.{b64json(s.claims)}".encode()
        return f"{signing_input.decode()}.{b64(hmac.digest(secret, signing_input, digest))}"

    refresh_claims = unverified(s.tokens["refresh_token"])[1]
    mfa_token, _ = await world.services.tokens.issue(TokenPurpose.MFA, s.person.id)
    reset_token, _ = await world.services.tokens.issue(
        TokenPurpose.RESET, s.person.id, pwh="0" * 32
    )
    other = await add_person(world.services, s.person.clinic_id, Role.RECEPTIONIST)
    flipped = sig_b64[:20] + ("A" if sig_b64[20] != "A" else "B") + sig_b64[21:]

    tokens: dict[str, str] = {
        # algorithm attacks
        "alg none": unsigned("none"),
        "alg None": unsigned("None"),
        "alg NONE": unsigned("NONE"),
        "alg none with signature": unsigned("none") + sig_b64,
        "HS256 keyed with the public PEM": hs256(
            public_pem, {"alg": "HS256", "typ": "JWT", "kid": access_kid}
        ),
        "HS256 keyed with the public PEM, no kid": hs256(public_pem, {"alg": "HS256"}),
        "HS512 keyed with the public PEM": hs256(
            public_pem, {"alg": "HS512", "kid": access_kid}, "sha512"
        ),
        "EdDSA header on an ES256 signature": f"{b64json({**s.header, 'alg': 'EdDSA'})}"
        f".{body_b64}.{sig_b64}",
        # key identification attacks
        "unknown kid": s.sign(s.claims, kid="access-19700101-deadbeef"),
        "no kid": s.sign(s.claims, drop_kid=True),
        "kid is a path": s.sign(s.claims, kid="../../../../dev/null"),
        "kid is SQL": s.sign(s.claims, kid="' OR '1'='1"),
        "kid is a number": f"{b64json({**s.header, 'kid': 7})}.{body_b64}.{sig_b64}",
        "attacker key under the real kid": jwt.encode(
            s.claims, attacker, algorithm="ES256", headers={"kid": access_kid}
        ),
        "attacker key embedded as jwk": jwt.encode(
            s.claims,
            attacker,
            algorithm="ES256",
            headers={"kid": access_kid, "jwk": attacker_jwk},
        ),
        "attacker key by jku": jwt.encode(
            s.claims,
            attacker,
            algorithm="ES256",
            headers={"kid": access_kid, "jku": "https://attacker.example/jwks.json"},
        ),
        # tokens of other purposes, and access claims under other purposes' keys
        "refresh token": s.tokens["refresh_token"],
        "mfa token": mfa_token,
        "reset token": reset_token,
        "access claims signed with the refresh key": s.sign(s.claims, purpose=TokenPurpose.REFRESH),
        "access claims signed with the mfa key": s.sign(s.claims, purpose=TokenPurpose.MFA),
        "access claims signed with the reset key": s.sign(s.claims, purpose=TokenPurpose.RESET),
        "refresh claims with the access key": s.sign(refresh_claims),
        "access claims, refresh key, access kid": jwt.encode(
            s.claims,
            s.private_pem(s.kid_of(TokenPurpose.REFRESH)),
            algorithm="ES256",
            headers={"kid": access_kid},
        ),
        # claims
        **{f"missing {c}": s.sign(s.with_claims(**{c: None})) for c in ("exp", "iat", "sub")},
        **{f"missing {c}": s.sign(s.with_claims(**{c: None})) for c in ("sid", "jti")},
        "missing iss": s.sign(s.with_claims(iss=None)),
        "missing aud": s.sign(s.with_claims(aud=None)),
        "wrong iss": s.sign(s.with_claims(iss="https://evil.example")),
        "wrong aud": s.sign(s.with_claims(aud="clinicguard:refresh")),
        "generic aud": s.sign(s.with_claims(aud="clinicguard")),
        "aud list without access": s.sign(s.with_claims(aud=["clinicguard:mfa", "other"])),
        "future nbf": s.sign(s.with_claims(nbf=now + 600)),
        "future iat": s.sign(s.with_claims(iat=now + 600)),
        "already expired": s.sign(s.with_claims(exp=now - 60, iat=now - 960)),
        "exp not a number": s.sign(s.with_claims(exp="tomorrow")),
        "sub not a uuid": s.sign(s.with_claims(sub="admin")),
        "sub of another user": s.sign(s.with_claims(sub=str(other.id))),
        "unknown sid": s.sign(s.with_claims(sid="no-such-session")),
        "other clinic in cid": s.sign(s.with_claims(cid=str(uuid.uuid4()))),
        # structure
        "tampered payload": f"{head_b64}.{b64json(s.with_claims(rol='clinic_admin'))}.{sig_b64}",
        "tampered subject": f"{head_b64}.{b64json(s.with_claims(sub=str(other.id)))}.{sig_b64}",
        "tampered header": f"{b64json({**s.header, 'typ': 'at+jwt'})}.{body_b64}.{sig_b64}",
        "tampered signature": f"{head_b64}.{body_b64}.{flipped}",
        "signature removed": f"{head_b64}.{body_b64}.",
        "truncated by one": s.access[:-1],
        "truncated to half": s.access[: len(s.access) // 2],
        "header and payload only": f"{head_b64}.{body_b64}",
        "four segments": f"{s.access}.{sig_b64}",
        "10 KB token": "a" * 10 * 1024,
        "10 KB after a real token": s.access + "A" * 10 * 1024,
        "garbage": "garbage",
        "dots": "...",
        "a.b.c": "a.b.c",
        "base64 junk": f"{b64(b'{')}.{b64(b'}')}.{b64(b'x')}",
        "json header not an object": f"{b64json([1, 2])}.{body_b64}.{sig_b64}",
        "two tokens": f"{s.access} {s.access}",
    }
    authorizations: dict[str, str | bytes] = {
        name: f"Bearer {token}" for name, token in tokens.items()
    }
    authorizations |= {
        "empty Bearer": "Bearer ",
        "Bearer without value": "Bearer",
        "Bearer with spaces": "Bearer     ",
        "Basic": "Basic dXNlcjpwYXNzd29yZA==",
        "Basic with the real token": f"Basic {s.access}",
        "Token scheme": f"Token {s.access}",
        "no scheme": s.access,
        "Bearer with colon": f"Bearer: {s.access}",
        "Digest": 'Digest username="x", response="y"',
        "non-ASCII token": "Bearer tökén".encode(),
        "non-ASCII after a real token": f"Bearer {s.access}é".encode(),
        "latin-1 bytes": b"Bearer \xff\xfe\xfd",
    }
    failures = []
    for case, authorization in authorizations.items():
        response = await s.me(authorization)
        try:
            assert_unauthorized(response, case)
        except AssertionError:
            failures.append(f"{case}: {response.status_code} {response.text[:200]}")
    assert not failures, failures
    # None of those attempts disturbed the real session.
    assert (await s.me(f"Bearer {s.access}")).status_code == 200


async def test_missing_authorization_is_401(signed_in: SignedIn) -> None:
    """No Authorization header: 401 problem+json with WWW-Authenticate: Bearer."""
    assert_unauthorized(await signed_in.me(None))


async def test_expired_access_token_is_401(signed_in: SignedIn) -> None:
    """An access token lives 15 minutes: at 14 it works, at 16 it is refused."""
    world = signed_in.world
    world.clock.advance(14 * 60)
    assert (await signed_in.me(f"Bearer {signed_in.access}")).status_code == 200
    world.clock.advance(2 * 60)
    assert_unauthorized(await signed_in.me(f"Bearer {signed_in.access}"))


async def test_logout_beats_the_signature_cache(signed_in: SignedIn) -> None:
    """A token whose signature check is cached is refused once its session is logged out."""
    bearer = f"Bearer {signed_in.access}"
    assert (await signed_in.me(bearer)).status_code == 200
    assert (await signed_in.me(bearer)).status_code == 200  # served from the cache
    logout = await signed_in.world.client.post(
        "/api/v1/auth/logout", headers={"authorization": bearer}
    )
    assert logout.status_code == 204
    assert_unauthorized(await signed_in.me(bearer))
    refresh = await signed_in.world.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": signed_in.tokens["refresh_token"]}
    )
    assert_unauthorized(refresh)


def _path_value(name: str) -> str:
    return str(uuid.uuid4()) if name.endswith("_id") else "x"


async def test_every_protected_route_needs_credentials(world: AuthWorld) -> None:
    """Every OpenAPI route but sign-in, health and JWKS is a 401 without credentials."""
    paths: dict[str, dict[str, Any]] = world.app.openapi()["paths"]
    checked: list[str] = []
    failures: list[str] = []
    for path, operations in paths.items():
        if PUBLIC.match(path):
            continue
        url = re.sub(r"\{([^}]+)\}", lambda m: _path_value(m.group(1)), path)
        for method in operations:
            kwargs: dict[str, Any] = {}
            if method in {"post", "put", "patch"}:
                kwargs["json"] = {}
            response = await world.client.request(method.upper(), url, **kwargs)
            checked.append(f"{method.upper()} {path}")
            try:
                assert_unauthorized(response, f"{method} {path}")
            except AssertionError:
                failures.append(f"{method.upper()} {path}: {response.status_code}")
    assert not failures, failures
    assert "GET /api/v1/me" in checked
    assert "POST /api/v1/security/2fa/disable" in checked
    assert len(checked) >= 12


async def test_rotation_keeps_tokens_working_and_publishes_both_keys(
    signed_in: SignedIn,
) -> None:
    """A signing-key rotation keeps issued tokens working; the JWKS lists old and new keys."""
    world = signed_in.world
    before = {k["kid"] for k in (await world.client.get("/.well-known/jwks.json")).json()["keys"]}
    assert signed_in.header["kid"] in before
    new_kids = set(await world.services.signing_keys.rotate())

    assert (await signed_in.me(f"Bearer {signed_in.access}")).status_code == 200
    jwks = await world.client.get("/.well-known/jwks.json")
    assert jwks.status_code == 200
    after = {k["kid"] for k in jwks.json()["keys"]}
    assert before | new_kids == after
    assert not any("d" in k for k in jwks.json()["keys"])

    refreshed = await world.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": signed_in.tokens["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text
    new_access = refreshed.json()["access_token"]
    assert jwt.get_unverified_header(new_access)["kid"] in new_kids
    assert (await signed_in.me(f"Bearer {new_access}")).status_code == 200
    world.clock.advance(30)
    again = await world.login(signed_in.person)
    assert jwt.get_unverified_header(again["access_token"])["kid"] in new_kids
