"""The token service and its key ring, called directly (both backends): what an issued
token carries, sealed private keys, rotation, the JWKS, and strict verification."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from clinicguard.auth.interfaces import TokenInvalid
from clinicguard.auth.models import SigningKey
from clinicguard.auth.tokens import MAX_TOKEN_BYTES, TokenPurpose, audience
from clinicguard.crypto.interfaces import DecryptionFailed
from clinicguard.crypto.secretbox import SecretBox
from tests.conftest import AuthWorld

LIFETIMES = {
    TokenPurpose.ACCESS: 15 * 60,
    TokenPurpose.REFRESH: 7 * 24 * 3600,
    TokenPurpose.MFA: 5 * 60,
    TokenPurpose.RESET: 30 * 60,
}
#: Claims each purpose needs beyond the standard ones (so verification can succeed).
EXTRA: dict[TokenPurpose, dict[str, Any]] = {
    TokenPurpose.ACCESS: {"sid": "session-1", "rol": "physician"},
    TokenPurpose.REFRESH: {"sid": "session-1"},
    TokenPurpose.MFA: {},
    TokenPurpose.RESET: {"pwh": "0" * 32},
}


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a token, read without checking anything."""
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return jwt.get_unverified_header(token), claims


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def issue(world: AuthWorld, purpose: TokenPurpose, **claims: Any) -> tuple[str, Any]:
    return await world.services.tokens.issue(purpose, uuid.uuid4(), **{**EXTRA[purpose], **claims})


async def all_keys(world: AuthWorld) -> dict[TokenPurpose, str]:
    """Make sure every purpose has a signing key; their kids."""
    ring = world.services.signing_keys
    return {p: (await ring.signing_key(p)).kid for p in TokenPurpose}


async def rows(world: AuthWorld) -> list[SigningKey]:
    async with world.services.db.transaction() as session:
        return list((await session.scalars(select(SigningKey))).all())


async def private_pem(world: AuthWorld, kid: str) -> bytes:
    """The private key of ``kid`` as an attacker with the master key would get it."""
    box = SecretBox(world.services.settings.master_key_bytes(), "signing-key")
    row = next(r for r in await rows(world) if r.kid == kid)
    return box.open(row.private_sealed, row.kid)


# --- what is issued ------------------------------------------------------------------------


async def test_access_token_carries_the_expected_claims_and_header(world: AuthWorld) -> None:
    """An access token names issuer, its own audience, subject, times, a jti, kid and ES256."""
    subject = uuid.uuid4()
    token, payload = await world.services.tokens.issue(
        TokenPurpose.ACCESS, subject, sid="s-1", rol="nurse"
    )
    header, claims = unverified(token)
    active = await world.services.signing_keys.signing_key(TokenPurpose.ACCESS)
    assert header == {"alg": "ES256", "kid": active.kid, "typ": "JWT"}
    now = int(world.clock.now().timestamp())
    assert claims == payload
    assert claims["iss"] == "clinicguard"
    assert claims["aud"] == "clinicguard:access"
    assert claims["sub"] == str(subject)
    assert claims["iat"] == now
    assert claims["exp"] == now + 15 * 60
    assert isinstance(claims["jti"], str)
    assert len(claims["jti"]) >= 16
    assert (claims["sid"], claims["rol"]) == ("s-1", "nurse")
    assert await world.services.tokens.verify(token, TokenPurpose.ACCESS) == claims


@pytest.mark.parametrize("purpose", list(TokenPurpose))
async def test_each_purpose_has_its_audience_lifetime_and_key(
    world: AuthWorld, purpose: TokenPurpose
) -> None:
    """A token of one purpose has its own aud, lifetime and kid, and no other purpose takes it."""
    kids = await all_keys(world)
    assert len(set(kids.values())) == len(TokenPurpose)
    token, _ = await issue(world, purpose)
    header, claims = unverified(token)
    assert header["kid"] == kids[purpose]
    assert claims["aud"] == audience(purpose) == f"clinicguard:{purpose}"
    assert claims["exp"] - claims["iat"] == LIFETIMES[purpose]
    assert world.services.tokens.lifetime(purpose) == LIFETIMES[purpose]
    await world.services.tokens.verify(token, purpose)
    for other in TokenPurpose:
        if other is not purpose:
            with pytest.raises(TokenInvalid):
                await world.services.tokens.verify(token, other)


async def test_jti_is_unique(world: AuthWorld) -> None:
    """Every token gets a fresh jti, even for the same subject in the same second."""
    subject = uuid.uuid4()
    jtis = set()
    for _ in range(200):
        _, claims = await world.services.tokens.issue(TokenPurpose.ACCESS, subject, sid="s")
        jtis.add(claims["jti"])
    assert len(jtis) == 200


async def test_token_verifies_with_the_published_jwk(world: AuthWorld) -> None:
    """A third party holding only /.well-known/jwks.json can verify our signature."""
    token, _ = await issue(world, TokenPurpose.ACCESS)
    kid = jwt.get_unverified_header(token)["kid"]
    jwk = next(k for k in await world.services.signing_keys.jwks() if k["kid"] == kid)
    claims = jwt.decode(
        token,
        jwt.PyJWK(jwk).key,
        algorithms=["ES256"],
        audience="clinicguard:access",
        issuer="clinicguard",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["sid"] == "session-1"


async def test_eddsa_configuration_signs_and_verifies(make_world: Callable[..., Any]) -> None:
    """With jwt_algorithm=EdDSA tokens are Ed25519-signed, verify, and ES256 is refused."""
    async with make_world(jwt_algorithm="EdDSA") as world:
        token, _ = await issue(world, TokenPurpose.ACCESS)
        header, claims = unverified(token)
        assert header["alg"] == "EdDSA"
        assert await world.services.tokens.verify(token, TokenPurpose.ACCESS) == claims
        jwks = await world.services.signing_keys.jwks()
        assert jwks
        assert {(k["kty"], k["crv"], k["alg"]) for k in jwks} == {("OKP", "Ed25519", "EdDSA")}
        jwk = next(k for k in jwks if k["kid"] == header["kid"])
        jwt.decode(
            token,
            jwt.PyJWK(jwk).key,
            algorithms=["EdDSA"],
            audience="clinicguard:access",
            options={"verify_exp": False, "verify_iat": False},
        )
        # The same claims signed with an ES256 key under the EdDSA kid: wrong algorithm.
        from cryptography.hazmat.primitives.asymmetric import ec

        es_key = ec.generate_private_key(ec.SECP256R1())
        forged = jwt.encode(claims, es_key, algorithm="ES256", headers={"kid": header["kid"]})
        with pytest.raises(TokenInvalid):
            await world.services.tokens.verify(forged, TokenPurpose.ACCESS)


async def test_expires_at_caps_but_never_extends_exp(world: AuthWorld) -> None:
    """``expires_at`` (a session's end) lowers exp; a later one does not lengthen the token."""
    now = world.clock.now()
    tokens = world.services.tokens
    soon, claims = await tokens.issue(
        TokenPurpose.ACCESS, uuid.uuid4(), sid="s", expires_at=now + timedelta(seconds=60)
    )
    assert claims["exp"] == int(now.timestamp()) + 60
    _, late = await tokens.issue(
        TokenPurpose.ACCESS, uuid.uuid4(), sid="s", expires_at=now + timedelta(days=1)
    )
    assert late["exp"] == int(now.timestamp()) + 15 * 60
    await tokens.verify(soon, TokenPurpose.ACCESS)  # cached from here on
    world.clock.advance(66)
    with pytest.raises(TokenInvalid):
        await tokens.verify(soon, TokenPurpose.ACCESS)


async def test_cached_verification_still_expires(world: AuthWorld) -> None:
    """A token whose signature check was cached is refused once it expires."""
    token, _ = await issue(world, TokenPurpose.ACCESS)
    await world.services.tokens.verify(token, TokenPurpose.ACCESS)
    world.clock.advance(15 * 60 - 10)
    await world.services.tokens.verify(token, TokenPurpose.ACCESS)
    world.clock.advance(16)
    with pytest.raises(TokenInvalid):
        await world.services.tokens.verify(token, TokenPurpose.ACCESS)


# --- keys at rest --------------------------------------------------------------------------


async def test_private_keys_are_stored_sealed(world: AuthWorld) -> None:
    """No private key is stored in plaintext; each opens only with the master key and its kid."""
    await all_keys(world)
    box = SecretBox(world.services.settings.master_key_bytes(), "signing-key")
    stored = await rows(world)
    secrets_: list[bytes] = []
    for row in stored:
        assert row.public_pem.startswith("-----BEGIN PUBLIC KEY-----")
        pem = box.open(row.private_sealed, row.kid)
        assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
        body = b"".join(pem.splitlines()[1:-1])
        secrets_ += [body[:40], base64.b64decode(body)[:40]]  # PEM text and raw DER
        with pytest.raises(DecryptionFailed):
            box.open(row.private_sealed, stored[0].kid if row is not stored[0] else stored[1].kid)
        with pytest.raises(DecryptionFailed):
            SecretBox(bytes(32), "signing-key").open(row.private_sealed, row.kid)
    async with world.services.db.transaction() as session:
        raw_rows = (await session.execute(text("SELECT * FROM signing_keys"))).all()
    assert len(raw_rows) == len(TokenPurpose)
    for raw in raw_rows:
        for value in raw:
            data = bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()
            assert b"PRIVATE" not in data
            assert not any(secret in data for secret in secrets_)


# --- rotation and the JWKS -----------------------------------------------------------------


async def old_key_token(world: AuthWorld, kid: str, template: str) -> str:
    """``template``'s claims with a fresh jti and a one-day exp, signed by key ``kid``."""
    claims = {
        **unverified(template)[1],
        "jti": uuid.uuid4().hex,
        "exp": int(world.clock.now().timestamp()) + 86400,
    }
    return jwt.encode(
        claims, await private_pem(world, kid), algorithm="ES256", headers={"kid": kid}
    )


async def test_rotation_signs_with_new_key_and_old_verifies_until_verify_until(
    world: AuthWorld,
) -> None:
    """After rotation the new kid signs; the old key verifies until verify_until, then not."""
    ring, tokens = world.services.signing_keys, world.services.tokens
    old = await all_keys(world)
    before, _ = await issue(world, TokenPurpose.ACCESS)
    rotated_at = world.clock.now()
    new_kids = await ring.rotate()
    assert len(new_kids) == len(TokenPurpose)
    assert not set(new_kids) & set(old.values())
    after, _ = await issue(world, TokenPurpose.ACCESS)
    assert jwt.get_unverified_header(after)["kid"] in new_kids
    assert jwt.get_unverified_header(after)["kid"] != old[TokenPurpose.ACCESS]
    await tokens.verify(before, TokenPurpose.ACCESS)
    await tokens.verify(after, TokenPurpose.ACCESS)

    retired = {r.kid: r for r in await rows(world)}
    until = retired[old[TokenPurpose.ACCESS]].verify_until
    assert until is not None
    assert retired[old[TokenPurpose.ACCESS]].retired_at == rotated_at
    assert until >= rotated_at + timedelta(seconds=LIFETIMES[TokenPurpose.ACCESS])
    assert until <= rotated_at + timedelta(seconds=LIFETIMES[TokenPurpose.ACCESS] + 120)
    for kid in new_kids:
        assert retired[kid].verify_until is None

    # The last token the old key signed is still good just before it expires.
    world.clock.advance(LIFETIMES[TokenPurpose.ACCESS] - 1)
    await tokens.verify(before, TokenPurpose.ACCESS)

    # A long-lived token made with the old private key isolates the key's own lifetime:
    # it verifies before verify_until and is refused after it.
    long_lived = await old_key_token(world, old[TokenPurpose.ACCESS], before)
    await tokens.verify(long_lived, TokenPurpose.ACCESS)
    unseen = await old_key_token(world, old[TokenPurpose.ACCESS], before)
    world.clock.advance((until - world.clock.now()).total_seconds() + 1)
    with pytest.raises(TokenInvalid):
        await tokens.verify(unseen, TokenPurpose.ACCESS)
    fresh, _ = await issue(world, TokenPurpose.ACCESS)
    await tokens.verify(fresh, TokenPurpose.ACCESS)


async def test_jwks_lists_exactly_the_verifying_keys(world: AuthWorld) -> None:
    """The JWKS lists exactly the keys that still verify, with no private components."""
    ring = world.services.signing_keys
    old = await all_keys(world)
    first = set(old.values())

    def kids(jwks: list[dict[str, Any]]) -> set[str]:
        return {k["kid"] for k in jwks}

    jwks = await ring.jwks()
    assert kids(jwks) == first
    assert len(jwks) == len(first)
    for jwk in jwks:
        assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")
        assert not {"d", "p", "q", "k"} & set(jwk)

    second = set(await ring.rotate())
    assert kids(await ring.jwks()) == first | second

    world.clock.advance(LIFETIMES[TokenPurpose.ACCESS] + 300)  # mfa, access keys done
    assert kids(await ring.jwks()) == second | {
        old[TokenPurpose.REFRESH],
        old[TokenPurpose.RESET],
    }

    world.clock.advance(8 * 24 * 3600)  # past the refresh key's window too
    assert kids(await ring.jwks()) == second
    live = {
        r.kid
        for r in await rows(world)
        if r.verify_until is None or r.verify_until > world.clock.now()
    }
    assert live == second


async def test_cached_token_of_a_retired_key_is_refused_after_verify_until(
    world: AuthWorld,
) -> None:
    """A cached token of a retired key is refused once that key's verify_until passes."""
    tokens = world.services.tokens
    old = await all_keys(world)
    template, _ = await issue(world, TokenPurpose.ACCESS)
    forged = await old_key_token(world, old[TokenPurpose.ACCESS], template)
    await tokens.verify(forged, TokenPurpose.ACCESS)  # cached until its (one-day) exp
    await world.services.signing_keys.rotate()
    world.clock.advance(LIFETIMES[TokenPurpose.ACCESS] + 300)  # past the old verify_until
    assert await world.services.signing_keys.verification_key(old[TokenPurpose.ACCESS]) is None
    with pytest.raises(TokenInvalid):
        await tokens.verify(forged, TokenPurpose.ACCESS)


# --- verification never fails open --------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


def _claim(real: Any) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(real), _JSON)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_random_input_only_ever_raises_token_invalid(
    world: AuthWorld, data: st.DataObject
) -> None:
    """Random or mutated input never makes verify raise anything but TokenInvalid."""
    tokens = world.services.tokens
    purpose = data.draw(st.sampled_from(list(TokenPurpose)), label="purpose")
    real, claims = await issue(world, purpose)
    header = jwt.get_unverified_header(real)
    kid = st.sampled_from([header["kid"], *(await all_keys(world)).values()])
    forged_header = st.fixed_dictionaries(
        {"alg": st.sampled_from(["ES256", "EdDSA", "none", "HS256", "RS256", "ES512"])},
        optional={"kid": kid | _JSON, "typ": st.just("JWT") | _JSON, "crit": _JSON},
    )
    forged_claims = st.fixed_dictionaries(
        {},
        optional={name: _claim(value) for name, value in claims.items()},
    )

    def jwt_like(parts: tuple[Any, Any, bytes]) -> str:
        head, body, signature = parts
        return ".".join(
            [b64(json.dumps(head).encode()), b64(json.dumps(body).encode()), b64(signature)]
        )

    def mutate(args: tuple[int, str]) -> str:
        index, char = args
        index %= len(real)
        return real[:index] + char + real[index + 1 :]

    candidate = data.draw(
        st.one_of(
            st.text(max_size=300),
            st.text(max_size=10).map(lambda s: s * 500),
            st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
            st.lists(st.binary(max_size=80).map(b64), min_size=1, max_size=5).map(".".join),
            st.tuples(forged_header, forged_claims, st.binary(max_size=80)).map(jwt_like),
            st.tuples(st.integers(min_value=0), st.characters()).map(mutate),
            st.integers(min_value=0, max_value=len(real)).map(lambda n: real[:n]),
            st.just(real + "." + real),
            st.just("a" * (MAX_TOKEN_BYTES + 1)),
        ),
        label="token",
    )
    try:
        result = await tokens.verify(candidate, purpose)
    except TokenInvalid:
        return
    # Only the real token can pass (or a mutation of a base64 padding bit that decodes to
    # the very same bytes); either way the claims are exactly the issued ones.
    assert result == claims


async def test_revoking_a_key_kills_its_tokens_at_once(world: AuthWorld) -> None:
    """A leaked signing key is revoked: its tokens (even cached ones) are refused at once,
    a new key signs, and the revoked key leaves the JWKS."""
    tokens = world.services.tokens
    token, _ = await issue(world, TokenPurpose.ACCESS)
    await tokens.verify(token, TokenPurpose.ACCESS)  # cached
    kid = jwt.get_unverified_header(token)["kid"]
    assert await world.services.signing_keys.revoke(kid) is True
    with pytest.raises(TokenInvalid):
        await tokens.verify(token, TokenPurpose.ACCESS)
    fresh, _ = await issue(world, TokenPurpose.ACCESS)
    assert jwt.get_unverified_header(fresh)["kid"] != kid
    await tokens.verify(fresh, TokenPurpose.ACCESS)
    assert kid not in {k["kid"] for k in await world.services.signing_keys.jwks()}
    assert await world.services.signing_keys.revoke("no-such-kid") is False
