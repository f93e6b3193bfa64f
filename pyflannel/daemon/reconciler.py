"""The reconciler: desired against actual, kept per peer, so one event costs O(1) and not O(cluster).

Still level-triggered: what it converges to is "every routed lease's entries, and nothing
else in the owned scope", never a replay of events. But both sides are kept incrementally:

* **desired** is the peer table (``core.peers``), updated per lease event; an event marks the
  keys whose verdict changed as dirty;
* **actual** is a mirror of the owned kernel objects by identity, kept current from what we
  applied and from rtnetlink notifications. Our own changes come back as echoes that equal
  the desired entry and cost nothing; a hand-deleted or hand-changed entry differs from it
  and marks that identity for repair, which runs at once (no periodic dump needed).

An incremental pass plans only the dirty keys and identities. A **full pass** (dump the owned
scope, diff everything, re-check the devices) runs at start, after a notification overflow
or a deleted device, after a lease-stream resync, and on the resync timer. The timer is the
safety net for what no notification reports; see docs/operators.md for its default.

Failed ops are not rolled back: their keys stay dirty and are retried with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pyflannel.core.lease import Lease
from pyflannel.core.model import Entry, Neigh
from pyflannel.core.peers import PeerTable
from pyflannel.core.plan import Op, describe, order, plan_entries
from pyflannel.ports import Backend, Dataplane, KernelChange, Overflow

log = logging.getLogger(__name__)

# Below this many ops each one is logged at INFO; above it, a summary (each op at DEBUG).
DETAIL_LIMIT = 20
RETRY_MIN = 0.5
RETRY_MAX = 10.0


@dataclass
class SyncStats:
    passes: int = 0
    full_passes: int = 0
    last_sync: float = 0.0  # unix time of the last completed pass (0: none yet)
    last_full_sync: float = 0.0
    last_duration: float = 0.0
    desired_peers: int = 0
    installed_entries: int = 0
    netlink_errors: int = 0
    repairs: int = 0  # entries changed by someone else and put back
    overflows: int = 0
    in_sync: bool = False
    durations: list[float] = field(default_factory=list)


class Reconciler:
    def __init__(
        self,
        backend: Backend,
        dataplane: Dataplane,
        table: PeerTable,
        own_lease: Callable[[], Lease | None],
        after_pass: Callable[[], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.backend = backend
        self.dataplane = dataplane
        self.table = table
        self.own_lease = own_lease
        self.after_pass = after_pass
        self.rng = rng or random.Random()
        self.stats = SyncStats()
        self.wake = asyncio.Event()
        self.first_pass = asyncio.Event()  # set when a full pass has completed (READY=1 waits for it)
        self.mirror: dict[object, Entry] = {}  # identity -> what the kernel has
        self.owner: dict[object, str] = {}  # identity -> the key whose entry it is
        self.key_idents: dict[str, tuple[object, ...]] = {}
        # Identities wanted by more than one routed lease (a VtepMAC or a WireGuard key on two leases): every
        # key that wants it. Rare, so kept only for those; the newest lease (PeerTable.seq) gets the object,
        # and when it lets go, the next newest takes it over in the same pass.
        self.contested: dict[object, set[str]] = {}
        self.dirty: set[str] = set()
        self.foreign: set[object] = set()  # identities changed by someone else
        self.need_full = True
        self.full_reason = "start"
        self._retry = RETRY_MIN
        self._failing = False
        # Passes must not overlap: two concurrent passes would plan the same ops.
        self._lock = asyncio.Lock()

    # --- inputs -------------------------------------------------------------------------------

    def mark(self, keys: Iterable[str]) -> None:
        before = len(self.dirty)
        self.dirty.update(keys)
        if len(self.dirty) != before:
            self.wake.set()

    async def apply_now(self, keys: Iterable[str]) -> None:
        """Plan and apply ``keys`` in the caller's task, or leave them to the loop.

        A lease event's few ops are applied by the task that decoded the event, without waking the
        reconciler's task: one task switch less per event, on the put -> route path. The loop still runs
        every pass that is not this simple: the first and every full pass, a pass already under way, and
        retries, which keep their backoff.
        """
        if self.need_full or self._failing or self._lock.locked() or not self.first_pass.is_set():
            self.mark(keys)
            return
        self.dirty.update(keys)
        if not self.dirty and not self.foreign:
            return
        try:
            failed = await self.reconcile_once()
        except Exception:  # as in run(): a pass must not kill its caller; the loop takes over
            log.exception("reconcile pass failed")
            self.request_full("previous pass failed")
            return
        if failed:
            self.wake.set()  # the loop retries them, with backoff

    def request_full(self, reason: str) -> None:
        if not self.need_full:
            log.debug("full resync requested: %s", reason)
        self.need_full = True
        self.full_reason = reason
        self.wake.set()

    def trigger(self) -> None:
        self.wake.set()

    def on_kernel(self, changes: list[KernelChange | Overflow]) -> None:
        """Notifications from the data plane: update the mirror, mark what no longer matches."""
        for c in changes:
            if isinstance(c, Overflow):
                self.stats.overflows += 1
                log.info("%s; running a full resync", c.reason)
                self.request_full(c.reason)
                continue
            e = c.entry
            ident = e.ident
            if c.gone:
                cur = self.mirror.get(ident)
                # Not the copy we know of (an extra one, or one we already replaced)? Neighbour deletions
                # are matched by identity alone: the kernel's message may lack the lladdr.
                if cur is None or (cur != e and not isinstance(e, Neigh)):
                    continue
                del self.mirror[ident]
            else:
                self.mirror[ident] = e
            if self._wanted(ident) != self.mirror.get(ident):
                self.foreign.add(ident)
                self.wake.set()

    def _wanted(self, ident: object) -> Entry | None:
        key = self.owner.get(ident)
        return None if key is None else self._entry_of(key, ident)

    def _entry_of(self, key: str, ident: object) -> Entry | None:
        """The entry ``key``'s lease wants for ``ident``, if any."""
        return next((e for e in self.table.entries(key) if e.ident == ident), None)

    @staticmethod
    def _log_contest(level: int, e: Entry, keys: set[str], winner: str) -> None:
        log.log(level, "%s is wanted by leases %s; using the newest, %s", describe(e), ", ".join(sorted(keys)),
                winner)

    # --- passes -------------------------------------------------------------------------------

    async def reconcile_once(self, full: bool = False) -> list[tuple[Op, str]]:
        async with self._lock:
            if full or self.need_full:
                return await self._full()
            return await self._incremental()

    async def _full(self) -> list[tuple[Op, str]]:
        started = time.monotonic()
        reason, self.need_full = self.full_reason, False
        self.dirty.clear()
        self.foreign.clear()
        own = self.own_lease()
        if own is not None:
            for change in await self.backend.check_devices(own):
                log.info("%s", change)
        indexes = self.backend.indexes()
        # Desired first: a lease event during the dump marks its key dirty for the next pass.
        owner: dict[object, str] = {}
        key_idents: dict[str, tuple[object, ...]] = {}
        desired: dict[object, Entry] = {}
        contested: dict[object, set[str]] = {}
        seq = self.table.seq
        for key in self.table.routed():
            ids = []
            for e in self.table.entries(key):
                ident = e.ident
                other = owner.get(ident)
                if other is not None:  # rare: a shared VtepMAC or WireGuard key
                    contested.setdefault(ident, {other}).add(key)
                    if seq(other) > seq(key):
                        continue
                    key_idents[other] = tuple(i for i in key_idents[other] if i != ident)
                owner[ident] = key
                desired[ident] = e
                ids.append(ident)
            key_idents[key] = tuple(ids)  # a tuple per key, not a list: this is the join's memory peak
        for cid, keys in contested.items():
            # Once per contest, not on every resync: the incremental pass already warned about a known one.
            level = logging.DEBUG if self.contested.get(cid) == keys else logging.WARNING
            self._log_contest(level, desired[cid], keys, owner[cid])
        actual = await self.dataplane.observe(self.backend.scope(), indexes)
        ops = plan_entries(desired.values(), actual)
        mirror: dict[object, Entry] = {}
        for e in actual:
            ident = e.ident
            want = desired.get(ident)
            mirror[ident] = want if want == e else e  # share the desired object when equal
        self.mirror, self.owner, self.key_idents, self.contested = mirror, owner, key_idents, contested
        failed = await self._apply(ops, indexes)
        self.stats.full_passes += 1
        self.stats.last_full_sync = time.time()
        log.debug("full resync (%s): %d desired entries, %d in the kernel, %d ops in %.0f ms", reason,
                  len(desired), len(actual), len(ops), (time.monotonic() - started) * 1000)
        self._done(started, failed)
        self.first_pass.set()
        return failed

    async def _incremental(self) -> list[tuple[Op, str]]:
        started = time.monotonic()
        keys, self.dirty = self.dirty, set()
        foreign, self.foreign = self.foreign, set()
        # One op per identity, the last decision of this pass: two keys can plan for one contested
        # identity in a batch (one lets go, another takes it), and each must see what the other planned.
        planned: dict[object, Op] = {}
        # Oldest change first: the same leases give the same ops in the same order, however they hashed.
        for key in sorted(keys, key=self.table.seq) if len(keys) > 1 else keys:
            self._plan_key(key, planned)
        for ident in foreign:
            if ident in planned:  # a key's plan above already compared it with the kernel's copy
                continue
            want = self._wanted(ident)
            cur = self.mirror.get(ident)
            if want is not None and cur != want:
                planned[ident] = Op("replace", want)
                self.stats.repairs += 1
            elif want is None and cur is not None:
                planned[ident] = Op("delete", cur)
                self.stats.repairs += 1
        if not planned:
            self._done(started, [])
            return []
        failed = await self._apply(order(list(planned.values())), self.backend.indexes())
        self._done(started, failed)
        return failed

    def _want(self, ident: object, e: Entry | None, planned: dict[object, Op]) -> None:
        """The kernel should end this pass with ``e`` (None: nothing) for ``ident``."""
        cur = self.mirror.get(ident)
        if cur == e:
            planned.pop(ident, None)  # already there: no op, and none planned earlier in this pass either
        elif e is not None:
            planned[ident] = Op("replace", e)
        else:
            assert cur is not None
            planned[ident] = Op("delete", cur)

    def _plan_key(self, key: str, planned: dict[object, Op]) -> None:
        want = self.table.entries(key)
        old = self.key_idents.get(key, ())
        ids = []
        seq = self.table.seq
        for e in want:
            ident = e.ident
            other = self.owner.get(ident)
            if other is not None and other != key and ident in self.key_idents.get(other, ()):
                keys = self.contested.setdefault(ident, {other})
                newer = seq(key) > seq(other)
                if key not in keys:
                    keys.add(key)
                    self._log_contest(logging.WARNING, e, keys, key if newer else other)
                if not newer:
                    continue
                self.key_idents[other] = tuple(i for i in self.key_idents[other] if i != ident)
            self.owner[ident] = key
            ids.append(ident)
            self._want(ident, e, planned)
        keep = set(ids)
        for ident in old:
            if ident in keep or self.owner.get(ident) != key:
                continue
            del self.owner[ident]
            self._want(ident, self._heir(ident, key), planned)
        if ids:
            self.key_idents[key] = tuple(ids)
        else:
            self.key_idents.pop(key, None)

    def _heir(self, ident: object, leaving: str) -> Entry | None:
        """``leaving`` let go of ``ident``: give it to the newest other lease that still wants it and return
        that lease's entry, or None when none does. Only contested identities have other candidates; keys
        that no longer want it are dropped from the contest here."""
        keys = self.contested.get(ident)
        if keys is None:
            return None
        keys.discard(leaving)
        best: tuple[int, str, Entry] | None = None
        for k in list(keys):
            e = self._entry_of(k, ident)
            if e is None:
                keys.discard(k)
            elif best is None or self.table.seq(k) > best[0]:
                best = (self.table.seq(k), k, e)
        if len(keys) <= 1:
            del self.contested[ident]
        if best is None:
            return None
        _, heir, e = best
        self.owner[ident] = heir
        self.key_idents[heir] = (*self.key_idents.get(heir, ()), ident)
        log.info("%s is now %s's, after %s let go of it", describe(e), heir, leaving)
        return e

    async def _apply(self, ops: list[Op], indexes: dict[str, int]) -> list[tuple[Op, str]]:
        if not ops:
            return []
        result = await self.dataplane.apply(ops, indexes)
        bad = {id(op) for op, _ in result.failed}
        for op in ops:
            if id(op) in bad:
                continue
            ident = op.entry.ident
            if op.action == "replace":
                self.mirror[ident] = op.entry
            elif self.mirror.get(ident) == op.entry:
                del self.mirror[ident]
        for op, _ in result.failed:
            key = self.owner.get(op.entry.ident)
            if key is not None:
                self.dirty.add(key)
            else:
                self.foreign.add(op.entry.ident)
        self._log_ops(ops, result.failed)
        return result.failed

    def _done(self, started: float, failed: list[tuple[Op, str]]) -> None:
        st = self.stats
        st.passes += 1
        st.last_sync = time.time()
        st.last_duration = time.monotonic() - started
        st.durations.append(st.last_duration)
        del st.durations[:-1000]
        st.desired_peers = len(self.key_idents)
        st.installed_entries = len(self.owner) - len(failed)
        st.netlink_errors += len(failed)
        st.in_sync = not failed and not self.dirty and not self.foreign and not self.need_full
        if self.after_pass is not None:
            self.after_pass()

    def _log_ops(self, ops: list[Op], failed: list[tuple[Op, str]]) -> None:
        bad = {id(op) for op, _ in failed}
        if len(ops) <= DETAIL_LIMIT:
            done = [str(op) for op in ops if id(op) not in bad]
            if done:  # one record per pass: a peer's neighbour, FDB entry and route on one line
                log.info("%s", "; ".join(done))
        else:
            adds = sum(1 for o in ops if o.action == "replace")
            log.info("applied %d changes (%d add/replace, %d delete)", len(ops) - len(failed), adds,
                     len(ops) - adds)
            if log.isEnabledFor(logging.DEBUG):  # a join is 15,000 ops: not even the call when it is off
                for op in ops:
                    log.debug("%s", op)
        if failed and not self._failing:
            for op, why in failed[:DETAIL_LIMIT]:
                log.error("failed to %s %s: %s (will retry)", op.action, describe(op.entry), why)
            if len(failed) > DETAIL_LIMIT:
                log.error("%d more netlink operations failed (will retry)", len(failed) - DETAIL_LIMIT)
        elif failed:
            for op, why in failed:
                log.debug("still failing: %s %s: %s", op.action, describe(op.entry), why)

    # --- the loop -----------------------------------------------------------------------------

    async def watch_kernel(self) -> None:
        """Feed data-plane notifications into the mirror; runs until cancelled."""
        async for batch in self.dataplane.changes(self.backend.scope(), self.backend.indexes):
            self.on_kernel(batch)

    async def run(self, period: float) -> None:
        deadline = time.monotonic() + period
        while True:
            # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancel that arrives in the
            # loop turn the event fires, and the daemon then never stops.
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self.wake.wait()
            except TimeoutError:
                self.request_full("resync timer")
            self.wake.clear()
            if self.need_full:
                deadline = time.monotonic() + period
            try:
                failed = await self.reconcile_once()
            except Exception:  # a pass must never kill the loop; the next one retries
                log.exception("reconcile pass failed")
                self.request_full("previous pass failed")
                await asyncio.sleep(self._next_retry())
                continue
            if failed:
                if not self._failing:
                    self._failing = True
                    log.warning("%d netlink operations failed; retrying with backoff", len(failed))
                if any("No such device" in why for _, why in failed):
                    self.request_full("a device is missing")
                await asyncio.sleep(self._next_retry())
                self.wake.set()
            else:
                if self._failing:
                    log.info("netlink operations succeed again")
                self._failing = False
                self._retry = RETRY_MIN

    def _next_retry(self) -> float:
        delay = self.rng.uniform(RETRY_MIN, self._retry)
        self._retry = min(self._retry * 2, RETRY_MAX)
        return delay
