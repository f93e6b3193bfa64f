"""Stateful in-memory fakes of pyflannel's own ports, so the daemon's logic runs without root.

They hold state like the real thing: the fake kernel keeps entries (duplicates under one
identity included), answers dumps from that state, echoes every change as a notification (our
own included, as rtnetlink does), and can be changed "by hand". The fake subnet manager keeps
leases and streams events the way the etcd one does (a LeaseResync first). No call is
asserted on; tests look at the state.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Network
from typing import Any, TypeVar

from pyflannel.core.backends import vxlan
from pyflannel.core.config import NetworkConfig, parse_config
from pyflannel.core.errors import FlannelError
from pyflannel.core.lease import Lease, LeaseAttrs, VxlanData
from pyflannel.core.model import Entry, Fdb, Neigh, Route
from pyflannel.core.plan import Op
from pyflannel.ports import (
    ApplyResult,
    ConfigChanged,
    FirewallSpec,
    KernelChange,
    LeaseAdded,
    LeaseEvent,
    LeaseRemoved,
    LeaseResync,
    Overflow,
    PeerEntries,
    PreviousSubnets,
    Scope,
    Uplink,
)

T = TypeVar("T")


# --- SubnetManager -----------------------------------------------------------------------------


class FakeSubnetManager:
    name = "fake"

    def __init__(self, config: str, own_subnet: str | None = "100.64.1.0/24", own_subnet6: str | None = None) -> None:
        self.config_text = config
        # own_subnet None: an IPv6-only network (EnableIPv4=false), the lease has only own_subnet6.
        self.own_subnet = IPv4Network(own_subnet) if own_subnet is not None else None
        self.own_subnet6 = IPv6Network(own_subnet6) if own_subnet6 is not None else None
        self.leases: dict[str, Lease] = {}
        self.own: Lease | None = None
        self.acquired = 0
        self._streams: list[asyncio.Queue[list[LeaseEvent]]] = []
        self._keep: asyncio.Event = asyncio.Event()
        self._on_change: Callable[[Lease], None] | None = None
        self.republished = 0
        self.closed = False

    async def get_network_config(self) -> NetworkConfig:
        return parse_config(self.config_text)

    async def acquire_lease(self, attrs: LeaseAttrs, previous: PreviousSubnets) -> Lease:
        self.acquired += 1
        lease = Lease(self.own_subnet, attrs, self.own_subnet6, expiration=None)
        self.own = lease
        self.leases[lease.key_name] = lease
        return lease

    async def keep_lease(self, attrs: Callable[[], LeaseAttrs], on_change: Callable[[Lease], None]) -> None:
        self._on_change = on_change
        await asyncio.Event().wait()  # until cancelled

    def republish(self) -> None:
        self.republished += 1

    def lose_lease(self, new_subnet: str) -> Lease:
        """Our lease was taken: the manager acquires another one and tells the daemon."""
        assert self.own is not None and self._on_change is not None
        self.leases.pop(self.own.key_name, None)
        self.own_subnet = IPv4Network(new_subnet)
        self.own = Lease(self.own_subnet, self.own.attrs)
        self.leases[self.own.key_name] = self.own
        self._on_change(self.own)
        return self.own

    def _send(self, events: list[LeaseEvent]) -> None:
        for q in self._streams:
            q.put_nowait(list(events))

    def put(self, *leases: Lease) -> None:
        for le in leases:
            self.leases[le.key_name] = le
        self._send([LeaseAdded(le.key_name, le) for le in leases])

    def delete(self, *keys: str) -> None:
        for k in keys:
            self.leases.pop(k, None)
        self._send([LeaseRemoved(k) for k in keys])

    def resync(self) -> None:
        self._send([LeaseResync(tuple(self.leases.values()))])

    def change_config(self, text: str) -> None:
        self.config_text = text
        self._send([ConfigChanged(text)])

    async def lease_events(self) -> AsyncIterator[list[LeaseEvent]]:
        q: asyncio.Queue[list[LeaseEvent]] = asyncio.Queue()
        self._streams.append(q)
        try:
            yield [LeaseResync(tuple(self.leases.values()))]
            while True:
                yield await q.get()
        finally:
            self._streams.remove(q)

    @property
    def in_sync(self) -> bool:
        return True

    async def close(self) -> None:
        self.closed = True


# --- Dataplane ---------------------------------------------------------------------------------


@dataclass
class FakeLink:
    index: int
    name: str
    mtu: int
    up: bool
    addrs: tuple[IPv4Interface, ...]


class FakeFacts:
    """What Dataplane.query hands its function: the host's links and routes, as Netlink would."""

    def __init__(self, kernel: FakeKernel) -> None:
        self.k = kernel

    def links(self) -> list[Any]:
        from pyflannel.adapters.netlink import LinkInfo

        return [LinkInfo(lk.index, lk.name, lk.mtu, lk.up, lk.addrs) for lk in self.k.links.values()]

    def default_route_oif(self) -> int | None:
        return self.k.links["eth0"].index

    def route_get(self, ip: IPv4Address) -> tuple[int | None, IPv4Address | None]:
        eth0 = self.k.links["eth0"]
        return eth0.index, eth0.addrs[0].ip


@dataclass
class FakeKernel:
    """The owned kernel state by identity, duplicates under one identity allowed (as the kernel may hold)."""

    by_ident: dict[object, list[Entry]] = field(default_factory=dict)
    links: dict[str, FakeLink] = field(default_factory=dict)
    fail: dict[object, str] = field(default_factory=dict)  # identity -> errno text for applies

    def __post_init__(self) -> None:
        if not self.links:
            self.links["eth0"] = FakeLink(2, "eth0", 1500, True, (IPv4Interface("198.18.0.11/24"),))

    @property
    def entries(self) -> list[Entry]:
        return [e for copies in self.by_ident.values() for e in copies]

    def add(self, e: Entry) -> None:
        self.by_ident.setdefault(e.ident, []).append(e)

    def replace(self, e: Entry) -> None:
        """As NLM_F_REPLACE: the first copy under the identity becomes ``e``."""
        copies = self.by_ident.setdefault(e.ident, [])
        if copies:
            copies[0] = e
        else:
            copies.append(e)

    def remove(self, e: Entry) -> bool:
        copies = self.by_ident.get(e.ident)
        if not copies or e not in copies:
            return False
        copies.remove(e)
        if not copies:
            del self.by_ident[e.ident]
        return True


class FakeDataplane:
    def __init__(self, kernel: FakeKernel | None = None) -> None:
        self.kernel = kernel or FakeKernel()
        self.observes = 0
        self.applied_ops = 0
        self.apply_calls = 0
        self.last_ops: list[Op] = []
        self._listeners: list[asyncio.Queue[list[KernelChange | Overflow]]] = []

    def _emit(self, batch: list[KernelChange | Overflow]) -> None:
        for q in self._listeners:
            q.put_nowait(list(batch))

    async def observe(self, scope: Scope, indexes: dict[str, int]) -> list[Entry]:
        self.observes += 1
        return [e for e in self.kernel.entries if _in_scope(e, scope)]

    async def apply(self, ops: Sequence[Op], indexes: dict[str, int]) -> ApplyResult:
        self.apply_calls += 1
        self.applied_ops += len(ops)
        self.last_ops = list(ops)
        failed: list[tuple[Op, str]] = []
        echoes: list[KernelChange | Overflow] = []
        for op in ops:
            e = op.entry
            if e.dev not in indexes:
                failed.append((op, "No such device"))
                continue
            why = self.kernel.fail.get(e.ident)
            if why:
                failed.append((op, why))
                continue
            if op.action == "replace":
                self.kernel.replace(e)
                echoes.append(KernelChange(e, False))
            elif self.kernel.remove(e):
                echoes.append(KernelChange(e, True))
        await asyncio.sleep(0)
        if echoes:
            self._emit(echoes)
        return ApplyResult(failed)

    async def changes(
        self, scope: Scope, indexes: Callable[[], dict[str, int]]
    ) -> AsyncIterator[list[KernelChange | Overflow]]:
        q: asyncio.Queue[list[KernelChange | Overflow]] = asyncio.Queue()
        self._listeners.append(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._listeners.remove(q)

    async def query(self, fn: Callable[[Any], T]) -> T:
        return fn(FakeFacts(self.kernel))

    async def close(self) -> None:
        pass

    # --- "by hand" -----------------------------------------------------------------------------

    def hand_delete(self, e: Entry) -> None:
        assert self.kernel.remove(e)
        self._emit([KernelChange(e, True)])

    def hand_add(self, e: Entry) -> None:
        self.kernel.add(e)
        self._emit([KernelChange(e, False)])

    def hand_replace(self, old: Entry, new: Entry) -> None:
        assert old.ident == new.ident
        self.kernel.replace(new)
        self._emit([KernelChange(new, False)])

    def overflow(self) -> None:
        self._emit([Overflow()])

    def quiet_delete(self, e: Entry) -> None:
        """A change no notification reports (only a full pass finds it)."""
        assert self.kernel.remove(e)


def _in_scope(e: Entry, scope: Scope) -> bool:
    if e.dev in scope.devices:
        return True
    return isinstance(e, Route) and e.dev == scope.uplink and any(
        e.dst.version == n.version and e.dst.subnet_of(n) for n in scope.uplink_routes  # type: ignore[arg-type]
    )


# --- Backend (vxlan's pure builder behind the port, no device) -----------------------------------


class FakeVxlanBackend:
    backend_type = "vxlan"

    def __init__(self, mac: str = "02:00:00:00:00:aa") -> None:
        self.mac = mac
        self.mtu = 1450
        self.device = "flannel.1"
        self.uplink: Uplink | None = None
        self.device_checks = 0
        self.on_lease_calls: list[Lease] = []
        self.closed = False

    async def setup(self, uplink: Uplink) -> None:
        self.uplink = uplink

    def lease_attrs(self, uplink: Uplink) -> LeaseAttrs:
        assert uplink.public_ip is not None
        return LeaseAttrs(uplink.public_ip, backend_type="vxlan", backend_data=VxlanData(1, self.mac).to_json())

    async def on_lease(self, lease: Lease) -> None:
        self.on_lease_calls.append(lease)

    def peer_entries(self, lease: Lease) -> PeerEntries:
        entries, why = vxlan.peer_entries(lease, self.device)
        return PeerEntries(entries, why)

    def scope(self) -> Scope:
        return Scope((self.device,), "eth0", ())

    def indexes(self) -> dict[str, int]:
        return {self.device: 3, "eth0": 2}

    async def check_devices(self, lease: Lease) -> list[str]:
        self.device_checks += 1
        return []

    async def close(self) -> None:
        self.closed = True


class FakeHost:
    def __init__(self, dataplane: FakeDataplane | None = None) -> None:
        self.dataplane = dataplane or FakeDataplane()


# --- Firewall ----------------------------------------------------------------------------------


class FakeFirewall:
    def __init__(self, name: str, problem: str = "") -> None:
        self.name = name
        self.problem = problem
        self.spec: FirewallSpec | None = None
        self.ensures = 0
        self.cleanups = 0
        self.resyncs = 0

    def available(self) -> str:
        return self.problem

    def ensure(self, spec: FirewallSpec) -> bool:
        if self.problem:
            raise FlannelError(f"{self.name}: {self.problem}")
        self.ensures += 1
        changed = self.spec != spec
        self.spec = spec
        return changed

    def missing(self, spec: FirewallSpec) -> list[str]:
        return [] if self.spec == spec else [f"{self.name} rules differ"]

    def cleanup(self) -> None:
        self.cleanups += 1
        self.spec = None

    def drift(self) -> None:
        self.spec = None


# --- lease helpers -----------------------------------------------------------------------------


def peer(n: int, mac: str | None = None, plen: int = 24) -> Lease:
    """Peer number n: 100.64.n.0/24 (or a /plen inside 100.64.0.0/10), PublicIP 198.18.x.y."""
    sn = IPv4Network((int(IPv4Address("100.64.0.0")) + n * (1 << (32 - plen)), plen))
    ip = IPv4Address(int(IPv4Address("198.18.1.0")) + n)
    mac = mac or "0a:" + ":".join(f"{(n >> s) & 0xFF:02x}" for s in (32, 24, 16, 8, 0))
    return Lease(sn, LeaseAttrs(ip, backend_type="vxlan", backend_data=VxlanData(1, mac).to_json()))


def entries_of(le: Lease, dev: str = "flannel.1") -> set[Entry]:
    entries, _ = vxlan.peer_entries(le, dev)
    return set(entries)


__all__ = ["Fdb", "Neigh", "Route"]
