"""Passwords through the HTTP API (both backends): change with every broken rule named,
history, expiry and forced changes with a restricted sign-in, rehashing of old hashes,
forgot/reset with single-use tokens bound to the password, and clinic policy overrides."""

from __future__ import annotations

import email
import email.policy
import itertools
import re
import unicodedata
import uuid
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

import argon2
import bcrypt
import httpx

from clinicguard.audit.models import AuditEvent
from clinicguard.auth.models import User
from clinicguard.core.principal import Role
from tests.audit_trail import trail_events
from tests.conftest import AuthWorld, client_for
from tests.factories.people import DEFAULT_PASSWORD, Person, add_clinic, add_person

NEW_PASSWORD = "Gir@ssol-Azul7"
OTHER_PASSWORDS = ("Vento&Norte-42x", "Cacto-Lilas#2091", "Xq7#mPz!2Lk9", "Brisa%Serra-58k")
THIRTEEN_CHARS = "Tr0mbone#Luna"  # strong (zxcvbn 3) but shorter than 16
CHANGED_SUBJECT = "Your clinicguard password was changed"
RESET_SUBJECT = "Reset your clinicguard password"
JWT_LINE = re.compile(r"^([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)\s*$", re.MULTILINE)
PASSWORD_URL = "/api/v1/auth/password"


# --- helpers -----------------------------------------------------------------------------------


def mails(world: AuthWorld, subject: str | None = None) -> list[EmailMessage]:
    directory = world.services.settings.data_dir / "mail"
    found = (
        [
            email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            for path in sorted(directory.glob("*.eml"))
        ]
        if directory.exists()
        else []
    )
    messages = [m for m in found if isinstance(m, EmailMessage)]
    return [m for m in messages if subject is None or m["Subject"] == subject]


def reset_tokens(world: AuthWorld, to: str) -> list[str]:
    tokens = []
    for message in mails(world, RESET_SUBJECT):
        if message["To"] == to:
            match = JWT_LINE.search(message.get_content())
            assert match is not None, "a reset mail carries the token"
            tokens.append(match.group(1))
    return tokens


async def events(world: AuthWorld, kind: str, user_id: uuid.UUID | None = None) -> list[AuditEvent]:
    return await trail_events(world.services.db, types=kind, actor_id=user_id)


async def stored_hash(world: AuthWorld, user_id: uuid.UUID) -> str:
    async with world.services.db.transaction() as session:
        user = await session.get(User, user_id)
        assert user is not None
        return user.password_hash


async def sign_in(world: AuthWorld, person: Person, password: str | None = None) -> httpx.Response:
    return await world.client.post(
        "/api/v1/auth/login",
        json={"email": person.email, "password": password or person.password},
    )


async def change(
    world: AuthWorld, tokens: dict[str, Any], current: str, new: str
) -> httpx.Response:
    return await world.client.post(
        PASSWORD_URL,
        json={"current_password": current, "new_password": new},
        headers=world.bearer(tokens),
    )


def problem_errors(response: httpx.Response) -> list[dict[str, str]]:
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == response.status_code
    errors: list[dict[str, str]] = body["errors"]
    return errors


async def receptionist(world: AuthWorld, **kwargs: Any) -> Person:
    clinic = await add_clinic(world.services)
    return await add_person(world.services, clinic.id, Role.RECEPTIONIST, **kwargs)


# --- change ------------------------------------------------------------------------------------


async def test_weak_new_password_names_every_broken_rule(world: AuthWorld) -> None:
    """A refused password is a 422 with one error per broken rule, all on new_password."""
    person = await receptionist(world, full_name="Maria Conceição Souza")
    tokens = await world.login(person)
    # The name is stored with accents; the password spells it without.
    response = await change(world, tokens, person.password, "conceicao")
    assert response.status_code == 422
    errors = problem_errors(response)
    assert {e["field"] for e in errors} == {"body.new_password"}
    messages = [e["message"] for e in errors]
    assert len(messages) == len(set(messages)), "one entry per rule"
    expected = {
        "Must be at least 12 characters long.",
        "Must contain an upper-case letter.",
        "Must contain a digit.",
        "Must contain a special character.",
        "Must not contain your name, email or clinic name.",
        "Is too easy to guess; use a longer passphrase.",
    }
    assert expected <= set(messages)
    assert response.json()["type"].endswith("password-rejected")
    assert (await sign_in(world, person)).status_code == 200, "the password is unchanged"


async def test_an_accent_does_not_make_a_guessable_password_acceptable(world: AuthWorld) -> None:
    """'Pássword1234' is as guessable as 'Password1234' and has no special character."""
    person = await receptionist(world)
    tokens = await world.login(person)
    response = await change(world, tokens, person.password, "Pássword1234")
    assert response.status_code == 422


async def test_wrong_current_password_is_named(world: AuthWorld) -> None:
    """A wrong current password is a 422 naming current_password, and nothing changes."""
    person = await receptionist(world)
    tokens = await world.login(person)
    response = await change(world, tokens, "Not-the-password-9!", NEW_PASSWORD)
    assert response.status_code == 422
    assert [e["field"] for e in problem_errors(response)] == ["body.current_password"]
    assert (await sign_in(world, person, NEW_PASSWORD)).status_code == 401
    assert await events(world, "auth:password:rejected", person.id)


async def test_breached_new_password_is_refused(world: AuthWorld) -> None:
    """A password found in the breach corpus is refused and the breach is named."""
    person = await receptionist(world)
    tokens = await world.login(person)
    response = await change(world, tokens, person.password, "Password123!")
    assert response.status_code == 422
    messages = [e["message"] for e in problem_errors(response)]
    assert any("breach" in m for m in messages), messages


async def test_current_password_cannot_be_reused(world: AuthWorld) -> None:
    """The current password is not a new password."""
    person = await receptionist(world)
    tokens = await world.login(person)
    response = await change(world, tokens, person.password, person.password)
    assert response.status_code == 422
    messages = [e["message"] for e in problem_errors(response)]
    assert "Must not be one of your last 5 passwords." in messages


async def test_none_of_the_last_five_passwords_can_be_reused(world: AuthWorld) -> None:
    """Each of the last 5 passwords (the current one and the 4 before) is refused."""
    person = await receptionist(world)
    tokens = await world.login(person)
    history = [person.password, NEW_PASSWORD, *OTHER_PASSWORDS[:3]]
    for current, new in itertools.pairwise(history):
        world.clock.advance(60)
        assert (await change(world, tokens, current, new)).status_code == 204
    world.clock.advance(60)
    # The oldest of the five (the factory's password) is still remembered.
    response = await change(world, tokens, history[-1], history[0])
    assert response.status_code == 422
    assert "Must not be one of your last 5 passwords." in [
        e["message"] for e in problem_errors(response)
    ]


async def test_over_one_kib_new_password_is_refused(world: AuthWorld) -> None:
    """A new password over 1 KiB is a 422 (refused before hashing), never a 500."""
    person = await receptionist(world)
    tokens = await world.login(person)
    response = await change(world, tokens, person.password, "Aa1!" + "x" * 1100)
    assert response.status_code == 422
    assert "body.new_password" in [e["field"] for e in problem_errors(response)]
    multibyte = await change(world, tokens, person.password, "Aa1!" + "ç" * 520)
    assert multibyte.status_code == 422


async def test_successful_change_switches_password_ends_other_sessions_and_notifies(
    world: AuthWorld,
) -> None:
    """204; the old password fails, the new works, other sessions end, mail and event exist."""
    person = await receptionist(world)
    tokens = await world.login(person)
    other = await world.login(person)
    assert (await change(world, tokens, person.password, NEW_PASSWORD)).status_code == 204
    assert (await world.client.get("/api/v1/me", headers=world.bearer(tokens))).status_code == 200
    assert (await world.client.get("/api/v1/me", headers=world.bearer(other))).status_code == 401
    assert (await sign_in(world, person)).status_code == 401
    assert (await sign_in(world, person, NEW_PASSWORD)).status_code == 200
    notices = [m for m in mails(world, CHANGED_SUBJECT) if m["To"] == person.email]
    assert len(notices) == 1
    changed = await events(world, "auth:password:changed", person.id)
    assert len(changed) == 1
    assert NEW_PASSWORD not in str((changed[0].details, changed[0].reason))


# --- restricted sign-ins: expired, required, breached --------------------------------------------


async def test_expired_password_gives_a_change_only_sign_in(world: AuthWorld) -> None:
    """After 90 days the sign-in can only change the password; then the session is full."""
    clinic = await add_clinic(world.services)
    admin = await add_person(
        world.services,
        clinic.id,
        Role.CLINIC_ADMIN,
        password_changed_at=world.clock.now() - timedelta(days=91),
    )
    tokens = await world.login(admin)
    assert tokens["password_change_required"] is True
    assert tokens["password_change_reason"] == "expired"
    headers = world.bearer(tokens)
    refused = await world.client.post(
        "/api/v1/api-keys", json={"name": "lab", "scopes": ["patients:read"]}, headers=headers
    )
    assert refused.status_code == 403
    assert refused.json()["type"].endswith("insufficient-scope")
    listed = await world.client.get("/api/v1/api-keys", headers=headers)
    assert listed.status_code == 403
    # Any signed-in person may see who they are and their sessions.
    me = await world.client.get("/api/v1/me", headers=headers)
    assert me.status_code == 200
    assert me.json()["scopes"] == ["password:change"]
    assert (await world.client.get("/api/v1/auth/sessions", headers=headers)).status_code == 200
    assert (await change(world, tokens, admin.password, NEW_PASSWORD)).status_code == 204
    me = await world.client.get("/api/v1/me", headers=headers)
    assert me.json()["scopes"] == ["full"]
    created = await world.client.post(
        "/api/v1/api-keys", json={"name": "lab", "scopes": ["patients:read"]}, headers=headers
    )
    assert created.status_code == 201
    world.clock.advance(30)
    fresh = await world.login(
        Person(admin.id, admin.email, NEW_PASSWORD, admin.role, admin.clinic_id, admin.totp_secret)
    )
    assert fresh["password_change_required"] is False
    assert fresh["password_change_reason"] is None


async def test_must_change_password_gives_reason_required(world: AuthWorld) -> None:
    """An account flagged must_change_password signs in restricted, reason 'required'."""
    person = await receptionist(world, must_change_password=True)
    tokens = await world.login(person)
    assert tokens["password_change_required"] is True
    assert tokens["password_change_reason"] == "required"
    me = await world.client.get("/api/v1/me", headers=world.bearer(tokens))
    assert me.json()["scopes"] == ["password:change"]
    assert (await change(world, tokens, person.password, NEW_PASSWORD)).status_code == 204
    again = (await sign_in(world, person, NEW_PASSWORD)).json()
    assert again["password_change_required"] is False


async def test_breached_current_password_must_be_changed(world: AuthWorld) -> None:
    """Signing in with a breached password works but must change it, reason 'breached'."""
    person = await receptionist(world, password="Senha@2025")
    tokens = await world.login(person)
    assert tokens["password_change_required"] is True
    assert tokens["password_change_reason"] == "breached"
    me = await world.client.get("/api/v1/me", headers=world.bearer(tokens))
    assert me.json()["scopes"] == ["password:change"]


async def test_fresh_password_signs_in_unrestricted(world: AuthWorld) -> None:
    """A current, clean password gives a full sign-in without a change reason."""
    person = await receptionist(world)
    tokens = await world.login(person)
    assert tokens["password_change_required"] is False
    assert tokens["password_change_reason"] is None


# --- rehashing ----------------------------------------------------------------------------------


async def test_weaker_argon2_hash_is_rehashed_at_sign_in(world: AuthWorld) -> None:
    """A hash with older (weaker) argon2 parameters is replaced with the configured ones."""
    weak = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    person = await receptionist(world, password_hash_override=weak.hash(DEFAULT_PASSWORD))
    assert "m=8192,t=1" in await stored_hash(world, person.id)
    assert (await sign_in(world, person)).status_code == 200
    upgraded = await stored_hash(world, person.id)
    assert upgraded.startswith("$argon2id$")
    assert "m=19456,t=2,p=1" in upgraded
    assert (await sign_in(world, person)).status_code == 200


async def test_legacy_bcrypt_hash_verifies_and_is_replaced(world: AuthWorld) -> None:
    """An imported bcrypt hash signs in once and is then stored as argon2id."""
    legacy = bcrypt.hashpw(DEFAULT_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    person = await receptionist(world, password_hash_override=legacy)
    assert (await sign_in(world, person, "wrong-Password-1!")).status_code == 401
    assert await stored_hash(world, person.id) == legacy
    assert (await sign_in(world, person)).status_code == 200
    upgraded = await stored_hash(world, person.id)
    assert upgraded.startswith("$argon2id$")
    assert "m=19456,t=2,p=1" in upgraded
    assert (await sign_in(world, person)).status_code == 200


# --- forgot and reset ---------------------------------------------------------------------------


async def forgot(world: AuthWorld, address: str, ip: str | None = None) -> httpx.Response:
    if ip is None:
        return await world.client.post("/api/v1/auth/password/forgot", json={"email": address})
    async with client_for(world.app, ip) as http:
        return await http.post("/api/v1/auth/password/forgot", json={"email": address})


async def test_forgot_is_202_alike_and_mails_only_known_accounts(world: AuthWorld) -> None:
    """Known and unknown emails get the same 202; only the known one gets a reset mail."""
    person = await receptionist(world)
    known = await forgot(world, person.email)
    unknown = await forgot(world, "nobody-here@clinica.example.com")
    assert known.status_code == unknown.status_code == 202
    assert known.content == unknown.content
    assert known.headers["content-type"] == unknown.headers["content-type"]
    resets = mails(world, RESET_SUBJECT)
    assert [m["To"] for m in resets] == [person.email]
    assert len(reset_tokens(world, person.email)) == 1


async def test_forgot_is_throttled_per_identifier_silently(world: AuthWorld) -> None:
    """A 4th request within the hour for one email is still 202 but sends no mail."""
    person = await receptionist(world)
    answers = [await forgot(world, person.email, ip=f"198.51.100.{i}") for i in range(1, 5)]
    assert [a.status_code for a in answers] == [202] * 4
    assert len({a.content for a in answers}) == 1
    assert len(reset_tokens(world, person.email)) == 3


async def test_forgot_is_throttled_per_ip_silently(world: AuthWorld) -> None:
    """A 4th request within the hour from one IP is still 202 but sends no mail."""
    clinic = await add_clinic(world.services)
    people = [await add_person(world.services, clinic.id, Role.RECEPTIONIST) for _ in range(4)]
    answers = [await forgot(world, p.email, ip="198.51.100.77") for p in people]
    assert [a.status_code for a in answers] == [202] * 4
    assert [len(reset_tokens(world, p.email)) for p in people] == [1, 1, 1, 0]


async def test_reset_sets_password_ends_sessions_and_is_single_use(world: AuthWorld) -> None:
    """Reset: 204, every session ends, old password fails, new works; the token works once."""
    person = await receptionist(world)
    tokens = await world.login(person)
    assert (await forgot(world, person.email)).status_code == 202
    (token,) = reset_tokens(world, person.email)
    response = await world.client.post(
        "/api/v1/auth/password/reset", json={"token": token, "new_password": NEW_PASSWORD}
    )
    assert response.status_code == 204
    assert (await world.client.get("/api/v1/me", headers=world.bearer(tokens))).status_code == 401
    assert (await sign_in(world, person)).status_code == 401
    assert (await sign_in(world, person, NEW_PASSWORD)).status_code == 200
    again = await world.client.post(
        "/api/v1/auth/password/reset",
        json={"token": token, "new_password": OTHER_PASSWORDS[0]},
    )
    assert again.status_code == 400
    assert again.json()["type"].endswith("reset-token-invalid")
    assert (await sign_in(world, person, OTHER_PASSWORDS[0])).status_code == 401
    assert await events(world, "auth:password:reset", person.id)


async def test_reset_token_dies_when_the_password_changes(world: AuthWorld) -> None:
    """A reset token issued before a password change cannot be used after it."""
    person = await receptionist(world)
    assert (await forgot(world, person.email)).status_code == 202
    (token,) = reset_tokens(world, person.email)
    tokens = await world.login(person)
    assert (await change(world, tokens, person.password, NEW_PASSWORD)).status_code == 204
    response = await world.client.post(
        "/api/v1/auth/password/reset",
        json={"token": token, "new_password": OTHER_PASSWORDS[0]},
    )
    assert response.status_code == 400
    assert response.json()["type"].endswith("reset-token-invalid")
    assert (await sign_in(world, person, NEW_PASSWORD)).status_code == 200


async def test_reset_token_expires_after_30_minutes(world: AuthWorld) -> None:
    """A reset token older than 30 minutes is refused."""
    person = await receptionist(world)
    assert (await forgot(world, person.email)).status_code == 202
    (token,) = reset_tokens(world, person.email)
    world.clock.advance(31 * 60)
    response = await world.client.post(
        "/api/v1/auth/password/reset", json={"token": token, "new_password": NEW_PASSWORD}
    )
    assert response.status_code == 400
    assert response.json()["type"].endswith("reset-token-invalid")
    assert (await sign_in(world, person)).status_code == 200


async def test_reset_refuses_a_weak_password_and_keeps_the_token(world: AuthWorld) -> None:
    """A weak new password at reset is a 422 naming the rules; the token is not spent."""
    person = await receptionist(world)
    assert (await forgot(world, person.email)).status_code == 202
    (token,) = reset_tokens(world, person.email)
    weak = await world.client.post(
        "/api/v1/auth/password/reset", json={"token": token, "new_password": "abc"}
    )
    assert weak.status_code == 422
    errors = problem_errors(weak)
    assert {e["field"] for e in errors} == {"body.new_password"}
    assert len(errors) >= 4
    assert (await sign_in(world, person)).status_code == 200
    ok = await world.client.post(
        "/api/v1/auth/password/reset", json={"token": token, "new_password": NEW_PASSWORD}
    )
    assert ok.status_code == 204


async def test_garbage_reset_token_is_400(world: AuthWorld) -> None:
    """A forged or malformed reset token is a 400 problem, never a 500."""
    for token in ("x", "a.b.c", "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0."):
        response = await world.client.post(
            "/api/v1/auth/password/reset", json={"token": token, "new_password": NEW_PASSWORD}
        )
        assert response.status_code == 400
        assert response.json()["type"].endswith("reset-token-invalid")


# --- clinic policy ------------------------------------------------------------------------------


async def test_clinic_override_tightens_policy_for_its_members_only(world: AuthWorld) -> None:
    """A clinic requiring 16 characters refuses a 13-character password for its members only."""
    strict = await add_clinic(world.services, security_policy={"min_length": 16})
    relaxed = await add_clinic(world.services)
    member = await add_person(world.services, strict.id, Role.RECEPTIONIST)
    outsider = await add_person(world.services, relaxed.id, Role.RECEPTIONIST)
    member_tokens = await world.login(member)
    outsider_tokens = await world.login(outsider)
    refused = await change(world, member_tokens, member.password, THIRTEEN_CHARS)
    assert refused.status_code == 422
    assert "Must be at least 16 characters long." in [e["message"] for e in problem_errors(refused)]
    accepted = await change(world, outsider_tokens, outsider.password, THIRTEEN_CHARS)
    assert accepted.status_code == 204


async def test_clinic_expiry_override_applies_to_its_members_only(world: AuthWorld) -> None:
    """A clinic with a 30-day expiry forces a change at 31 days; the default clinic does not."""
    strict = await add_clinic(world.services, security_policy={"expiry_days": 30})
    relaxed = await add_clinic(world.services)
    changed_at = world.clock.now() - timedelta(days=31)
    member = await add_person(
        world.services, strict.id, Role.RECEPTIONIST, password_changed_at=changed_at
    )
    outsider = await add_person(
        world.services, relaxed.id, Role.RECEPTIONIST, password_changed_at=changed_at
    )
    assert (await world.login(member))["password_change_reason"] == "expired"
    assert (await world.login(outsider))["password_change_reason"] is None


async def test_an_email_with_a_control_character_is_a_422_never_a_500(world: AuthWorld) -> None:
    """A NUL byte (which PostgreSQL refuses outright) or another control character in an
    email is a validation error naming the field, on forgot and on login alike; the answer
    is the same whether or not such an account could exist."""
    for path, extra in (
        ("/api/v1/auth/password/forgot", {}),
        ("/api/v1/auth/login", {"password": "whatever-1A!"}),
    ):
        for address in ("a\u0000b@clinica.example.com", "a\u001bb@clinica.example.com"):
            response = await world.client.post(path, json={"email": address, **extra})
            assert response.status_code == 422, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert [e["field"] for e in response.json()["errors"]] == ["body.email"]


async def test_invisible_formatting_characters_are_refused_in_emails(world: AuthWorld) -> None:
    """Bidi overrides and zero-width characters hide or reorder text in logs and screens:
    an email carrying one is a 422 naming the field."""
    for address in ("admin\u202e@clinica.example.com", "ad\u200bmin@clinica.example.com"):
        response = await world.client.post("/api/v1/auth/password/forgot", json={"email": address})
        assert response.status_code == 422, response.text
        assert [e["field"] for e in response.json()["errors"]] == ["body.email"]


async def test_a_password_is_the_same_whichever_way_its_accents_were_typed(
    world: AuthWorld,
) -> None:
    """NFC: "ã" typed precomposed or as "a" + combining tilde is one password."""
    composed = "Coração-de-Estudante 1982!"
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    clinic = await add_clinic(world.services)
    person = await add_person(world.services, clinic.id, Role.RECEPTIONIST, password=composed)
    response = await world.client.post(
        "/api/v1/auth/login", json={"email": person.email, "password": decomposed}
    )
    assert response.status_code == 200, response.text
