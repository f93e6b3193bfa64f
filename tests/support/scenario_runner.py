"""Runs the scenarios of ``support.scenarios`` against the real kernel of the current network namespace.

The daemon is the real one with the real rtnetlink data plane and the real vxlan backend (it
creates ``flannel.1`` on ``eth0``); only the subnet manager and the firewalls are the fakes, so
no etcd and no iptables are needed. Hand changes go through a raw rtnetlink socket, as an
operator's ``ip route del`` would. An overflow cannot be provoked on demand on a real socket, so
that scenario injects the Overflow notification into the reconciler directly.

Usage (inside a node namespace, tests/ on PYTHONPATH): ``python -m support.scenario_runner NAME WORKDIR``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from pyflannel.adapters.catalog import Host
from pyflannel.adapters.nlbulk import BulkNetlink
from pyflannel.adapters.rtnl_dataplane import owned
from pyflannel.core.flags import parse_flags
from pyflannel.core.plan import Op
from pyflannel.daemon.app import Daemon
from pyflannel.ports import Overflow
from support.fakes import FakeFirewall, FakeSubnetManager
from support.scenarios import SCENARIOS, Harness

CONFIG = json.dumps({"Network": "100.64.0.0/10", "SubnetLen": 24, "Backend": {"Type": "vxlan"}})


class RealHarness(Harness):
    def __init__(self, tmp: Path) -> None:
        self.sm = FakeSubnetManager(CONFIG)
        self.host = Host()
        self.fws = {"iptables": FakeFirewall("iptables"), "nftables": FakeFirewall("nftables")}
        opts = parse_flags([f"-subnet-file={tmp / 'subnet.env'}", "-iface=eth0", "-resync-period=3600"], {})
        self.daemon = Daemon(opts, sm=self.sm, host=self.host, firewalls=self.fws)
        self.bulk = BulkNetlink()


    def _owned(self) -> Any:
        be = self.daemon.backend
        return owned(be.scope(), be.indexes())

    def kernel_entries(self) -> list[Any]:
        return self.bulk.observe_owned(self._owned())

    def _do(self, action: str, e: Any) -> None:
        failed = self.bulk.apply([Op(action, e)], self.daemon.backend.indexes())  # type: ignore[arg-type]
        assert not failed, failed

    def hand_delete(self, e: Any) -> None:
        self._do("delete", e)

    def hand_replace(self, old: Any, new: Any) -> None:
        self._do("replace", new)

    def hand_add(self, e: Any) -> None:
        self._do("replace", e)

    def overflow(self) -> None:
        self.daemon.reconciler.on_kernel([Overflow()])

    def quiet_delete(self, e: Any) -> None:
        self._do("delete", e)  # the kernel notifies anyway; the scenario's outcome is the same



async def main(name: str, workdir: Path) -> int:
    scenario = next(s for s in SCENARIOS if s.__name__ == name)
    h = RealHarness(workdir)
    await h.start()
    try:
        await scenario(h)
    finally:
        code = await h.stop()
    print(f"scenario {name}: ok, {h.daemon.reconciler.stats.passes} passes")
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], Path(sys.argv[2]))))
