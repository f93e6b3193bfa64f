"""The kernel side: links, addresses, routes, neighbours and FDB entries, via pyroute2.

All pyroute2 objects stay in this module; callers get core.model values. The API is
synchronous on purpose: pyroute2 0.9's sync ``IPRoute`` runs its own event loop and cannot
be used inside the daemon's, so the daemon runs every call on one dedicated thread
(``NetlinkThread``), which also serialises netlink access.

Kernel quirks handled here:
* FDB ``append`` silently keeps the old dst for a unicast MAC; ``replace`` updates it but
  needs explicit ``state`` and ``flags`` or the kernel answers EOPNOTSUPP.
* pyroute2 marks routes ``proto static`` by default; Go flanneld's are ``proto boot``.
* A delete of something already gone (ENOENT/ESRCH) counts as success.
* The VXLAN MAC is chosen before the link is created, so udev's MACAddressPolicy cannot
  rewrite it after the fact (flannel PR #1485).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from pyflannel.core.errors import FlannelError
from pyflannel.core.model import Fdb, LiveVxlanLink, Neigh, PeerState, Route, VxlanLink
from pyflannel.core.plan import Op, describe

log = logging.getLogger(__name__)

NUD_PERMANENT = 0x80
NUD_NOARP = 0x40
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x04
RTPROT_BOOT = 3
RT_TABLE_MAIN = 254
AF_BRIDGE = 7

T = TypeVar("T")


class DataplaneError(FlannelError):
    """A netlink operation failed; the message names the object and the errno."""


def random_vtep_mac() -> str:
    """Locally administered, unicast: first octet (b & 0xfe) | 0x02, as flanneld does."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


@dataclass(frozen=True)
class LinkInfo:
    index: int
    name: str
    mtu: int
    up: bool
    addrs: tuple[IPv4Interface, ...]


class Netlink:
    """Synchronous netlink access for one network namespace (the current one)."""

    def __init__(self) -> None:
        self.ipr = IPRoute()

    def close(self) -> None:
        self.ipr.close()

    # --- facts ---------------------------------------------------------------------------

    def links(self) -> list[LinkInfo]:
        addrs: dict[int, list[IPv4Interface]] = {}
        for a in self.ipr.addr("dump", family=socket.AF_INET):
            ip = a.get("IFA_ADDRESS") or a.get("IFA_LOCAL")
            if ip:
                addrs.setdefault(a["index"], []).append(IPv4Interface(f"{ip}/{a['prefixlen']}"))
        out = []
        for link in self.ipr.link("dump"):
            out.append(
                LinkInfo(
                    index=link["index"],
                    name=link.get("IFLA_IFNAME"),
                    mtu=link.get("IFLA_MTU") or 0,
                    up=bool(link["flags"] & 1),
                    addrs=tuple(addrs.get(link["index"], [])),
                )
            )
        return out

    def default_route_oif(self) -> int | None:
        for r in self.ipr.route("dump", family=socket.AF_INET, table=RT_TABLE_MAIN):
            if r["dst_len"] == 0 and r.get("RTA_OIF"):
                return int(r.get("RTA_OIF"))
        return None

    def route_get(self, ip: IPv4Address) -> tuple[int | None, IPv4Address | None]:
        """(oif, preferred source) of the kernel's route to ``ip``, as ``ip route get``."""
        try:
            res = self.ipr.route("get", dst=str(ip))
        except NetlinkError as e:
            raise DataplaneError(f"route get {ip}: {os.strerror(e.code)}") from None
        for r in res:
            src = r.get("RTA_PREFSRC")
            return r.get("RTA_OIF"), IPv4Address(src) if src else None
        return None, None

    def connected_networks(self, ifindex: int) -> list[IPv4Network]:
        """Prefixes reachable on-link through ``ifindex`` (its scope-link routes)."""
        nets = []
        for r in self.ipr.route("dump", family=socket.AF_INET, table=RT_TABLE_MAIN):
            if r.get("RTA_OIF") == ifindex and r["scope"] == 253 and not r.get("RTA_GATEWAY"):
                dst = r.get("RTA_DST")
                if dst:
                    nets.append(IPv4Network(f"{dst}/{r['dst_len']}"))
        return nets

    # --- the VXLAN device ----------------------------------------------------------------

    def read_vxlan(self, name: str) -> LiveVxlanLink | None:
        found = self.ipr.link("get", ifname=name) if self._exists(name) else []
        for link in found:
            info = link.get("IFLA_LINKINFO")
            kind = info.get("IFLA_INFO_KIND") if info else None
            data = info.get("IFLA_INFO_DATA") if info else None
            local = data.get("IFLA_VXLAN_LOCAL") if data else None
            addrs = tuple(
                f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}"
                for a in self.ipr.addr("dump", family=socket.AF_INET, index=link["index"])
            )
            return LiveVxlanLink(
                name=name,
                index=link["index"],
                kind=kind or "",
                vni=data.get("IFLA_VXLAN_ID") if data else None,
                local=IPv4Address(local) if local else None,
                uplink_index=data.get("IFLA_VXLAN_LINK") if data else None,
                port=(data.get("IFLA_VXLAN_PORT") or 0) if data else 0,
                gbp=bool(data.get("IFLA_VXLAN_GBP")) if data else False,
                learning=bool(data.get("IFLA_VXLAN_LEARNING")) if data else False,
                mac=link.get("IFLA_ADDRESS"),
                mtu=link.get("IFLA_MTU"),
                up=bool(link["flags"] & 1),
                addresses=addrs,
            )
        return None

    def _exists(self, name: str) -> bool:
        return bool(self.ipr.link_lookup(ifname=name))

    def create_vxlan(self, want: VxlanLink, mac: str) -> None:
        kw: dict[str, Any] = {
            "ifname": want.name,
            "kind": "vxlan",
            "address": mac,
            "vxlan_id": want.vni,
            "vxlan_local": str(want.local),
            "vxlan_link": want.uplink_index,
            "vxlan_learning": 1 if want.learning else 0,
        }
        if want.port:
            kw["vxlan_port"] = want.port
        if want.gbp:
            kw["vxlan_gbp"] = True
        if want.mtu:
            kw["mtu"] = want.mtu
        try:
            self.ipr.link("add", **kw)
        except NetlinkError as e:
            raise DataplaneError(f"create {want.name} (vxlan id {want.vni}): {os.strerror(e.code)}") from None
        # Router advertisements on the overlay device make no sense (flanneld does the same).
        path = f"/proc/sys/net/ipv6/conf/{want.name}/accept_ra"
        if os.path.exists(path):
            with open(path, "w") as f:
                f.write("0")

    def delete_link(self, name: str) -> None:
        idx = self.ipr.link_lookup(ifname=name)
        if idx:
            self.ipr.link("del", index=idx[0])

    def set_mtu(self, index: int, mtu: int) -> None:
        self.ipr.link("set", index=index, mtu=mtu)

    def ensure_address(self, index: int, address: IPv4Interface) -> list[str]:
        """Make ``address`` the only IPv4 address of the device and bring it up.

        Returns what changed, for the log.
        """
        changes = []
        have = [
            IPv4Interface(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}")
            for a in self.ipr.addr("dump", family=socket.AF_INET, index=index)
        ]
        for a in have:
            if a != address:
                self.ipr.addr("del", index=index, address=str(a.ip), prefixlen=a.network.prefixlen)
                changes.append(f"removed address {a}")
        if address not in have:
            self.ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
            changes.append(f"added address {address}")
        link = self.ipr.link("get", index=index)[0]
        if not link["flags"] & 1:
            self.ipr.link("set", index=index, state="up")
            changes.append("set link up")
        return changes

    # --- peer state ----------------------------------------------------------------------

    def observe(self, dev_index: int, dev: str, uplink_index: int, uplink: str, network: IPv4Network) -> PeerState:
        """The kernel entries pyflannel owns.

        Owned: every main-table route through the VXLAN device; routes through the uplink
        with a gateway and a destination inside the Network (DirectRouting); permanent
        neighbours and ``self`` FDB entries with a dst on the VXLAN device.
        """
        routes = set()
        for r in self.ipr.route("dump", family=socket.AF_INET, table=RT_TABLE_MAIN):
            oif = r.get("RTA_OIF")
            gw = r.get("RTA_GATEWAY")
            dst = r.get("RTA_DST")
            if not dst or not gw or r["type"] != 1:
                continue
            net = IPv4Network(f"{dst}/{r['dst_len']}")
            if oif == dev_index:
                routes.add(Route(net, IPv4Address(gw), dev, onlink=bool(r["flags"] & RTNH_F_ONLINK)))
            elif oif == uplink_index and net.subnet_of(network):
                routes.add(Route(net, IPv4Address(gw), uplink, onlink=bool(r["flags"] & RTNH_F_ONLINK)))
        neighs = set()
        for n in self.ipr.neigh("dump", family=socket.AF_INET, ifindex=dev_index):
            if n["ifindex"] != dev_index or not n["state"] & NUD_PERMANENT:
                continue
            ip, mac = n.get("NDA_DST"), n.get("NDA_LLADDR")
            if ip and mac:
                neighs.add(Neigh(IPv4Address(ip), mac.lower(), dev))
        fdbs = set()
        for n in self.ipr.fdb("dump", ifindex=dev_index):
            if n["ifindex"] != dev_index or not n["flags"] & NTF_SELF:
                continue
            dst, mac = n.get("NDA_DST"), n.get("NDA_LLADDR")
            if dst and mac and ":" not in dst:
                fdbs.add(Fdb(mac.lower(), IPv4Address(dst), dev))
        return PeerState(frozenset(routes), frozenset(neighs), frozenset(fdbs))

    def apply(self, ops: Iterable[Op], indexes: dict[str, int]) -> list[tuple[Op, str]]:
        """Apply ops in order; return the failures as (op, reason). Never raises for one op."""
        failed = []
        for op in ops:
            try:
                self._apply_one(op, indexes)
            except NetlinkError as e:
                if op.action == "delete" and e.code in (errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL):
                    continue
                failed.append((op, os.strerror(e.code)))
            except (KeyError, OSError) as e:
                failed.append((op, str(e)))
        return failed

    def _apply_one(self, op: Op, indexes: dict[str, int]) -> None:
        e = op.entry
        idx = indexes[e.dev]
        if isinstance(e, Neigh):
            if op.action == "replace":
                self.ipr.neigh("replace", dst=str(e.ip), lladdr=e.mac, ifindex=idx, state=NUD_PERMANENT)
            else:
                self.ipr.neigh("del", dst=str(e.ip), lladdr=e.mac, ifindex=idx)
        elif isinstance(e, Fdb):
            if op.action == "replace":
                self.ipr.fdb("replace", ifindex=idx, lladdr=e.mac, dst=str(e.dst), state=NUD_PERMANENT, flags=NTF_SELF)
            else:
                self.ipr.fdb("del", ifindex=idx, lladdr=e.mac, dst=str(e.dst), state=NUD_PERMANENT, flags=NTF_SELF)
        else:
            kw: dict[str, Any] = {
                "dst": str(e.dst),
                "gateway": str(e.via),
                "oif": idx,
                "table": RT_TABLE_MAIN,
            }
            if op.action == "replace":
                kw["proto"] = RTPROT_BOOT
                if e.onlink:
                    kw["flags"] = RTNH_F_ONLINK
                self.ipr.route("replace", **kw)
            else:
                self.ipr.route("del", **kw)


class NetlinkThread:
    """Runs a Netlink instance's methods on one dedicated thread from asyncio code."""

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="netlink")
        self._nl: Netlink | None = None

    def _get(self) -> Netlink:
        if self._nl is None:
            self._nl = Netlink()
        return self._nl

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(self._get(), *args))

    def close(self) -> None:
        def _close() -> None:
            if self._nl is not None:
                self._nl.close()

        self._pool.submit(_close).result()
        self._pool.shutdown(wait=True)


def describe_ops(ops: Sequence[Op]) -> list[str]:
    return [f"{o.action} {describe(o.entry)}" for o in ops]
