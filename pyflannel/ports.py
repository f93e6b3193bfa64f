"""The four parts of flanneld that differ by mode, as ``typing.Protocol`` interfaces.

The daemon (``pyflannel.daemon``) is written against these and nothing else: which subnet
manager (etcd, Kubernetes), backend (vxlan, host-gw, wireguard), firewall (iptables,
nftables) and data plane (rtnetlink, or an in-memory fake in tests) it drives is decided by
name in ``pyflannel.adapters.catalog``, as flannel's ``backend.Register`` does for backends.

Only signatures and the small value types that cross a port live here; behaviour is in the
adapters and in ``pyflannel.core``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Protocol, TypeVar, runtime_checkable

from pyflannel.core.config import NetworkConfig
from pyflannel.core.lease import Lease, LeaseAttrs
from pyflannel.core.model import Entry, FirewallSpec
from pyflannel.core.plan import Op

T = TypeVar("T")
__all__ = ["FirewallSpec"]  # a core value type, re-exported: it crosses the Firewall port

# --- SubnetManager ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaseAdded:
    """A peer lease appeared or changed (flannel's EventAdded). ``key`` is its subnet key."""

    key: str
    lease: Lease


@dataclass(frozen=True, slots=True)
class LeaseRemoved:
    """A peer lease is gone (flannel's EventRemoved)."""

    key: str


@dataclass(frozen=True, slots=True)
class LeaseResync:
    """The whole set of leases, replacing whatever the consumer knew (after a relist or compaction)."""

    leases: tuple[Lease, ...]


@dataclass(frozen=True, slots=True)
class BadLeaseSeen:
    """A key that holds no usable lease; reported once per key and reason by the consumer."""

    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class ConfigChanged:
    """The network config changed at its source (``text`` None: it was deleted)."""

    text: str | None


LeaseEvent = LeaseAdded | LeaseRemoved | LeaseResync | BadLeaseSeen | ConfigChanged


@dataclass(frozen=True, slots=True)
class PreviousSubnets:
    """What subnet.env said at start-up: the lease to prefer when acquiring again."""

    subnet: IPv4Network | None = None
    subnet6: IPv6Network | None = None


class SubnetManager(Protocol):
    """Where the network config and the leases live (flannel's ``subnet.Manager``, narrowed)."""

    name: str  # "etcd" | "kube"

    async def get_network_config(self) -> NetworkConfig:
        """The network config; raises ConfigError (bad or missing) or a transport error (retried by the caller)."""
        ...

    async def acquire_lease(self, attrs: LeaseAttrs, previous: PreviousSubnets) -> Lease:
        """Our own lease, published with ``attrs``. Raises FlannelError when it cannot (retried by the caller)."""
        ...

    async def keep_lease(self, attrs: Callable[[], LeaseAttrs], on_change: Callable[[Lease], None]) -> None:
        """Keep our lease for as long as the daemon runs: renew it, re-acquire it if lost, re-publish
        ``attrs()`` when asked by :meth:`republish`. Calls ``on_change`` with every new lease. Runs until
        cancelled."""
        ...

    def republish(self) -> None:
        """Our attrs changed (e.g. a new WireGuard key or VtepMAC): publish them soon."""
        ...

    def lease_events(self) -> AsyncIterator[list[LeaseEvent]]:
        """Batches of peer events. The first batch starts with a LeaseResync; another LeaseResync follows
        whenever the source had to be listed again. Our own lease is included (the consumer filters it).
        Reconnects by itself; runs until cancelled."""
        ...

    @property
    def in_sync(self) -> bool:
        """Whether the event stream is live (for /readyz)."""
        ...

    async def query(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn`` with the host's synchronous netlink facts object (links, default route, route get)."""
        ...

    async def close(self) -> None: ...


# --- Backend -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Uplink:
    """The interface flannel talks to peers through, and the addresses it publishes."""

    name: str
    index: int
    mtu: int
    iface_addr: IPv4Address | None
    public_ip: IPv4Address | None
    iface_addr6: IPv6Address | None = None
    public_ipv6: IPv6Address | None = None
    networks: tuple[IPv4Network | IPv6Network, ...] = ()  # prefixes on the uplink (never routed to a peer)


@dataclass(frozen=True, slots=True)
class Scope:
    """The kernel objects a backend owns: what a full observe dumps and what notifications are watched.

    ``devices``: every route, neighbour and FDB entry on these devices. ``uplink_routes``: routes through
    the uplink whose destination lies inside one of these networks (host-gw, DirectRouting).
    """

    devices: tuple[str, ...] = ()
    uplink: str = ""
    uplink_routes: tuple[IPv4Network | IPv6Network, ...] = ()


@dataclass(frozen=True, slots=True)
class PeerEntries:
    """What one peer lease calls for: entries, or the reason it is refused."""

    entries: tuple[Entry, ...] = ()
    rejected: str = ""


class Backend(Protocol):
    """One of flannel's backends (``Type`` in the Backend object)."""

    backend_type: str  # flannel's Type, also the lease BackendType ("vxlan", "host-gw", "wireguard")
    mtu: int  # FLANNEL_MTU

    async def setup(self, uplink: Uplink) -> None:
        """Create or adopt the devices (before the lease: the BackendData may depend on them)."""
        ...

    def lease_attrs(self, uplink: Uplink) -> LeaseAttrs:
        """What our lease publishes: PublicIP(v6), BackendType, BackendData(V6)."""
        ...

    async def on_lease(self, lease: Lease) -> None:
        """Our lease is known (or changed): addresses on the devices, link up."""
        ...

    def peer_entries(self, lease: Lease) -> PeerEntries:
        """The desired kernel entries for one peer lease (already checked for overlaps by the caller)."""
        ...

    def scope(self) -> Scope: ...

    def indexes(self) -> dict[str, int]:
        """Device name -> ifindex for every device the entries name."""
        ...

    async def check_devices(self, lease: Lease) -> list[str]:
        """Repair the devices (re-create a deleted one, fix a changed MAC); returns what was changed."""
        ...

    async def close(self) -> None:
        """Daemon exit: leave the data plane in place, except what flannel itself removes (wireguard)."""
        ...


# --- Firewall ----------------------------------------------------------------------------------


class Firewall(Protocol):
    """Masquerade and forward rules in chains or tables flannel owns (iptables, nftables)."""

    name: str  # "iptables" | "nftables"

    def available(self) -> str:
        """Empty when this mode can work on this host; otherwise why not (for the log)."""
        ...

    def ensure(self, spec: FirewallSpec) -> bool:
        """Make the owned rules exactly ``spec``, atomically per table. True if anything was written."""
        ...

    def missing(self, spec: FirewallSpec) -> list[str]:
        """Cheap check: which owned rules or chains are not as ``spec`` says (empty: all present)."""
        ...

    def cleanup(self) -> None:
        """Remove everything this mode owns (switching to the other mode)."""
        ...


# --- Dataplane ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KernelChange:
    """One notification about an owned object: it now exists as ``entry`` (``gone`` False) or was deleted."""

    entry: Entry
    gone: bool


@dataclass(frozen=True, slots=True)
class Overflow:
    """Notifications were lost (ENOBUFS on the monitor socket): the mirror must be rebuilt by a full observe."""

    reason: str = "netlink notification overflow"


@dataclass(slots=True)
class ApplyResult:
    """(op, reason) for every op the kernel refused; the rest were applied."""

    failed: list[tuple[Op, str]] = field(default_factory=list)


@runtime_checkable
class Dataplane(Protocol):
    """Routes, neighbours and FDB entries in the owned scope."""

    async def observe(self, scope: Scope, indexes: dict[str, int]) -> list[Entry]:
        """A full dump of every owned object."""
        ...

    async def apply(self, ops: Sequence[Op], indexes: dict[str, int]) -> ApplyResult:
        """Apply in order; never raises for one op."""
        ...

    def changes(
        self, scope: Scope, indexes: Callable[[], dict[str, int]]
    ) -> AsyncIterator[list[KernelChange | Overflow]]:
        """Notifications about owned objects, own changes included (the consumer recognises its echoes)."""
        ...

    async def query(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn`` with the host's synchronous netlink facts object (links, default route, route get)."""
        ...

    async def close(self) -> None: ...
