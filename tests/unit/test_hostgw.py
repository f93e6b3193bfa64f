"""host-gw: the NAT check, per-peer routes (v4 and v6) and the Backend adapter (flannel-spec.md section 5)."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from pyflannel.adapters.hostgw_backend import HostGwBackend
from pyflannel.core.backends.hostgw import NAT_MESSAGE, HostGwOptions, check_public_ip, peer_routes
from pyflannel.core.config import parse_config
from pyflannel.core.errors import ConfigError
from pyflannel.core.lease import Lease, LeaseAttrs
from pyflannel.core.model import Route
from pyflannel.ports import Backend, Scope, Uplink

LAN = IPv4Network("198.18.0.0/24")
LAN6 = IPv6Network("fd18::/64")


def lease(subnet: str, pub: str, sn6: str | None = None, pub6: str | None = None, btype: str = "host-gw") -> Lease:
    return Lease(
        IPv4Network(subnet),
        LeaseAttrs(IPv4Address(pub), IPv6Address(pub6) if pub6 else None, backend_type=btype),
        subnet6=IPv6Network(sn6) if sn6 else None,
    )


def test_nat_is_refused_with_flannels_message() -> None:
    with pytest.raises(ConfigError) as e:
        check_public_ip(IPv4Address("198.18.0.11"), IPv4Address("203.0.113.5"))
    assert str(e.value).startswith(NAT_MESSAGE)
    assert "PublicIP=203.0.113.5" in str(e.value) and "\n" not in str(e.value)
    check_public_ip(IPv4Address("198.18.0.11"), IPv4Address("198.18.0.11"))


def test_nat_v6_checked_only_when_ipv6_enabled() -> None:
    a, b = IPv6Address("fd18::11"), IPv6Address("fd18::99")
    check_public_ip(None, None, a, b, ipv4=False, ipv6=False)
    with pytest.raises(ConfigError, match="PublicIPv6=fd18::99"):
        check_public_ip(None, None, a, b, ipv4=False, ipv6=True)


def test_v4_route_via_public_ip_on_uplink() -> None:
    r = peer_routes(lease("100.64.5.0/24", "198.18.0.12"), "eth0", HostGwOptions(), onlink=[LAN])
    assert r.rejected == ""
    assert r.routes == (Route(IPv4Network("100.64.5.0/24"), IPv4Address("198.18.0.12"), "eth0"),)


def test_dual_stack_routes_and_v4_only_peer() -> None:
    opts = HostGwOptions(ipv4=True, ipv6=True)
    le = lease("100.64.5.0/24", "198.18.0.12", "fd64:0:0:5::/64", "fd18::12")
    r = peer_routes(le, "eth0", opts, onlink=[LAN, LAN6])
    assert r.routes == (
        Route(IPv4Network("100.64.5.0/24"), IPv4Address("198.18.0.12"), "eth0"),
        Route(IPv6Network("fd64:0:0:5::/64"), IPv6Address("fd18::12"), "eth0"),
    )
    # A peer without v6 in a dual-stack cluster still gets its v4 route (flannel handles families separately).
    r = peer_routes(lease("100.64.6.0/24", "198.18.0.13"), "eth0", opts, onlink=[LAN, LAN6])
    assert [x.dst for x in r.routes] == [IPv4Network("100.64.6.0/24")]


def test_v6_only() -> None:
    opts = HostGwOptions(ipv4=False, ipv6=True)
    le = lease("0.0.0.0/32", "0.0.0.0", "fd64:0:0:5::/64", "fd18::12")
    want = Route(IPv6Network("fd64:0:0:5::/64"), IPv6Address("fd18::12"), "eth0")
    assert peer_routes(le, "eth0", opts).routes == (want,)
    assert peer_routes(lease("0.0.0.0/32", "0.0.0.0"), "eth0", opts).rejected


@pytest.mark.parametrize(
    ("le", "why"),
    [
        (lease("100.64.5.0/24", "198.18.0.12", btype="vxlan"), "non-host-gw"),
        (lease("100.64.5.0/24", "0.0.0.0"), "not a unicast"),
        (lease("100.64.5.0/24", "198.18.0.11"), "our own"),
        (lease("100.64.5.0/24", "198.19.3.4"), "one L2"),
    ],
)
def test_rejected_peers(le: Lease, why: str) -> None:
    own = lease("100.64.1.0/24", "198.18.0.11")
    r = peer_routes(le, "eth0", HostGwOptions(), own=own, onlink=[LAN])
    assert r.routes == () and why in r.rejected


def test_backend_adapter_follows_the_port() -> None:
    cfg = parse_config('{"Network": "100.64.0.0/16", "Backend": {"Type": "host-gw"}}')
    be: Backend = HostGwBackend(cfg)  # mypy checks the protocol; the port is not runtime_checkable
    up = Uplink("eth0", 2, 1500, IPv4Address("198.18.0.11"), IPv4Address("198.18.0.11"), networks=(LAN,))
    asyncio.run(be.setup(up))
    assert be.mtu == 1500 and be.backend_type == "host-gw"
    attrs = be.lease_attrs(up)
    assert attrs.to_json() == '{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"host-gw"}'
    assert be.scope() == Scope(devices=(), uplink="eth0", uplink_routes=(IPv4Network("100.64.0.0/16"),))
    assert be.indexes() == {"eth0": 2}
    pe = be.peer_entries(lease("100.64.9.0/24", "198.18.0.13"))
    assert pe.entries == (Route(IPv4Network("100.64.9.0/24"), IPv4Address("198.18.0.13"), "eth0"),)
    assert asyncio.run(be.check_devices(lease("100.64.1.0/24", "198.18.0.11"))) == []


def test_backend_refuses_nat() -> None:
    cfg = parse_config('{"Network": "100.64.0.0/16", "Backend": {"Type": "host-gw"}}')
    up = Uplink("eth0", 2, 1500, IPv4Address("198.18.0.11"), IPv4Address("203.0.113.9"))
    with pytest.raises(ConfigError, match="NAT"):
        asyncio.run(HostGwBackend(cfg).setup(up))
