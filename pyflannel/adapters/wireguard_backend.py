"""wireguard as a ``ports.Backend``: devices, their addresses and Network routes, peers and key rotation.

What flannel does (flannel-spec.md §5) and this class repeats: at start an existing ``flannel-wg`` /
``flannel-wg-v6`` is deleted and created again with MTU (MTU or uplink MTU) − 80, the private key and the
ListenPort; after the lease, ``<lease IP>/32`` (v6 ``/128``) goes on the device, other addresses inside the
Network come off, the link goes up and ``<Network> dev flannel-wg scope link`` is put in the main table. On
exit the devices are deleted.

Peers are not rtnetlink objects: they are ``WgPeer`` entries applied and observed through the driver
(:meth:`apply_peers`, :meth:`observe_peers`), so :meth:`scope` names no device for the rtnetlink dump (the
Network route would otherwise look like a stray entry).

Key rotation: :meth:`check_key` (also run by :meth:`check_devices`) re-reads the key file; when its content
changed, the new private key goes onto the devices and ``on_key_change`` is called so the daemon publishes
the new PublicKey (SubnetManager.republish). Peers then see a new lease and replace our old key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv6Interface, ip_interface

from pyflannel.adapters import wireguard as wg
from pyflannel.adapters.lazy_pyroute2 import import_iproute
from pyflannel.core.backends import wireguard as wgcore
from pyflannel.core.config import NetworkConfig
from pyflannel.core.errors import FlannelError
from pyflannel.core.lease import Lease, LeaseAttrs
from pyflannel.core.model import IPNetwork, WgPeer
from pyflannel.core.plan import Op
from pyflannel.ports import PeerEntries, Scope, Uplink

IPRoute, NetlinkError = import_iproute()

log = logging.getLogger(__name__)

RT_SCOPE_LINK = 253
RTPROT_BOOT = 3
AF_INET, AF_INET6 = 2, 10


class WireguardBackend:
    """flannel's ``wireguard`` backend (``backend_type`` "wireguard"), kernel or wireguard-go."""

    backend_type = wgcore.BACKEND_TYPE

    def __init__(
        self,
        config: NetworkConfig,
        *,
        key_file: str | None = None,
        driver: str | wg.KernelDriver | wg.UserspaceDriver = "auto",
        wireguard_go: str = "wireguard-go",
        socket_dir: str = wg.SOCKET_DIR,
        foreground: bool = False,
        on_key_change: Callable[[], None] | None = None,
        host: object = None,
        stored_backend_data: str | None = None,
    ) -> None:
        # ``host``/``stored_backend_data``: the catalog's factory arguments. The key lives in the key file,
        # not in the stored BackendData, and netlink calls here run on worker threads of their own.
        self.config = config
        # Raises ConfigError (one line, naming the field) on bad options or Mode/EnableIPv* combinations.
        self.opts = wgcore.parse_options(config.backend, ipv4=config.enable_ipv4, ipv6=config.enable_ipv6)
        self.specs = wgcore.devices(self.opts)
        self.key_file = key_file if key_file is not None else wg.key_file_path()
        self._driver_arg = driver
        self._wg_go = wireguard_go
        self._socket_dir = socket_dir
        self._foreground = foreground
        self.on_key_change = on_key_change
        self.driver: wg.KernelDriver | wg.UserspaceDriver | None = None
        self.private_key = ""
        self.public_key = ""
        self.mtu = 0
        self._uplink: Uplink | None = None
        self._own: Lease | None = None
        self._indexes: dict[str, int] = {}

    # --- port -----------------------------------------------------------------------------------

    async def setup(self, uplink: Uplink) -> None:
        self._uplink = uplink
        self.mtu = wgcore.mtu_for(uplink.mtu, self.opts)
        await asyncio.to_thread(self._setup_sync)

    def _setup_sync(self) -> None:
        if self.driver is None:
            d = self._driver_arg
            self.driver = (
                wg.open_driver(d, wireguard_go=self._wg_go, socket_dir=self._socket_dir, foreground=self._foreground)
                if isinstance(d, str)
                else d
            )
        self.private_key, created = wg.load_or_create_key(self.key_file)
        self.public_key = wgcore.public_key(self.private_key)
        log.info(
            "wireguard: PublicKey %s (%s key file %s), devices %s via %s",
            self.public_key,
            "new" if created else "existing",
            self.key_file,
            ", ".join(s.name for s in self.specs),
            self.driver.kind,
        )
        for spec in self.specs:
            self._create(spec)

    def _create(self, spec: wgcore.DeviceSpec) -> None:
        assert self.driver is not None
        if wg.link_index(spec.name) is not None:
            log.warning("wireguard: %s already exists; recreating device", spec.name)
            self.driver.delete(spec.name)
        try:
            self.driver.create(spec.name)
        except NetlinkError as e:
            raise wg.WireguardError(f"could not create wireguard interface {spec.name}: {e}") from None
        self.driver.configure(spec.name, self.private_key, spec.listen_port)
        with IPRoute() as ipr:
            (idx,) = ipr.link_lookup(ifname=spec.name)
            ipr.link("set", index=idx, mtu=self.mtu)
        self._indexes[spec.name] = idx

    def lease_attrs(self, uplink: Uplink) -> LeaseAttrs:
        v4, v6 = wgcore.lease_data(self.opts, self.public_key)
        return LeaseAttrs(
            # IPv6-only (EnableIPv4=false): PublicIP 0.0.0.0, as Go writes it when there is no IPv4 address.
            public_ip=uplink.public_ip if uplink.public_ip is not None and self.opts.ipv4 else IPv4Address(0),
            public_ipv6=uplink.public_ipv6 if self.opts.ipv6 else None,
            backend_type=wgcore.BACKEND_TYPE,
            backend_data=v4,
            backend_v6_data=v6,
        )

    async def on_lease(self, lease: Lease) -> None:
        self._own = lease
        await asyncio.to_thread(self._configure_sync, lease)

    def _want(self, lease: Lease) -> list[tuple[str, IPv4Interface | IPv6Interface, IPNetwork]]:
        """(device, address, Network) for every family the lease carries."""
        out: list[tuple[str, IPv4Interface | IPv6Interface, IPNetwork]] = []
        for spec in self.specs:
            if spec.v4 and self.config.network is not None:
                if lease.subnet is None:
                    raise FlannelError("failed to configure wg interface: IPv4 is enabled but the lease has no IPv4")
                out.append((spec.name, IPv4Interface((lease.subnet.network_address, 32)), self.config.network))
            if spec.v6 and self.config.ipv6_network is not None:
                if lease.subnet6 is None:
                    raise FlannelError("failed to configure wg interface: IPv6 is enabled but the lease has no IPv6")
                out.append((spec.name, IPv6Interface((lease.subnet6.network_address, 128)), self.config.ipv6_network))
        return out

    def _configure_sync(self, lease: Lease) -> list[str]:
        changed: list[str] = []
        with IPRoute() as ipr:
            for dev, addr, net in self._want(lease):
                found = ipr.link_lookup(ifname=dev)
                if not found:
                    raise wg.WireguardError(f"wireguard device {dev} is missing")
                idx = found[0]
                fam = AF_INET if addr.version == 4 else AF_INET6
                have = []
                for a in ipr.addr("dump", index=idx, family=fam):
                    ip = a.get("IFA_ADDRESS") or a.get("IFA_LOCAL")
                    if ip:
                        have.append(ip_interface(f"{ip}/{a['prefixlen']}"))
                for h in have:
                    if h != addr and h.ip in net:
                        ipr.addr("del", index=idx, address=str(h.ip), prefixlen=h.network.prefixlen)
                        changed.append(f"removed {h} from {dev}")
                if addr not in have:
                    ipr.addr("add", index=idx, address=str(addr.ip), prefixlen=addr.network.prefixlen)
                    changed.append(f"added {addr} to {dev}")
                ipr.link("set", index=idx, state="up")
                routes = ipr.route("dump", table=254, family=fam, oif=idx)
                present = any(
                    r.get("dst") == str(net.network_address) and r["dst_len"] == net.prefixlen for r in routes
                )
                if not present:
                    # proto boot, as Go's netlink (NewRtMsg) writes it; pyroute2's default would be static.
                    ipr.route("replace", dst=str(net), oif=idx, scope=RT_SCOPE_LINK, table=254, proto=RTPROT_BOOT)
                    changed.append(f"route {net} dev {dev} scope link")
        return changed

    def peer_entries(self, lease: Lease) -> PeerEntries:
        up = self._uplink
        r = wgcore.peer_entries(
            lease,
            self.opts,
            own_key=self.public_key,
            own_public_ip=up.public_ip if up else None,
            own_public_ipv6=up.public_ipv6 if up else None,
        )
        return PeerEntries(entries=r.peers, rejected=r.rejected)

    def scope(self) -> Scope:
        return Scope()

    def indexes(self) -> dict[str, int]:
        return dict(self._indexes)

    async def check_devices(self, lease: Lease) -> list[str]:
        return await asyncio.to_thread(self._check_sync, lease)

    def _check_sync(self, lease: Lease) -> list[str]:
        changed: list[str] = []
        for spec in self.specs:
            idx = wg.link_index(spec.name)
            if idx is None:
                log.warning("wireguard: %s was deleted; creating it again", spec.name)
                self._create(spec)
                changed.append(f"re-created {spec.name}")
            else:
                self._indexes[spec.name] = idx
        if self._check_key_sync():
            changed.append(f"new PublicKey {self.public_key}")
        changed += self._configure_sync(lease)
        return changed

    async def close(self) -> None:
        await asyncio.to_thread(self._close_sync)

    def _close_sync(self) -> None:
        if self.driver is None:
            return
        for spec in self.specs:
            try:
                self.driver.delete(spec.name)
                log.info("Removed wireguard device %s", spec.name)
            except (FlannelError, NetlinkError, OSError) as e:
                log.error("Error while removing device %s: %s", spec.name, e)
        self.driver.close()

    # --- beyond the port: peers, key rotation, status -------------------------------------------

    def devices(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    async def observe_peers(self) -> list[WgPeer]:
        """Every peer on our devices, as WgPeer entries (the "kernel" side of the diff)."""
        assert self.driver is not None
        return await asyncio.to_thread(wg.observe, self.driver, self.devices())

    async def apply_peers(self, ops: Sequence[Op]) -> list[tuple[Op, str]]:
        """Apply WgPeer ops; returns (op, reason) for every op refused."""
        assert self.driver is not None
        return await asyncio.to_thread(wg.apply, self.driver, ops)

    async def check_key(self) -> bool:
        """Re-read the key file; True (and ``on_key_change`` called) if the key changed."""
        return await asyncio.to_thread(self._check_key_sync)

    def _check_key_sync(self) -> bool:
        try:
            key = wg.read_key_file(self.key_file)
        except wg.WireguardError as e:
            log.error("wireguard: keeping the current key: %s", e)
            return False
        if key is None or key == self.private_key:
            return False
        assert self.driver is not None
        for spec in self.specs:
            self.driver.set_private_key(spec.name, key)
        old = self.public_key
        self.private_key = key
        self.public_key = wgcore.public_key(key)
        log.info("wireguard: key file %s changed: PublicKey %s -> %s", self.key_file, old, self.public_key)
        if self.on_key_change is not None:
            self.on_key_change()
        return True

    async def status(self) -> list[wg.DeviceStatus]:
        """Per device: listen port and per-peer endpoint, AllowedIPs, last handshake (flannelctl status)."""
        assert self.driver is not None
        drv = self.driver
        return await asyncio.to_thread(lambda: [drv.status(n) for n in self.devices()])
