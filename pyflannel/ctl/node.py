"""What ``flannelctl status`` and ``doctor`` know about the node they run on.

Facts are gathered once, read-only, into one ``NodeFacts`` value: the subnet file and the
daemon's status file, etcd (config, leases, own lease TTL, each endpoint's health), the
kernel (links, the VXLAN device, routes, the peer entries pyflannel owns, sysctls, iptables,
tx checksum offload). The reports are then plain functions of that value, so the checks are
testable without a node. Nothing here writes anything or sends a packet: reachability of a
peer is judged from the kernel's route lookup (``ip route get``), not probed.

The desired peer state is computed with the daemon's own code (``vxlan.select_peers`` and
``desired_state``) and compared with what ``Netlink.observe`` finds, exactly as a reconcile
pass would; the difference is the drift an operator would see repaired by the next pass.

Backend choice is data: the backend type comes from the network config (``Backend.Type``), and
only that backend's kernel state is read. host-gw: the uplink's connected prefixes, a route
lookup (oif and gateway) per peer PublicIP and the main-table routes through the uplink
(``hostgw.peer_routes`` gives the desired ones). wireguard: per device of
``wgcore.devices``, the link's kind (``wireguard`` is the kernel module, ``tun`` is
wireguard-go), the device's own report (genetlink or the UAPI ``get=1`` of
``adapters.wireguard``, never ``wg`` output), the key file (``WIREGUARD_KEY_FILE`` as
flanneld reads it) and its mode. With ``EnableIPv6``: the v6 forwarding sysctl, v6 routes and
ip6tables-save.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import dataclasses
import fcntl
import json
import os
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any

from pyflannel.adapters.etcd import EtcdClient, EtcdError
from pyflannel.adapters.netlink import DataplaneError, LinkInfo, Netlink
from pyflannel.adapters.registry import BadLease, EtcdLease, SubnetRegistry
from pyflannel.core.backends import hostgw, vxlan
from pyflannel.core.backends import wireguard as wgcore
from pyflannel.core.config import NetworkConfig
from pyflannel.core.errors import ConfigError, FlannelError, LeaseFormatError, SubnetEnvError
from pyflannel.core.flags import Options
from pyflannel.core.lease import Lease
from pyflannel.core.model import Fdb, LiveVxlanLink, Neigh, PeerState, Route, WgPeer
from pyflannel.core.subnet_env import parse_env_text
from pyflannel.ctl.keyspace import make_client
from pyflannel.daemon.metrics import status_path

SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM = 0x16
RT_TABLE_MAIN = 254


@dataclass(frozen=True)
class EndpointHealth:
    endpoint: str
    ok: bool
    version: str | None = None
    leader: bool | None = None
    db_size: int | None = None
    raft_index: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class HostRoute:
    dst: IPv4Network
    gateway: IPv4Address | None
    oif: int | None
    dev: str | None
    text: str  # as `ip route` would print it, roughly


@dataclass(frozen=True)
class RouteLookup:
    """The kernel's answer to ``ip route get <PublicIP>``: out interface and gateway (None if on-link)."""

    oif: int | None
    dev: str | None
    gateway: str | None
    error: str | None = None


@dataclass(frozen=True)
class HostGwPeer:
    """One host-gw peer lease: the routes it calls for (or why it is refused) and the lookup of its gateway(s)."""

    lease: Lease
    routes: tuple[Route, ...]
    rejected: str = ""


@dataclass(frozen=True)
class WgDevice:
    """One WireGuard device flanneld should have: what the link and the device itself report."""

    name: str
    listen_port: int  # from the config
    index: int | None = None  # None: the link does not exist
    kind: str = ""  # "kernel" (link kind wireguard), "wireguard-go" (tun), or the link's kind
    up: bool = False
    mtu: int = 0
    addresses: tuple[str, ...] = ()
    socket: str = ""  # wireguard-go's UAPI socket path
    status: Any = None  # adapters.wireguard.DeviceStatus, None if the device did not answer
    error: str = ""  # why it did not answer


@dataclass(frozen=True)
class WgKeyFile:
    path: str
    mode: int | None = None  # st_mode & 0o7777; None: missing or unreadable
    public_key: str = ""
    error: str = ""


@dataclass
class NodeFacts:
    subnet_file: str
    status_file: str
    env: dict[str, str] | None = None
    env_error: str | None = None
    status: dict[str, Any] | None = None
    status_error: str | None = None
    # etcd
    config: NetworkConfig | None = None
    config_error: str | None = None
    vopts: vxlan.VxlanOptions | None = None
    leases: list[EtcdLease] = field(default_factory=list)
    bad_leases: list[BadLease] = field(default_factory=list)
    etcd_error: str | None = None
    own: EtcdLease | None = None
    own_ttl: int | None = None
    endpoints: list[EndpointHealth] = field(default_factory=list)
    # kernel
    kernel_error: str | None = None
    links: list[LinkInfo] = field(default_factory=list)
    device: LiveVxlanLink | None = None
    uplink: LinkInfo | None = None
    peers: list[vxlan.Peer] = field(default_factory=list)
    rejected: list[vxlan.Rejected] = field(default_factory=list)
    desired: PeerState | None = None
    onlink: list[IPv4Network] = field(default_factory=list)  # uplink's on-link prefixes (DirectRouting)
    actual: PeerState | None = None
    # EnableIPv6 (vxlan): flannel-v6.<VNI> and the entries on it (desired: only those on that device)
    device6: LiveVxlanLink | None = None
    desired6: PeerState | None = None
    actual6: PeerState | None = None
    routes: list[HostRoute] = field(default_factory=list)
    peer_routes: dict[str, tuple[int | None, str | None]] = field(default_factory=dict)  # PublicIP -> (oif, dev)
    sysctls: dict[str, str | None] = field(default_factory=dict)
    iptables: dict[str, str] = field(default_factory=dict)
    iptables_error: str | None = None
    nftables: dict[str, list[dict[str, Any]] | None] = field(default_factory=dict)  # flannel table -> listing
    nftables_error: str | None = None
    tx_checksum: bool | None = None
    tx_checksum_error: str | None = None
    udp_ports: set[int] = field(default_factory=set)
    kernel_release: str = ""
    now: float = 0.0
    # host-gw
    uplink_prefixes: list[IPv4Network | IPv6Network] = field(default_factory=list)
    hostgw_peers: list[HostGwPeer] = field(default_factory=list)
    lookups: dict[str, RouteLookup] = field(default_factory=dict)  # peer PublicIP(v6) -> route get
    routes6: list[HostRoute] = field(default_factory=list)
    # wireguard
    wg_opts: wgcore.WireguardOptions | None = None
    wg_devices: list[WgDevice] = field(default_factory=list)
    wg_key: WgKeyFile | None = None
    wg_desired: list[WgPeer] = field(default_factory=list)
    wg_rejected: list[tuple[str, str]] = field(default_factory=list)  # (subnet, reason)
    # IPv6
    ip6tables: dict[str, str] = field(default_factory=dict)
    ip6tables_error: str | None = None

    @property
    def backend(self) -> str:
        """The backend type: the network config's, else the one the daemon's status file names, else vxlan."""
        if self.config is not None:
            return self.config.backend_type
        return str((self.status or {}).get("backend") or vxlan.BACKEND_TYPE)

    @property
    def ipv6(self) -> bool:
        return bool(self.config is not None and self.config.enable_ipv6 and self.config.ipv6_network is not None)

    @property
    def own_subnet6(self) -> IPv6Network | None:
        if self.own is not None and self.own.subnet6 is not None:
            return self.own.subnet6
        sub = (self.env or {}).get("FLANNEL_IPV6_SUBNET")
        if sub:
            with contextlib.suppress(ValueError):
                return IPv6Network(sub, strict=False)
        return None

    def backend_indexes(self) -> set[int]:
        """Links of the backend's own (the VXLAN device, the WireGuard devices)."""
        out = {d.index for d in self.wg_devices if d.index is not None}
        if self.device is not None:
            out.add(self.device.index)
        return out

    @property
    def own_subnet(self) -> IPv4Network | None:
        if self.own is not None:
            return self.own.subnet
        sub = (self.env or {}).get("FLANNEL_SUBNET")
        if sub:
            with contextlib.suppress(ValueError):
                return IPv4Network(sub, strict=False)
        lease = (self.status or {}).get("lease") or {}
        if lease.get("subnet"):
            with contextlib.suppress(ValueError):
                return IPv4Network(lease["subnet"])
        return None

    @property
    def device_name(self) -> str:
        if self.vopts is not None:
            return self.vopts.device6 if self.config is not None and self.config.ipv6_only else self.vopts.device
        if self.backend == wgcore.BACKEND_TYPE:
            return wgcore.DEVICE
        return str((self.status or {}).get("device") or "flannel.1")

    def link(self, index: int | None) -> LinkInfo | None:
        return next((lk for lk in self.links if lk.index == index), None)

    def uplink_candidate(self) -> LinkInfo | None:
        """The VXLAN device's underlay link, else the one the daemon's status file names, else the link
        holding the lease's PublicIP (host-gw and wireguard have no underlay link to follow)."""
        if self.device is not None and self.device.uplink_index:
            return self.link(self.device.uplink_index)
        name = (self.status or {}).get("uplink")
        if name:
            return next((lk for lk in self.links if lk.name == name), None)
        if self.own is not None:
            ip = self.own.attrs.public_ip
            return next((lk for lk in self.links if any(a.ip == ip for a in lk.addrs)), None)
        return None


# --- files -------------------------------------------------------------------------------


def read_files(facts: NodeFacts) -> None:
    try:
        facts.env = parse_env_text(Path(facts.subnet_file).read_text(), facts.subnet_file)
    except (OSError, SubnetEnvError) as e:
        facts.env_error = f"{facts.subnet_file}: {getattr(e, 'strerror', None) or e}"
    try:
        facts.status = json.loads(Path(facts.status_file).read_text())
    except FileNotFoundError:
        facts.status_error = f"{facts.status_file} does not exist"
    except (OSError, ValueError) as e:
        facts.status_error = f"{facts.status_file}: {e}"


# --- etcd --------------------------------------------------------------------------------


async def endpoint_health(client: EtcdClient, endpoint: str) -> EndpointHealth:
    try:
        st = await client.status(endpoint)
    except EtcdError as e:
        return EndpointHealth(endpoint, False, error=str(e).removeprefix(f"etcd {endpoint}: "))
    header = st.get("header") or {}
    errors = st.get("errors") or []
    return EndpointHealth(
        endpoint,
        ok=not errors,
        version=st.get("version"),
        leader=str(st.get("leader")) == str(header.get("member_id")) if st.get("leader") else False,
        db_size=int(st.get("dbSize", 0) or 0),
        raft_index=int(st.get("raftIndex", 0) or 0),
        error="; ".join(map(str, errors)) or None,
    )


def set_backend_options(facts: NodeFacts) -> None:
    """The backend's options from ``facts.config`` (etcd's config or, in kube mode, net-conf.json); ConfigError."""
    assert facts.config is not None
    if facts.config.backend_type == vxlan.BACKEND_TYPE:
        facts.vopts = vxlan.parse_options(facts.config.backend)
    elif facts.config.backend_type == wgcore.BACKEND_TYPE:
        facts.wg_opts = wgcore.parse_options(facts.config.backend, ipv4=facts.config.enable_ipv4,
                                             ipv6=facts.config.enable_ipv6)


async def read_etcd(facts: NodeFacts, opts: Options) -> None:
    async with make_client(opts, timeout=3.0) as client:
        facts.endpoints = list(await asyncio.gather(*(endpoint_health(client, e) for e in client.endpoints)))
        reg = SubnetRegistry(client, opts.etcd_prefix)
        try:
            facts.config = await reg.get_config()
            set_backend_options(facts)
        except ConfigError as e:
            facts.config_error = str(e)
        except EtcdError as e:
            facts.etcd_error = str(e)
            return
        try:
            facts.leases, facts.bad_leases, _ = await reg.list_leases()
        except EtcdError as e:
            facts.etcd_error = str(e)
            return
        mine, mine6 = facts.own_subnet, facts.own_subnet6
        if mine is not None:
            facts.own = next((le for le in facts.leases if le.subnet == mine), None)
        elif mine6 is not None and facts.config is not None and facts.config.ipv6_only:
            facts.own = next((le for le in facts.leases if le.subnet is None and le.subnet6 == mine6), None)
        own_id = 0 if facts.own is None else facts.own.lease_id
        if own_id:
            with contextlib.suppress(EtcdError):
                facts.own_ttl, _ = await client.lease_ttl(own_id)


# --- kernel ------------------------------------------------------------------------------


def read_sysctl(name: str) -> str | None:
    """``net.ipv4.conf.flannel.1.rp_filter`` style names; a device name may contain dots."""
    parts = name.split(".")
    if parts[:3] == ["net", "ipv4", "conf"] and len(parts) > 5:
        parts = [*parts[:3], ".".join(parts[3:-1]), parts[-1]]
    try:
        return Path("/proc/sys", *parts).read_text().strip()
    except OSError:
        return None


def tx_checksum(dev: str) -> bool:
    """ethtool's ``tx-checksumming`` (ETHTOOL_GTXCSUM); OSError if the device has no ethtool ops."""
    buf = array.array("B", struct.pack("II", ETHTOOL_GTXCSUM, 0))
    addr, _ = buf.buffer_info()
    ifreq = struct.pack("16sP", dev.encode()[:15], addr)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
    _, value = struct.unpack("II", buf.tobytes())
    return bool(value)


def udp_listen_ports() -> set[int]:
    """Local UDP ports with a socket bound (the kernel's VXLAN socket shows up here too)."""
    ports = set()
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(name).read_text().splitlines()[1:]:
                local = line.split()[1]
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def iptables_save(table: str) -> str:
    p = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True, timeout=30, check=False)
    if p.returncode != 0:
        raise FlannelError(f"iptables-save -t {table}: exit {p.returncode}: {p.stderr.strip()[:200]}")
    return p.stdout


def dump_routes(nl: Netlink, links: list[LinkInfo], family: int = socket.AF_INET) -> list[HostRoute]:
    names = {lk.index: lk.name for lk in links}
    out = []
    for r in nl.ipr.route("dump", family=family, table=RT_TABLE_MAIN):
        if r["type"] != 1:  # unicast only; local/broadcast routes live in other tables anyway
            continue
        dst = r.get("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
        net: Any = ip_network(f"{dst}/{r['dst_len']}")
        gw = r.get("RTA_GATEWAY")
        oif = r.get("RTA_OIF")
        dev = names.get(oif) if oif else None
        text = ("default" if r["dst_len"] == 0 else str(net)) + (f" via {gw}" if gw else "") + (
            f" dev {dev}" if dev else "")
        gateway: Any = ip_address(gw) if gw else None
        out.append(HostRoute(net, gateway, oif, dev, text))
    return out


def ip6tables_save(table: str) -> str:
    p = subprocess.run(["ip6tables-save", "-t", table], capture_output=True, text=True, timeout=30, check=False)
    if p.returncode != 0:
        raise FlannelError(f"ip6tables-save -t {table}: exit {p.returncode}: {p.stderr.strip()[:200]}")
    return p.stdout


def read_kernel(facts: NodeFacts) -> None:
    facts.kernel_release = os.uname().release
    for name in ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables", "net.ipv4.conf.all.rp_filter"):
        facts.sysctls[name] = read_sysctl(name)
    if facts.ipv6:
        facts.sysctls["net.ipv6.conf.all.forwarding"] = read_sysctl("net.ipv6.conf.all.forwarding")
    try:
        nl = Netlink()
    except OSError as e:
        facts.kernel_error = f"netlink: {e}"
        return
    try:
        read_links(facts, nl)
    except (OSError, DataplaneError) as e:
        facts.kernel_error = f"netlink: {e}"
    finally:
        nl.close()
    try:
        facts.iptables = {t: iptables_save(t) for t in ("nat", "filter")}
    except (OSError, subprocess.TimeoutExpired, FlannelError) as e:
        facts.iptables_error = str(e)
    if facts.ipv6:
        try:
            facts.ip6tables = {t: ip6tables_save(t) for t in ("nat", "filter")}
        except (OSError, subprocess.TimeoutExpired, FlannelError) as e:
            facts.ip6tables_error = str(e)
    if facts.backend == wgcore.BACKEND_TYPE:
        read_wireguard(facts)
    try:
        from pyflannel.adapters.nftables import NftablesFirewall

        facts.nftables = NftablesFirewall().listings()
    except FlannelError as e:
        facts.nftables_error = str(e)
    facts.udp_ports = udp_listen_ports()
    if facts.device is not None:
        try:
            facts.tx_checksum = tx_checksum(facts.device.name)
        except OSError as e:
            facts.tx_checksum_error = f"ethtool ioctl on {facts.device.name}: {e.strerror or e}"


def read_links(facts: NodeFacts, nl: Netlink) -> None:
    facts.links = nl.links()
    facts.device = nl.read_vxlan(facts.device_name)
    facts.uplink = facts.uplink_candidate()
    for name in (facts.device.name if facts.device else None, facts.uplink.name if facts.uplink else None):
        if name:
            key = f"net.ipv4.conf.{name}.rp_filter"
            facts.sysctls[key] = read_sysctl(key)
    facts.routes = dump_routes(nl, facts.links)
    if facts.ipv6:
        facts.routes6 = dump_routes(nl, facts.links, socket.AF_INET6)
    if facts.backend == hostgw.BACKEND_TYPE:
        read_hostgw(facts, nl)
        return
    if facts.backend == wgcore.BACKEND_TYPE:
        read_wg_links(facts, nl)
        return
    if facts.device is not None and facts.config is not None and facts.config.ipv6_only:
        read_vxlan_v6_only(facts, nl)
        return
    if facts.device is None or facts.config is None or facts.config.network is None:
        return
    dev, up = facts.device, facts.uplink
    up_index, up_name = (up.index, up.name) if up is not None else (0, "")
    facts.actual = nl.observe(dev.index, dev.name, up_index, up_name, facts.config.network)
    if facts.own is None:
        return
    protected = [a.network for a in up.addrs] if up is not None else []
    facts.peers, facts.rejected = vxlan.select_peers(facts.own, facts.leases, facts.config.network, protected)
    direct = bool(facts.vopts and facts.vopts.direct_routing)
    facts.onlink = nl.connected_networks(up_index) if direct and up_index else []
    facts.desired = vxlan.desired_state(dev.name, facts.peers, direct, up_name, facts.onlink)
    if facts.ipv6 and facts.vopts is not None:
        read_vxlan6(facts, nl)
    for p in facts.peers:
        ip = p.lease.attrs.public_ip
        try:
            oif, _src = nl.route_get(ip)
        except DataplaneError:
            oif = None
        lk = facts.link(oif) if oif else None
        facts.peer_routes[str(ip)] = (oif, lk.name if lk else None)


def read_vxlan6(facts: NodeFacts, nl: Netlink) -> None:
    """EnableIPv6: flannel-v6.<VNI>, the entries the peers call for on it (``vxlan.peer_entries`` with the v6
    device, as the daemon builds them) and what the kernel has there, read as the daemon reads it."""
    assert facts.vopts is not None
    dev = nl.read_vxlan(facts.vopts.device6)
    facts.device6 = dev
    if dev is None:
        return
    want = [e for p in facts.peers for e in vxlan.peer_entries(p.lease, facts.device_name, device6=dev.name)[0]
            if e.dev == dev.name]
    facts.desired6 = PeerState.of(want)
    facts.actual6 = nl.observe_device(dev.index, dev.name)


def read_vxlan_v6_only(facts: NodeFacts, nl: Netlink) -> None:
    """vxlan on an IPv6-only network: ``flannel-v6.<VNI>``'s routes, permanent neighbours and FDB entries, and
    what the leases call for (the daemon's ``vxlan.peer_entries``; overlapping leases are not weeded out)."""
    dev = facts.device
    assert dev is not None
    facts.actual = nl.observe_device(dev.index, dev.name)
    if facts.own is None:
        return
    want: list[Route | Neigh | Fdb] = []
    for le in facts.leases:
        if le.subnets == facts.own.subnets or le.attrs.backend_type != vxlan.BACKEND_TYPE:
            continue
        entries, why = vxlan.peer_entries(le, "", device6=dev.name)
        if why:
            facts.rejected.append(vxlan.Rejected(le.key_name, why))
            continue
        if le.attrs.public_ipv6 == facts.own.attrs.public_ipv6:
            facts.rejected.append(vxlan.Rejected(le.key_name, f"PublicIPv6 {le.attrs.public_ipv6} is our own"))
            continue
        facts.peers.append(vxlan.Peer(le, le.attrs.vxlan_v6_data().vtep_mac))
        want.extend(entries)
    facts.desired = PeerState.of(want)
    for p in facts.peers:
        lk = lookup(nl, facts, p.lease.owner_ip)
        facts.peer_routes[str(p.lease.owner_ip)] = (lk.oif, lk.dev)


def lookup(nl: Netlink, facts: NodeFacts, ip: IPv4Address | IPv6Address) -> RouteLookup:
    """``ip route get <ip>``: the out interface and the gateway, if any."""
    try:
        res = nl.ipr.route("get", dst=str(ip))
    except Exception as e:  # noqa: BLE001 - pyroute2's NetlinkError, or OSError
        code = getattr(e, "code", None)
        return RouteLookup(None, None, None, os.strerror(code) if isinstance(code, int) else str(e))
    for r in res:
        oif = r.get("RTA_OIF")
        lk = facts.link(oif) if oif else None
        return RouteLookup(oif, lk.name if lk else None, r.get("RTA_GATEWAY"))
    return RouteLookup(None, None, None, "no route")


def read_hostgw(facts: NodeFacts, nl: Netlink) -> None:
    """host-gw: the uplink's prefixes, the peers' routes as the daemon computes them, a lookup per gateway."""
    up = facts.uplink
    if up is None or facts.config is None:
        return
    prefixes: list[IPv4Network | IPv6Network] = [a.network for a in up.addrs]
    prefixes += [n for n in nl.connected_networks(up.index) if n not in prefixes]
    for r in facts.routes6:
        if r.oif == up.index and r.gateway is None and r.dst.prefixlen > 0 and r.dst not in prefixes \
                and not r.dst.is_link_local and not r.dst.is_multicast:
            prefixes.append(r.dst)
    facts.uplink_prefixes = prefixes
    if facts.own is None:
        return
    opts = hostgw.HostGwOptions(ipv4=facts.config.enable_ipv4, ipv6=facts.config.enable_ipv6)
    for le in facts.leases:
        if le.subnets == facts.own.subnets:
            continue
        # No ``onlink``: a gateway off the uplink's L2 is what doctor reports, so it is not filtered here.
        pr = hostgw.peer_routes(le, up.name, opts, own=facts.own)
        facts.hostgw_peers.append(HostGwPeer(le, pr.routes, pr.rejected))
        for rt in pr.routes:
            facts.lookups[str(rt.via)] = lookup(nl, facts, rt.via)


def read_wg_links(facts: NodeFacts, nl: Netlink) -> None:
    """wireguard: each device's link (kind, state, MTU, addresses); the device reports are read later."""
    if facts.wg_opts is None:
        return
    for spec in wgcore.devices(facts.wg_opts):
        found = nl.ipr.link_lookup(ifname=spec.name)
        if not found:
            facts.wg_devices.append(WgDevice(spec.name, spec.listen_port))
            continue
        (msg,) = nl.ipr.link("get", index=found[0])
        info = msg.get_attr("IFLA_LINKINFO")
        kind = (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or ""
        addrs = tuple(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in nl.ipr.get_addr(index=found[0]))
        facts.wg_devices.append(WgDevice(
            spec.name, spec.listen_port, found[0],
            {"wireguard": "kernel", "tun": "wireguard-go"}.get(kind, kind),
            bool(msg["flags"] & 1), int(msg.get_attr("IFLA_MTU") or 0), addrs,
        ))  # fmt: skip


def read_wireguard(facts: NodeFacts) -> None:
    """The key file, each device's own report (genetlink or UAPI ``get=1``), the peers the leases call for."""
    from pyflannel.adapters import wireguard as wg

    path = wg.key_file_path()
    try:
        st = os.stat(path)
        key = wg.read_key_file(path)
        facts.wg_key = WgKeyFile(path, st.st_mode & 0o7777, wgcore.public_key(key) if key else "")
    except FileNotFoundError:
        facts.wg_key = WgKeyFile(path, error=f"{path} does not exist")
    except (OSError, FlannelError) as e:
        facts.wg_key = WgKeyFile(path, error=str(getattr(e, "strerror", None) or e))
    devices = []
    for d in facts.wg_devices:
        if d.index is None:
            devices.append(d)
            continue
        sock = os.path.join(wg.SOCKET_DIR, f"{d.name}.sock") if d.kind == "wireguard-go" else ""
        try:
            if d.kind == "kernel":
                drv = wg.KernelDriver()
                try:
                    status = drv.status(d.name)
                finally:
                    drv.close()
            else:
                status = wg.Uapi(sock).get(d.name)
            devices.append(dataclasses.replace(d, socket=sock, status=status))
        except Exception as e:  # noqa: BLE001 - WireguardError, pyroute2's NetlinkError, OSError
            devices.append(dataclasses.replace(d, socket=sock, error=str(e)))
    facts.wg_devices = devices
    if facts.own is None or facts.wg_opts is None:
        return
    own_key = ""
    with contextlib.suppress(LeaseFormatError):
        if facts.own.attrs.backend_data:
            own_key = wgcore.parse_data(facts.own.attrs.backend_data).public_key
    for le in facts.leases:
        if le.subnets == facts.own.subnets:
            continue
        r = wgcore.peer_entries(le, facts.wg_opts, own_key=own_key, own_public_ip=facts.own.attrs.public_ip,
                                own_public_ipv6=facts.own.attrs.public_ipv6)
        if r.rejected:
            facts.wg_rejected.append((le.name, r.rejected))
        facts.wg_desired.extend(r.peers)


def collect(opts: Options, *, etcd: bool = True, kernel: bool = True) -> NodeFacts:
    """Everything status and doctor report on, read once."""
    facts = NodeFacts(str(opts.subnet_file), str(status_path(opts.subnet_file)), now=time.time())
    read_files(facts)
    if etcd:
        try:
            asyncio.run(read_etcd(facts, opts))
        except (EtcdError, FlannelError) as e:
            facts.etcd_error = str(e)
    if kernel:
        read_kernel(facts)
    return facts
