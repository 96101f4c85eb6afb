"""Security header profiles: each response gets the profile of its path.

``api`` is for JSON endpoints; ``docs`` lets the development-only API docs page load its
script from the CDN with a hash-pinned inline bootstrap (never ``'unsafe-inline'``). The
``phi`` and ``console`` profiles are added by the features that serve those pages.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

COMMON_HEADERS: tuple[tuple[str, str], ...] = (
    ("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    (
        "Permissions-Policy",
        "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), "
        "microphone=(), payment=(), usb=(), browsing-topics=()",
    ),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("X-Permitted-Cross-Domain-Policies", "none"),
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"


@dataclass(frozen=True, slots=True)
class HeaderProfile:
    name: str
    content_security_policy: str
    no_store: bool = True
    extra: tuple[tuple[str, str], ...] = ()

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        pairs = [*COMMON_HEADERS, ("Content-Security-Policy", self.content_security_policy)]
        if self.no_store:
            pairs.append(("Cache-Control", "no-store"))
        pairs.extend(self.extra)
        return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in pairs]


API_PROFILE = HeaderProfile("api", API_CSP)


def docs_profile(script_hashes: Iterable[str]) -> HeaderProfile:
    hashes = " ".join(f"'sha256-{h}'" for h in script_hashes)
    csp = (
        "default-src 'none'; "
        f"script-src https://cdn.jsdelivr.net {hashes}; "
        "style-src https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    return HeaderProfile("docs", csp)


class ProfileTable:
    """Path prefix -> profile, longest prefix first; everything else gets ``default``."""

    def __init__(
        self, routes: Sequence[tuple[str, HeaderProfile]], default: HeaderProfile = API_PROFILE
    ) -> None:
        self._routes = sorted(routes, key=lambda item: len(item[0]), reverse=True)
        self._default = default
        self._cache: dict[str, list[tuple[bytes, bytes]]] = {}

    def headers_for(self, path: str) -> list[tuple[bytes, bytes]]:
        profile = next((p for prefix, p in self._routes if path.startswith(prefix)), None)
        chosen = profile or self._default
        if chosen.name not in self._cache:
            self._cache[chosen.name] = chosen.raw_headers()
        return self._cache[chosen.name]
