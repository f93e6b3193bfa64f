"""The kernel side: links, addresses, routes, neighbours and FDB entries, via pyroute2.

All pyroute2 objects stay in this module; callers get core.model values. The API is
synchronous on purpose: pyroute2 0.9's sync ``IPRoute`` runs its own event loop and cannot
be used inside the daemon's, so the daemon runs every call on one dedicated thread
(``NetlinkThread``), which also serialises netlink access.

Kernel quirks handled here:
* Per-peer routes, neighbours and FDB entries go through ``nlbulk`` (pipelined raw
  rtnetlink): pyroute2's per-request cost makes 15 000 objects take about 5 s.
* The VXLAN MAC is chosen before the link is created, so udev's MACAddressPolicy cannot
  rewrite it after the fact (flannel PR #1485).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, ip_address
from typing import Any, TypeVar

from pyflannel.adapters.lazy_pyroute2 import import_iproute
from pyflannel.adapters.nlbulk import BulkNetlink, Owned
from pyflannel.core.errors import FlannelError
from pyflannel.core.model import LiveVxlanLink, PeerState, VxlanLink
from pyflannel.core.plan import Op

IPRoute, NetlinkError = import_iproute()

log = logging.getLogger(__name__)

RT_TABLE_MAIN = 254

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
        self._bulk: BulkNetlink | None = None

    def close(self) -> None:
        self.ipr.close()
        if self._bulk is not None:
            self._bulk.close()

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
            # An IPv6 underlay (flannel-v6.<VNI>) reports its local address as IFLA_VXLAN_LOCAL6.
            local = (data.get("IFLA_VXLAN_LOCAL") or data.get("IFLA_VXLAN_LOCAL6")) if data else None
            addrs = tuple(
                f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}"
                for a in self.ipr.addr("dump", family=socket.AF_INET, index=link["index"])
            )
            return LiveVxlanLink(
                name=name,
                index=link["index"],
                kind=kind or "",
                vni=data.get("IFLA_VXLAN_ID") if data else None,
                local=ip_address(local) if local else None,
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
            "vxlan_local" if want.local.version == 4 else "vxlan_local6": str(want.local),
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
            raise DataplaneError(f"create {want.name} (vxlan id {want.vni}, local {want.local}): "
                                 f"{os.strerror(e.code)}") from None
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

    @property
    def bulk(self) -> BulkNetlink:
        if self._bulk is None:
            self._bulk = BulkNetlink()
        return self._bulk

    def observe(self, dev_index: int, dev: str, uplink_index: int, uplink: str, network: IPv4Network) -> PeerState:
        """The kernel entries pyflannel owns.

        Owned: every main-table route through the VXLAN device; routes through the uplink
        with a gateway and a destination inside the Network (DirectRouting); permanent
        neighbours and ``self`` FDB entries with a dst on the VXLAN device. Read through the
        bulk socket: pyroute2 needs about 1 s for this at 5000 peers, the bulk parser 65 ms.
        """
        return PeerState.of(self.bulk.observe(dev_index, dev, uplink_index, uplink, network))

    def observe_device(self, index: int, name: str) -> PeerState:
        """The entries pyflannel owns on one device (e.g. ``flannel-v6.<VNI>``), without the uplink part."""
        return PeerState.of(self.bulk.observe_owned(Owned({index: name})))

    def set_mac(self, index: int, mac: str) -> None:
        self.ipr.link("set", index=index, address=mac)

    def apply(self, ops: Sequence[Op], indexes: dict[str, int]) -> list[tuple[Op, str]]:
        """Apply ops in order, pipelined; return the failures as (op, reason). Never raises for one op."""
        return self.bulk.apply(ops, indexes)


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

