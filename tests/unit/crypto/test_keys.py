"""Key-encryption keys (crypto.keys): the master-key provider and the KEK file.

A KEK file is refused unless it is private (mode 0600), names an active key among its keys
and every key is base64 of exactly 32 bytes; the refusal names the problem and never
echoes key material. Wrapping binds a data key to its context and its KEK.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from clinicguard.core.errors import ConfigurationError
from clinicguard.crypto.interfaces import DecryptionFailed
from clinicguard.crypto.keys import (
    FileKeyProvider,
    MasterKeyProvider,
    UnknownKek,
    create_key_provider,
)

CONTEXT = b"11111111-1111-4111-8111-111111111111|field|1"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def kek_file(tmp_path: Path, content: Any, mode: int = 0o600, name: str = "kek.json") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    path.chmod(mode)
    return path


def refusal(path: Path) -> str:
    with pytest.raises(ConfigurationError) as failure:
        FileKeyProvider(path)
    return str(failure.value)


# --- the master-key provider ---------------------------------------------------------------


def test_master_provider_wraps_and_unwraps_with_its_one_kek() -> None:
    provider = MasterKeyProvider(os.urandom(32))
    kek_id = provider.active_kek_id()
    assert provider.kek_ids() == [kek_id]
    assert kek_id.startswith("master-")
    dek = os.urandom(32)
    wrapped = provider.wrap(kek_id, dek, CONTEXT)
    assert dek not in wrapped
    assert provider.unwrap(kek_id, wrapped, CONTEXT) == dek


def test_master_kek_id_is_stable_and_reveals_no_key() -> None:
    master = os.urandom(32)
    first, second = MasterKeyProvider(master), MasterKeyProvider(master)
    assert first.active_kek_id() == second.active_kek_id()
    other = MasterKeyProvider(os.urandom(32))
    assert other.active_kek_id() != first.active_kek_id()
    assert master.hex() not in first.active_kek_id()
    # A key wrapped by one process opens in the next (same master key).
    wrapped = first.wrap(first.active_kek_id(), b"k" * 32, CONTEXT)
    assert second.unwrap(second.active_kek_id(), wrapped, CONTEXT) == b"k" * 32


def test_master_key_shorter_than_32_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        MasterKeyProvider(os.urandom(16))


# --- wrapping is bound to its context and KEK -------------------------------------------------


@pytest.mark.parametrize(
    "other",
    [
        b"11111111-1111-4111-8111-111111111111|field|2",
        b"11111111-1111-4111-8111-111111111111|index|1",
        b"22222222-2222-4222-8222-222222222222|field|1",
        b"",
    ],
    ids=["other-version", "other-purpose", "other-clinic", "empty"],
)
def test_unwrap_in_another_context_fails(other: bytes) -> None:
    provider = MasterKeyProvider(os.urandom(32))
    kek_id = provider.active_kek_id()
    wrapped = provider.wrap(kek_id, os.urandom(32), CONTEXT)
    with pytest.raises(DecryptionFailed):
        provider.unwrap(kek_id, wrapped, other)


def test_tampered_wrapped_key_fails() -> None:
    provider = MasterKeyProvider(os.urandom(32))
    kek_id = provider.active_kek_id()
    wrapped = provider.wrap(kek_id, os.urandom(32), CONTEXT)
    for position in range(len(wrapped)):
        tampered = bytearray(wrapped)
        tampered[position] ^= 0x01
        with pytest.raises(DecryptionFailed):
            provider.unwrap(kek_id, bytes(tampered), CONTEXT)
    with pytest.raises(DecryptionFailed):
        provider.unwrap(kek_id, wrapped[:-1], CONTEXT)


def test_unknown_kek_is_a_typed_failure() -> None:
    provider = MasterKeyProvider(os.urandom(32))
    wrapped = provider.wrap(provider.active_kek_id(), os.urandom(32), CONTEXT)
    with pytest.raises(UnknownKek):
        provider.unwrap("kek-lost", wrapped, CONTEXT)
    with pytest.raises(UnknownKek):
        provider.wrap("kek-lost", os.urandom(32), CONTEXT)
    # Another master key holds another KEK: the wrapped key does not open there.
    stranger = MasterKeyProvider(os.urandom(32))
    with pytest.raises(UnknownKek):
        stranger.unwrap(provider.active_kek_id(), wrapped, CONTEXT)


# --- the KEK file ----------------------------------------------------------------------------


def test_file_provider_uses_the_active_key_and_unwraps_with_any(tmp_path: Path) -> None:
    old, new = os.urandom(32), os.urandom(32)
    first = FileKeyProvider(kek_file(tmp_path, {"active": "kek-a", "keys": {"kek-a": b64(old)}}))
    dek = os.urandom(32)
    wrapped_old = first.wrap(first.active_kek_id(), dek, CONTEXT)
    both = FileKeyProvider(
        kek_file(
            tmp_path,
            {"active": "kek-b", "keys": {"kek-a": b64(old), "kek-b": b64(new)}},
            name="two.json",
        )
    )
    assert both.active_kek_id() == "kek-b"
    assert both.kek_ids() == ["kek-a", "kek-b"]
    assert both.unwrap("kek-a", wrapped_old, CONTEXT) == dek
    rewrapped = both.wrap("kek-b", dek, CONTEXT)
    assert both.unwrap("kek-b", rewrapped, CONTEXT) == dek
    # A key wrapped by one KEK does not open under another KEK of the same file.
    with pytest.raises(DecryptionFailed):
        both.unwrap("kek-b", wrapped_old, CONTEXT)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o610, 0o601, 0o700 | 0o004])
def test_file_readable_by_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    secret = os.urandom(32)
    path = kek_file(tmp_path, {"active": "kek-a", "keys": {"kek-a": b64(secret)}}, mode)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    message = refusal(path)
    assert "readable by others" in message
    assert "chmod 600" in message
    assert b64(secret) not in message
    assert secret.hex() not in message


def test_owner_only_modes_are_accepted(tmp_path: Path) -> None:
    for mode in (0o600, 0o400):
        path = kek_file(
            tmp_path, {"active": "k", "keys": {"k": b64(os.urandom(32))}}, mode, f"{mode:o}.json"
        )
        assert FileKeyProvider(path).active_kek_id() == "k"


@pytest.mark.parametrize(
    "content",
    [
        {"keys": {"kek-a": "KEY"}},
        {"active": "kek-b", "keys": {"kek-a": "KEY"}},
        {"active": None, "keys": {"kek-a": "KEY"}},
        {"active": ["kek-a"], "keys": {"kek-a": "KEY"}},
    ],
    ids=["no-active", "active-not-among-keys", "active-null", "active-not-a-string"],
)
def test_missing_active_key_is_refused(tmp_path: Path, content: dict[str, Any]) -> None:
    secret = b64(os.urandom(32))
    content = json.loads(json.dumps(content).replace("KEY", secret))
    message = refusal(kek_file(tmp_path, content))
    assert "names no active key" in message
    assert secret not in message


@pytest.mark.parametrize(
    "content",
    [{"active": "kek-a"}, {"active": "kek-a", "keys": {}}, {"active": "kek-a", "keys": []}, []],
    ids=["no-keys", "empty-keys", "keys-not-an-object", "not-an-object"],
)
def test_file_without_keys_is_refused(tmp_path: Path, content: Any) -> None:
    message = refusal(kek_file(tmp_path, content))
    assert "has no keys" in message


@pytest.mark.parametrize(
    "encoded",
    [
        b64(os.urandom(16)),
        b64(os.urandom(31)),
        b64(os.urandom(33)),
        b64(os.urandom(64)),
        "",
        "not base64 at all!",
        b64(os.urandom(32))[:-2],
        base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(),
    ],
    ids=["16", "31", "33", "64", "empty", "garbage", "truncated", "urlsafe-alphabet"],
)
def test_key_that_is_not_base64_of_32_bytes_is_refused(tmp_path: Path, encoded: str) -> None:
    good = b64(os.urandom(32))
    path = kek_file(tmp_path, {"active": "kek-a", "keys": {"kek-a": good, "kek-bad": encoded}})
    message = refusal(path)
    assert "'kek-bad'" in message
    assert "not base64 of 32 bytes" in message
    assert "'kek-a'" not in message  # the good key is not blamed
    for material in (good, encoded):
        if material:
            assert material not in message


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    path = kek_file(tmp_path, {"active": "nope", "keys": {"k1": b64(os.urandom(8))}}, 0o644)
    with pytest.raises(ConfigurationError) as failure:
        FileKeyProvider(path)
    problems = " | ".join(failure.value.problems)
    assert len(failure.value.problems) == 3, problems
    assert "readable by others" in problems
    assert "not base64 of 32 bytes" in problems
    assert "names no active key" in problems


@pytest.mark.parametrize("content", ["", "{not json", '{"active": "k", "keys": {"k": '])
def test_unreadable_file_is_refused_without_echoing_it(tmp_path: Path, content: str) -> None:
    secret = b64(os.urandom(32))
    message = refusal(kek_file(tmp_path, content + (secret if content else "")))
    assert "cannot read the KEK file" in message
    assert secret not in message


def test_missing_file_is_refused(tmp_path: Path) -> None:
    assert "cannot read the KEK file" in refusal(tmp_path / "absent.json")


def test_create_key_provider_picks_by_setting(tmp_path: Path) -> None:
    master = os.urandom(32)
    assert isinstance(create_key_provider("master", master, None), MasterKeyProvider)
    path = kek_file(tmp_path, {"active": "k", "keys": {"k": b64(os.urandom(32))}})
    assert create_key_provider("file", master, path).active_kek_id() == "k"
    with pytest.raises(ConfigurationError, match="CLINICGUARD_KEK_FILE"):
        create_key_provider("file", master, None)
