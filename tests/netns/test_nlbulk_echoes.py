"""Our own rtnetlink echoes are dropped unparsed; the same change made by someone else is reported.

The kernel stamps route and neighbour notifications with the port id of the request that caused them.
``Monitor.read(owned, ours)`` uses that to skip the echoes of what ``BulkNetlink`` applied (the
reconciler's mirror already holds it) and still reports changes from any other socket, here pyroute2's,
which is what a hand-run ``ip route del`` looks like. vxlan FDB notifications and neighbour deletions
carry port id 0 whoever asked, so those are always reported.
"""

from __future__ import annotations

import pytest
from support.nsscript import run_with_vxlan

pytestmark = pytest.mark.root

SCRIPT = r'''
import json, time
from ipaddress import IPv4Address, IPv4Network
from pyroute2 import IPRoute
from pyflannel.adapters.nlbulk import BulkNetlink, Change, Monitor, Owned
from pyflannel.core.model import Fdb, Neigh, Route
from pyflannel.core.plan import Op, order

owned = Owned({dev: "flannel.1"}, eth0, "eth0", ())
mon = Monitor()
b = BulkNetlink()
sn = IPv4Network("100.64.8.0/29")
mac = "0a:00:00:00:00:08"
entries = [Neigh(sn.network_address, mac, "flannel.1"), Fdb(mac, IPv4Address("198.18.1.8"), "flannel.1"),
           Route(sn, sn.network_address, "flannel.1", True)]

def drain(ours):
    time.sleep(0.2)
    return sorted(f"{'-' if c.gone else '+'}{type(c.entry).__name__}" for c in mon.read(owned, ours)
                  if isinstance(c, Change))

out = {"portid_nonzero": b.portid != 0}
assert b.apply(order([Op("replace", e) for e in entries]), idx) == []
out["ours_skipped"] = drain({b.portid})
assert b.apply(order([Op("delete", e) for e in entries]), idx) == []
out["ours_deleted_skipped"] = drain({b.portid})
assert b.apply(order([Op("replace", e) for e in entries]), idx) == []
out["ours_without_portid"] = drain(())
with IPRoute() as ipr:  # someone else: a different port id
    ipr.route("del", dst=str(sn), gateway=str(sn.network_address), oif=dev)
    ipr.neigh("del", dst=str(sn.network_address), lladdr=mac, ifindex=dev)
out["theirs"] = drain({b.portid})
# The same with the kernel-side filter: a monitor that drops our port id's messages before they are queued,
# read without any port ids, so only the filter can have removed them.
assert b.apply(order([Op("delete", e) for e in entries]), idx) == []  # start from nothing, as above
filtered = Monitor()
out["filter_attached"] = filtered.drop_echoes({b.portid})

def drain_filtered():
    time.sleep(0.2)
    return sorted(f"{'-' if c.gone else '+'}{type(c.entry).__name__}" for c in filtered.read(owned, ())
                  if isinstance(c, Change))

assert b.apply(order([Op("replace", e) for e in entries]), idx) == []
out["filtered_ours"] = drain_filtered()
with IPRoute() as ipr:
    ipr.route("del", dst=str(sn), gateway=str(sn.network_address), oif=dev)
out["filtered_theirs"] = drain_filtered()

# The notifications without our port id (FDB changes, neighbour deletions): recognised by the keys noted when
# the ops were sent (nlbulk.expect_echoes), read with the filter on and an expected-echo set.
expected = set()

def drain_expected():
    time.sleep(0.2)
    return sorted(f"{'-' if c.gone else '+'}{type(c.entry).__name__}" for c in filtered.read(owned, (), expected)
                  if isinstance(c, Change))

assert b.apply(order([Op("delete", e) for e in entries]), idx, expected) == []
out["expected_ours_deleted"] = drain_expected()
assert b.apply(order([Op("replace", e) for e in entries]), idx, expected) == []
out["expected_ours_added"] = drain_expected()
out["expected_left"] = len(expected)
with IPRoute() as ipr:  # someone else removes the FDB entry and the neighbour: reported
    ipr.fdb("del", ifindex=dev, lladdr=mac, dst="198.18.1.8")
    ipr.neigh("del", dst=str(sn.network_address), lladdr=mac, ifindex=dev)
out["expected_theirs"] = drain_expected()
# A delete of what is already gone causes no echo and leaves its key; re-adding forgets it, so a later
# deletion by someone else is still reported.
assert b.apply(order([Op("delete", e) for e in entries[:2]]), idx, expected) == []
assert b.apply(order([Op("replace", e) for e in entries[:2]]), idx, expected) == []
drain_expected()
with IPRoute() as ipr:
    ipr.fdb("del", ifindex=dev, lladdr=mac, dst="198.18.1.8")
    ipr.neigh("del", dst=str(sn.network_address), lladdr=mac, ifindex=dev)
out["stale_key_theirs"] = drain_expected()
print(json.dumps(out))
'''


def test_own_echoes_skipped_others_reported(node_ns: str) -> None:
    out = run_with_vxlan(node_ns, SCRIPT)
    assert out["portid_nonzero"]
    # Our route and neighbour echoes are dropped; the FDB echo (port id 0) still arrives.
    assert out["ours_skipped"] == ["+Fdb"]
    # The kernel sends a neighbour's deletion with port id 0 too, so that echo is parsed (and the mirror
    # recognises it); only the route's is skipped.
    assert out["ours_deleted_skipped"] == ["-Fdb", "-Neigh"]
    # Without our port id nothing is skipped: the filter, not the owned scope, is what drops them.
    assert out["ours_without_portid"] == ["+Fdb", "+Neigh", "+Route"]
    # A change from another socket is reported even though we pass our port id.
    assert out["theirs"] == ["-Neigh", "-Route"]
    # With the BPF filter on the socket, the kernel drops our route and neighbour echoes itself; a change
    # from another socket still arrives.
    assert out["filter_attached"]
    assert out["filtered_ours"] == ["+Fdb"]
    assert out["filtered_theirs"] == ["-Route"]
    # With the expected-echo keys, our FDB changes and neighbour deletions are dropped too, and nothing is
    # left over; someone else's deletions are reported, also after a delete of what was already gone.
    assert out["expected_ours_deleted"] == []
    assert out["expected_ours_added"] == []
    assert out["expected_left"] == 0
    assert out["expected_theirs"] == ["-Fdb", "-Neigh"]
    assert out["stale_key_theirs"] == ["-Fdb", "-Neigh"]
