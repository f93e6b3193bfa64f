"""The vxlan Backend: the ``flannel.<VNI>`` device and, per peer, a neighbour, an FDB entry and a route.

The per-peer entries are built by ``pyflannel.core.backends.vxlan`` (pure); this adapter owns
the device. Device rules, as flanneld does them: the VtepMAC is chosen before the link is
created (so udev cannot rewrite it), an existing compatible device is adopted with its MAC
(so a restart keeps it), an incompatible one is re-created, and the address is
``<subnet>.0/32``. The ``local`` address is the interface address (flanneld v0.20.2); Go
flanneld v0.28 uses the PublicIP, which peers never see, so both interoperate.

Dual stack (EnableIPv6) adds ``flannel-v6.<VNI>`` with the same rules: its own random VtepMAC
(published as BackendV6Data), ``local`` the uplink's IPv6 address (flannel v0.28.9 uses the
PublicIPv6; identical unless -public-ipv6 names another address, which the kernel could not send
from), the address ``<v6 subnet IP>/128`` next to the kernel's link-local one, and per peer the v6
neighbour, FDB entry and route (``core.backends.vxlan.peer_entries``). Its MTU is left to the kernel
(uplink - 70) unless the Backend sets MTU.

IPv6-only (EnableIPv4=false, etcd mode; issue 13): only ``flannel-v6.<VNI>``, no ``flannel.<VNI>``; the
lease publishes PublicIP 0.0.0.0 and BackendV6Data only, and FLANNEL_MTU is the v6 device's MTU (uplink
or Backend MTU - 70), since every pod packet goes through that device.

A device whose MAC was changed by hand (or that was re-created by hand with another MAC)
would black-hole the node: peers send to the published VtepMAC. ``check_devices`` sets the
published MAC back on the device instead of publishing the new one: the lease stays as every
peer already has it, nothing has to propagate, and the fix is one netlink call.
"""

from __future__ import annotations

import logging
import socket
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from typing import Any

from pyflannel.adapters.netlink import Netlink, NetlinkThread, random_vtep_mac
from pyflannel.core.backends import vxlan
from pyflannel.core.errors import ConfigError
from pyflannel.core.lease import Lease, LeaseAttrs, VxlanData
from pyflannel.core.model import VxlanLink, link_incompatibilities
from pyflannel.ports import PeerEntries, Scope, Uplink

log = logging.getLogger(__name__)

IFA_F_NODAD = 0x02


# --- the IPv6 device: netlink calls the shared Netlink class has only in their IPv4 form ---------------------
def ensure_address6(n: Netlink, index: int, address: IPv6Interface) -> list[str]:
    """Make ``address`` the device's only global IPv6 address (link-local ones stay) and bring it up.

    Added with NODAD: a tentative address cannot be the source of host-to-pod traffic for the first second.
    """
    changes = []
    have = [
        IPv6Interface(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}")
        for a in n.ipr.addr("dump", family=socket.AF_INET6, index=index)
    ]
    for a in have:
        if a != address and not a.ip.is_link_local:
            n.ipr.addr("del", index=index, address=str(a.ip), prefixlen=a.network.prefixlen)
            changes.append(f"removed address {a}")
    if address not in have:
        n.ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen,
                   flags=IFA_F_NODAD)
        changes.append(f"added address {address}")
    link = n.ipr.link("get", index=index)[0]
    if not link["flags"] & 1:
        n.ipr.link("set", index=index, state="up")
        changes.append("set link up")
    return changes


class VxlanBackend:
    backend_type = vxlan.BACKEND_TYPE

    def __init__(self, nl: NetlinkThread, backend: dict[str, Any], network: IPv4Network | None,
                 stored_mac: str | None = None, network6: IPv6Network | None = None,
                 stored_mac6: str | None = None) -> None:
        try:
            self.opts = vxlan.parse_options(backend)
        except ConfigError as e:
            raise ConfigError(f"Error registering network: {e}") from None
        self.nl = nl
        self.network = network
        self.stored_mac = stored_mac  # kube mode: the VtepMAC from our own previous backend-data
        # The IPv4 device flannel.<VNI>; "" on an IPv6-only network. ``device`` names the main device.
        self.v4 = network is not None
        self.device4 = self.opts.device if self.v4 else ""
        self.device = self.opts.device if self.v4 else self.opts.device6
        self.mac = ""
        self.mtu = 0
        self.link: VxlanLink | None = None
        self.uplink: Uplink | None = None
        self.dev_index = 0
        self.onlink: list[IPv4Network | IPv6Network] = []
        # EnableIPv6: the flannel-v6.<VNI> device ("" when IPv6 is off).
        self.network6 = network6
        self.device6 = self.opts.device6 if network6 is not None else ""
        self.mac6 = ""
        self.stored_mac6 = stored_mac6  # kube mode: the VtepMAC from our own previous backend-v6-data
        self.link6: VxlanLink | None = None
        self.dev6_index = 0

    async def setup(self, uplink: Uplink) -> None:
        o = self.opts
        self.uplink = uplink
        if self.v4:
            if uplink.iface_addr is None:
                raise ConfigError(f"vxlan needs an IPv4 address on {uplink.name}")
            self.mtu = vxlan.mtu_for(uplink.mtu, o)
            self.link = VxlanLink(o.device, o.vni, uplink.iface_addr, uplink.index, o.port, o.gbp, o.learning,
                                  (o.mtu - 50) if o.mtu else None)
            await self._ensure_device(self.stored_mac)
        else:
            self.mtu = (o.mtu or uplink.mtu) - 70  # IPv6-only: the flannel-v6.<VNI> device's MTU
        if self.device6:
            if uplink.iface_addr6 is None:
                raise ConfigError(f"vxlan with EnableIPv6 needs an IPv6 address on {uplink.name}")
            self.link6 = VxlanLink(o.device6, o.vni, uplink.iface_addr6, uplink.index, o.port, o.gbp, o.learning,
                                   vxlan.mtu6_for(o))
            await self._ensure_device6()
        if o.direct_routing:
            self.onlink = await self._onlink()

    async def _onlink(self) -> list[IPv4Network | IPv6Network]:
        assert self.uplink is not None
        nets: list[IPv4Network | IPv6Network] = list(await self.nl.run(Netlink.connected_networks,
                                                                       self.uplink.index))
        nets.extend(n for n in self.uplink.networks if isinstance(n, IPv6Network))
        return nets

    async def _ensure_device6(self) -> None:
        assert self.link6 is not None
        self.dev6_index, self.mac6 = await self._ensure(self.link6, self.mac6, self.mac6 or self.stored_mac6 or "")

    async def _ensure_device(self, mac: str | None) -> None:
        assert self.link is not None
        self.dev_index, self.mac = await self._ensure(self.link, self.mac, self.mac or mac or "")

    async def _ensure(self, link: VxlanLink, published: str, new: str) -> tuple[int, str]:
        """Adopt a compatible device (our ``published`` VtepMAC if we have one, else the device's own), or
        (re-)create it with ``new`` (a random MAC if empty). Returns (ifindex, VtepMAC)."""
        live = await self.nl.run(Netlink.read_vxlan, link.name)
        if live is not None:
            why = link_incompatibilities(link, live)
            if not why:
                if link.mtu and live.mtu != link.mtu:
                    await self.nl.run(Netlink.set_mtu, live.index, link.mtu)
                return live.index, published or live.mac
            log.warning("%s already exists with incompatible configuration: %s; recreating device",
                        link.name, "; ".join(why))
            await self.nl.run(Netlink.delete_link, link.name)
        await self.nl.run(Netlink.create_vxlan, link, new or random_vtep_mac())
        live = await self.nl.run(Netlink.read_vxlan, link.name)
        assert live is not None
        log.info("Created VXLAN device %s (VNI %d, VtepMAC %s, local %s)", link.name, link.vni, live.mac, link.local)
        return live.index, live.mac

    def lease_attrs(self, uplink: Uplink) -> LeaseAttrs:
        v6 = bool(self.device6) and uplink.public_ipv6 is not None
        if not self.v4:  # IPv6-only: Go always writes PublicIP, 0.0.0.0 when there is none
            return LeaseAttrs(public_ip=IPv4Address(0), backend_type=self.backend_type,
                              public_ipv6=uplink.public_ipv6 if v6 else None,
                              backend_v6_data=VxlanData(self.opts.vni, self.mac6).to_json() if v6 else None)
        assert uplink.public_ip is not None
        return LeaseAttrs(public_ip=uplink.public_ip, backend_type=self.backend_type,
                          public_ipv6=uplink.public_ipv6 if v6 else None,
                          backend_data=VxlanData(self.opts.vni, self.mac).to_json(),
                          backend_v6_data=VxlanData(self.opts.vni, self.mac6).to_json() if v6 else None)

    async def _address4(self, lease: Lease) -> list[str]:
        if not self.v4:
            return []
        if lease.subnet is None:
            raise ConfigError(f"failed to configure interface {self.device4}: IPv4 is enabled but the lease has no "
                              "IPv4 subnet")
        return await self.nl.run(Netlink.ensure_address, self.dev_index,
                                 IPv4Interface(f"{lease.subnet.network_address}/32"))

    async def on_lease(self, lease: Lease) -> None:
        for c in await self._address4(lease):
            log.info("%s: %s", self.device4, c)
        for c in await self._address6(lease):
            log.info("%s: %s", self.device6, c)

    async def _address6(self, lease: Lease) -> list[str]:
        if not self.device6:
            return []
        if lease.subnet6 is None:
            raise ConfigError(f"failed to configure interface {self.device6}: IPv6 is enabled but the lease has no "
                              "IPv6 subnet")
        return await self.nl.run(ensure_address6, self.dev6_index,
                                 IPv6Interface(f"{lease.subnet6.network_address}/128"))

    def peer_entries(self, lease: Lease) -> PeerEntries:
        up = self.uplink.name if self.uplink else ""
        entries, why = vxlan.peer_entries(lease, self.device4, self.opts.direct_routing, up, self.onlink, self.device6)
        return PeerEntries(entries, why)

    def scope(self) -> Scope:
        up = self.uplink.name if self.uplink else ""
        devices = tuple(d for d in (self.device4, self.device6) if d)
        nets: tuple[IPv4Network | IPv6Network, ...] = ()
        if self.opts.direct_routing:
            nets = tuple(n for n in (self.network, self.network6) if n is not None)
        return Scope(devices, up, nets)

    def indexes(self) -> dict[str, int]:
        out = {self.device4: self.dev_index} if self.device4 else {}
        if self.device6:
            out[self.device6] = self.dev6_index
        if self.uplink is not None:
            out[self.uplink.name] = self.uplink.index
        return out

    async def check_devices(self, lease: Lease) -> list[str]:
        """Re-create a deleted device, put the published VtepMAC back, re-check address and link state."""
        changed: list[str] = []
        if self.v4:
            changed.extend(await self._check_device4(lease))
        if self.device6:
            changed.extend(await self._check_device6(lease))
        if self.opts.direct_routing and self.uplink is not None:
            self.onlink = await self._onlink()
        return changed

    async def _check_device4(self, lease: Lease) -> list[str]:
        assert self.link is not None
        changed: list[str] = []
        before = self.dev_index
        await self._ensure_device(self.mac)
        if self.dev_index != before:
            changed.append(f"re-created {self.device}")
        live = await self.nl.run(Netlink.read_vxlan, self.device)
        if live is not None and live.mac != self.mac:
            log.warning("%s has MAC %s but the lease publishes VtepMAC %s; setting it back", self.device,
                        live.mac, self.mac)
            await self.nl.run(Netlink.set_mac, live.index, self.mac)
            changed.append(f"set {self.device} MAC back to {self.mac}")
        changes = await self._address4(lease)
        for c in changes:
            log.info("%s: %s", self.device, c)
        changed.extend(changes)
        return changed

    async def _check_device6(self, lease: Lease) -> list[str]:
        """check_devices for flannel-v6.<VNI>: re-create, put BackendV6Data's MAC back, re-check the address."""
        changed: list[str] = []
        before = self.dev6_index
        await self._ensure_device6()
        if self.dev6_index != before:
            changed.append(f"re-created {self.device6}")
        live = await self.nl.run(Netlink.read_vxlan, self.device6)
        if live is not None and live.mac != self.mac6:
            log.warning("%s has MAC %s but the lease publishes VtepMAC %s; setting it back", self.device6,
                        live.mac, self.mac6)
            await self.nl.run(Netlink.set_mac, live.index, self.mac6)
            changed.append(f"set {self.device6} MAC back to {self.mac6}")
        changes = await self._address6(lease)
        for c in changes:
            log.info("%s: %s", self.device6, c)
        changed.extend(changes)
        return changed

    async def close(self) -> None:
        """The device stays: a restart is hitless."""


def _stored_mac(data: str | None, what: str) -> str | None:
    if not data:
        return None
    try:
        from pyflannel.core.lease import _vxlan_data

        return _vxlan_data(data).vtep_mac or None
    except Exception:  # a bad stored annotation only means a new MAC
        log.warning("Ignoring stored %s %r: not vxlan data", what, data[:120])
        return None


def make(host: Any, config: Any, stored_backend_data: str | None = None,
         stored_backend_v6_data: str | None = None) -> VxlanBackend:
    """Catalog factory. ``stored_backend_data`` / ``stored_backend_v6_data``: our previous BackendData and
    BackendV6Data (kube mode: the Node's backend-data and backend-v6-data), to keep both VtepMACs when the
    devices are gone (e.g. after a reboot), as flannel's GetStoredMacAddresses does."""
    network = config.network if getattr(config, "enable_ipv4", True) else None
    network6 = config.ipv6_network if getattr(config, "enable_ipv6", False) else None
    assert network is not None or network6 is not None
    mac = _stored_mac(stored_backend_data, "backend-data") if network is not None else None
    mac6 = _stored_mac(stored_backend_v6_data, "backend-v6-data") if network6 is not None else None
    return VxlanBackend(host.nl, config.backend, network, mac, network6, mac6)
