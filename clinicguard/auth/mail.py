"""Outgoing mail (SMTP, or files for development) and the security notifications."""

from __future__ import annotations

import asyncio
import os
import secrets
import smtplib
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from clinicguard.auth.interfaces import Mail, MailSender, MailUnavailable
from clinicguard.core.logging import get_logger

log = get_logger("clinicguard.mail")
DRAIN_SECONDS = 5.0


def _message(mail: Mail, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = mail.to
    message["Subject"] = mail.subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="clinicguard")
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(mail.text)
    return message


class FileMailSender:
    """Development: each message becomes an .eml file under ``directory`` (mode 0600)."""

    def __init__(self, directory: Path, sender: str) -> None:
        self._dir = directory
        self._sender = sender

    async def send(self, mail: Mail) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        name = f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{secrets.token_hex(4)}.eml"
        data = _message(mail, self._sender).as_bytes()

        def write() -> None:
            fd = os.open(self._dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            raise MailUnavailable(type(exc).__name__) from exc


class SmtpMailSender:
    """SMTP relay with a timeout, optional STARTTLS (certificate verified) and login."""

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        *,
        username: str = "",
        password: str = "",
        starttls: bool = False,
        timeout: float = 10.0,
    ) -> None:
        self._host, self._port, self._sender = host, port, sender
        self._username, self._password = username, password
        self._starttls, self._timeout = starttls, timeout

    def _deliver(self, message: EmailMessage) -> None:
        with smtplib.SMTP(self._host, self._port, timeout=self._timeout) as smtp:
            if self._starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self._username:
                smtp.login(self._username, self._password)
            smtp.send_message(message)

    async def send(self, mail: Mail) -> None:
        try:
            await asyncio.to_thread(self._deliver, _message(mail, self._sender))
        except (smtplib.SMTPException, OSError) as exc:
            raise MailUnavailable(type(exc).__name__) from exc


class QueuedMailSender:
    """Mail leaves after the request has answered: a bounded queue and one worker in front
    of a slow relay, so neither a relay's latency nor whether a message was sent at all
    (mail goes only to existing accounts) shows in response times. Without a running
    worker (CLI processes) a message is sent at once."""

    def __init__(self, sender: MailSender, *, capacity: int = 1000) -> None:
        self._sender = sender
        self._queue: asyncio.Queue[Mail] = asyncio.Queue(maxsize=capacity)
        self._worker: asyncio.Task[None] | None = None

    async def send(self, mail: Mail) -> None:
        if self._worker is None:
            await self._sender.send(mail)
            return
        try:
            self._queue.put_nowait(mail)
        except asyncio.QueueFull:
            log.error("mail_queue_full", subject=mail.subject)

    async def _run(self) -> None:
        while True:
            mail = await self._queue.get()
            try:
                await self._sender.send(mail)
            except MailUnavailable as exc:
                log.warning("mail_not_sent", subject=mail.subject, reason=str(exc))
            except Exception:
                log.exception("mail_failed", subject=mail.subject)
            finally:
                self._queue.task_done()

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Deliver what is queued (for a few seconds at most), then stop the worker."""
        if self._worker is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), DRAIN_SECONDS)
        except TimeoutError:
            log.error("mail_queue_not_drained", pending=self._queue.qsize())
        self._worker.cancel()
        self._worker = None


_NOTICES: dict[str, tuple[str, str]] = {
    "password_changed": (
        "Your clinicguard password was changed",
        "The password of your clinicguard account was changed{when}. Your other sessions "
        "were ended. If this was not you, contact your clinic's administrator now.",
    ),
    "password_reset": (
        "Reset your clinicguard password",
        "Someone asked to reset the password of this account. If it was you, use this token "
        "within {minutes} minutes (POST /api/v1/auth/password/reset):\n\n{token}\n\n"
        "{link}\n\nIf it was not you, ignore this message: your password is unchanged.",
    ),
    "account_created": (
        "Your clinicguard account",
        "An administrator of {clinic} created a clinicguard account for you. Choose your "
        "password within {minutes} minutes with this token (POST /api/v1/auth/password/reset):"
        "\n\n{token}\n\n{link}\n\nIf you did not expect this, ignore this message.",
    ),
    "clinic_membership_added": (
        "You were added to a clinic",
        "An administrator of {clinic} gave your clinicguard account access to that clinic "
        "as {role}{when}. If this is unexpected, contact that clinic.",
    ),
    "mfa_enabled": (
        "Two-factor authentication enabled",
        "Two-factor authentication was turned on for your clinicguard account{when}.",
    ),
    "mfa_disabled": (
        "Two-factor authentication disabled",
        "Two-factor authentication was turned OFF for your clinicguard account{when}. If this "
        "was not you, contact your clinic's administrator now.",
    ),
    "backup_code_used": (
        "A backup code was used",
        "A backup code was used to sign in to your clinicguard account{when}. {remaining} "
        "unused codes remain. If this was not you, contact your clinic's administrator now.",
    ),
    "lockout": (
        "Sign-ins to your clinicguard account are paused",
        "There were too many failed sign-ins to your account; new sign-ins from unknown "
        "devices are paused for {minutes} minutes. Devices you signed in from before are not "
        "affected. If these attempts were not you, tell your clinic's administrator.",
    ),
    "new_device": (
        "New sign-in to your clinicguard account",
        "Your account was signed in to from a new device ({device}, IP {ip}){when}. If this "
        "was not you, change your password and contact your clinic's administrator.",
    ),
}


class SecurityNotifier:
    """Security notices to the account holder. Delivery is best effort: a relay outage is
    logged, never turned into a failed (or a seemingly failed) security action."""

    def __init__(self, sender: MailSender) -> None:
        self._sender = sender

    async def notify(self, to: str, notice: str, **values: str | int) -> None:
        subject, template = _NOTICES[notice]
        when = values.pop("when", "")
        text = template.format(when=f" at {when} UTC" if when else "", **values)
        try:
            await self._sender.send(Mail(to=to, subject=subject, text=text))
        except MailUnavailable as exc:
            log.warning("mail_not_sent", notice=notice, reason=str(exc))


def create_mail_sender(
    backend: str,
    *,
    directory: Path,
    sender: str,
    host: str,
    port: int,
    username: str,
    password: str,
    starttls: bool,
    timeout: float,
) -> MailSender:
    if backend == "smtp":
        return QueuedMailSender(
            SmtpMailSender(
                host,
                port,
                sender,
                username=username,
                password=password,
                starttls=starttls,
                timeout=timeout,
            )
        )
    return FileMailSender(directory, sender)
