"""plan(): diff and ordering of neighbour / FDB / route operations (flannel-spec.md section 4)."""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st

from pyflannel.core.model import Entry, Fdb, Neigh, PeerState, Route
from pyflannel.core.plan import Op, describe, plan

DEV = "flannel.1"
MAC_N3 = "2a:a3:22:0d:18:d9"
MAC_N2 = "06:4f:e4:07:6e:78"
MAC_NEW = "2a:a3:22:0d:18:da"


def peer(subnet: str, mac: str, public_ip: str) -> tuple[Route, Neigh, Fdb]:
    sn = IPv4Network(subnet)
    vtep = sn.network_address
    return Route(sn, vtep, DEV, onlink=True), Neigh(vtep, mac, DEV), Fdb(mac, IPv4Address(public_ip), DEV)


N3 = peer("100.64.81.0/24", MAC_N3, "198.18.0.13")
N2 = peer("100.64.85.0/24", MAC_N2, "198.18.0.12")


def state(*entries: Entry) -> PeerState:
    return PeerState(
        frozenset(e for e in entries if isinstance(e, Route)),
        frozenset(e for e in entries if isinstance(e, Neigh)),
        frozenset(e for e in entries if isinstance(e, Fdb)),
    )


def apply(ops: Iterable[Op], actual: PeerState) -> PeerState:
    """A tiny kernel: replace = drop every entry with the same identity, then add; delete = remove that entry."""
    entries = set(actual.entries())
    for op in ops:
        if op.action == "replace":
            entries = {e for e in entries if e.ident != op.entry.ident}
            entries.add(op.entry)
        else:
            assert op.action == "delete"
            entries.discard(op.entry)
    return state(*entries)


def index(ops: list[Op], action: str, entry: Entry) -> int:
    return ops.index(Op(action, entry))  # type: ignore[arg-type]


def test_add_peer_neigh_and_fdb_before_route() -> None:
    route, neigh, fdb = N3
    ops = plan(state(route, neigh, fdb), PeerState())
    assert ops == [Op("replace", neigh), Op("replace", fdb), Op("replace", route)]


def test_add_two_peers_all_routes_last() -> None:
    ops = plan(state(*N3, *N2), PeerState())
    assert len(ops) == 6 and all(o.action == "replace" for o in ops)
    kinds = [type(o.entry) for o in ops]
    assert kinds[-2:] == [Route, Route]
    for r, n, f in (N3, N2):
        assert index(ops, "replace", n) < index(ops, "replace", r)
        assert index(ops, "replace", f) < index(ops, "replace", r)


def test_delete_peer_route_first() -> None:
    route, neigh, fdb = N3
    ops = plan(PeerState(), state(route, neigh, fdb))
    assert ops[0] == Op("delete", route)
    assert set(ops) == {Op("delete", route), Op("delete", neigh), Op("delete", fdb)}
    assert index(ops, "delete", route) < index(ops, "delete", fdb)
    assert index(ops, "delete", route) < index(ops, "delete", neigh)


def test_add_one_delete_another() -> None:
    ops = plan(state(*N2), state(*N3))
    r3, n3, f3 = N3
    r2, n2, f2 = N2
    assert ops[0] == Op("delete", r3)
    assert ops[-1] == Op("replace", r2)
    assert set(ops) == {
        Op("delete", r3), Op("delete", n3), Op("delete", f3), Op("replace", r2), Op("replace", n2), Op("replace", f2)
    }


def test_no_change_no_ops() -> None:
    assert plan(state(*N3, *N2), state(*N2, *N3)) == []
    assert plan(PeerState(), PeerState()) == []


def test_changed_vtep_mac_is_a_replace_of_the_neighbour() -> None:
    """A peer rebooted and published a new VtepMAC: same neighbour IP, new MAC."""
    route, old_neigh, old_fdb = N3
    _, new_neigh, new_fdb = peer("100.64.81.0/24", MAC_NEW, "198.18.0.13")
    ops = plan(state(route, new_neigh, new_fdb), state(route, old_neigh, old_fdb))
    assert ops == [Op("replace", new_neigh), Op("replace", new_fdb), Op("delete", old_fdb)]
    # Never a delete of the neighbour by IP: that would remove the entry just replaced.
    assert not any(o.action == "delete" and isinstance(o.entry, Neigh) for o in ops)
    assert apply(ops, state(route, old_neigh, old_fdb)) == state(route, new_neigh, new_fdb)


def test_changed_fdb_dst_is_a_replace() -> None:
    """The peer moved to another PublicIP with the same MAC."""
    route, neigh, fdb = N3
    moved = Fdb(MAC_N3, IPv4Address("198.18.0.99"), DEV)
    ops = plan(state(route, neigh, moved), state(route, neigh, fdb))
    assert ops == [Op("replace", moved)]


def test_changed_route_is_a_replace() -> None:
    route, neigh, fdb = N3
    direct = Route(route.dst, IPv4Address("198.18.0.13"), "abeth0", onlink=False)
    ops = plan(state(direct), state(route, neigh, fdb))
    assert ops[-1] == Op("replace", direct)
    assert Op("delete", route) not in ops  # replaced in place, not deleted (same destination)
    assert set(ops) == {Op("delete", neigh), Op("delete", fdb), Op("replace", direct)}


def test_duplicate_routes_for_one_destination_are_removed() -> None:
    route, neigh, fdb = N3
    other = Route(route.dst, IPv4Address("100.64.81.5"), DEV, onlink=True)
    ops = plan(state(route, neigh, fdb), state(route, other, neigh, fdb))
    assert ops == [Op("delete", other)]
    third = Route(route.dst, IPv4Address("198.18.0.13"), "abeth0")
    ops = plan(state(route, neigh, fdb), state(other, third, neigh, fdb))
    assert set(ops) == {Op("delete", other), Op("delete", third), Op("replace", route)}
    assert ops[-1] == Op("replace", route)


def test_second_fdb_destination_for_the_same_mac_is_removed() -> None:
    """A VXLAN FDB can hold several destinations for one MAC (``bridge fdb append``); they show up as two
    entries with the same (dev, mac). Traffic to the MAC is replicated to every destination, so the stale one
    must go, or plan() never converges (it returns [] while actual != desired)."""
    route, neigh, fdb = N3
    extra = Fdb(MAC_N3, IPv4Address("198.18.0.99"), DEV)
    desired = state(route, neigh, fdb)
    ops = plan(desired, state(route, neigh, fdb, extra))
    assert Op("delete", extra) in ops
    assert Op("delete", fdb) not in ops


def test_op_str() -> None:
    route, neigh, fdb = N3
    assert str(Op("replace", route)) == "replace route 100.64.81.0/24 via 100.64.81.0 dev flannel.1 onlink"
    assert str(Op("replace", neigh)) == "replace neigh 100.64.81.0 lladdr 2a:a3:22:0d:18:d9 dev flannel.1"
    assert str(Op("delete", fdb)) == "delete fdb 2a:a3:22:0d:18:d9 dst 198.18.0.13 dev flannel.1"
    assert describe(Route(IPv4Network("10.0.0.0/24"), IPv4Address("10.1.0.1"), "eth0")) == (
        "route 10.0.0.0/24 via 10.1.0.1 dev eth0"
    )


# --------------------------------------------------------------------------------------------
# Convergence property
# --------------------------------------------------------------------------------------------
_subnets = st.sampled_from([IPv4Network(f"100.64.{i}.0/24") for i in (1, 2, 3, 81, 85)])
_ips = st.sampled_from([IPv4Address(a) for a in ("100.64.1.0", "100.64.2.0", "100.64.81.0", "198.18.0.12")])
_macs = st.sampled_from([MAC_N3, MAC_N2, MAC_NEW, "02:00:00:00:00:01"])
_devs = st.sampled_from([DEV, "abeth0"])
_pub = st.sampled_from([IPv4Address(a) for a in ("198.18.0.12", "198.18.0.13", "198.18.0.14")])

routes = st.builds(Route, _subnets, _ips, _devs, st.booleans())
neighs = st.builds(Neigh, _ips, _macs, _devs)
fdbs = st.builds(Fdb, _macs, _pub, _devs)


def _unique_ident(entries: list[Entry]) -> frozenset[Entry]:
    seen: dict[object, Entry] = {}
    for e in entries:
        seen.setdefault(e.ident, e)
    return frozenset(seen.values())


# Desired state has one entry per kernel identity (as desired_state builds it). The actual state may hold
# several routes to one destination (other metrics / tables collapsed), but one neighbour per (dev, ip) and,
# here, one FDB entry per (dev, mac) -- the multi-destination FDB case is test_second_fdb_destination_...
desired_states = st.builds(
    lambda r, n, f: PeerState(_unique_ident(r), _unique_ident(n), _unique_ident(f)),  # type: ignore[arg-type]
    st.lists(routes, max_size=6),
    st.lists(neighs, max_size=6),
    st.lists(fdbs, max_size=6),
)
actual_states = st.builds(
    lambda r, n, f: PeerState(frozenset(r), _unique_ident(n), _unique_ident(f)),  # type: ignore[arg-type]
    st.lists(routes, max_size=8),
    st.lists(neighs, max_size=6),
    st.lists(fdbs, max_size=6),
)

ORDER = [
    ("delete", Route), ("replace", Neigh), ("replace", Fdb), ("delete", Fdb), ("delete", Neigh), ("replace", Route)
]


@settings(max_examples=500)
@given(desired=desired_states, actual=actual_states)
def test_plan_converges(desired: PeerState, actual: PeerState) -> None:
    ops = plan(desired, actual)
    result = apply(ops, actual)
    assert result == desired
    assert plan(desired, result) == []
    # Ordering: the documented category order, never going back.
    ranks = [ORDER.index((o.action, type(o.entry))) for o in ops]
    assert ranks == sorted(ranks)
    # Nothing is both deleted and replaced, no op is repeated, and nothing already right is touched.
    assert len(set(ops)) == len(ops)
    assert not any(o.action == "replace" and o.entry in actual.entries() for o in ops)
    assert not any(o.action == "delete" and o.entry in desired.entries() for o in ops)
    # A neighbour that stays (same identity) is never deleted.
    wanted_neigh_ids = {n.ident for n in desired.neighs}
    assert not any(o.action == "delete" and isinstance(o.entry, Neigh) and o.entry.ident in wanted_neigh_ids
                   for o in ops)


@settings(max_examples=300)
@given(desired=desired_states)
def test_plan_from_empty_and_to_empty(desired: PeerState) -> None:
    add = plan(desired, PeerState())
    assert all(o.action == "replace" for o in add)
    assert {o.entry for o in add} == set(desired.entries())
    remove = plan(PeerState(), desired)
    assert all(o.action == "delete" for o in remove)
    assert {o.entry for o in remove} == set(desired.entries())
    assert apply(remove, desired) == PeerState()
