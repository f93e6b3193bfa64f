"""The daemon's logic over stateful fakes of its ports: no root, no kernel, milliseconds per scenario.

Each scenario starts a real ``Daemon`` (the same code flanneld runs) with the fake subnet
manager, data plane, backend and firewalls from ``support.fakes``, drives it by changing the
fakes' state, and checks the fake kernel's state. ``tests/netns/test_scenarios_real.py``
runs the same scenario list over the real data plane in a network namespace.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from support.fakes import (
    FakeDataplane,
    FakeFirewall,
    FakeHost,
    FakeKernel,
    FakeSubnetManager,
    FakeVxlanBackend,
    entries_of,
    peer,
)
from support.scenarios import SCENARIOS, Harness

from pyflannel.core.flags import parse_flags
from pyflannel.daemon.app import Daemon

CONFIG = json.dumps({"Network": "100.64.0.0/10", "SubnetLen": 24, "Backend": {"Type": "vxlan"}})


class FakeHarness(Harness):
    def __init__(self, tmp: Path, kernel: FakeKernel | None = None) -> None:
        self.tmp = tmp
        self.sm = FakeSubnetManager(CONFIG)
        self.dp = FakeDataplane(kernel)
        self.backend = FakeVxlanBackend()
        self.fws = {"iptables": FakeFirewall("iptables"), "nftables": FakeFirewall("nftables")}
        opts = parse_flags([f"-subnet-file={tmp / 'subnet.env'}", "-ip-masq", "-resync-period=3600"], {})
        self.daemon = Daemon(opts, sm=self.sm, host=FakeHost(self.dp), firewalls=self.fws, backend=self.backend)


    def kernel_entries(self) -> list:
        return list(self.dp.kernel.entries)

    def hand_delete(self, e) -> None:
        self.dp.hand_delete(e)

    def hand_replace(self, old, new) -> None:
        self.dp.hand_replace(old, new)

    def hand_add(self, e) -> None:
        self.dp.hand_add(e)

    def overflow(self) -> None:
        self.dp.overflow()

    def quiet_delete(self, e) -> None:
        self.dp.quiet_delete(e)



def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_scenario_over_fakes(scenario: Callable[[Harness], Awaitable[None]], tmp_path: Path) -> None:
    async def go() -> None:
        h = FakeHarness(tmp_path)
        await h.start()
        try:
            await scenario(h)
        finally:
            assert await h.stop() == 0
    run(go())


def test_one_event_plans_only_that_peer(tmp_path: Path) -> None:
    async def go() -> None:
        h = FakeHarness(tmp_path)
        h.sm.leases.update({p.key_name: p for p in (peer(n) for n in range(2, 1002))})
        await h.start()
        assert len(h.dp.kernel.entries) == 3000
        calls, ops = h.dp.apply_calls, h.dp.applied_ops
        h.put(peer(2000))
        await h.settle(lambda: entries_of(peer(2000)) <= set(h.dp.kernel.entries))
        assert h.dp.applied_ops - ops == 3  # the new peer's neighbour, FDB entry and route; nothing else
        assert h.dp.apply_calls - calls == 1
        assert h.dp.observes == 1  # no dump after the first full pass
        await h.stop()
    run(go())


def test_burst_of_5000(tmp_path: Path) -> None:
    async def go() -> None:
        h = FakeHarness(tmp_path)
        await h.start()
        h.put(*[peer(n, plen=29) for n in range(64, 5064)])
        await h.settle()
        assert len(h.dp.kernel.entries) == 15000
        assert h.daemon.reconciler is not None and h.daemon.reconciler.stats.desired_peers == 5000
        h.delete(*[peer(n, plen=29).key_name for n in range(64, 5064)])
        await h.settle()
        assert h.dp.kernel.entries == []
        await h.stop()
    run(go())


def test_restart_removes_peers_that_left_while_down(tmp_path: Path) -> None:
    async def go() -> None:
        kernel = FakeKernel()
        h = FakeHarness(tmp_path, kernel)
        h.sm.leases.update({p.key_name: p for p in (peer(2), peer(3))})
        await h.start()
        await h.stop()
        assert len(kernel.entries) == 6
        h2 = FakeHarness(tmp_path, kernel)  # same kernel, peer 3 left meanwhile
        h2.sm.leases[peer(2).key_name] = peer(2)
        await h2.start()
        assert set(kernel.entries) == entries_of(peer(2))
        assert await h2.stop() == 0
    run(go())


def test_firewall_mode_switches_in_place(tmp_path: Path) -> None:
    async def go() -> None:
        h = FakeHarness(tmp_path)
        await h.start()
        assert h.fws["iptables"].spec is not None and h.fws["nftables"].spec is None
        h.sm.change_config(json.dumps({"Network": "100.64.0.0/10", "SubnetLen": 24, "EnableNFTables": True,
                                       "Backend": {"Type": "vxlan"}}))
        for _ in range(200):
            await asyncio.sleep(0.005)
            if h.fws["nftables"].spec is not None:
                break
        assert h.fws["nftables"].spec is not None
        assert h.fws["iptables"].spec is None and h.fws["iptables"].cleanups >= 1
        assert not h.daemon.stop.is_set()  # no restart for a firewall-mode change
        await h.stop()
    run(go())


def test_network_change_restarts_after_a_random_delay(tmp_path: Path) -> None:
    async def go() -> None:
        h = FakeHarness(tmp_path)
        import pyflannel.daemon.app as app

        app.RESTART_SPREAD = 0.05
        try:
            await h.start()
            h.sm.change_config(json.dumps({"Network": "100.96.0.0/12", "Backend": {"Type": "vxlan"}}))
            assert h.task is not None
            code = await asyncio.wait_for(h.task, 5)
            assert code == 1
        finally:
            app.RESTART_SPREAD = 30.0
    run(go())


def test_no_task_left_running_after_stop(tmp_path: Path) -> None:
    async def go() -> None:
        h = FakeHarness(tmp_path)
        h.sm.leases[peer(2).key_name] = peer(2)
        await h.start()
        assert await h.stop() == 0
        await asyncio.sleep(0)
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert left == [], f"tasks left running: {[t.get_name() for t in left]}"
        assert h.sm.closed and h.backend.closed
    run(go())


def test_failed_ops_are_retried(tmp_path: Path) -> None:
    async def go() -> None:
        h = FakeHarness(tmp_path)
        await h.start()
        p = peer(5)
        route = next(e for e in entries_of(p) if type(e).__name__ == "Route")
        h.dp.kernel.fail[route.ident] = "Network is unreachable"
        h.put(p)
        await h.settle(lambda: h.daemon.reconciler is not None and h.daemon.reconciler.stats.netlink_errors > 0)
        assert route not in h.dp.kernel.entries
        del h.dp.kernel.fail[route.ident]
        await h.settle(lambda: route in h.dp.kernel.entries)
        await h.stop()
    run(go())
