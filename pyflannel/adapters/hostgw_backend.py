"""host-gw as a ``ports.Backend``: no device, one route per peer through the uplink.

Everything host-gw decides is pure and lives in ``pyflannel.core.backends.hostgw``; this class
only holds the uplink it was set up with and answers the port's questions. The routes
themselves are applied and repaired by the daemon's reconciler like every other entry, which
is flannel's 10 s "Route recovered" re-check done incrementally: the scope below makes the
data plane observe every route through the uplink inside the Network(s), so a route deleted or
changed by hand is put back and one for a peer that left is removed.
"""

from __future__ import annotations

import logging
from ipaddress import IPv4Address

from pyflannel.core.backends import hostgw
from pyflannel.core.config import NetworkConfig
from pyflannel.core.errors import FlannelError
from pyflannel.core.lease import Lease, LeaseAttrs
from pyflannel.ports import PeerEntries, Scope, Uplink

log = logging.getLogger(__name__)


class HostGwBackend:
    """flannel's ``host-gw`` backend (``backend_type`` "host-gw")."""

    backend_type = hostgw.BACKEND_TYPE

    def __init__(self, config: NetworkConfig, *, host: object = None, stored_backend_data: str | None = None) -> None:
        # ``host`` and ``stored_backend_data`` are the catalog's factory arguments; host-gw needs neither
        # (no device, no BackendData).
        self.config = config
        self.opts = hostgw.HostGwOptions(ipv4=config.enable_ipv4, ipv6=config.enable_ipv6)
        self.mtu = 0
        self._uplink: Uplink | None = None
        self._own: Lease | None = None

    def _need_uplink(self) -> Uplink:
        if self._uplink is None:
            raise FlannelError("host-gw backend used before setup()")
        return self._uplink

    async def setup(self, uplink: Uplink) -> None:
        # Raises ConfigError with flannel's NAT message: the daemon must not start (flanneld exits 1).
        hostgw.check_public_ip(
            uplink.iface_addr,
            uplink.public_ip,
            uplink.iface_addr6,
            uplink.public_ipv6,
            ipv4=self.opts.ipv4,
            ipv6=self.opts.ipv6,
        )
        self._uplink = uplink
        self.mtu = hostgw.mtu_for(uplink.mtu)
        log.info("host-gw: routes to peers via their PublicIP on %s (MTU %d)", uplink.name, self.mtu)

    def lease_attrs(self, uplink: Uplink) -> LeaseAttrs:
        pub = uplink.public_ip if self.opts.ipv4 and uplink.public_ip is not None else IPv4Address(0)
        return LeaseAttrs(
            public_ip=pub,
            public_ipv6=uplink.public_ipv6 if self.opts.ipv6 else None,
            backend_type=hostgw.BACKEND_TYPE,
        )

    async def on_lease(self, lease: Lease) -> None:
        self._own = lease

    def peer_entries(self, lease: Lease) -> PeerEntries:
        up = self._need_uplink()
        r = hostgw.peer_routes(lease, up.name, self.opts, own=self._own, onlink=up.networks)
        return PeerEntries(entries=r.routes, rejected=r.rejected)

    def scope(self) -> Scope:
        up = self._need_uplink()
        nets = tuple(
            n
            for n in (
                self.config.network if self.opts.ipv4 else None,
                self.config.ipv6_network if self.opts.ipv6 else None,
            )
            if n is not None
        )
        return Scope(devices=(), uplink=up.name, uplink_routes=nets)

    def indexes(self) -> dict[str, int]:
        up = self._need_uplink()
        return {up.name: up.index}

    async def check_devices(self, lease: Lease) -> list[str]:
        return []  # no device of its own

    async def close(self) -> None:
        # flannel leaves host-gw routes in place on exit: a restart is hitless.
        return None
