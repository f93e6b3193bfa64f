"""One list of daemon scenarios, run against two targets: the fakes (tests/unit) and a real kernel (tests/netns).

A scenario is an async function of a :class:`Harness`. It changes the leases or the kernel
through the harness and checks the owned kernel entries it reads back. The harness decides
what "the kernel" is: ``support.fakes.FakeDataplane``, or the real rtnetlink data plane with a
real vxlan device in a network namespace.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pyflannel.core.model import Fdb, Neigh, Route
from support.fakes import entries_of, peer


class Harness:
    """What a scenario may do. Subclasses set ``daemon`` (over a FakeSubnetManager ``sm``) and implement
    the kernel side for their target; driving the daemon and the leases is the same for both."""

    daemon: Any
    sm: Any
    task: Any = None
    stop_timeout: float = 20.0

    async def start(self) -> None:
        self.task = asyncio.create_task(self.daemon.main())
        await self.settle(lambda: self.daemon.reconciler is not None and self.daemon.reconciler.first_pass.is_set())

    async def stop(self) -> int:
        assert self.task is not None
        self.daemon.stop.set()
        code: int = await asyncio.wait_for(self.task, self.stop_timeout)
        return code

    async def settle(self, cond: Callable[[], bool] | None = None, timeout: float = 10.0) -> None:
        """Until ``cond`` holds and the reconciler has nothing pending (or is retrying failures)."""
        deadline = time.monotonic() + timeout
        while True:
            for _ in range(20):
                await asyncio.sleep(0)
            rec = self.daemon.reconciler
            quiet = rec is not None and not rec.dirty and not rec.foreign and not rec.need_full
            if (cond() and (quiet or rec is None or rec.stats.netlink_errors)) if cond is not None else quiet:
                return
            if time.monotonic() > deadline:
                raise AssertionError("the daemon did not settle")
            await asyncio.sleep(0.002)

    def kernel_entries(self) -> list[Any]:
        raise NotImplementedError

    def put(self, *leases: Any) -> None:
        self.sm.put(*leases)

    def delete(self, *keys: str) -> None:
        self.sm.delete(*keys)

    def resync(self) -> None:
        self.sm.resync()

    def hand_delete(self, e: Any) -> None:
        raise NotImplementedError

    def hand_replace(self, old: Any, new: Any) -> None:
        raise NotImplementedError

    def hand_add(self, e: Any) -> None:
        raise NotImplementedError

    def overflow(self) -> None:
        raise NotImplementedError

    def quiet_delete(self, e: Any) -> None:
        raise NotImplementedError

    async def full_resync(self) -> None:
        """Run a full pass and wait until it has finished (need_full drops when it starts)."""
        rec = self.daemon.reconciler
        before = rec.stats.full_passes
        rec.request_full("test")
        await self.settle(lambda: rec.stats.full_passes > before)

    def lose_lease(self, new_subnet: str) -> None:
        self.sm.lose_lease(new_subnet)


def _kernel(h: Harness) -> set[Any]:
    return set(h.kernel_entries())


async def leases_come_and_go(h: Harness) -> None:
    a, b = peer(2), peer(3)
    h.put(a, b)
    await h.settle(lambda: _kernel(h) == entries_of(a) | entries_of(b))
    h.delete(a.key_name)
    await h.settle(lambda: _kernel(h) == entries_of(b))
    moved = peer(3, mac="0a:00:00:00:33:33")  # the peer rebooted: new VtepMAC
    h.put(moved)
    await h.settle(lambda: _kernel(h) == entries_of(moved))


async def drift_is_repaired_from_notifications(h: Harness) -> None:
    p = peer(4)
    h.put(p)
    await h.settle(lambda: _kernel(h) == entries_of(p))
    route = next(e for e in entries_of(p) if isinstance(e, Route))
    neigh = next(e for e in entries_of(p) if isinstance(e, Neigh))
    fdb = next(e for e in entries_of(p) if isinstance(e, Fdb))
    h.hand_delete(route)
    h.hand_delete(fdb)
    h.hand_replace(neigh, Neigh(neigh.ip, "0a:ff:ff:ff:ff:ff", neigh.dev))
    await h.settle(lambda: _kernel(h) == entries_of(p))


async def foreign_entry_in_scope_is_removed(h: Harness) -> None:
    p = peer(6)
    h.put(p)
    await h.settle(lambda: _kernel(h) == entries_of(p))
    stray = next(iter(e for e in entries_of(peer(7)) if isinstance(e, Neigh)))
    h.hand_add(stray)
    await h.settle(lambda: _kernel(h) == entries_of(p))


async def overflow_runs_a_full_resync(h: Harness) -> None:
    p = peer(8)
    h.put(p)
    await h.settle(lambda: _kernel(h) == entries_of(p))
    route = next(e for e in entries_of(p) if isinstance(e, Route))
    fulls = h.daemon.reconciler.stats.full_passes
    h.quiet_delete(route)
    h.overflow()
    await h.settle(lambda: h.daemon.reconciler.stats.full_passes > fulls and _kernel(h) == entries_of(p))


async def quiet_drift_is_found_by_the_full_resync(h: Harness) -> None:
    p = peer(9)
    h.put(p)
    await h.settle(lambda: _kernel(h) == entries_of(p))
    fdb = next(e for e in entries_of(p) if isinstance(e, Fdb))
    h.quiet_delete(fdb)
    await h.full_resync()
    await h.settle(lambda: _kernel(h) == entries_of(p))


async def lease_stream_resync_replaces_the_set(h: Harness) -> None:
    a, b, c = peer(10), peer(11), peer(12)
    h.put(a, b)
    await h.settle(lambda: _kernel(h) == entries_of(a) | entries_of(b))
    # While the stream was away, b left and c came: only a full listing tells.
    h.daemon.sm.leases.pop(b.key_name)
    h.daemon.sm.leases[c.key_name] = c
    h.resync()
    await h.settle(lambda: _kernel(h) == entries_of(a) | entries_of(c))


async def lost_lease_moves_our_subnet(h: Harness) -> None:
    p = peer(13)
    h.put(p)
    await h.settle(lambda: _kernel(h) == entries_of(p))
    # We are moved onto a subnet a peer claims: it is ours now, so the peer is no longer routed.
    h.lose_lease(str(p.subnet))
    await h.settle(lambda: _kernel(h) == set())
    assert p.key_name not in set(h.daemon.table.routed())


def _fdb(le: Any) -> Any:
    return next(e for e in entries_of(le) if isinstance(e, Fdb))


async def shared_vtep_mac_goes_to_the_newest_lease(h: Harness) -> None:
    # Two leases with one VtepMAC (a node that came back with a new PublicIP while its old lease lives on):
    # one FDB entry for the MAC, pointing at the newer lease's PublicIP, in every pass; when the newer
    # lease goes, the older one gets the entry back at once, not at the next full resync.
    mac = "0a:00:00:00:14:14"
    old, new = peer(14, mac=mac), peer(15, mac=mac)
    both = (entries_of(old) | entries_of(new)) - {_fdb(old)}
    h.put(old)
    await h.settle(lambda: _kernel(h) == entries_of(old))
    h.put(new)
    await h.settle(lambda: _kernel(h) == both)
    await h.full_resync()  # the full pass picks the same lease
    assert _kernel(h) == both
    fulls = h.daemon.reconciler.stats.full_passes
    h.delete(new.key_name)
    await h.settle(lambda: _kernel(h) == entries_of(old))
    h.put(new)
    await h.settle(lambda: _kernel(h) == both)
    h.delete(old.key_name)
    await h.settle(lambda: _kernel(h) == entries_of(new))
    assert h.daemon.reconciler.stats.full_passes == fulls
    # Both in one batch: the later one in the batch is the newer.
    h.delete(new.key_name)
    await h.settle(lambda: _kernel(h) == set())
    h.put(new, old)
    await h.settle(lambda: _kernel(h) == (entries_of(old) | entries_of(new)) - {_fdb(new)})
    await h.full_resync()
    assert _kernel(h) == (entries_of(old) | entries_of(new)) - {_fdb(new)}


SCENARIOS: list[Callable[[Harness], Awaitable[None]]] = [
    leases_come_and_go,
    drift_is_repaired_from_notifications,
    foreign_entry_in_scope_is_removed,
    overflow_runs_a_full_resync,
    quiet_drift_is_found_by_the_full_resync,
    lease_stream_resync_replaces_the_set,
    lost_lease_moves_our_subnet,
    shared_vtep_mac_goes_to_the_newest_lease,
]
