"""The Dataplane port on the real kernel: bulk rtnetlink for dumps and applies, a monitor socket for changes.

Dumps and applies run on the netlink thread (``NetlinkThread``), which serialises them with
the backends' device work. Notifications are read on the event loop from a non-blocking
socket (``loop.add_reader``), so a hand-deleted route is seen within one loop turn, without
any periodic dump. A device that disappears takes its routes with it silently (the kernel
flushes IPv4 routes of a deleted link without per-route notifications), so that, like a
monitor overflow, is reported as ``Overflow``: the consumer then runs a full observe.

Small applies (one lease event's few ops) skip the thread: they go out on a second bulk socket owned
by the event loop. Handing a 3-op batch to the netlink thread and back cost more CPU (queue, futex
wake-ups, GIL hand-offs, the loop's self-pipe) than sending it; the kernel answers such a batch in
well under a millisecond, and that socket's recv is bounded by ``INLINE_TIMEOUT`` so a stuck kernel
cannot stall the loop for long. Such an apply also reads the monitor at once (``_drain_monitor``), so the
echoes the kernel cannot filter are dropped without a second wake-up of the loop per lease event.

Entry types that are not rtnetlink objects (WireGuard peers) are applied and observed by the
handlers the catalog registers for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from pyflannel.adapters.netlink import NetlinkThread
from pyflannel.adapters.nlbulk import BulkNetlink, Change, LinkGone, Monitor, Overrun, Owned
from pyflannel.core.model import Entry
from pyflannel.core.plan import Op
from pyflannel.ports import ApplyResult, KernelChange, Overflow, Scope

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Batches up to this many ops are sent from the event loop itself (see the module docstring).
INLINE_MAX = 64
INLINE_TIMEOUT = 0.5
Applier = Callable[[Sequence[Op]], Awaitable[list[tuple[Op, str]]]]
Observer = Callable[[], Awaitable[Sequence[Entry]]]


def owned(scope: Scope, indexes: dict[str, int]) -> Owned:
    devices = {indexes[d]: d for d in scope.devices if d in indexes}
    return Owned(devices, indexes.get(scope.uplink, 0), scope.uplink, scope.uplink_routes)


class RtnlDataplane:
    def __init__(self, nl: NetlinkThread) -> None:
        self.nl = nl
        self._inline: BulkNetlink | None = None
        # Keys of the notifications our own applies will cause that carry no port id (nlbulk.expect_echoes).
        self._echoes: set[bytes] = set()
        # type(entry) -> (apply, observe) for entries that are not rtnetlink objects.
        self.extra: dict[type, tuple[Applier, Observer]] = {}
        # While ``changes`` runs: how to read its monitor now and its wake-up; what such reads found for it.
        self._monitor: tuple[Callable[[], list[KernelChange | Overflow]], asyncio.Event] | None = None
        self._drained: list[KernelChange | Overflow] = []

    def register(self, kind: type, apply: Applier, observe: Observer) -> None:
        self.extra[kind] = (apply, observe)

    async def observe(self, scope: Scope, indexes: dict[str, int]) -> list[Entry]:
        found = await self.nl.run(lambda n: n.bulk.observe_owned(owned(scope, indexes)))
        for _apply, obs in self.extra.values():
            found.extend(await obs())
        return found

    async def apply(self, ops: Sequence[Op], indexes: dict[str, int]) -> ApplyResult:
        mine = [op for op in ops if type(op.entry) not in self.extra]
        if not mine:
            failed: list[tuple[Op, str]] = []
        elif len(mine) <= INLINE_MAX:
            failed = self._inline_bulk().apply(mine, indexes, self._echoes)
            self._drain_monitor()
        else:
            failed = await self.nl.run(lambda n: n.bulk.apply(mine, indexes, self._echoes))
        for kind, (apply, _obs) in self.extra.items():
            theirs = [op for op in ops if type(op.entry) is kind]
            if theirs:
                failed.extend(await apply(theirs))
        return ApplyResult(failed)

    def _inline_bulk(self) -> BulkNetlink:
        if self._inline is None:
            self._inline = BulkNetlink()
            self._inline.sock.settimeout(INLINE_TIMEOUT)
        return self._inline

    async def changes(
        self, scope: Scope, indexes: Callable[[], dict[str, int]]
    ) -> AsyncIterator[list[KernelChange | Overflow]]:
        mon = Monitor()
        # Both sockets our changes leave from: their echoes are skipped (Monitor.read).
        ours = frozenset((await self.nl.run(lambda n: n.bulk.portid), self._inline_bulk().portid))
        if not mon.drop_echoes(ours):
            log.debug("the kernel refused the echo filter on the monitor socket; echoes are skipped when read")

        def read() -> list[KernelChange | Overflow]:
            out: list[KernelChange | Overflow] = []
            for c in mon.read(owned(scope, indexes()), ours, self._echoes):
                if isinstance(c, Change):
                    out.append(KernelChange(c.entry, c.gone))
                elif isinstance(c, LinkGone):
                    out.append(Overflow(f"device {c.name} {c.what}"))
                elif isinstance(c, Overrun):
                    out.append(Overflow())
            return out

        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        self._monitor = (read, ready)
        loop.add_reader(mon.fileno(), ready.set)
        try:
            while True:
                await ready.wait()
                ready.clear()
                out, self._drained = self._drained, []
                out.extend(read())
                if out:
                    yield out
        finally:
            self._monitor = None
            self._drained = []
            loop.remove_reader(mon.fileno())
            mon.close()

    def _drain_monitor(self) -> None:
        """Read the monitor right after a small apply, in the applying task.

        The kernel queues the notifications a request causes before it answers the request, so the ones
        the BPF filter cannot drop (FDB changes and neighbour deletions, which carry no port id) are already
        there. Read now, they are recognised as ours and dropped while this task is running, and the loop
        does not wake a second time per lease event just to drop them. Anything else found is handed to the
        ``changes`` consumer as if it had been read there.
        """
        if self._monitor is None:
            return
        read, ready = self._monitor
        found = read()
        if found:
            self._drained.extend(found)
            ready.set()

    async def query(self, fn: Callable[[Any], T]) -> T:
        return await self.nl.run(fn)

    async def close(self) -> None:
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        self.nl.close()
