"""Second factors through the HTTP API (both backends): single-use TOTP codes and backup
codes, the clock-skew answer, throttling, the mfa_token's limits, enrolment-only sign-ins,
and step-up for disabling MFA or regenerating backup codes."""

from __future__ import annotations

import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import httpx
import pyotp
import pytest

from clinicguard.core.principal import Role
from tests.conftest import AuthWorld
from tests.factories.people import Person, add_clinic, add_person

LOGIN = "/api/v1/auth/login"
VERIFY = "/api/v1/auth/mfa/verify"
SETUP = "/api/v1/security/2fa/setup"
ENABLE = "/api/v1/security/2fa/verify"
DISABLE = "/api/v1/security/2fa/disable"
BACKUP_CODES = "/api/v1/security/2fa/backup-codes"
STEP_UP = "/api/v1/auth/step-up"
ME = "/api/v1/me"
STEP = 30
BACKUP_FORMAT = re.compile(r"^[a-hjkmnp-z2-9]{5}-[a-hjkmnp-z2-9]{5}$")


def assert_problem(response: httpx.Response, status: int, slug: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    if slug is not None:
        assert response.json()["type"].endswith(slug), response.json()
    if status == 401:
        assert response.headers.get("www-authenticate") == "Bearer"


async def person(world: AuthWorld, role: Role = Role.PHYSICIAN, **options: Any) -> Person:
    clinic = await add_clinic(world.services)
    return await add_person(world.services, clinic.id, role, **options)


async def challenge(world: AuthWorld, who: Person) -> str:
    """Password accepted: the mfa_token of the challenge."""
    response = await world.client.post(LOGIN, json={"email": who.email, "password": who.password})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mfa_required"] is True
    assert set(body["methods"]) >= {"totp", "backup_code"}
    return str(body["mfa_token"])


async def answer(world: AuthWorld, mfa_token: str, code: str) -> httpx.Response:
    return await world.client.post(VERIFY, json={"mfa_token": mfa_token, "code": code})


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def wrong_code(who: Person, world: AuthWorld) -> str:
    """A code that matches no step within +-10 (so it is plainly wrong, not skewed)."""
    near = {who.code(world.clock, k) for k in range(-10, 11)}
    return next(c for c in (f"{n:06d}" for n in range(1000)) if c not in near)


def mails(world: AuthWorld, to: str, subject: str) -> list[EmailMessage]:
    """Messages the file mail backend wrote to ``to`` with ``subject``."""
    directory = world.services.settings.data_dir / "mail"
    found = []
    for path in sorted(directory.glob("*.eml")) if directory.exists() else []:
        message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
        assert isinstance(message, EmailMessage)
        if message["To"] == to and message["Subject"] == subject:
            found.append(message)
    return found


async def enrol(world: AuthWorld, who: Person, access: str) -> list[str]:
    """Set up TOTP through the API; the person's seed is recorded; returns backup codes."""
    setup = await world.client.post(SETUP, headers=bearer(access))
    assert setup.status_code == 200, setup.text
    who.totp_secret = setup.json()["secret"]
    enabled = await world.client.post(
        ENABLE, headers=bearer(access), json={"code": who.code(world.clock)}
    )
    assert enabled.status_code == 200, enabled.text
    codes: list[str] = enabled.json()["backup_codes"]
    return codes


# --- signing in with a second factor ------------------------------------------------------


async def test_totp_code_is_accepted_once(world: AuthWorld) -> None:
    """A TOTP code completes one sign-in; the same code for a second sign-in is a 401."""
    doctor = await person(world)
    code = doctor.code(world.clock)
    first = await answer(world, await challenge(world, doctor), code)
    assert first.status_code == 200, first.text
    assert (await world.client.get(ME, headers=bearer(first.json()["access_token"]))).is_success
    replay = await answer(world, await challenge(world, doctor), code)
    assert_problem(replay, 401, "mfa-code-invalid")
    assert "access_token" not in replay.json()
    world.clock.advance(STEP)
    assert (
        await answer(world, await challenge(world, doctor), doctor.code(world.clock))
    ).is_success


async def test_neighbouring_step_codes_are_accepted(world: AuthWorld) -> None:
    """A code from one step before or one step after now is accepted."""
    ahead, behind = await person(world), await person(world)
    assert (
        await answer(world, await challenge(world, ahead), ahead.code(world.clock, 1))
    ).is_success
    late = await answer(world, await challenge(world, behind), behind.code(world.clock, -1))
    assert late.status_code == 200, late.text


async def test_code_five_steps_off_says_the_clock_is_out_of_sync(world: AuthWorld) -> None:
    """A code 5 steps away is a 401 whose problem type and detail blame the device clock."""
    doctor = await person(world)
    token = await challenge(world, doctor)
    for steps in (5, -5):
        response = await answer(world, token, doctor.code(world.clock, steps))
        assert_problem(response, 401, "mfa-clock-out-of-sync")
        assert "clock" in response.json()["detail"].lower()
    assert (await answer(world, token, doctor.code(world.clock))).status_code == 200


async def test_wrong_code_is_401_without_tokens(world: AuthWorld) -> None:
    """A wrong code is a 401 and gives no tokens."""
    doctor = await person(world)
    response = await answer(world, await challenge(world, doctor), wrong_code(doctor, world))
    assert_problem(response, 401, "mfa-code-invalid")
    assert "access_token" not in response.json()


@pytest.mark.parametrize("backend", ["sqlite-memory"], indirect=True)  # the bug is not storage
async def test_non_ascii_digit_code_is_401_not_500(world: AuthWorld) -> None:
    """A code of Arabic-Indic digits is a plain 401, never a server error."""
    doctor = await person(world)
    response = await answer(world, await challenge(world, doctor), "١٢٣٤٥٦")
    assert_problem(response, 401)


async def test_five_wrong_codes_then_429_even_with_the_right_code(world: AuthWorld) -> None:
    """After 5 wrong codes the 6th attempt is throttled (429, Retry-After), right or not."""
    doctor = await person(world)
    token = await challenge(world, doctor)
    for _ in range(5):
        assert_problem(await answer(world, token, wrong_code(doctor, world)), 401)
    throttled = await answer(world, token, doctor.code(world.clock))
    assert_problem(throttled, 429, "mfa-throttled")
    retry_after = int(throttled.headers["retry-after"])
    assert 1 <= retry_after <= 5 * 60
    # A fresh challenge does not reset the per-user counter.
    assert_problem(
        await answer(world, await challenge(world, doctor), doctor.code(world.clock)), 429
    )


async def test_mfa_token_is_single_use(world: AuthWorld) -> None:
    """After a successful answer the same mfa_token is refused, even with a fresh code."""
    doctor = await person(world)
    token = await challenge(world, doctor)
    assert (await answer(world, token, doctor.code(world.clock))).status_code == 200
    world.clock.advance(STEP)
    assert_problem(await answer(world, token, doctor.code(world.clock)), 401)


async def test_mfa_token_expires_after_five_minutes(world: AuthWorld) -> None:
    """An mfa_token works for 5 minutes and is refused after that."""
    doctor = await person(world)
    token = await challenge(world, doctor)
    world.clock.advance(4 * 60 + 50)
    assert (await answer(world, token, doctor.code(world.clock))).status_code == 200
    world.clock.advance(STEP)
    stale = await challenge(world, doctor)
    world.clock.advance(5 * 60 + 6)
    assert_problem(await answer(world, stale, doctor.code(world.clock)), 401, "invalid-token")
    # The code was not consumed by the refusal: a fresh challenge takes it.
    fresh = await answer(world, await challenge(world, doctor), doctor.code(world.clock))
    assert fresh.status_code == 200, fresh.text


async def test_mfa_token_is_not_an_access_token(world: AuthWorld) -> None:
    """A pending-MFA token presented as a Bearer token is a 401."""
    doctor = await person(world)
    token = await challenge(world, doctor)
    for path in (ME, "/api/v1/auth/sessions"):
        assert_problem(await world.client.get(path, headers=bearer(token)), 401)
    assert_problem(await world.client.post(SETUP, headers=bearer(token)), 401)


# --- backup codes --------------------------------------------------------------------------


async def test_backup_code_works_once_and_is_notified(world: AuthWorld) -> None:
    """A backup code signs in once (case and dashes ignored) and the owner is mailed."""
    doctor = await person(world, mfa=False)
    codes = await enrol(world, doctor, (await world.login(doctor))["access_token"])
    world.clock.advance(STEP)

    used = await answer(world, await challenge(world, doctor), codes[0])
    assert used.status_code == 200, used.text
    assert (await world.client.get(ME, headers=bearer(used.json()["access_token"]))).is_success
    assert_problem(await answer(world, await challenge(world, doctor), codes[0]), 401)

    notices = mails(world, doctor.email, "A backup code was used")
    assert len(notices) == 1
    assert "9 unused codes remain" in notices[0].get_content()

    typed = codes[1].upper().replace("-", " ")
    assert (await answer(world, await challenge(world, doctor), typed)).status_code == 200
    assert_problem(await answer(world, await challenge(world, doctor), codes[1]), 401)
    assert len(mails(world, doctor.email, "A backup code was used")) == 2


async def test_backup_codes_of_another_user_are_refused(world: AuthWorld) -> None:
    """One user's backup code does not work for another user."""
    alice, bob = await person(world, mfa=False), await person(world, mfa=False)
    alice_codes = await enrol(world, alice, (await world.login(alice))["access_token"])
    await enrol(world, bob, (await world.login(bob))["access_token"])
    assert_problem(await answer(world, await challenge(world, bob), alice_codes[0]), 401)
    world.clock.advance(STEP)
    assert (await answer(world, await challenge(world, alice), alice_codes[0])).is_success


# --- enrolment -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite-memory"], indirect=True)  # the bug is not storage
async def test_totp_setup_answers_secret_uri_and_qr(world: AuthWorld) -> None:
    """2fa/setup returns the base32 secret, the otpauth URI and an SVG QR code."""
    doctor = await person(world, mfa=False)
    auth = bearer((await world.login(doctor))["access_token"])
    setup = await world.client.post(SETUP, headers=auth)
    assert setup.status_code == 200, setup.text
    body = setup.json()
    assert re.fullmatch(r"[A-Z2-7]{32,}", body["secret"])
    uri = body["otpauth_uri"]
    assert uri.startswith("otpauth://totp/")
    assert "issuer=clinicguard" in uri
    assert f"secret={body['secret']}" in uri
    parsed = pyotp.parse_uri(uri)
    assert (parsed.digits, parsed.interval) == (6, 30)
    assert body["qr_svg"].startswith("<svg")
    assert body["qr_svg"].rstrip().endswith("</svg>")


async def test_unenrolled_physician_can_only_enrol_until_mfa_is_on(world: AuthWorld) -> None:
    """Without required MFA a token can only enrol; confirming set-up gives codes and full scope."""
    doctor = await person(world, mfa=False)
    tokens = await world.login(doctor)
    assert "mfa_required" not in tokens
    auth = bearer(tokens["access_token"])

    me = await world.client.get(ME, headers=auth)
    assert me.status_code == 200
    assert me.json()["scopes"] == ["mfa:enroll"]
    assert me.json()["mfa_enabled"] is False
    sessions = await world.client.get("/api/v1/auth/sessions", headers=auth)
    assert sessions.status_code == 200
    assert [s["current"] for s in sessions.json()] == [True]
    api_key = {"name": "lab", "scopes": ["patients:read"]}
    assert_problem(
        await world.client.post("/api/v1/api-keys", headers=auth, json=api_key),
        403,
        "insufficient-scope",
    )
    assert_problem(
        await world.client.post(
            STEP_UP, headers=auth, json={"password": doctor.password, "code": "123456"}
        ),
        403,
        "insufficient-scope",
    )

    setup = await world.client.post(SETUP, headers=auth)
    assert setup.status_code == 200, setup.text
    body = setup.json()
    assert body["otpauth_uri"].startswith("otpauth://totp/")
    assert "issuer=clinicguard" in body["otpauth_uri"]
    doctor.totp_secret = body["secret"]
    assert_problem(
        await world.client.post(ENABLE, headers=auth, json={"code": wrong_code(doctor, world)}),
        401,
    )
    enabled = await world.client.post(ENABLE, headers=auth, json={"code": doctor.code(world.clock)})
    assert enabled.status_code == 200, enabled.text
    codes = enabled.json()["backup_codes"]
    assert len(codes) == 10
    assert len(set(codes)) == 10
    assert all(BACKUP_FORMAT.match(c) for c in codes)
    assert mails(world, doctor.email, "Two-factor authentication enabled")

    me = await world.client.get(ME, headers=auth)
    assert me.json()["scopes"] == ["full"]
    assert me.json()["mfa_enabled"] is True
    # Full scope now: the API-key route answers on the role, not the enrolment scope.
    keys = await world.client.post("/api/v1/api-keys", headers=auth, json=api_key)
    assert_problem(keys, 403)
    assert not keys.json()["type"].endswith("insufficient-scope")

    assert_problem(await world.client.post(SETUP, headers=auth), 409)
    again = await world.client.post(ENABLE, headers=auth, json={"code": doctor.code(world.clock)})
    assert_problem(again, 409)
    assert "backup_codes" not in again.json()

    world.clock.advance(STEP)
    signed_in = await world.login(doctor)  # now a TOTP challenge
    me = await world.client.get(ME, headers=bearer(signed_in["access_token"]))
    assert me.json()["scopes"] == ["full"]


async def test_receptionist_without_mfa_gets_full_scope(world: AuthWorld) -> None:
    """A role that does not require MFA signs in with the password alone, fully."""
    desk = await person(world, Role.RECEPTIONIST)
    tokens = await world.login(desk)
    me = await world.client.get(ME, headers=bearer(tokens["access_token"]))
    assert me.status_code == 200
    assert me.json()["scopes"] == ["full"]
    assert me.json()["mfa_enabled"] is False


# --- step-up -----------------------------------------------------------------------------


async def test_sensitive_mfa_changes_need_a_recent_step_up(world: AuthWorld) -> None:
    """Disabling MFA or new backup codes need a step-up, valid for 15 minutes only."""
    doctor = await person(world)
    tokens = await world.login(doctor)
    auth = bearer(tokens["access_token"])
    assert_problem(await world.client.post(DISABLE, headers=auth), 403, "step-up-required")
    assert_problem(await world.client.post(BACKUP_CODES, headers=auth), 403, "step-up-required")

    world.clock.advance(STEP)
    code = doctor.code(world.clock)
    wrong_password = await world.client.post(
        STEP_UP, headers=auth, json={"password": doctor.password + "x", "code": code}
    )
    assert_problem(wrong_password, 401)
    wrong = await world.client.post(
        STEP_UP, headers=auth, json={"password": doctor.password, "code": wrong_code(doctor, world)}
    )
    assert_problem(wrong, 401)
    assert_problem(await world.client.post(BACKUP_CODES, headers=auth), 403, "step-up-required")

    stepped = await world.client.post(
        STEP_UP, headers=auth, json={"password": doctor.password, "code": code}
    )
    assert stepped.status_code == 200, stepped.text
    assert stepped.json()["step_up_expires_in"] == 15 * 60
    regenerated = await world.client.post(BACKUP_CODES, headers=auth)
    assert regenerated.status_code == 200, regenerated.text
    fresh_codes = regenerated.json()["backup_codes"]
    assert len(set(fresh_codes)) == 10

    # 15 minutes later (the access token has expired too: refresh it, same session).
    world.clock.advance(15 * 60 + 1)
    refreshed = await world.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text
    auth = bearer(refreshed.json()["access_token"])
    assert_problem(await world.client.post(BACKUP_CODES, headers=auth), 403, "step-up-required")
    assert_problem(await world.client.post(DISABLE, headers=auth), 403, "step-up-required")

    stepped = await world.client.post(
        STEP_UP, headers=auth, json={"password": doctor.password, "code": fresh_codes[0]}
    )
    assert stepped.status_code == 200, stepped.text
    disabled = await world.client.post(DISABLE, headers=auth)
    assert disabled.status_code == 204, disabled.text
    assert mails(world, doctor.email, "Two-factor authentication disabled")
    me = await world.client.get(ME, headers=auth)
    assert me.json()["mfa_enabled"] is False
    assert me.json()["scopes"] == ["mfa:enroll"]  # a physician must enrol again


async def test_step_up_with_a_wrong_password_is_401(world: AuthWorld) -> None:
    """A step-up with the wrong password is a 401 and grants nothing."""
    doctor = await person(world)
    auth = bearer((await world.login(doctor))["access_token"])
    world.clock.advance(STEP)
    response = await world.client.post(
        STEP_UP,
        headers=auth,
        json={"password": "Not-the-password 123!", "code": doctor.code(world.clock)},
    )
    assert_problem(response, 401)
    assert_problem(await world.client.post(DISABLE, headers=auth), 403, "step-up-required")


async def test_step_up_is_bound_to_its_session(world: AuthWorld) -> None:
    """A step-up in one session does not authorize sensitive changes from another."""
    doctor = await person(world)
    first = bearer((await world.login(doctor))["access_token"])
    world.clock.advance(STEP)
    second = bearer((await world.login(doctor))["access_token"])
    world.clock.advance(STEP)
    stepped = await world.client.post(
        STEP_UP, headers=first, json={"password": doctor.password, "code": doctor.code(world.clock)}
    )
    assert stepped.status_code == 200, stepped.text
    assert_problem(await world.client.post(DISABLE, headers=second), 403, "step-up-required")
