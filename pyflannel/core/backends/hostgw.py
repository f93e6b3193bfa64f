"""The host-gw backend's desired state, as flanneld builds it (flannel-spec.md §5).

host-gw needs no device and no encapsulation: every node is a router on one flat L2, so a
peer's pod subnet is reached by a plain route through the uplink with the peer's PublicIP as
gateway (``ip route replace <subnet> via <PublicIP> dev <uplink>``; IPv6: the v6 subnet via
PublicIPv6). The kernel resolves the gateway by ARP/NDP on the uplink, which is why the
PublicIP must be the interface's own address (no NAT) and why a peer outside the uplink's
prefixes cannot be reached at all: such a lease is refused here with the reason instead of
failing in the kernel on every reconcile pass.

FLANNEL_MTU is the uplink MTU (nothing is added to a packet).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from pyflannel.core.errors import ConfigError
from pyflannel.core.lease import Lease
from pyflannel.core.model import IPNetwork, Route

BACKEND_TYPE = "host-gw"

# flanneld's own words (backend/hostgw/hostgw.go), so a search for the message finds flannel's docs.
NAT_MESSAGE = (
    "your PublicIP differs from interface IP, meaning that probably you're on a NAT, "
    "which is not supported by host-gw backend"
)


@dataclass(frozen=True, slots=True)
class HostGwOptions:
    """host-gw has no Backend options in flannel; the address families come from the network config."""

    ipv4: bool = True
    ipv6: bool = False


def check_public_ip(
    iface_addr: IPv4Address | None,
    public_ip: IPv4Address | None,
    iface_addr6: IPv6Address | None = None,
    public_ipv6: IPv6Address | None = None,
    *,
    ipv4: bool = True,
    ipv6: bool = False,
) -> None:
    """Refuse a PublicIP (or PublicIPv6) that is not the interface's own address, with flannel's message.

    flannel compares only the IPv4 pair; the IPv6 pair is checked the same way here, because a
    v6 route via an address that is not on the L2 cannot work either.
    """
    if ipv4 and public_ip is not None and public_ip != iface_addr:
        raise ConfigError(f"{NAT_MESSAGE} (PublicIP={public_ip}, interface IP={iface_addr})")
    if ipv6 and public_ipv6 is not None and public_ipv6 != iface_addr6:
        raise ConfigError(f"{NAT_MESSAGE} (PublicIPv6={public_ipv6}, interface IPv6={iface_addr6})")


def _unicast(ip: IPv4Address | IPv6Address) -> bool:
    return not (ip.is_unspecified or ip.is_multicast or ip.is_loopback)


@dataclass(frozen=True, slots=True)
class PeerRoutes:
    """The routes one peer lease calls for, or why it is refused (``rejected`` non-empty, no routes)."""

    routes: tuple[Route, ...] = ()
    rejected: str = ""


def peer_routes(
    lease: Lease,
    uplink: str,
    opts: HostGwOptions,
    *,
    own: Lease | None = None,
    onlink: Sequence[IPNetwork] = (),
) -> PeerRoutes:
    """``<subnet> via <PublicIP> dev <uplink>`` (and the v6 form) for one peer lease.

    ``onlink`` are the uplink's own prefixes: when given, a gateway outside all of them is refused
    (host-gw needs L2 adjacency). Overlap with other leases is the caller's check.
    """
    if lease.attrs.backend_type != BACKEND_TYPE:
        return PeerRoutes(rejected=f"ignoring non-host-gw subnet: type={lease.attrs.backend_type}")
    on4 = [n for n in onlink if isinstance(n, IPv4Network)]
    on6 = [n for n in onlink if isinstance(n, IPv6Network)]
    routes: list[Route] = []
    if opts.ipv4:
        gw = lease.attrs.public_ip
        sn = lease.subnet
        if sn is None:
            return PeerRoutes(rejected=f"lease {lease.name} has no IPv4 subnet (an IPv6-only node)")
        if not _unicast(gw):
            return PeerRoutes(rejected=f"PublicIP {gw} is not a unicast host address")
        if own is not None and gw == own.attrs.public_ip:
            return PeerRoutes(rejected=f"PublicIP {gw} is our own")
        if on4 and not any(gw in n for n in on4):
            return PeerRoutes(
                rejected=f"PublicIP {gw} is not on the uplink's network ({', '.join(map(str, on4))}): "
                "host-gw needs the nodes on one L2"
            )
        routes.append(Route(sn, gw, uplink))
    if opts.ipv6:
        gw6 = lease.attrs.public_ipv6
        sn6 = lease.subnet6
        if sn6 is None or gw6 is None:
            if not opts.ipv4:
                return PeerRoutes(rejected="lease has no IPv6 subnet or no PublicIPv6")
        else:
            if not _unicast(gw6):
                return PeerRoutes(rejected=f"PublicIPv6 {gw6} is not a unicast host address")
            if own is not None and gw6 == own.attrs.public_ipv6:
                return PeerRoutes(rejected=f"PublicIPv6 {gw6} is our own")
            if on6 and not gw6.is_link_local and not any(gw6 in n for n in on6):
                return PeerRoutes(
                    rejected=f"PublicIPv6 {gw6} is not on the uplink's network ({', '.join(map(str, on6))}): "
                    "host-gw needs the nodes on one L2"
                )
            routes.append(Route(sn6, gw6, uplink))
    return PeerRoutes(routes=tuple(routes))


def mtu_for(uplink_mtu: int) -> int:
    """FLANNEL_MTU for host-gw: the uplink's MTU unchanged."""
    return uplink_mtu
