"""The node's view of every lease: a snapshot, then one long-lived watch.

flanneld v0.20.2 opens a new watch per event and keeps only ``Events[0]`` of each
response, so bursts and txns lose events (docs/design-notes.md, "The lease watch"). Here one watch
runs from the snapshot revision + 1, every event of every response is applied, and the
resume point is the last event's revision + 1. On compaction the watcher lists again and
replaces its map; on a broken stream it reconnects from where it stopped.

Besides keeping the map (the lease keeper checks our own key in it), every change is handed
on as SubnetManager port events: a listing becomes one LeaseResync, each watch event a
LeaseAdded/LeaseRemoved/BadLeaseSeen/ConfigChanged.

During an etcd outage the reconnect delay grows exponentially (to BACKOFF_MAX) with jitter, so
the nodes of a cluster do not all reconnect and relist at the same instant when etcd returns;
the outage is logged once when it starts and once, with its length, when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable

from pyflannel.adapters.etcd import Compacted, EtcdError
from pyflannel.adapters.registry import BadLease, ConfigEvent, LeaseEvent, SubnetRegistry
from pyflannel.core.errors import LeaseFormatError, shorten
from pyflannel.core.ipnet import parse_subnet_key
from pyflannel.core.lease import Lease
from pyflannel.ports import BadLeaseSeen, ConfigChanged, LeaseAdded, LeaseRemoved, LeaseResync
from pyflannel.ports import LeaseEvent as PortEvent

log = logging.getLogger(__name__)

BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
CANONICAL_CACHE = 1 << 16  # distinct lease keys remembered by LeaseWatcher.canonical


class LeaseWatcher:
    def __init__(
        self,
        registry: SubnetRegistry,
        on_change: Callable[[], None],
        on_config: Callable[[str | None], None] | None = None,
        on_events: Callable[[list[PortEvent]], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.registry = registry
        self.on_change = on_change
        self.on_config = on_config
        self.on_events = on_events
        self.rng = rng or random.Random()
        self.outage_since: float | None = None
        self.leases: dict[str, Lease] = {}
        self.bad: dict[str, str] = {}
        self.synced = asyncio.Event()
        self.revision = 0  # the next revision the watch asks for
        self._canonical: dict[str, str] = {}
        self.watch_restarts = 0
        self.errors = 0

    def _note_bad(self, b: BadLease) -> None:
        # Each bad value is reported once per key and reason, not on every resync.
        if self.bad.get(b.key) != b.reason:
            # The key is outside input too: a megabyte key must not make a megabyte log line.
            log.warning("Ignoring bad subnet lease %s: %s", shorten(b.key, 120).strip("'"),
                        shorten(b.reason.removeprefix(b.key + ": "), 200).strip("'"))
            self.bad[b.key] = b.reason

    def _replace(self, leases: list[Lease], bad: list[BadLease]) -> None:
        new = {self.registry.lease_key(le.subnet, le.subnet6): le for le in leases}
        added = new.keys() - self.leases.keys()
        removed = self.leases.keys() - new.keys()
        if self.synced.is_set() and (added or removed):
            log.info("resync found %d new and %d removed leases", len(added), len(removed))
        self.leases = new
        if self.on_events is not None:
            out: list[PortEvent] = [LeaseResync(tuple(new.values()))]
            out.extend(BadLeaseSeen(b.key, b.reason) for b in bad)
            self.on_events(out)
        bad_keys = {b.key for b in bad}
        for k in list(self.bad):
            if k not in bad_keys:
                del self.bad[k]
        for b in bad:
            self._note_bad(b)

    def apply(self, events: list[LeaseEvent | ConfigEvent]) -> None:
        out: list[PortEvent] = []
        for ev in events:
            self.revision = max(self.revision, ev.revision + 1)
            if isinstance(ev, ConfigEvent):
                if self.on_config is not None:
                    self.on_config(ev.text)
                out.append(ConfigChanged(ev.text))
                continue
            key = self.canonical(ev.key)
            if ev.lease is not None:
                prev = self.leases.get(key)
                self.leases[key] = ev.lease
                self.bad.pop(ev.key, None)
                out.append(LeaseAdded(key, ev.lease))
                if prev is None:
                    log.debug("lease added: %s %s", key, ev.lease.attrs.public_ip)
            else:
                self.leases.pop(key, None)
                out.append(LeaseRemoved(key))
                if ev.bad is not None:
                    self._note_bad(ev.bad)
                    out.append(BadLeaseSeen(ev.bad.key, ev.bad.reason))
                else:
                    self.bad.pop(ev.key, None)
                    log.debug("lease removed: %s", ev.key)
        if out and self.on_events is not None:
            self.on_events(out)

    def canonical(self, key: str) -> str:
        """Leases are filed under the key flanneld would write for their subnet."""
        # Every watch event asks; a node's key comes back again and again, so remember the answers
        # (bounded: a cluster that churns through more distinct keys just starts over).
        hit = self._canonical.get(key)
        if hit is not None:
            return hit
        try:
            sn4, sn6 = parse_subnet_key(key.rsplit("/", 1)[-1])
        except LeaseFormatError:
            return key
        out = self.registry.lease_key(sn4, sn6)
        if len(self._canonical) >= CANONICAL_CACHE:
            self._canonical.clear()
        self._canonical[key] = out
        return out

    def seed(self, leases: list[Lease], bad: list[BadLease], revision: int) -> None:
        """Start from a listing made elsewhere (the lease acquisition) instead of listing again."""
        self._replace(leases, bad)
        self.revision = revision + 1
        self.synced.set()

    async def resync(self) -> None:
        leases, bad, rev = await self.registry.list_leases()
        self._replace(leases, bad)
        self.revision = rev + 1
        self.synced.set()
        self.on_change()

    async def run(self) -> None:
        async for _ in self.stream():
            pass

    async def stream(self) -> AsyncIterator[None]:
        """``run`` as an async generator: yields after each listing or watch response has been handed on.

        The daemon's lease-event stream drives this directly, so a watch response reaches the peer table in
        the same task that read it, without a queue and a task switch per event.
        """
        # Already holding a snapshot (resync() was called): resume from its revision.
        need_list = not self.synced.is_set()
        backoff = BACKOFF_MIN
        while True:
            try:
                if need_list:
                    await self.resync()
                    need_list = False
                    self._outage_over()
                    yield
                async for events in self.registry.watch(self.revision):
                    backoff = BACKOFF_MIN
                    self._outage_over()
                    if events:
                        self.apply(events)
                        self.on_change()
                        yield
            except Compacted as e:
                self.watch_restarts += 1
                log.warning("lease watch: %s; listing all leases again", e)
                need_list = True
            except EtcdError as e:
                self.errors += 1
                self.watch_restarts += 1
                # Full jitter: anywhere between the minimum and the current bound.
                delay = self.rng.uniform(BACKOFF_MIN, backoff)
                if self.outage_since is None:
                    self.outage_since = time.monotonic()
                    log.warning("lease watch failed: %s; retrying with backoff (up to %.0fs)", e, BACKOFF_MAX)
                else:
                    log.debug("lease watch still failing: %s; retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _outage_over(self) -> None:
        if self.outage_since is not None:
            log.info("lease watch is back after %.1fs", time.monotonic() - self.outage_since)
            self.outage_since = None
