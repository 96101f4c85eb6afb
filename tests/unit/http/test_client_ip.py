"""Client IP resolution: a forged X-Forwarded-For never changes who we think is calling."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from clinicguard.http.client_ip import resolve_client_ip

PROXIES = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")]


def test_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    assert resolve_client_ip("203.0.113.9", "1.1.1.1", PROXIES) == "203.0.113.9"


def test_trusted_proxy_chain_is_walked_from_the_right() -> None:
    assert resolve_client_ip("10.0.0.2", "198.51.100.4, 10.1.1.1", PROXIES) == "198.51.100.4"
    assert resolve_client_ip("10.0.0.2", "6.6.6.6, 198.51.100.4", PROXIES) == "198.51.100.4"


def test_ipv6_and_ports_are_understood() -> None:
    assert resolve_client_ip("2001:db8::1", "[2001:db9::5]:443", PROXIES) == "2001:db9::5"
    assert resolve_client_ip("10.0.0.2", "198.51.100.4:5050", PROXIES) == "198.51.100.4"


def test_garbage_hop_stops_at_the_last_address_vouched_for() -> None:
    assert resolve_client_ip("10.0.0.2", "198.51.100.4, <script>", PROXIES) == "10.0.0.2"
    assert resolve_client_ip("10.0.0.2", "", PROXIES) == "10.0.0.2"


def test_all_hops_trusted_yields_the_leftmost() -> None:
    assert resolve_client_ip("10.0.0.2", "10.9.9.9, 10.0.0.3", PROXIES) == "10.9.9.9"


@given(header=st.text(max_size=200), peer=st.ip_addresses(v=4).map(str))
def test_untrusted_peers_cannot_spoof(header: str, peer: str) -> None:
    if ipaddress.ip_address(peer) in PROXIES[0]:
        return
    assert resolve_client_ip(peer, header, PROXIES) == peer


@given(header=st.text(max_size=200))
def test_result_is_always_an_address_never_header_text(header: str) -> None:
    result = resolve_client_ip("10.0.0.2", header, PROXIES)
    ipaddress.ip_address(result)
