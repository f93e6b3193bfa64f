"""Value types for the kernel state pyflannel owns.

The reconciler compares sets of these: what the leases say should exist against what the
kernel has. Each type names its kernel identity (``ident``): two entries with the same
identity are one kernel object, so a difference in the rest is a replace, not an add and a
delete (deleting a neighbour by IP after replacing it would remove the new one).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


@dataclass(frozen=True, order=True, slots=True)
class Route:
    """``ip route replace <dst> via <via> dev <dev> [onlink]`` in the main table."""

    dst: IPNetwork
    via: IPAddress
    dev: str
    onlink: bool = False

    @property
    def ident(self) -> tuple[str, IPNetwork]:
        return ("route", self.dst)


@dataclass(frozen=True, order=True, slots=True)
class Neigh:
    """A permanent neighbour (ARP) entry: the peer VTEP's address -> its VtepMAC."""

    ip: IPAddress
    mac: str
    dev: str

    @property
    def ident(self) -> tuple[str, str, IPAddress]:
        return ("neigh", self.dev, self.ip)


@dataclass(frozen=True, order=True, slots=True)
class Fdb:
    """A permanent ``self`` FDB entry on the VXLAN device: VtepMAC -> the peer's PublicIP."""

    mac: str
    dst: IPAddress
    dev: str

    @property
    def ident(self) -> tuple[str, str, str]:
        return ("fdb", self.dev, self.mac)


@dataclass(frozen=True, order=True, slots=True)
class WgPeer:
    """A WireGuard peer on ``dev``: its key, endpoint, AllowedIPs (its subnets) and keepalive.

    Applied through the WireGuard configuration interface (kernel genetlink or wireguard-go's
    UAPI socket), not rtnetlink; keyed by public key as WireGuard itself keys peers.
    """

    public_key: str
    endpoint: str  # "ip:port" ("[v6]:port" for IPv6)
    allowed_ips: tuple[str, ...]
    dev: str
    keepalive: int = 0
    psk: str = ""

    @property
    def ident(self) -> tuple[str, str, str]:
        return ("wgpeer", self.dev, self.public_key)


Entry = Route | Neigh | Fdb | WgPeer


@dataclass(frozen=True, slots=True)
class PeerState:
    """The peer part of the data plane: every route, neighbour and FDB entry."""

    routes: frozenset[Route] = field(default_factory=frozenset)
    neighs: frozenset[Neigh] = field(default_factory=frozenset)
    fdbs: frozenset[Fdb] = field(default_factory=frozenset)

    def entries(self) -> list[Entry]:
        return [*self.routes, *self.neighs, *self.fdbs]

    @classmethod
    def of(cls, entries: Iterable[Entry]) -> PeerState:
        """The routes, neighbours and FDB entries among ``entries`` (anything else is left out)."""
        es = list(entries)
        return cls(frozenset(e for e in es if isinstance(e, Route)), frozenset(e for e in es if isinstance(e, Neigh)),
                   frozenset(e for e in es if isinstance(e, Fdb)))


@dataclass(frozen=True, slots=True)
class VxlanLink:
    """What the ``flannel.<VNI>`` device must look like."""

    name: str
    vni: int
    local: IPv4Address | IPv6Address  # IPv6 for flannel-v6.<VNI>
    uplink_index: int
    port: int  # 0 = kernel default 8472
    gbp: bool
    learning: bool
    mtu: int | None  # None = let the kernel derive it from the uplink


@dataclass(frozen=True, slots=True)
class LiveVxlanLink:
    """The attributes of an existing VXLAN device that decide whether it can be reused."""

    name: str
    index: int
    kind: str
    vni: int | None
    local: IPv4Address | IPv6Address | None
    uplink_index: int | None
    port: int
    gbp: bool
    learning: bool
    mac: str
    mtu: int
    up: bool
    addresses: tuple[str, ...] = ()  # "a.b.c.d/len"


def link_incompatibilities(want: VxlanLink, live: LiveVxlanLink) -> list[str]:
    """Why ``live`` cannot be reused as ``want``; empty when it can (flannel's vxlanLinksIncompat).

    Port is compared only when both are set, because the kernel reports its default 8472
    for a device created without one.
    """
    why = []
    if live.kind != "vxlan":
        why.append(f"type: {live.kind} vs vxlan")
    if live.vni != want.vni:
        why.append(f"vni: {live.vni} vs {want.vni}")
    if live.local != want.local:
        why.append(f"local: {live.local} vs {want.local}")
    if live.uplink_index != want.uplink_index:
        why.append(f"dev index: {live.uplink_index} vs {want.uplink_index}")
    if want.port and live.port and live.port != want.port:
        why.append(f"port: {live.port} vs {want.port}")
    if live.gbp != want.gbp:
        why.append(f"gbp: {live.gbp} vs {want.gbp}")
    if live.learning != want.learning:
        why.append(f"learning: {live.learning} vs {want.learning}")
    return why


@dataclass(frozen=True, slots=True)
class FirewallSpec:
    """Everything the masquerade and forward rules depend on (the rule builders are in core)."""

    network: IPv4Network | None
    subnet: IPv4Network | None
    network6: IPv6Network | None = None
    subnet6: IPv6Network | None = None
    ip_masq: bool = False
    forward: bool = True
    random_fully: bool = True  # False with --ip-masq-fully-random-disable (or when unsupported)
