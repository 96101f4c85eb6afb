"""Outgoing mail against a real SMTP server (aiosmtpd on 127.0.0.1), the relay-outage path,
best-effort security notices, and the development file sender's permissions."""

from __future__ import annotations

import email
import email.policy
import socket
import stat
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from structlog.testing import capture_logs

from clinicguard.auth.interfaces import Mail, MailUnavailable
from clinicguard.auth.mail import FileMailSender, SecurityNotifier, SmtpMailSender

SENDER = "clinicguard <no-reply@clinicguard.localhost>"
RECIPIENT = "maria.souza@clinica.example.com"


class Inbox:
    """An aiosmtpd handler that keeps every message it accepts."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def messages(self) -> list[EmailMessage]:
        return [
            email.message_from_bytes(bytes(e.content or b""), policy=email.policy.default)  # type: ignore[misc]
            for e in self.envelopes
        ]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


class FailingSender:
    """A sender whose relay is down."""

    def __init__(self) -> None:
        self.attempts = 0

    async def send(self, mail: Mail) -> None:
        self.attempts += 1
        raise MailUnavailable("ConnectionRefusedError")


class CollectingSender:
    def __init__(self) -> None:
        self.sent: list[Mail] = []

    async def send(self, mail: Mail) -> None:
        self.sent.append(mail)


async def test_smtp_sender_delivers_with_headers_and_body_intact(
    smtp_server: tuple[Inbox, int],
) -> None:
    """A message reaches the SMTP server with From, To, Subject and body as sent."""
    inbox, port = smtp_server
    body = "Olá Maria,\nsua senha foi alterada às 10:00. Não foi você? Avise já.\n"
    sender = SmtpMailSender("127.0.0.1", port, SENDER, timeout=5.0)
    await sender.send(Mail(to=RECIPIENT, subject="Senha alterada — clinicguard", text=body))
    assert len(inbox.envelopes) == 1
    envelope = inbox.envelopes[0]
    assert envelope.mail_from == "no-reply@clinicguard.localhost"
    assert envelope.rcpt_tos == [RECIPIENT]
    message = inbox.messages()[0]
    assert message["From"] == SENDER
    assert message["To"] == RECIPIENT
    assert message["Subject"] == "Senha alterada — clinicguard"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Message-ID"]
    assert message["Date"]
    content = message.get_content()
    assert content.replace("\r\n", "\n") == body  # SMTP carries CRLF line ends


async def test_unreachable_relay_raises_mail_unavailable() -> None:
    """A relay that refuses the connection is MailUnavailable (typed), not a raw OSError."""
    sender = SmtpMailSender("127.0.0.1", 1, SENDER, timeout=2.0)
    with pytest.raises(MailUnavailable):
        await sender.send(Mail(to=RECIPIENT, subject="s", text="t"))


async def test_notifier_swallows_relay_outage_and_logs_it() -> None:
    """A relay outage never fails the security action: it is logged, without the message."""
    failing = FailingSender()
    notifier = SecurityNotifier(failing)
    with capture_logs() as logs:
        await notifier.notify(RECIPIENT, "password_changed", when="2026-01-05 12:00")
    assert failing.attempts == 1
    (entry,) = [e for e in logs if e["event"] == "mail_not_sent"]
    assert entry["notice"] == "password_changed"
    assert entry["log_level"] == "warning"
    assert RECIPIENT not in str(logs), "the recipient (PII) is not logged"


async def test_notifier_swallows_a_real_unreachable_relay() -> None:
    """The same with the real SMTP sender pointed at a closed port."""
    notifier = SecurityNotifier(SmtpMailSender("127.0.0.1", 1, SENDER, timeout=2.0))
    with capture_logs() as logs:
        await notifier.notify(RECIPIENT, "lockout", minutes=15)
    assert [e["event"] for e in logs] == ["mail_not_sent"]


async def test_notifier_does_not_swallow_other_errors() -> None:
    """Only the relay's unavailability is best-effort; a programming error still surfaces."""

    class Broken:
        async def send(self, mail: Mail) -> None:
            raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        await SecurityNotifier(Broken()).notify(RECIPIENT, "lockout", minutes=15)


async def test_notifier_reset_mail_carries_the_token_and_link() -> None:
    """The reset notice carries the token and the link; other notices name the time."""
    collecting = CollectingSender()
    notifier = SecurityNotifier(collecting)
    values: dict[str, Any] = {"token": "tok-123", "minutes": 30, "link": "https://x/#reset=tok-123"}
    await notifier.notify(RECIPIENT, "password_reset", **values)
    await notifier.notify(RECIPIENT, "password_changed", when="2026-01-05 12:00")
    reset, changed = collecting.sent
    assert reset.to == RECIPIENT
    assert "tok-123" in reset.text
    assert "30 minutes" in reset.text
    assert "https://x/#reset=tok-123" in reset.text
    assert "2026-01-05 12:00 UTC" in changed.text


async def test_notifier_delivers_through_smtp(smtp_server: tuple[Inbox, int]) -> None:
    """A security notice goes out through the SMTP relay with its subject."""
    inbox, port = smtp_server
    notifier = SecurityNotifier(SmtpMailSender("127.0.0.1", port, SENDER, timeout=5.0))
    await notifier.notify(RECIPIENT, "mfa_disabled", when="2026-01-05 12:00")
    (message,) = inbox.messages()
    assert message["Subject"] == "Two-factor authentication disabled"
    assert "turned OFF" in message.get_content()


async def test_file_sender_writes_private_eml_files(tmp_path: Path) -> None:
    """Development mail is written as .eml files only the owner can read (0600)."""
    directory = tmp_path / "mail"
    sender = FileMailSender(directory, SENDER)
    await sender.send(Mail(to=RECIPIENT, subject="Reset", text="token: abc"))
    await sender.send(Mail(to=RECIPIENT, subject="Reset 2", text="token: def"))
    files = sorted(directory.glob("*.eml"))
    assert len(files) == 2
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    subjects = set()
    for path in files:
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert message["To"] == RECIPIENT
        assert message["From"] == SENDER
        subjects.add(str(message["Subject"]))
    assert subjects == {"Reset", "Reset 2"}
