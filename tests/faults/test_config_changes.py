"""The network config changes under running daemons.

An invalid config must not take a working node down: it keeps the running config and says why, in one
line. A valid but different config (another Network) cannot be applied in place: the daemon says so and
exits non-zero, so its supervisor restarts it, and the restarted daemon leaves nothing of the old
network behind on flannel.1.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from ipaddress import IPv4Interface, IPv4Network

import pytest
from support.cluster import Cluster

from .conftest import (
    CONFIG,
    CONFIG_KEY,
    SUBNETS,
    assert_alive,
    etcdctl,
    flannel_addresses,
    flanneld_log,
    kernel,
    leases,
    missing_routes,
    own_subnet,
    ping_pods,
    ping_stats,
    scenario,
    wait_converged,
    wait_for,
)

pytestmark = pytest.mark.root

INVALID = [
    ("this is { not json", "config is not valid JSON"),
    ("[]", "config must be a JSON object"),
    ('{"Network": "banana", "Backend": {"Type": "vxlan"}}', "invalid CIDR address 'banana'"),
    ('{"Network": "100.64.0.0/16", "SubnetLen": 31, "Backend": {"Type": "vxlan"}}',
     "SubnetLen must be less than /31"),
    ('{"Network": "100.64.0.0/16", "Backend": {"Type": "carrier-pigeon"}}', "unknown backend type: carrier-pigeon"),
    ('{"Network": "100.64.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": "one"}}',
     "VNI must be an integer"),
]
INVALID_LINE = f"New network config {CONFIG_KEY} is invalid, keeping the running one: "


def test_invalid_config_at_runtime_keeps_the_running_one(cluster_factory: Callable[..., Cluster]) -> None:
    with scenario("9a config changed to invalid values (6 kinds) and deleted at runtime", peers=1) as row:
        c = cluster_factory(nodes=2)
        for n in c.nodes:
            c.add_pods(n, 1)
        before = {n.name: kernel(n.ns) for n in c.nodes}
        envs = {n.name: n.subnet_file.read_text() for n in c.nodes}

        for i, (text, why) in enumerate(INVALID, 1):
            etcdctl(c, "put", CONFIG_KEY, input=text)
            for n in c.nodes:
                wait_for(lambda n=n, i=i: flanneld_log(n).count(INVALID_LINE) >= i, 10,
                         f"{n.name} to reject config {i}")
                lines = [ln for ln in flanneld_log(n).splitlines() if INVALID_LINE in ln]
                assert len(lines) == i, lines  # one line per change
                assert why in lines[-1], (why, lines[-1])
            assert_alive(c)

        etcdctl(c, "del", CONFIG_KEY)
        for n in c.nodes:
            wait_for(lambda n=n: "was deleted; continuing with the running config" in flanneld_log(n), 10,
                     f"{n.name} to notice the deleted config")
        # The same config again, spelled differently (key case, an unknown key): nothing to restart for.
        etcdctl(c, "put", CONFIG_KEY, input='{"network":"100.64.0.0/16","subnetlen":24,"Backend":{"type":"vxlan"},'
                                             '"Comment":"same network"}')
        etcdctl(c, "put", CONFIG_KEY, input=CONFIG)
        wait_converged(c)
        assert_alive(c)
        for n in c.nodes:
            assert kernel(n.ns) == before[n.name]
            assert n.subnet_file.read_text() == envs[n.name]
            assert "Network config changed" not in flanneld_log(n)
            assert "Traceback" not in flanneld_log(n)
        row.routes_lost = missing_routes(c)
        sent, lost, failed = ping_pods(c, count=3)
        row.pings_sent, row.pings_lost = sent, lost
        row.note = "each bad config: one error line with the reason, old config kept; data plane unchanged"
        assert row.routes_lost == 0 and failed == []


def test_network_change_exits_and_restart_leaves_no_old_routes(cluster_factory: Callable[..., Cluster]) -> None:
    with scenario("9b Network changed 100.64.0.0/16 -> 100.65.0.0/16 at runtime, then restart", peers=2) as row:
        c = cluster_factory(nodes=3)
        old_net = IPv4Network("100.64.0.0/16")
        new_net = IPv4Network("100.65.0.0/16")
        old = {n.name: own_subnet(c, n) for n in c.nodes}
        assert all(len(kernel(n.ns)["routes"]) == 2 for n in c.nodes)

        new_config = json.dumps({"Network": str(new_net), "SubnetLen": 24, "Backend": {"Type": "vxlan"}})
        etcdctl(c, "put", CONFIG_KEY, input=new_config)
        for n in c.nodes:
            proc = c.flanneld_process(n)
            assert proc is not None
            # Each node restarts after its own random delay (0-30 s), so a cluster does not restart at once.
            rc = proc.wait(timeout=45)
            assert rc == 1, f"{n.name}: flanneld exited with {rc}, want 1 (so a supervisor restarts it)"
            assert "a random delay, so that nodes do not all restart at once" in flanneld_log(n)
            assert "Network config changed (Network 100.64.0.0/16 -> 100.65.0.0/16" in flanneld_log(n)

        for n in c.nodes:  # what systemd's Restart=on-failure does
            c.start_flanneld(n)
        for n in c.nodes:
            wait_for(lambda n=n: "FLANNEL_NETWORK=100.65.0.0/16" in n.subnet_file.read_text(), 20,
                     f"{n.name}: subnet file for the new network")
        wait_converged(c)
        assert_alive(c)

        ls = leases(c)
        assert all(k.startswith(f"{SUBNETS}100.65.") for k in ls), f"old leases left in etcd: {sorted(ls)}"
        for n in c.nodes:
            sn = own_subnet(c, n)
            assert sn.subnet_of(new_net)
            routes = {IPv4Network(r[0]) for r in kernel(n.ns)["routes"]}
            assert len(routes) == 2 and all(r.subnet_of(new_net) for r in routes), routes
            assert not any(r.overlaps(old_net) for r in routes)
            assert [IPv4Interface(a) for a in flannel_addresses(n.ns)] == [IPv4Interface(f"{sn.network_address}/32")]
            fwd = c.exec(n.ns, ["iptables-save", "-t", "filter"]).stdout
            assert "-A FLANNEL-FWD -s 100.65.0.0/16" in fwd and "100.64.0.0/16" not in fwd
            assert "Found previously leased subnet" in flanneld_log(n)  # the old subnet.env was ignored
            assert old[n.name] != sn

        # The overlay works in the new network: each node reaches every other node's flannel.1 address.
        sent = lost = 0
        for a in c.nodes:
            for b in c.nodes:
                if a is not b:
                    s, r = ping_stats(c, a, str(own_subnet(c, b).network_address), count=3)
                    sent, lost = sent + s, lost + s - r
        row.pings_sent, row.pings_lost = sent, lost
        row.routes_lost = missing_routes(c)
        row.note = ("all 3 exited 1 with one line naming old and new Network; after restart: old leases deleted, "
                    "flannel.1 routes/address/iptables only in 100.65.0.0/16")
        assert lost == 0 and row.routes_lost == 0
