"""The SMTP mail queue: a request never waits for the relay, and nothing queued is lost on
an orderly shutdown."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from clinicguard.auth.interfaces import Mail, MailUnavailable
from clinicguard.auth.mail import QueuedMailSender


class SlowRelay:
    """A MailSender that takes its time (and can be told to fail), recording deliveries."""

    def __init__(self, delay: float = 0.05, fail: bool = False) -> None:
        self.delay = delay
        self.fail = fail
        self.delivered: list[str] = []
        self.started = asyncio.Event()

    async def send(self, mail: Mail) -> None:
        self.started.set()
        await asyncio.sleep(self.delay)
        if self.fail:
            raise MailUnavailable("relay down")
        self.delivered.append(mail.subject)


def mail(n: int) -> Mail:
    return Mail(to="someone@clinica.example.com", subject=f"notice {n}", text="...")


async def test_a_started_queue_answers_before_the_relay_delivers() -> None:
    relay = SlowRelay(delay=0.2)
    queue = QueuedMailSender(relay)
    queue.start()
    await asyncio.wait_for(queue.send(mail(1)), 0.05)  # returns without waiting for the relay
    assert relay.delivered == []
    await queue.stop()
    assert relay.delivered == ["notice 1"]


async def test_stop_drains_everything_queued() -> None:
    relay = SlowRelay(delay=0.01)
    queue = QueuedMailSender(relay)
    queue.start()
    for n in range(20):
        await queue.send(mail(n))
    await queue.stop()
    assert relay.delivered == [f"notice {n}" for n in range(20)]


async def test_without_a_worker_mail_is_sent_at_once() -> None:
    relay = SlowRelay(delay=0.0)
    await QueuedMailSender(relay).send(mail(1))
    assert relay.delivered == ["notice 1"]


async def test_a_full_queue_drops_and_logs_instead_of_blocking() -> None:
    relay = SlowRelay(delay=0.5)
    queue = QueuedMailSender(relay, capacity=2)
    queue.start()
    with capture_logs() as logs:
        for n in range(5):
            await asyncio.wait_for(queue.send(mail(n)), 0.05)
    assert any(entry["event"] == "mail_queue_full" for entry in logs)
    await queue.stop()


async def test_a_relay_failure_is_logged_and_the_worker_goes_on() -> None:
    relay = SlowRelay(delay=0.0, fail=True)
    queue = QueuedMailSender(relay)
    queue.start()
    with capture_logs() as logs:
        await queue.send(mail(1))
        await queue.send(mail(2))
        await queue.stop()
    failures = [entry for entry in logs if entry["event"] == "mail_not_sent"]
    assert len(failures) == 2
    assert all("someone@" not in str(entry) for entry in logs)


@pytest.mark.parametrize("backend", ["smtp", "file"])
def test_only_the_smtp_backend_is_queued(backend: str, tmp_path: object) -> None:
    from pathlib import Path

    from clinicguard.auth.mail import FileMailSender, create_mail_sender

    sender = create_mail_sender(
        backend,
        directory=Path(str(tmp_path)),
        sender="x <x@example.com>",
        host="127.0.0.1",
        port=25,
        username="",
        password="",
        starttls=False,
        timeout=1.0,
    )
    expected = QueuedMailSender if backend == "smtp" else FileMailSender
    assert isinstance(sender, expected)


async def test_an_unexpected_error_does_not_stop_the_worker() -> None:
    """One message that breaks the sender in an unforeseen way is logged; the next ones
    are still delivered."""

    class Brittle(SlowRelay):
        async def send(self, mail: Mail) -> None:
            if mail.subject == "notice 1":
                raise ValueError("malformed header")
            await super().send(mail)

    relay = Brittle(delay=0.0)
    queue = QueuedMailSender(relay)
    queue.start()
    with capture_logs() as logs:
        for n in range(3):
            await queue.send(mail(n))
        await queue.stop()
    assert relay.delivered == ["notice 0", "notice 2"]
    assert any(entry["event"] == "mail_failed" for entry in logs)
