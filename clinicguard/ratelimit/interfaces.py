"""The rate-limit seam."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class WindowState:
    """A window after a hit (or a peek): whether the hit was admitted, how many events the
    window now holds, and when the oldest leaves it."""

    allowed: bool
    count: int
    limit: int
    reset_after: float
    """Seconds until the oldest event in the window expires (0 when the window is empty)."""
    event: str | None = None
    """The recorded event's id (a hit that was admitted), for :meth:`RateLimiter.release`."""

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.count)


class RateLimiter(Protocol):
    """Sliding-window limits (exact: a log of event times per key). Every method is one
    atomic round trip; concurrent clients can never push a window past its limit. Raises
    the key-value store's ``KeyValueUnavailable`` when the backend cannot answer: callers
    decide to fail closed (authentication) or fall back (other routes)."""

    async def hit(self, key: str, *, limit: int, window: float) -> WindowState:
        """Record one event when fewer than ``limit`` happened in the last ``window``
        seconds (``allowed``); otherwise record nothing."""
        ...

    async def peek(self, key: str, *, limit: int, window: float) -> WindowState:
        """The window's state without recording anything (``allowed``: one more would be)."""
        ...

    async def release(self, key: str, event: str) -> None:
        """Take back one recorded event (an attempt counted up-front that turned out fine)."""
        ...

    async def reset(self, *keys: str) -> None:
        """Forget every event under these keys."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
