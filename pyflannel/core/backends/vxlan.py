"""The vxlan backend's desired state, as flanneld v0.9+ builds it.

Design note (after flannel's ``backend/vxlan/vxlan.go``): each remote host gets exactly
three kernel objects, all static, so nothing depends on L2/L3-miss upcalls to a running
daemon and a restart is hitless:

* a permanent neighbour ``<peer subnet>.0 lladdr <peer VtepMAC>`` on ``flannel.<VNI>``,
* a permanent ``self`` FDB entry ``<peer VtepMAC> dst <peer PublicIP>``,
* an onlink route ``<peer subnet> via <peer subnet>.0 dev flannel.<VNI>``.

The route's gateway resolves through the neighbour to the peer's VTEP MAC, and the FDB
maps that MAC to the underlay address. There is no route for the whole Network and none
for our own subnet (that one belongs to docker0/cni0). With DirectRouting, a peer whose
PublicIP is on the uplink's own L2 gets a plain route via its PublicIP and no encapsulation.

Peers are checked here, not trusted: a lease that would install a route over our own
subnet, over the node LAN, or outside the Network is rejected with the reason.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from pyflannel.core.backends.options import BackendOptions
from pyflannel.core.errors import LeaseFormatError
from pyflannel.core.lease import Lease
from pyflannel.core.model import Fdb, Neigh, PeerState, Route

BACKEND_TYPE = "vxlan"
DEFAULT_PORT = 8472


@dataclass(frozen=True, slots=True)
class VxlanOptions:
    vni: int = 1
    port: int = 0
    gbp: bool = False
    direct_routing: bool = False
    learning: bool = False
    mtu: int = 0

    @property
    def device(self) -> str:
        return f"flannel.{self.vni}"

    @property
    def device6(self) -> str:
        return f"flannel-v6.{self.vni}"


def parse_options(backend: dict[str, Any]) -> VxlanOptions:
    """Decode the vxlan Backend object (keys case-insensitive, as Go decodes them)."""
    o = BackendOptions(backend, "error decoding VXLAN backend config")
    return VxlanOptions(
        vni=o.integer("VNI", 1, 0, (1 << 24) - 1),
        port=o.integer("Port", 0, 0, 65535),
        gbp=o.flag("GBP"),
        direct_routing=o.flag("DirectRouting"),
        learning=o.flag("Learning"),
        mtu=o.integer("MTU", 0, 0, 65535),
    )


@dataclass(frozen=True, slots=True)
class Rejected:
    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class Peer:
    lease: Lease
    vtep_mac: str


def select_peers(
    own: Lease,
    leases: Iterable[Lease],
    network: IPv4Network,
    protected: Sequence[IPv4Network] = (),
    prefer_len: int | None = None,
) -> tuple[list[Peer], list[Rejected]]:
    """Split leases into usable vxlan peers and rejected ones (with reasons).

    ``protected`` are networks no peer route may cover (the node's own LAN prefixes).
    Leases of another BackendType are skipped silently: they are foreign, not bad.

    Of two peers that overlap only one can be routed. By default the first by subnet order is
    kept. With ``prefer_len`` (the config's SubnetLen), leases of that length win over any other
    size first: every node's lease has that length, so a lease of another size that anyone put in
    etcd (a /23 over a node's /24, a /30 inside it) can no longer cut that node off.

    This is the IPv4 view (``flannel.<VNI>``): leases without an IPv4 subnet (IPv6-only ones) are not
    considered, and an IPv6-only node (``own.subnet`` None) has no IPv4 peers.
    """
    peers: list[Peer] = []
    rejected: list[Rejected] = []
    own_sn = own.subnet
    if own_sn is None:
        return peers, rejected
    # Ranges as integers: ipaddress caches broadcast_address & co. on every network object it
    # computes them for, which at thousands of peers is memory for nothing.
    net_lo, net_hi = _span(network)
    own_lo, own_hi = _span(own_sn)
    prot = [(_span(p), p) for p in protected]
    for le in leases:
        sn = le.subnet
        if sn is None or sn == own_sn:
            continue
        if le.attrs.backend_type != BACKEND_TYPE:
            continue
        key = le.key_name
        lo, hi = _span(sn)
        if not (net_lo <= lo and hi <= net_hi):
            rejected.append(Rejected(key, f"subnet {sn} is outside the Network {network}"))
            continue
        if lo <= own_hi and own_lo <= hi:
            rejected.append(Rejected(key, f"subnet {sn} overlaps our own subnet {own_sn}"))
            continue
        bad = next((p for (plo, phi), p in prot if lo <= phi and plo <= hi), None)
        if bad is not None:
            rejected.append(Rejected(key, f"subnet {sn} overlaps the node network {bad}"))
            continue
        if le.attrs.public_ip == own.attrs.public_ip:
            rejected.append(Rejected(key, f"PublicIP {le.attrs.public_ip} is our own"))
            continue
        if int(le.attrs.public_ip) == 0 or le.attrs.public_ip.is_multicast or le.attrs.public_ip.is_loopback:
            rejected.append(Rejected(key, f"PublicIP {le.attrs.public_ip} is not a unicast host address"))
            continue
        try:
            data = le.attrs.vxlan_data()
        except LeaseFormatError as e:
            rejected.append(Rejected(key, str(e)))
            continue
        peers.append(Peer(le, data.vtep_mac))
    if prefer_len is None:
        kept = _first_of_overlapping(peers, rejected)
    else:
        kept = _first_of_overlapping([p for p in peers if _sn4(p).prefixlen == prefer_len], rejected)
        taken = {_sn4(p) for p in kept}
        starts = sorted(int(sn.network_address) for sn in taken)
        others = []
        for p in peers:
            sn = _sn4(p)
            if sn.prefixlen == prefer_len:
                continue
            hit = _overlapping_aligned(sn, prefer_len, taken, starts)
            if hit is not None:
                rejected.append(Rejected(p.lease.key_name, f"subnet {sn} overlaps peer {hit}"))
            else:
                others.append(p)
        kept.extend(_first_of_overlapping(others, rejected))
        kept.sort(key=_subnet_order)
    return kept, rejected


def _sn4(p: Peer) -> IPv4Network:
    """The IPv4 subnet of a peer select_peers kept (it keeps only leases that have one)."""
    assert p.lease.subnet is not None
    return p.lease.subnet


def _subnet_order(p: Peer) -> tuple[int, int, str]:
    sn = _sn4(p)
    return (int(sn.network_address), sn.prefixlen, p.lease.key_name)


def _first_of_overlapping(peers: list[Peer], rejected: list[Rejected]) -> list[Peer]:
    """Drop every peer that overlaps one before it in subnet order (appending the reason to ``rejected``)."""
    # Sorted by network address, a subnet overlaps an earlier one exactly when it starts at or
    # before the highest broadcast address kept so far: one pass, not a pairwise check.
    peers = sorted(peers, key=_subnet_order)
    kept: list[Peer] = []
    reach = -1
    last: Peer | None = None
    for p in peers:
        sn = _sn4(p)
        if int(sn.network_address) <= reach and last is not None:
            rejected.append(Rejected(p.lease.key_name, f"subnet {sn} overlaps peer {last.lease.subnet}"))
            continue
        kept.append(p)
        end = _span(sn)[1]
        if end > reach:
            reach, last = end, p
    return kept


def _span(net: IPv4Network) -> tuple[int, int]:
    """First and last address of ``net`` as integers."""
    lo = int(net.network_address)
    return lo, lo + (1 << (32 - net.prefixlen)) - 1


def _overlapping_aligned(
    sn: IPv4Network, length: int, taken: set[IPv4Network], starts: list[int]
) -> IPv4Network | None:
    """A subnet of ``taken`` (all of prefix ``length``, ``starts`` their sorted addresses) that ``sn`` overlaps.

    Two CIDR blocks overlap only if one contains the other: a longer ``sn`` lies inside the one
    block of ``length`` that contains it; a shorter one contains every block starting inside it.
    """
    if sn.prefixlen > length:
        sup = sn.supernet(new_prefix=length)
        return sup if sup in taken else None
    lo, hi = _span(sn)
    i = bisect.bisect_left(starts, lo)
    if i < len(starts) and starts[i] <= hi:
        return IPv4Network((starts[i], length))
    return None


def desired_state(
    device: str,
    peers: Iterable[Peer],
    direct_routing: bool = False,
    uplink: str = "",
    onlink_networks: Sequence[IPv4Network] = (),
) -> PeerState:
    """The routes, neighbours and FDB entries the peers call for."""
    routes: set[Route] = set()
    neighs: set[Neigh] = set()
    fdbs: set[Fdb] = set()
    for p in peers:
        sn = _sn4(p)
        pub: IPv4Address = p.lease.attrs.public_ip
        if direct_routing and uplink and any(pub in n for n in onlink_networks):
            routes.add(Route(sn, pub, uplink, onlink=False))
            continue
        vtep = sn.network_address
        neighs.add(Neigh(vtep, p.vtep_mac, device))
        fdbs.add(Fdb(p.vtep_mac, pub, device))
        routes.add(Route(sn, vtep, device, onlink=True))
    return PeerState(frozenset(routes), frozenset(neighs), frozenset(fdbs))


def mtu_for(uplink_mtu: int, opts: VxlanOptions) -> int:
    """FLANNEL_MTU: (Backend MTU or uplink MTU) minus the 50-byte VXLAN/IPv4 overhead."""
    return (opts.mtu or uplink_mtu) - 50


def peer_entries(
    lease: Lease,
    device: str,
    direct_routing: bool = False,
    uplink: str = "",
    onlink_networks: Sequence[IPv4Network | IPv6Network] = (),
    device6: str = "",
) -> tuple[tuple[Route | Neigh | Fdb, ...], str]:
    """One peer's entries (as :func:`desired_state` builds them), or the reason its lease is unusable.

    With ``device6`` (EnableIPv6: ``flannel-v6.<VNI>``) a peer that has a v6 subnet, a PublicIPv6 and
    BackendV6Data also gets the same three entries for IPv6: ``<v6 subnet IP> lladdr <v6 VtepMAC>``,
    ``<v6 VtepMAC> dst <PublicIPv6>`` and ``<v6 subnet> via <v6 subnet IP> onlink``, on that device.
    A peer without a usable v6 half keeps its IPv4 entries (a node that is not dual-stack yet).
    An IPv6-only peer (no IPv4 subnet, no BackendData) gets only the IPv6 entries, and is refused with
    the reason when it has none. On an IPv6-only network (``device`` "": no ``flannel.<VNI>``) every peer
    gets only its IPv6 entries, whatever else its lease has.
    """
    sn = lease.subnet
    if sn is None or not device:
        return _v6_only_entries(lease, device6, direct_routing, uplink, onlink_networks)
    try:
        mac = lease.attrs.vxlan_data().vtep_mac
    except LeaseFormatError as e:
        return (), str(e)
    pub: IPv4Address = lease.attrs.public_ip
    out: list[Route | Neigh | Fdb]
    if direct_routing and uplink and any(pub in n for n in onlink_networks if n.version == 4):
        out = [Route(sn, pub, uplink, onlink=False)]
    else:
        vtep = sn.network_address
        out = [Neigh(vtep, mac, device), Fdb(mac, pub, device), Route(sn, vtep, device, onlink=True)]
    if device6:
        out.extend(_v6_entries(lease, device6, direct_routing, uplink, onlink_networks))
    return tuple(out), ""


def _v6_only_entries(
    lease: Lease, device6: str, direct_routing: bool, uplink: str, onlink_networks: Sequence[IPv4Network | IPv6Network]
) -> tuple[tuple[Route | Neigh | Fdb, ...], str]:
    if not device6:
        return (), f"lease {lease.name} has no IPv4 subnet (an IPv6-only node) and this network has no IPv6"
    if lease.subnet6 is None:
        return (), f"lease {lease.name} has no IPv6 subnet, and this network is IPv6-only (EnableIPv4=false)"
    pub6 = lease.attrs.public_ipv6
    if pub6 is None or pub6.is_unspecified or pub6.is_multicast or pub6.is_loopback:
        return (), f"PublicIPv6 {pub6} is not a unicast host address"
    try:
        lease.attrs.vxlan_v6_data()
    except LeaseFormatError as e:
        return (), str(e)
    return tuple(_v6_entries(lease, device6, direct_routing, uplink, onlink_networks)), ""


def _v6_entries(
    lease: Lease, device6: str, direct_routing: bool, uplink: str, onlink_networks: Sequence[IPv4Network | IPv6Network]
) -> list[Route | Neigh | Fdb]:
    sn6 = lease.subnet6
    pub6: IPv6Address | None = lease.attrs.public_ipv6
    if sn6 is None or pub6 is None or lease.attrs.backend_v6_data is None:
        return []
    if pub6.is_unspecified or pub6.is_multicast or pub6.is_loopback:
        return []
    try:
        mac6 = lease.attrs.vxlan_v6_data().vtep_mac
    except LeaseFormatError:
        return []
    if direct_routing and uplink and any(pub6 in n for n in onlink_networks if n.version == 6):
        return [Route(sn6, pub6, uplink, onlink=False)]
    vtep6 = sn6.network_address
    return [Neigh(vtep6, mac6, device6), Fdb(mac6, pub6, device6), Route(sn6, vtep6, device6, onlink=True)]


def mtu6_for(opts: VxlanOptions) -> int | None:
    """The ``flannel-v6.<VNI>`` device MTU: Backend MTU minus the 70-byte VXLAN/IPv6 overhead, else None.

    None leaves it to the kernel, which derives uplink MTU - 70 (docs/kernel-notes.md, MTU).
    flannel v0.28.9 sets (MTU or uplink MTU) - 50 on both devices; on the v6 device that lets a full-size
    inner packet produce an outer one 20 bytes over the uplink MTU.
    """
    return opts.mtu - 70 if opts.mtu else None
