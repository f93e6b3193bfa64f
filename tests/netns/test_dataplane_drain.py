"""A small apply reads the monitor itself: our unfilterable echoes cost no second wake-up, and a foreign
change found on the way is still handed to the ``changes`` consumer.

FDB changes and neighbour deletions carry port id 0, so the monitor's BPF filter cannot drop our own. The
kernel queues them before it answers the request, so ``RtnlDataplane.apply`` reads them right after a small
apply (``_drain_monitor``). Counted here: the event loop's wake-ups for the monitor socket.
"""

from __future__ import annotations

import pytest
from support.nsscript import run_with_vxlan

pytestmark = pytest.mark.root

SCRIPT = r'''
import asyncio, json
from ipaddress import IPv4Address, IPv4Network
from pyflannel.adapters.netlink import NetlinkThread
from pyflannel.adapters.nlbulk import BulkNetlink
from pyflannel.adapters.rtnl_dataplane import RtnlDataplane
from pyflannel.core.model import Fdb, Neigh, Route
from pyflannel.core.plan import Op, order
from pyflannel.ports import KernelChange, Overflow, Scope

scope = Scope(devices=("flannel.1",), uplink="eth0")


def peer(i):
    sn = IPv4Network(f"100.64.{i}.0/29")
    mac = f"0a:00:00:00:00:{i:02x}"
    return [Neigh(sn.network_address, mac, "flannel.1"), Fdb(mac, IPv4Address(f"198.18.1.{i}"), "flannel.1"),
            Route(sn, sn.network_address, "flannel.1", True)]


async def main():
    loop = asyncio.get_running_loop()
    wakes = [0]
    add_reader = loop.add_reader

    def counting_add_reader(fd, cb, *args):
        def counted(*a):
            wakes[0] += 1
            cb(*a)
        return add_reader(fd, counted, *args)

    loop.add_reader = counting_add_reader
    dp = RtnlDataplane(NetlinkThread())
    got = []

    async def consume():
        async for batch in dp.changes(scope, lambda: idx):
            got.append(sorted(f"{'-' if c.gone else '+'}{type(c.entry).__name__}" if isinstance(c, KernelChange)
                              else "overflow" for c in batch))

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)
    out = {}
    # Our own peer, added then deleted: the FDB echo (and on deletion, the neighbour's) is read by the apply.
    for action in ("replace", "delete"):
        before = wakes[0]
        result = await dp.apply(order([Op(action, e) for e in peer(8)]), idx)
        await asyncio.sleep(0.3)
        out[f"{action}_failed"] = len(result.failed)
        out[f"{action}_wakes"] = wakes[0] - before
    out["ours_reported"] = list(got)
    # Someone else deletes a route; before the loop runs again we apply a small change: the apply's read
    # finds the deletion and it still reaches the consumer.
    assert not (await dp.apply(order([Op("replace", e) for e in peer(9)]), idx)).failed
    await asyncio.sleep(0.3)
    got.clear()
    # (pyroute2's IPRoute cannot run inside a running event loop; a socket of our own that the dataplane does not
    # know is "someone else" just as well.)
    other = BulkNetlink()
    assert other.apply([Op("delete", peer(9)[2])], idx) == []
    other.close()
    result = await dp.apply([Op("replace", peer(10)[0])], idx)
    out["drained_for_consumer"] = len(dp._drained)
    await asyncio.sleep(0.3)
    out["theirs_reported"] = list(got)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await dp.close()
    print(json.dumps(out))

asyncio.run(main())
'''


def test_small_apply_reads_its_own_echoes(node_ns: str) -> None:
    out = run_with_vxlan(node_ns, SCRIPT)
    assert out["replace_failed"] == 0 and out["delete_failed"] == 0
    # No wake-up of the loop for our own FDB change or neighbour deletion, and nothing reported.
    assert out["replace_wakes"] == 0
    assert out["delete_wakes"] == 0
    assert out["ours_reported"] == []
    # The foreign route deletion was read by the apply and handed on, not lost.
    assert out["drained_for_consumer"] == 1
    assert out["theirs_reported"] == [["-Route"]]
