"""The vxlan Backend: the ``flannel.<VNI>`` device and, per peer, a neighbour, an FDB entry and a route.

The per-peer entries are built by ``pyflannel.core.backends.vxlan`` (pure); this adapter owns
the device. Device rules, as flanneld does them: the VtepMAC is chosen before the link is
created (so udev cannot rewrite it), an existing compatible device is adopted with its MAC
(so a restart keeps it), an incompatible one is re-created, and the address is
``<subnet>.0/32``. The ``local`` address is the interface address (flanneld v0.20.2); Go
flanneld v0.28 uses the PublicIP, which peers never see, so both interoperate.

A device whose MAC was changed by hand (or that was re-created by hand with another MAC)
would black-hole the node: peers send to the published VtepMAC. ``check_devices`` sets the
published MAC back on the device instead of publishing the new one: the lease stays as every
peer already has it, nothing has to propagate, and the fix is one netlink call.
"""

from __future__ import annotations

import logging
from ipaddress import IPv4Interface, IPv4Network
from typing import Any

from pyflannel.adapters.netlink import Netlink, NetlinkThread, random_vtep_mac
from pyflannel.core.backends import vxlan
from pyflannel.core.errors import ConfigError
from pyflannel.core.lease import Lease, LeaseAttrs, VxlanData
from pyflannel.core.model import VxlanLink, link_incompatibilities
from pyflannel.ports import PeerEntries, Scope, Uplink

log = logging.getLogger(__name__)


class VxlanBackend:
    backend_type = vxlan.BACKEND_TYPE

    def __init__(self, nl: NetlinkThread, backend: dict[str, Any], network: IPv4Network,
                 stored_mac: str | None = None) -> None:
        try:
            self.opts = vxlan.parse_options(backend)
        except ConfigError as e:
            raise ConfigError(f"Error registering network: {e}") from None
        self.nl = nl
        self.network = network
        self.stored_mac = stored_mac  # kube mode: the VtepMAC from our own previous backend-data
        self.device = self.opts.device
        self.mac = ""
        self.mtu = 0
        self.link: VxlanLink | None = None
        self.uplink: Uplink | None = None
        self.dev_index = 0
        self.onlink: list[IPv4Network] = []

    async def setup(self, uplink: Uplink) -> None:
        if uplink.iface_addr is None:
            raise ConfigError(f"vxlan needs an IPv4 address on {uplink.name}")
        self.uplink = uplink
        o = self.opts
        self.mtu = vxlan.mtu_for(uplink.mtu, o)
        self.link = VxlanLink(o.device, o.vni, uplink.iface_addr, uplink.index, o.port, o.gbp, o.learning,
                              (o.mtu - 50) if o.mtu else None)
        await self._ensure_device(self.stored_mac)
        if o.direct_routing:
            self.onlink = await self.nl.run(Netlink.connected_networks, uplink.index)

    async def _ensure_device(self, mac: str | None) -> None:
        assert self.link is not None
        link = self.link
        live = await self.nl.run(Netlink.read_vxlan, link.name)
        if live is not None:
            why = link_incompatibilities(link, live)
            if not why:
                if link.mtu and live.mtu != link.mtu:
                    await self.nl.run(Netlink.set_mtu, live.index, link.mtu)
                self.dev_index, self.mac = live.index, self.mac or live.mac
                return
            log.warning("%s already exists with incompatible configuration: %s; recreating device",
                        link.name, "; ".join(why))
            await self.nl.run(Netlink.delete_link, link.name)
        new_mac = self.mac or mac or random_vtep_mac()
        await self.nl.run(Netlink.create_vxlan, link, new_mac)
        live = await self.nl.run(Netlink.read_vxlan, link.name)
        assert live is not None
        log.info("Created VXLAN device %s (VNI %d, VtepMAC %s, local %s)", link.name, link.vni, live.mac, link.local)
        self.dev_index, self.mac = live.index, live.mac

    def lease_attrs(self, uplink: Uplink) -> LeaseAttrs:
        assert uplink.public_ip is not None
        return LeaseAttrs(public_ip=uplink.public_ip, backend_type=self.backend_type,
                          backend_data=VxlanData(self.opts.vni, self.mac).to_json())

    async def on_lease(self, lease: Lease) -> None:
        changes = await self.nl.run(Netlink.ensure_address, self.dev_index,
                                    IPv4Interface(f"{lease.subnet.network_address}/32"))
        for c in changes:
            log.info("%s: %s", self.device, c)

    def peer_entries(self, lease: Lease) -> PeerEntries:
        up = self.uplink.name if self.uplink else ""
        entries, why = vxlan.peer_entries(lease, self.device, self.opts.direct_routing, up, self.onlink)
        return PeerEntries(entries, why)

    def scope(self) -> Scope:
        up = self.uplink.name if self.uplink else ""
        return Scope((self.device,), up, (self.network,) if self.opts.direct_routing else ())

    def indexes(self) -> dict[str, int]:
        out = {self.device: self.dev_index}
        if self.uplink is not None:
            out[self.uplink.name] = self.uplink.index
        return out

    async def check_devices(self, lease: Lease) -> list[str]:
        """Re-create a deleted device, put the published VtepMAC back, re-check address and link state."""
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
        changes = await self.nl.run(Netlink.ensure_address, self.dev_index,
                                    IPv4Interface(f"{lease.subnet.network_address}/32"))
        for c in changes:
            log.info("%s: %s", self.device, c)
        changed.extend(changes)
        if self.opts.direct_routing and self.uplink is not None:
            self.onlink = await self.nl.run(Netlink.connected_networks, self.uplink.index)
        return changed

    async def close(self) -> None:
        """The device stays: a restart is hitless."""


def make(host: Any, config: Any, stored_backend_data: str | None = None) -> VxlanBackend:
    """Catalog factory. ``stored_backend_data``: our previous BackendData (kube mode), to keep its VtepMAC."""
    mac = None
    if stored_backend_data:
        try:
            from pyflannel.core.lease import _vxlan_data

            mac = _vxlan_data(stored_backend_data).vtep_mac
        except Exception:  # a bad stored annotation only means a new MAC
            log.warning("Ignoring stored backend-data %r: not vxlan data", stored_backend_data[:120])
    assert config.network is not None
    return VxlanBackend(host.nl, config.backend, config.network, mac)
