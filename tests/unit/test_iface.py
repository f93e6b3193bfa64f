"""Interface and public-IP selection, with flanneld's rules and messages (flannel-spec.md section 3)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

import pytest

from pyflannel.adapters.netlink import LinkInfo
from pyflannel.daemon.iface import InterfaceError, select_uplink

LO = LinkInfo(1, "lo", 65536, True, (IPv4Interface("127.0.0.1/8"),))
ETH0 = LinkInfo(2, "eth0", 1500, True, (IPv4Interface("198.18.0.11/24"), IPv4Interface("198.18.0.99/24")))
ETH1 = LinkInfo(3, "eth1", 9000, True, (IPv4Interface("169.254.3.3/16"), IPv4Interface("198.19.5.5/24")))
LINKS = [LO, ETH0, ETH1]


def no_route(ip: IPv4Address) -> tuple[int | None, IPv4Address | None]:
    raise AssertionError("route lookup not expected")


def test_default_route_interface_and_first_global_address() -> None:
    up = select_uplink(LINKS, 2, no_route)
    assert (up.link.name, str(up.iface_addr), str(up.public_ip)) == ("eth0", "198.18.0.11", "198.18.0.11")


def test_global_address_preferred_over_link_local() -> None:
    assert str(select_uplink(LINKS, 3, no_route).iface_addr) == "198.19.5.5"


def test_public_ip_picks_the_interface_that_owns_it() -> None:
    up = select_uplink(LINKS, 2, no_route, public_ip="198.19.5.5")
    assert up.link.name == "eth1" and str(up.public_ip) == "198.19.5.5"


def test_public_ip_nobody_owns_is_an_error_that_says_what_to_do() -> None:
    with pytest.raises(InterfaceError, match=r"^Failed to find any valid interface to use: .*-public-ip 203\.0\.113"):
        select_uplink(LINKS, 2, no_route, public_ip="203.0.113.9")


def test_public_ip_with_iface_is_published_as_is() -> None:
    up = select_uplink(LINKS, 2, no_route, iface=["eth0"], public_ip="203.0.113.9")
    assert str(up.iface_addr) == "198.18.0.11" and str(up.public_ip) == "203.0.113.9"


def test_no_default_route() -> None:
    with pytest.raises(InterfaceError, match="no default route interface"):
        select_uplink(LINKS, None, no_route)


@pytest.mark.parametrize(
    ("kw", "name", "addr"),
    [
        ({"iface": ["eth1"]}, "eth1", "198.19.5.5"),
        ({"iface": ["198.18.0.99"]}, "eth0", "198.18.0.99"),
        ({"iface": ["nope", "eth1"]}, "eth1", "198.19.5.5"),
        ({"iface_regex": [r"198\.19\..*"]}, "eth1", "198.19.5.5"),
        ({"iface_regex": [r"eth[1-9]"]}, "eth1", "198.19.5.5"),
        ({"iface": ["nope"], "iface_regex": ["eth0"]}, "eth0", "198.18.0.11"),
    ],
    ids=["name", "ip", "first-that-exists", "regex-on-ip", "regex-on-name", "iface-then-regex"],
)
def test_iface_and_regex(kw: dict[str, list[str]], name: str, addr: str) -> None:
    up = select_uplink(LINKS, 2, no_route, **kw)  # type: ignore[arg-type]
    assert (up.link.name, str(up.iface_addr)) == (name, addr)


def test_can_reach_uses_the_route_and_its_source() -> None:
    up = select_uplink(LINKS, 2, lambda ip: (3, IPv4Address("198.19.5.5")), iface_can_reach="198.19.5.1")
    assert (up.link.name, str(up.iface_addr)) == ("eth1", "198.19.5.5")


def test_nothing_matches_names_what_was_asked() -> None:
    with pytest.raises(InterfaceError) as ei:
        select_uplink(LINKS, 2, no_route, iface=["wlan9"], iface_regex=["^ppp"])
    msg = str(ei.value)
    assert msg.startswith("Failed to find interface to use that matches the interfaces and/or regexes provided")
    assert "wlan9" in msg and "^ppp" in msg and "\n" not in msg


def test_zero_mtu_is_refused() -> None:
    bad = LinkInfo(4, "tun9", 0, True, (IPv4Interface("198.18.9.9/24"),))
    with pytest.raises(InterfaceError, match="MTU"):
        select_uplink([bad], 4, no_route)
