"""The level-triggered loop: observe the kernel, plan against the leases, apply the diff.

Watch events and a periodic tick (``--resync-period``, default 10 s) only wake the loop;
every pass recomputes the whole desired state from the lease map and compares it with
what the kernel has in the scope pyflannel owns. So entries deleted by hand come back,
entries for peers that left while the daemon was down go away at start-up, and a burst
of a thousand events costs one pass, not a thousand handlers.

A pass also re-checks the node-level state a peer cannot see: the VXLAN device (re-created
with the published VtepMAC if someone deleted it), its address, and subnet.env.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network

from pyflannel.adapters.netlink import Netlink, NetlinkThread, random_vtep_mac
from pyflannel.core.backends import vxlan
from pyflannel.core.lease import Lease
from pyflannel.core.model import VxlanLink, link_incompatibilities
from pyflannel.core.plan import Op, describe, plan

log = logging.getLogger(__name__)

# Below this many ops each one is logged at INFO; above it, a summary (each op at DEBUG).
DETAIL_LIMIT = 20


@dataclass
class SyncStats:
    passes: int = 0
    last_sync: float = 0.0
    last_duration: float = 0.0
    desired_peers: int = 0
    installed_entries: int = 0
    netlink_errors: int = 0
    in_sync: bool = False
    durations: list[float] = field(default_factory=list)


class Reconciler:
    def __init__(
        self,
        nl: NetlinkThread,
        link: VxlanLink,
        uplink_name: str,
        network: IPv4Network,
        opts: vxlan.VxlanOptions,
        own_lease: Callable[[], Lease | None],
        leases: Callable[[], dict[str, Lease]],
        protected: list[IPv4Network],
        after_pass: Callable[[], None] | None = None,
    ) -> None:
        self.nl = nl
        self.link = link
        self.uplink_name = uplink_name
        self.network = network
        self.opts = opts
        self.own_lease = own_lease
        self.leases = leases
        self.protected = protected
        self.after_pass = after_pass
        self.dev_index = 0
        self.onlink_networks: list[IPv4Network] = []
        self.wake = asyncio.Event()
        self.stats = SyncStats()
        self._rejected_seen: set[tuple[str, str]] = set()
        # Passes must not overlap: two concurrent observes would both plan the same ops.
        self._lock = asyncio.Lock()
        self._need_full = True
        self.first_pass = asyncio.Event()  # set when a pass has completed (READY=1 waits for it)

    def trigger(self) -> None:
        self.wake.set()

    async def ensure_device(self, mac: str | None) -> tuple[int, str]:
        """Create, keep or re-create the VXLAN device; returns (ifindex, MAC).

        ``mac`` is the VtepMAC to use if the device must be created; None picks a random one.
        """
        live = await self.nl.run(Netlink.read_vxlan, self.link.name)
        if live is not None:
            why = link_incompatibilities(self.link, live)
            if not why:
                if self.link.mtu and live.mtu != self.link.mtu:
                    await self.nl.run(Netlink.set_mtu, live.index, self.link.mtu)
                self.dev_index = live.index
                return live.index, live.mac
            log.warning(
                "%s already exists with incompatible configuration: %s; recreating device",
                self.link.name, "; ".join(why),
            )
            await self.nl.run(Netlink.delete_link, self.link.name)
        new_mac = mac or random_vtep_mac()
        await self.nl.run(Netlink.create_vxlan, self.link, new_mac)
        live = await self.nl.run(Netlink.read_vxlan, self.link.name)
        assert live is not None
        log.info("Created VXLAN device %s (VNI %d, VtepMAC %s, local %s)", self.link.name, self.link.vni,
                 live.mac, self.link.local)
        self.dev_index = live.index
        return live.index, live.mac

    async def reconcile_once(self, full: bool = True) -> list[tuple[Op, str]]:
        """One pass. ``full`` also re-checks the device, its address and the on-link networks;
        a pass woken by a lease event skips that (five netlink round trips) and diffs peers only.
        """
        async with self._lock:
            return await self._pass(full or self.dev_index == 0 or self._need_full)

    async def _pass(self, full: bool) -> list[tuple[Op, str]]:
        started = time.monotonic()
        own = self.own_lease()
        if own is None:
            return []
        if full:
            want_mac = own.attrs.vxlan_data().vtep_mac
            index, mac = await self.ensure_device(want_mac)
            if mac != want_mac:
                # Only possible if someone re-created the device by hand with another MAC.
                log.warning("%s has MAC %s but the lease publishes %s", self.link.name, mac, want_mac)
            changes = await self.nl.run(
                Netlink.ensure_address, index, IPv4Interface(f"{own.subnet.network_address}/32")
            )
            for c in changes:
                log.info("%s: %s", self.link.name, c)
            if self.opts.direct_routing:
                self.onlink_networks = await self.nl.run(Netlink.connected_networks, self.link.uplink_index)
            self._need_full = False
        index = self.dev_index

        # Node-sized leases win over any other size when two overlap: a hand-written /23 over a
        # node's /24 must not cut that node off (fault test 8c).
        peers, rejected = vxlan.select_peers(own, self.leases().values(), self.network, self.protected,
                                             prefer_len=own.subnet.prefixlen)
        for r in rejected:
            if (r.key, r.reason) not in self._rejected_seen:
                self._rejected_seen.add((r.key, r.reason))
                log.warning("Ignoring subnet lease %s: %s", r.key, r.reason)
        desired = vxlan.desired_state(
            self.link.name, peers, self.opts.direct_routing, self.uplink_name, self.onlink_networks
        )
        actual = await self.nl.run(
            Netlink.observe, index, self.link.name, self.link.uplink_index, self.uplink_name, self.network
        )
        ops = plan(desired, actual)
        failed: list[tuple[Op, str]] = []
        if ops:
            indexes = {self.link.name: index, self.uplink_name: self.link.uplink_index}
            failed = await self.nl.run(Netlink.apply, ops, indexes)
            self._log_ops(ops, failed)
        self.stats.passes += 1
        self.stats.last_sync = time.time()
        self.stats.last_duration = time.monotonic() - started
        self.stats.durations.append(self.stats.last_duration)
        del self.stats.durations[:-1000]
        self.stats.desired_peers = len(peers)
        self.stats.installed_entries = len(desired.entries()) - len(failed)
        self.stats.netlink_errors += len(failed)
        self.stats.in_sync = not failed
        self.first_pass.set()
        if failed:
            self._need_full = True  # e.g. ENODEV: the device may have gone
        if self.after_pass is not None:
            self.after_pass()
        return failed

    def _log_ops(self, ops: list[Op], failed: list[tuple[Op, str]]) -> None:
        bad = {id(op) for op, _ in failed}
        if len(ops) <= DETAIL_LIMIT:
            for op in ops:
                if id(op) not in bad:
                    log.info("%s", op)
        else:
            adds = sum(1 for o in ops if o.action == "replace")
            log.info("applied %d changes (%d add/replace, %d delete)", len(ops) - len(failed), adds, len(ops) - adds)
            for op in ops:
                log.debug("%s", op)
        for op, why in failed[:DETAIL_LIMIT]:
            log.error("failed to %s %s: %s (will retry)", op.action, describe(op.entry), why)
        if len(failed) > DETAIL_LIMIT:
            log.error("%d more netlink operations failed (will retry)", len(failed) - DETAIL_LIMIT)

    async def run(self, period: float) -> None:
        while True:
            ticked = False
            # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancel that arrives in the
            # loop turn the event fires, and the daemon then never stops.
            try:
                async with asyncio.timeout(period):
                    await self.wake.wait()
            except TimeoutError:
                ticked = True
            self.wake.clear()
            try:
                retry = bool(await self.reconcile_once(full=ticked))
            except Exception:  # a pass must never kill the loop; the next one retries
                log.exception("reconcile pass failed")
                self._need_full = True
                retry = True
            if retry:
                # Retry soon rather than after a full period.
                await asyncio.sleep(1.0)
                self.wake.set()
