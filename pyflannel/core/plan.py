"""Diff desired peer state against the kernel and order the operations.

This is where all ordering rules live. On add, the neighbour and FDB entries go in before
the route: with an onlink route in place and no neighbour, the kernel would send ARP for
the gateway over the VXLAN device. On delete, the route goes first for the same reason.
A failed op needs no rollback; the next reconcile pass plans it again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pyflannel.core.model import Entry, Fdb, Neigh, PeerState, Route, WgPeer

Action = Literal["replace", "delete"]


@dataclass(frozen=True, slots=True)
class Op:
    action: Action
    entry: Entry

    def __str__(self) -> str:
        return f"{self.action} {describe(self.entry)}"


def describe(e: Entry) -> str:
    if isinstance(e, Route):
        return f"route {e.dst} via {e.via} dev {e.dev}{' onlink' if e.onlink else ''}"
    if isinstance(e, Neigh):
        return f"neigh {e.ip} lladdr {e.mac} dev {e.dev}"
    if isinstance(e, Fdb):
        return f"fdb {e.mac} dst {e.dst} dev {e.dev}"
    if isinstance(e, WgPeer):
        return f"wireguard peer {e.public_key} endpoint {e.endpoint} allowed-ips {','.join(e.allowed_ips)} dev {e.dev}"
    raise TypeError(f"unknown data-plane entry type {type(e).__name__}")


# Position of each (action, type) in a plan. Peers (WireGuard) and neighbours/FDB entries go in
# before the routes that need them and come out after the routes that used them.
_RANKS: dict[tuple[str, type], int] = {
    ("delete", Route): 0,
    ("replace", Neigh): 1,
    ("replace", Fdb): 2,
    ("replace", WgPeer): 2,
    ("delete", Fdb): 3,
    ("delete", Neigh): 4,
    ("delete", WgPeer): 4,
    ("replace", Route): 5,
}


def _rank(op: Op) -> int:
    try:
        return _RANKS[(op.action, type(op.entry))]
    except KeyError:
        raise TypeError(f"unknown data-plane entry type {type(op.entry).__name__}") from None


def plan(desired: PeerState, actual: PeerState) -> list[Op]:
    """The operations that turn ``actual`` into ``desired``, in a safe order.

    Order: delete routes; replace neighbours; replace FDB entries; delete FDB entries;
    delete neighbours; replace routes.
    """
    ops = diff(desired.entries(), actual.entries())
    # Only the rank matters; ordering within a rank by text cost ~15 000 string formats per 5000 peers.
    return sorted(ops, key=_rank)


def diff(desired: Iterable[Entry], actual: Iterable[Entry]) -> list[Op]:
    want: dict[object, Entry] = {e.ident: e for e in desired}
    have: dict[object, list[Entry]] = {}
    for e in actual:
        have.setdefault(e.ident, []).append(e)
    ops: list[Op] = []
    for ident, e in want.items():
        cur = have.get(ident, [])
        if cur != [e]:
            # Extra copies under one identity (a route with another metric, a second FDB dst
            # appended for one MAC) are removed. A single differing copy is only replaced:
            # deleting it afterwards would remove the replacement (neighbours are keyed by IP).
            if len(cur) > 1:
                ops.extend(Op("delete", c) for c in cur if c != e)
            if e not in cur:
                ops.append(Op("replace", e))
    for ident, cur in have.items():
        if ident not in want:
            ops.extend(Op("delete", c) for c in cur)
    return ops


def plan_entries(desired: Iterable[Entry], actual: Iterable[Entry]) -> list[Op]:
    """:func:`plan` over plain entry lists (any entry type the ranks know)."""
    return sorted(diff(desired, actual), key=_rank)


def order(ops: Iterable[Op]) -> list[Op]:
    """Ops in the safe order (see the module docstring)."""
    return sorted(ops, key=_rank)
