"""The client's address, believing X-Forwarded-For only from configured trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = value.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "203.0.113.9:5050"
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_trusted(address: str, trusted: Sequence[IPNetwork]) -> bool:
    ip = _parse(address)
    return ip is not None and any(ip in net for net in trusted)


def resolve_client_ip(peer: str, forwarded_for: str | None, trusted: Sequence[IPNetwork]) -> str:
    """The client address for this request.

    The direct peer is the client unless it is a trusted proxy. Then X-Forwarded-For is read
    from the right (the hop nearest to us) and trusted hops are skipped; the first untrusted
    hop is the client. A malformed hop stops the walk at the last address we can vouch for,
    so a forged header can never make a request look as if it came from elsewhere.
    """
    if not forwarded_for or not is_trusted(peer, trusted):
        return peer
    current = peer
    for hop in reversed(forwarded_for.split(",")):
        ip = _parse(hop)
        if ip is None:
            return current
        current = str(ip)
        if not any(ip in net for net in trusted):
            return current
    return current
