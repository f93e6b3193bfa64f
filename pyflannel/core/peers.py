"""The peer table: every lease by key, which of them can be routed, and what each one calls for.

The reconciler used to recompute this from all leases on every wake-up, which made one lease
event cost O(cluster). Here each event updates one entry and re-judges only the leases it can
affect, so a put or delete costs O(log n) plus the few leases that overlap it.

Which leases are routed (the rule is order-free, so it can be decided per lease):

* per lease, without looking at others: inside the Network, not over our own subnet, not over
  a prefix of the node's LAN, a unicast PublicIP that is not ours, the same BackendType as ours
  (others are foreign, skipped silently), and BackendData the backend can use;
* among the leases that pass, two that overlap cannot both be routed. A lease is routed when no
  overlapping lease has priority over it. Priority: node-sized leases (the config's SubnetLen)
  first, then lower network address, then shorter prefix, then key. Every node's lease has the
  node size, so a /23 that someone wrote over a node's /24 can never cut that node off.

Two CIDR blocks overlap only if one contains the other, so the overlap index is a dict of
blocks (for "who contains me": at most one look-up per shorter prefix length) plus a sorted
list of block starts (for "whom do I contain": one bisect).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

from pyflannel.core.lease import Lease
from pyflannel.core.model import Entry

Net = IPv4Network | IPv6Network
# (family, first address, last address, the network) of a block, for the per-lease checks.
_FamSpan = tuple[int, int, int, Net]
_Spans = tuple[dict[int, list[tuple[int, int, Net]]], list[_FamSpan], list[_FamSpan]]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one lease gets: entries when routed, else the reason (empty for a silently skipped one)."""

    entries: tuple[Entry, ...] = ()
    rejected: str = ""

    @property
    def routed(self) -> bool:
        return not self.rejected and bool(self.entries)


SKIPPED = Verdict()
# (entries, rejected reason) for one lease that passed the table's own checks.
EntriesFor = Callable[[Lease], tuple[tuple[Entry, ...], str]]


def _span(net: Net) -> tuple[int, int]:
    lo = int(net.network_address)
    return lo, lo + (1 << (net.max_prefixlen - net.prefixlen)) - 1


class _BlockIndex:
    """Candidate blocks of one address family, for overlap queries."""

    __slots__ = ("bits", "blocks", "plens", "starts")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.blocks: dict[tuple[int, int], set[str]] = {}
        self.starts: list[tuple[int, int, str]] = []  # (network int, prefixlen, key), sorted
        # How many blocks of each prefix length: a "who contains me" query only looks at lengths that exist
        # (a cluster holds one or two), not at every length up to its own.
        self.plens: dict[int, int] = {}

    def add(self, key: str, lo: int, plen: int) -> None:
        keys = self.blocks.setdefault((lo, plen), set())
        if key not in keys:
            keys.add(key)
            self.plens[plen] = self.plens.get(plen, 0) + 1
        bisect.insort(self.starts, (lo, plen, key))

    def remove(self, key: str, lo: int, plen: int) -> None:
        keys = self.blocks.get((lo, plen))
        if keys is not None and key in keys:
            keys.discard(key)
            if not keys:
                del self.blocks[(lo, plen)]
            n = self.plens[plen] - 1
            if n:
                self.plens[plen] = n
            else:
                del self.plens[plen]
        i = bisect.bisect_left(self.starts, (lo, plen, key))
        if i < len(self.starts) and self.starts[i] == (lo, plen, key):
            del self.starts[i]

    def add_many(self, items: Iterable[tuple[str, int, int]]) -> None:
        """``add`` for each (key, lo, plen), sorting the starts once instead of inserting one at a time."""
        blocks, plens = self.blocks, self.plens
        for key, lo, plen in items:
            keys = blocks.setdefault((lo, plen), set())
            if key not in keys:
                keys.add(key)
                plens[plen] = plens.get(plen, 0) + 1
                self.starts.append((lo, plen, key))
        self.starts.sort()

    def overlapping(self, lo: int, plen: int) -> Iterable[str]:
        """Keys of every block that overlaps (lo/plen), itself included."""
        bits = self.bits
        blocks = self.blocks
        for p in self.plens:  # blocks that contain it (same block included)
            if p <= plen:
                mask = ((1 << p) - 1) << (bits - p) if p else 0
                keys = blocks.get((lo & mask, p))
                if keys:
                    yield from keys
        hi = lo + (1 << (bits - plen)) - 1
        i = bisect.bisect_left(self.starts, (lo, plen + 1, ""))
        starts = self.starts
        while i < len(starts) and starts[i][0] <= hi:  # blocks inside it (longer prefixes)
            if starts[i][1] > plen:
                yield starts[i][2]
            i += 1


class PeerTable:
    """Leases by key and the verdict of each; updated one event at a time.

    ``entries_for`` is the backend's per-peer builder. ``own`` is our lease (never a peer).
    """

    def __init__(
        self,
        networks: Iterable[Net],
        protected: Iterable[Net],
        prefer_len: int,
        backend_type: str,
        entries_for: EntriesFor,
        own: Lease | None = None,
    ) -> None:
        self.networks = tuple(networks)
        self.protected = tuple(protected)
        self.prefer_len = prefer_len
        self.backend_type = backend_type
        self.entries_for = entries_for
        self.own = own
        self.leases: dict[str, Lease] = {}
        self.verdicts: dict[str, Verdict] = {}
        self._index = {4: _BlockIndex(32), 6: _BlockIndex(128)}
        self._spans = self._compute_spans()
        self._why: dict[str, str | None] = {}  # per key: None skipped, "" candidate, else why refused
        # Keys that passed the per-lease checks, with what the backend built for them.
        self._candidate: dict[str, tuple[Entry, ...]] = {}
        # When each key's lease arrived or its entries last changed: where two leases want one kernel object
        # (the same VtepMAC, say) the newer one gets it, as in Go flanneld, whose last event wins.
        self._seq: dict[str, int] = {}
        self._next_seq = 0

    # --- per-lease checks -------------------------------------------------------------------

    def _subnets(self, le: Lease) -> tuple[Net, ...]:
        return le.subnets

    def _check(self, key: str, le: Lease) -> str | None:
        """None: skip silently; "": passes (and is a candidate); else the reason it is refused."""
        if self._is_own(key, le):
            return None
        why = self._own_checks(le)
        if why != "":
            return why
        entries, reason = self.entries_for(le)
        if reason:
            return reason
        self._candidate[key] = entries
        return ""

    def _compute_spans(self) -> _Spans:
        """The Network(s), our subnets and the protected node networks as integer spans: ipaddress's
        subnet_of/overlaps cost microseconds each, and a join runs these checks for every lease."""
        nets: dict[int, list[tuple[int, int, Net]]] = {}
        for n in self.networks:
            nets.setdefault(n.version, []).append((*_span(n), n))
        own = self.own
        mine: list[_FamSpan] = [(int(n.version), *_span(n), n) for n in (self._subnets(own) if own is not None else ())]
        prot: list[_FamSpan] = [(int(n.version), *_span(n), n) for n in self.protected]
        return nets, mine, prot

    def _own_checks(self, le: Lease) -> str | None:
        if le.attrs.backend_type != self.backend_type:
            return None
        own = self.own
        nets, mine, prot = self._spans
        for sn in self._subnets(le):
            lo, hi = _span(sn)
            v = sn.version
            fam = nets.get(v)
            if fam and not any(nlo <= lo and hi <= nhi for nlo, nhi, _ in fam):
                return f"subnet {sn} is outside the Network {fam[0][2]}"
            for mv, mlo, mhi, m in mine:
                if mv == v and mlo <= hi and lo <= mhi:
                    return f"subnet {sn} overlaps our own subnet {m}"
            for pv, plo, phi, p in prot:
                if pv == v and plo <= hi and lo <= phi:
                    return f"subnet {sn} overlaps the node network {p}"
        pub = le.attrs.public_ip
        if own is not None and pub == own.attrs.public_ip and int(pub) != 0:
            return f"PublicIP {pub} is our own"
        pub6 = le.attrs.public_ipv6
        if own is not None and int(pub) == 0 and pub6 is not None and pub6 == own.attrs.public_ipv6:
            return f"PublicIPv6 {pub6} is our own"
        v6_only = int(pub) == 0 and le.attrs.public_ipv6 is not None  # an IPv6-only node publishes 0.0.0.0
        if (int(pub) == 0 or pub.is_multicast or pub.is_loopback) and not v6_only:
            return f"PublicIP {pub} is not a unicast host address"
        return ""

    def _priority(self, key: str) -> tuple[int, int, int, int, str]:
        # The primary subnet: IPv4, or IPv6 for an IPv6-only lease (``prefer_len`` is then the IPv6SubnetLen).
        sn = self.leases[key].primary
        return (0 if sn.prefixlen == self.prefer_len else 1, sn.version, int(sn.network_address), sn.prefixlen, key)

    # --- index ------------------------------------------------------------------------------

    def _index_op(self, key: str, le: Lease, add: bool) -> None:
        for sn in self._subnets(le):
            lo, _ = _span(sn)
            idx = self._index[sn.version]
            if add:
                idx.add(key, lo, sn.prefixlen)
            else:
                idx.remove(key, lo, sn.prefixlen)

    def _overlapping(self, le: Lease) -> set[str]:
        out: set[str] = set()
        for sn in self._subnets(le):
            lo, _ = _span(sn)
            out.update(self._index[sn.version].overlapping(lo, sn.prefixlen))
        return out

    # --- updates ----------------------------------------------------------------------------

    def put(self, key: str, lease: Lease) -> set[str]:
        """Add or replace one lease; returns the keys whose verdict changed."""
        old = self.leases.get(key)
        if old is not None and old == lease:
            return set()
        before = self._candidate.get(key)
        affected = self._drop(key)
        self.leases[key] = lease
        why = self._check(key, lease)
        self._why[key] = why
        # Newer only when what it wants changed: a change the reconciler is not told about (the verdict
        # stays the same) must not make the next full pass hand it a contested object.
        if old is None or self._candidate.get(key) != before:
            self._stamp(key)
        overlaps: set[str] | None = None
        if why == "":
            self._index_op(key, lease, True)
            overlaps = self._overlapping(lease)
            affected |= overlaps
        affected.add(key)
        # The new lease's overlaps were just looked up; judging it must not look them up again (the index
        # does not change in between).
        return self._rejudge(affected, key, overlaps)

    def remove(self, key: str) -> set[str]:
        """Forget one lease; returns the keys whose verdict changed (the removed one included)."""
        if key not in self.leases:
            return set()
        affected = self._drop(key)
        del self.leases[key]
        self._why.pop(key, None)
        self._seq.pop(key, None)
        changed = self._rejudge(affected - {key})
        if self.verdicts.pop(key, SKIPPED) != SKIPPED:
            changed.add(key)
        return changed

    def replace_all(self, leases: Iterable[tuple[str, Lease]]) -> set[str]:
        """A resync: the whole set. Returns the keys whose verdict changed."""
        new = dict(leases)
        if not self.leases:
            return self._load(new)
        changed: set[str] = set()
        for key in [k for k in self.leases if k not in new]:
            changed |= self.remove(key)
        for key, le in new.items():
            changed |= self.put(key, le)
        return changed

    def _load(self, new: dict[str, Lease]) -> set[str]:
        """Fill an empty table (a node's first listing): every lease checked, the candidates indexed in one
        go, then each judged once, instead of re-judging the overlaps of every lease as it is put."""
        by_family: dict[int, list[tuple[str, int, int]]] = {4: [], 6: []}
        for key, le in new.items():
            self.leases[key] = le
            if key not in self._seq:  # set_own reloads the table: the arrival order stays
                self._stamp(key)
            self._why[key] = why = self._check(key, le)
            if why == "":
                for sn in self._subnets(le):
                    by_family[sn.version].append((key, _span(sn)[0], sn.prefixlen))
        for version, items in by_family.items():
            if items:
                self._index[version].add_many(items)
        return self._rejudge(new)  # in the listing's order, so the verdicts' order does not depend on hashing

    def set_own(self, own: Lease | None) -> set[str]:
        """Our lease changed: every verdict is judged again. Returns the keys that changed."""
        self.own = own
        self._spans = self._compute_spans()
        leases = list(self.leases.items())
        self.leases.clear()
        self._candidate.clear()
        self._index = {4: _BlockIndex(32), 6: _BlockIndex(128)}
        before = self.verdicts
        self.verdicts = {}
        self._why.clear()
        self._load(dict(leases))
        keys = before.keys() | self.verdicts.keys()
        return {k for k in keys if before.get(k, SKIPPED) != self.verdicts.get(k, SKIPPED)}

    def _is_own(self, key: str, le: Lease) -> bool:
        return self.own is not None and le.subnet == self.own.subnet and le.subnet6 == self.own.subnet6

    def _drop(self, key: str) -> set[str]:
        """Take ``key`` out of the index; returns the keys that overlapped it."""
        old = self.leases.get(key)
        if old is None or key not in self._candidate:
            return set()
        del self._candidate[key]
        self._index_op(key, old, False)
        return self._overlapping(old)

    def _stamp(self, key: str) -> None:
        self._next_seq += 1
        self._seq[key] = self._next_seq

    def seq(self, key: str) -> int:
        """When ``key``'s lease arrived or its entries last changed (larger is newer); 0 for an unknown key."""
        return self._seq.get(key, 0)

    def _rejudge(self, keys: Iterable[str], known: str | None = None,
                 known_overlaps: set[str] | None = None) -> set[str]:
        """Judge ``keys`` again; ``known_overlaps``, when given, are the overlaps of ``known``."""
        changed: set[str] = set()
        for key in keys:
            le = self.leases.get(key)
            if le is None:
                continue
            v = self._judge(key, le, known_overlaps if key == known else None)
            if self.verdicts.get(key, SKIPPED) != v:
                changed.add(key)
            if v == SKIPPED:
                self.verdicts.pop(key, None)
            else:
                self.verdicts[key] = v
        return changed

    def _judge(self, key: str, le: Lease, overlaps: set[str] | None = None) -> Verdict:
        why = self._why.get(key)
        if why is None:
            return SKIPPED
        if why:
            return Verdict(rejected=why)
        mine = self._priority(key)
        # Name the peer that wins, not the first one met: set order depends on insertion history and on
        # the string hash seed, and the same leases must give the same message however they arrived.
        others = self._overlapping(le) if overlaps is None else overlaps
        winner = min((p for o in others if o != key and o in self._candidate
                      if (p := self._priority(o)) < mine), default=None)
        if winner is not None:
            return Verdict(rejected=f"subnet {le.name} overlaps peer {self.leases[winner[4]].name}")
        return Verdict(self._candidate[key])

    # --- reading ----------------------------------------------------------------------------

    def entries(self, key: str) -> tuple[Entry, ...]:
        v = self.verdicts.get(key)
        return v.entries if v is not None and not v.rejected else ()

    def routed(self) -> Iterable[str]:
        return (k for k, v in self.verdicts.items() if v.routed)

    def rejected(self) -> Iterable[tuple[str, str]]:
        return ((k, v.rejected) for k, v in self.verdicts.items() if v.rejected)

    def all_entries(self) -> list[Entry]:
        return [e for v in self.verdicts.values() if not v.rejected for e in v.entries]
