"""The incremental peer table: per-event updates agree with judging the whole set at once."""

from __future__ import annotations

import itertools
import random
from ipaddress import IPv4Address, IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st

from pyflannel.core.backends import vxlan
from pyflannel.core.lease import Lease, LeaseAttrs, VxlanData
from pyflannel.core.peers import PeerTable

NETWORK = IPv4Network("100.64.0.0/16")
DEV = "flannel.1"


def lease(subnet: str, ip: str, mac: str = "02:00:00:00:00:01", btype: str = "vxlan", data: str | None = None) -> Lease:
    if data is None:
        data = VxlanData(1, mac).to_json()
    return Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address(ip), backend_type=btype, backend_data=data))


OWN = lease("100.64.1.0/24", "198.18.0.11")


def table(own: Lease | None = OWN) -> PeerTable:
    return PeerTable([NETWORK], [IPv4Network("198.18.0.0/24")], 24, "vxlan",
                     lambda le: vxlan.peer_entries(le, DEV), own)


def test_put_and_remove_one_peer() -> None:
    t = table()
    p = lease("100.64.2.0/24", "198.18.0.12")
    assert t.put("100.64.2.0-24", p) == {"100.64.2.0-24"}
    assert len(t.entries("100.64.2.0-24")) == 3
    assert t.put("100.64.2.0-24", p) == set()  # same lease again: nothing changed
    assert t.remove("100.64.2.0-24") == {"100.64.2.0-24"}
    assert t.entries("100.64.2.0-24") == ()
    assert t.remove("100.64.2.0-24") == set()


def test_own_lease_and_foreign_types_are_not_peers() -> None:
    t = table()
    assert t.put("100.64.1.0-24", OWN) == set()
    assert t.put("100.64.3.0-24", lease("100.64.3.0/24", "198.18.0.13", btype="host-gw", data="null")) == set()
    assert list(t.routed()) == []


def test_rejections_name_the_reason() -> None:
    t = table()
    t.put("a", lease("10.9.0.0/24", "198.18.0.12"))
    t.put("b", lease("100.64.1.0/25", "198.18.0.13"))
    t.put("c", lease("100.64.5.0/24", "198.18.0.11"))
    t.put("d", lease("100.64.6.0/24", "198.18.0.14", data='{"VNI":1}'))
    reasons = dict(t.rejected())
    assert "outside the Network" in reasons["a"]
    assert "overlaps our own subnet" in reasons["b"]
    assert "is our own" in reasons["c"]
    assert "VtepMAC" in reasons["d"]


def test_node_sized_lease_wins_over_a_wider_one_and_back() -> None:
    t = table()
    wide = lease("100.64.8.0/23", "198.18.0.20")
    node = lease("100.64.9.0/24", "198.18.0.21")
    assert t.put("wide", wide) == {"wide"}
    assert t.put("node", node) == {"wide", "node"}  # the node's /24 takes over
    assert "overlaps peer 100.64.9.0/24" in dict(t.rejected())["wide"]
    assert t.remove("node") == {"node", "wide"}  # the /23 is routed again once the node left
    assert set(t.routed()) == {"wide"}


def test_own_lease_change_rejudges() -> None:
    t = table(own=None)
    t.put("p", lease("100.64.1.128/25", "198.18.0.12"))
    assert set(t.routed()) == {"p"}
    assert t.set_own(OWN) == {"p"}
    assert "overlaps our own subnet" in dict(t.rejected())["p"]


def test_a_lease_under_two_winners_names_the_same_one_in_any_order() -> None:
    # A /25 under both a /24 (node-sized, so it wins) and a /23: the message must not depend on the order
    # the leases arrived in, nor on set iteration order.
    items = [("100.64.24.0-23", lease("100.64.24.0/23", "198.18.1.12")),
             ("100.64.25.0-24", lease("100.64.25.0/24", "198.18.1.13")),
             ("100.64.25.0-25", lease("100.64.25.0/25", "198.18.1.14"))]
    seen = set()
    for order in itertools.permutations(items):
        for extra in range(8):  # unrelated keys shift the set's insertion history
            t = table()
            for i in range(extra):
                t.put(f"x{i}", lease(f"100.64.{100 + i}.0/24", f"198.18.1.{30 + i}"))
            for k, le in order:
                t.put(k, le)
            seen.add(dict(t.rejected())["100.64.25.0-25"])
    assert seen == {"subnet 100.64.25.0/25 overlaps peer 100.64.25.0/24"}


def test_seq_orders_changes_not_renewals() -> None:
    t = table()
    a, b = lease("100.64.2.0/24", "198.18.0.12"), lease("100.64.3.0/24", "198.18.0.13")
    t.replace_all([("a", a), ("b", b)])
    assert 0 < t.seq("a") < t.seq("b")  # a first listing: its order
    t.put("a", lease("100.64.2.0/24", "198.18.0.12"))  # the same value again (a renewal)
    assert t.seq("a") < t.seq("b")
    t.put("a", lease("100.64.2.0/24", "198.18.0.22"))  # a new PublicIP: a change
    assert t.seq("a") > t.seq("b")
    before = (t.seq("a"), t.seq("b"))
    t.set_own(lease("100.64.9.0/24", "198.18.0.11"))  # re-judging everything keeps the order
    assert (t.seq("a"), t.seq("b")) == before
    t.remove("a")
    assert t.seq("a") == 0


subnets = st.builds(
    lambda third, plen: IPv4Network((int(IPv4Address("100.64.0.0")) + (third << 8) & ~((1 << (32 - plen)) - 1), plen)),
    st.integers(0, 40), st.sampled_from([22, 23, 24, 24, 24, 25, 26]),
)
leases = st.lists(st.tuples(subnets, st.integers(12, 60)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(leases=leases, seed=st.integers(0, 2**32))
def test_incremental_equals_batch_and_is_safe(leases: list[tuple[IPv4Network, int]], seed: int) -> None:
    items = [(f"{sn.network_address}-{sn.prefixlen}", lease(str(sn), f"198.18.1.{h}")) for sn, h in leases]
    batch = table()
    batch.replace_all(items)
    inc = table()
    rng = random.Random(seed)
    ops = items + [(k, None) for k, _ in rng.sample(items, len(items) // 3)]
    rng.shuffle(ops)
    final: dict[str, Lease] = {}
    for k, le in ops:
        if le is None:
            inc.remove(k)
            final.pop(k, None)
        else:
            inc.put(k, le)
            final[k] = le
    fresh = table()  # an empty table takes the bulk load
    assert fresh.replace_all(final.items()) == {k for k, v in inc.verdicts.items()}
    assert inc.verdicts == fresh.verdicts
    one_by_one = table()
    for k, le in final.items():
        one_by_one.put(k, le)
    assert one_by_one.verdicts == fresh.verdicts
    # ... and leaves the same index behind: the same next event changes the same keys.
    for k, le in list(final.items())[:3]:
        assert fresh.remove(k) == one_by_one.remove(k)
        assert fresh.verdicts == one_by_one.verdicts
        assert fresh.put(k, le) == one_by_one.put(k, le)
        assert fresh.verdicts == one_by_one.verdicts
    # No two routed leases overlap, and a routable node-sized lease is never shadowed by a wider one.
    routed = [inc.leases[k].subnet for k in inc.routed()]
    for i, a in enumerate(routed):
        for b in routed[i + 1:]:
            assert not a.overlaps(b)


@settings(max_examples=200, deadline=None)
@given(leases=st.lists(st.tuples(st.integers(2, 60), st.integers(12, 60)), max_size=40, unique_by=lambda t: t[0]))
def test_agrees_with_select_peers_for_node_sized_leases(leases: list[tuple[int, int]]) -> None:
    items = [lease(f"100.64.{n}.0/24", f"198.18.1.{h}", mac=f"02:00:00:00:01:{n:02x}") for n, h in leases]
    t = table()
    t.replace_all((le.key_name, le) for le in items)
    peers, _ = vxlan.select_peers(OWN, items, NETWORK, [IPv4Network("198.18.0.0/24")], prefer_len=24)
    assert sorted(t.routed()) == sorted({p.lease.key_name for p in peers})
    assert set(t.all_entries()) == set(vxlan.desired_state(DEV, peers).entries())
