"""A short, coarse device label from a User-Agent ("Firefox on Linux"): enough for a person
to recognise their sessions, not a fingerprint."""

from __future__ import annotations

import re

_BROWSERS = (
    ("Edge", re.compile(r"Edg(e|A|iOS)?/")),
    ("Opera", re.compile(r"OPR/|Opera")),
    ("Firefox", re.compile(r"Firefox/|FxiOS/")),
    ("Chrome", re.compile(r"Chrome/|CriOS/|Chromium/")),
    ("Safari", re.compile(r"Safari/")),
    ("curl", re.compile(r"^curl/")),
    ("Python", re.compile(r"python-httpx|python-requests|aiohttp")),
)
_SYSTEMS = (
    ("Android", re.compile(r"Android")),
    ("iOS", re.compile(r"iPhone|iPad|iPod")),
    ("Windows", re.compile(r"Windows")),
    ("macOS", re.compile(r"Mac OS X|Macintosh")),
    ("ChromeOS", re.compile(r"CrOS")),
    ("Linux", re.compile(r"Linux|X11")),
)


def device_label(user_agent: str) -> str:
    browser = next((name for name, p in _BROWSERS if p.search(user_agent)), "Unknown client")
    system = next((name for name, p in _SYSTEMS if p.search(user_agent)), None)
    return f"{browser} on {system}" if system else browser
