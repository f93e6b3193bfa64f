"""Leases that want the same kernel object (a shared VtepMAC): the newest gets it, in every pass.

The reconciler runs over the fake data plane without its notifications, as the real one drops its own
FDB echoes and WireGuard sends none: whatever a pass gets wrong stays wrong until the next full pass.
Random batches of puts and removes check that, after each batch, the kernel holds exactly "each
identity from the newest routed lease that wants it", that the owner maps agree, and that a full pass
changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest
from support.fakes import FakeDataplane, FakeVxlanBackend

from pyflannel.core.backends import vxlan
from pyflannel.core.lease import Lease, LeaseAttrs, VxlanData
from pyflannel.core.model import Entry, Fdb
from pyflannel.core.peers import PeerTable
from pyflannel.daemon.reconciler import Reconciler

DEV = "flannel.1"
NETS = ["100.64.2.0/24", "100.64.3.0/24", "100.64.4.0/24", "100.64.5.0/24", "100.64.6.0/23", "100.64.7.0/24",
        "100.64.9.0/24", "100.64.8.0/23"]
MACS = ["0a:00:00:00:00:01", "0a:00:00:00:00:02", "0a:00:00:00:00:03"]
OWN = Lease(IPv4Network("100.64.1.0/24"),
            LeaseAttrs(IPv4Address("198.18.0.11"), backend_type="vxlan", backend_data=VxlanData(1, MACS[0]).to_json()))


def mk(subnet: str, mac: str, host: int, v6: IPv6Address | None = None) -> Lease:
    return Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address(f"198.18.2.{host}"), public_ipv6=v6,
                                                 backend_type="vxlan", backend_data=VxlanData(1, mac).to_json()))


def key(subnet: str) -> str:
    return subnet.replace("/", "-")


def newest_wins(t: PeerTable) -> set[Entry]:
    best: dict[object, tuple[str, Entry]] = {}
    for k in t.routed():
        for e in t.entries(k):
            cur = best.get(e.ident)
            if cur is None or t.seq(k) > t.seq(cur[0]):
                best[e.ident] = (k, e)
    return {e for _, e in best.values()}


def broken_invariants(r: Reconciler, t: PeerTable) -> list[str]:
    out = []
    for ident, k in r.owner.items():
        if ident not in r.key_idents.get(k, ()):
            out.append(f"{k} owns {ident} but its idents do not list it")
        if not any(e.ident == ident for e in t.entries(k)):
            out.append(f"{k} owns {ident} but does not want it")
    for k, ids in r.key_idents.items():
        out.extend(f"{k} lists {i}, owned by {r.owner.get(i)}" for i in ids if r.owner.get(i) != k)
    return out


def make() -> tuple[PeerTable, FakeDataplane, Reconciler]:
    t = PeerTable([IPv4Network("100.64.0.0/16")], [IPv4Network("198.18.0.0/24")], 24, "vxlan",
                  lambda le: vxlan.peer_entries(le, DEV), OWN)
    dp = FakeDataplane()
    return t, dp, Reconciler(FakeVxlanBackend(), dp, t, lambda: OWN)


async def _random_batches(seed: int, shared_ips: bool, v6_only_changes: bool, failures: bool) -> None:
    rng = random.Random(seed)
    t, dp, r = make()
    await r.reconcile_once()
    for step in range(40):
        changed: set[str] = set()
        for _ in range(rng.randint(1, 3)):
            sn = rng.choice(NETS)
            k, x = key(sn), rng.random()
            if k in t.leases and x < 0.3:
                changed |= t.remove(k)
            elif k in t.leases and v6_only_changes and x < 0.45:
                # A change that leaves the entries alone (this network has no IPv6): not "newer".
                old = t.leases[k]
                v6 = IPv6Address(f"fd18::{rng.randint(1, 9)}")
                changed |= t.put(k, Lease(old.subnet, LeaseAttrs(old.attrs.public_ip, public_ipv6=v6,
                                                                 backend_type="vxlan",
                                                                 backend_data=old.attrs.backend_data)))
            else:
                host = rng.randint(20, 22) if shared_ips else NETS.index(sn) * 10 + rng.randint(20, 21)
                changed |= t.put(k, mk(sn, rng.choice(MACS), host))
        if failures and rng.random() < 0.2:
            dp.kernel.fail[("fdb", DEV, rng.choice(MACS))] = "EIO"
        r.mark(changed)
        await r.reconcile_once()
        dp.kernel.fail.clear()
        for _ in range(5):  # the failed ops' keys were marked dirty again: retry them
            if not r.dirty and not r.foreign:
                break
            await r.reconcile_once()
        want = newest_wins(t)
        where = f"seed {seed}, step {step}"
        assert set(dp.kernel.entries) == want, where
        assert broken_invariants(r, t) == [], where
        assert not r.dirty, where
        if rng.random() < 0.15:
            await r.reconcile_once(full=True)
            assert set(dp.kernel.entries) == want, f"{where}: the full pass changed the kernel"


@pytest.mark.parametrize(("shared_ips", "v6_only_changes", "failures"),
                         [(False, False, False), (True, False, False), (False, True, False), (False, False, True)],
                         ids=["distinct-ips", "shared-ips", "changes-without-new-entries", "failed-ops"])
def test_random_batches_keep_the_newest_lease_installed(shared_ips: bool, v6_only_changes: bool,
                                                        failures: bool) -> None:
    logging.disable(logging.WARNING)  # each contest logs a warning; hundreds of them here
    try:
        for seed in range(80):
            asyncio.run(_random_batches(seed, shared_ips, v6_only_changes, failures))
    finally:
        logging.disable(logging.NOTSET)


def _fdb_dsts(dp: FakeDataplane) -> list[str]:
    return sorted(str(e.dst) for e in dp.kernel.entries if isinstance(e, Fdb))


def test_owner_replaced_by_a_new_key_in_one_batch() -> None:
    # A and B share a MAC, B (newer) has the FDB entry. In one batch B goes and C comes: B's node under
    # a new subnet, with B's MAC and PublicIP. The entry must end at C's PublicIP, though it passes through
    # A on the way (B lets go first, then C takes it from A).
    async def go() -> None:
        t, dp, r = make()
        await r.reconcile_once()
        mac = MACS[2]
        for sn, host in (("100.64.2.0/24", 14), ("100.64.3.0/24", 15)):
            r.mark(t.put(key(sn), mk(sn, mac, host)))
            await r.reconcile_once()
        assert _fdb_dsts(dp) == ["198.18.2.15"]
        r.mark(t.remove("100.64.3.0-24") | t.put("100.64.4.0-24", mk("100.64.4.0/24", mac, 15)))
        await r.reconcile_once()
        assert _fdb_dsts(dp) == ["198.18.2.15"]
        assert r.owner[("fdb", DEV, mac)] == "100.64.4.0-24"
        r.mark(t.remove("100.64.4.0-24"))
        await r.reconcile_once()
        assert _fdb_dsts(dp) == ["198.18.2.14"]  # back to A, the only one left
    asyncio.run(go())


def test_remove_and_identical_add_in_one_batch_keeps_the_entry() -> None:
    # A node's lease moves to another subnet (a podCIDR change) with the same MAC and PublicIP: the old
    # key lets go of the FDB entry and the new key wants the very same entry, in one batch.
    async def go() -> None:
        t, dp, r = make()
        await r.reconcile_once()
        mac = MACS[1]
        r.mark(t.put("100.64.2.0-24", mk("100.64.2.0/24", mac, 14)))
        await r.reconcile_once()
        r.mark(t.remove("100.64.2.0-24") | t.put("100.64.5.0-24", mk("100.64.5.0/24", mac, 14)))
        await r.reconcile_once()
        assert set(dp.kernel.entries) == set(vxlan.peer_entries(mk("100.64.5.0/24", mac, 14), DEV)[0])
    asyncio.run(go())


def test_a_known_contest_is_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        t, dp, r = make()
        mac = MACS[1]
        t.replace_all([(key(sn), mk(sn, mac, h)) for sn, h in (("100.64.2.0/24", 14), ("100.64.3.0/24", 15))])
        await r.reconcile_once()  # the first full pass finds the contest
        await r.reconcile_once(full=True)  # the resync timer's pass: nothing new
        r.mark(t.put("100.64.4.0-24", mk("100.64.4.0/24", mac, 16)))  # a third lease joins it
        await r.reconcile_once()
        await r.reconcile_once(full=True)
    with caplog.at_level(logging.DEBUG, logger="pyflannel"):
        asyncio.run(go())
    warned = [rec.getMessage() for rec in caplog.records
              if rec.levelno == logging.WARNING and "is wanted by" in rec.getMessage()]
    assert warned == [
        "fdb 0a:00:00:00:00:02 dst 198.18.2.15 dev flannel.1 is wanted by leases 100.64.2.0-24, 100.64.3.0-24; "
        "using the newest, 100.64.3.0-24",
        "fdb 0a:00:00:00:00:02 dst 198.18.2.16 dev flannel.1 is wanted by leases 100.64.2.0-24, 100.64.3.0-24, "
        "100.64.4.0-24; using the newest, 100.64.4.0-24",
    ]
