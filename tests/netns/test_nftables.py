"""The nftables Firewall on a real kernel: same tables as Go flanneld v0.28.9, drift repair, clean-up, mode switch.

Every test works inside network namespaces made for it (``{prefix}-*``); nft and iptables only ever touch
those namespaces' netfilter state. The Firewall runs in a Python child inside the namespace
(``support.nft.firewall``), because nft acts on the namespace of the process that runs it.

The comparison with Go flanneld starts the real binary (build/testdeps/flanneld, built by the Makefile)
against a real etcd in a two-node cluster: Go writes its tables on n1, pyflannel writes the same spec
on n2, and ``nft -j list ruleset`` of both must match table, chain and rule for rule (handles aside).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network, ip_interface
from pathlib import Path
from typing import Any

import pytest
from support.checks import wait_for
from support.cluster import Cluster, Node
from support.nft import (
    FLANNEL_TABLES,
    GO_FLANNELD,
    IPTABLES_MISSING,
    NFT_MISSING,
    firewall,
    flannel_tables,
    have,
    hidden_iptables,
    iptables_restore,
    iptables_save,
    python_in,
    ruleset,
    run_in,
    spec_code,
    tables_of,
)

from pyflannel.core.rules import forward_chain, masq_chain, render_restore

FLANNELCTL = str(Path(sys.executable).parent / "flannelctl")
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not have("nft"), reason=NFT_MISSING),
]

NETWORK, SUBNET = "100.64.0.0/16", "100.64.7.0/24"
NETWORK6, SUBNET6 = "fd64::/56", "fd64:0:0:7::/64"
SPEC4: dict[str, Any] = {"network": NETWORK, "subnet": SUBNET, "ip_masq": True}
SPEC46: dict[str, Any] = {**SPEC4, "network6": NETWORK6, "subnet6": SUBNET6}


@pytest.fixture
def bare_ns(netns_prefix: str) -> Iterator[str]:
    """One empty network namespace (no links but lo): enough for rules that are only written and read."""
    ns = f"{netns_prefix}-n1"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)


def chains(tables: dict[tuple[str, str], list[dict[str, Any]]], table: str) -> dict[str, list[list[Any]]]:
    """chain name -> list of rule expression lists, for one table of :func:`support.nft.tables_of`."""
    out: dict[str, list[list[Any]]] = {}
    for (_, name), objs in tables.items():
        if name != table:
            continue
        for o in objs:
            if "chain" in o:
                out.setdefault(o["chain"]["name"], [])
            elif "rule" in o:
                out[o["rule"]["chain"]].append(o["rule"]["expr"])
    return out


# --- (a) the same kernel state as Go flanneld v0.28.9 ----------------------------------------------------


CONFIG4 = '{"Network": "100.64.0.0/16", "SubnetLen": 24, "EnableNFTables": true, "Backend": {"Type": "vxlan"}}'
CONFIG46 = ('{"Network": "100.64.0.0/16", "SubnetLen": 24, "EnableIPv6": true, "IPv6Network": "fd64::/56", '
            '"IPv6SubnetLen": 64, "EnableNFTables": true, "Backend": {"Type": "vxlan"}}')


@pytest.mark.skipif(not GO_FLANNELD.exists(), reason=f"needs Go flanneld v0.28.9 at {GO_FLANNELD} (make testdeps)")
@pytest.mark.parametrize(
    ("dual", "random_disable"),
    [(False, False), (False, True), (True, False)],
    ids=["ipv4", "ipv4-fully-random-disabled", "dual-stack"],
)
def test_tables_equal_go_flanneld(make_cluster: Callable[..., Cluster], dual: bool, random_disable: bool) -> None:
    c = make_cluster(nodes=2)
    n1, n2 = c.nodes
    c.start_etcd()
    c.put_config(CONFIG46 if dual else CONFIG4)
    if dual:
        # The test bed disables IPv6 in node namespaces; Go flanneld needs an IPv6 address on -iface.
        run_in(n1.ns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.eth0.disable_ipv6=0"])
        run_in(n1.ns, ["ip", "-6", "addr", "add", "fd18::11/64", "dev", "eth0", "nodad"])
    extra = ["-ip-masq-fully-random-disable"] if random_disable else []
    c.start_flanneld(n1, extra, binary=GO_FLANNELD)
    env = c.wait_subnet_env(n1)
    tables_with_chains = ("flannel-ipv4", "flannel-ipv6") if dual else ("flannel-ipv4",)

    def go_done() -> dict[tuple[str, str], list[dict[str, Any]]] | None:
        t = flannel_tables(n1.ns)
        for name in tables_with_chains:
            ch = chains(t, name)
            if len(ch.get("postrtg", [])) != 6 or len(ch.get("forward", [])) != 2:
                return None
        return t

    go = wait_for(go_done, 30, "Go flanneld's nftables tables")
    spec: dict[str, Any] = {
        "network": env["FLANNEL_NETWORK"],
        "subnet": str(ip_interface(env["FLANNEL_SUBNET"]).network),
        "ip_masq": True,
        "random_fully": not random_disable,
    }
    if dual:
        spec["network6"] = env["FLANNEL_IPV6_NETWORK"]
        spec["subnet6"] = str(ip_interface(env["FLANNEL_IPV6_SUBNET"]).network)
    assert firewall(n2.ns, "nftables", "ensure", spec) is True
    ours = flannel_tables(n2.ns)

    assert sorted(ours) == sorted(go) == [("ip", "flannel-ipv4"), ("ip6", "flannel-ipv6")]
    for key in go:
        g = [o for o in go[key] if "rule" not in o]
        o_ = [o for o in ours[key] if "rule" not in o]
        assert o_ == g, f"{key}: table/chain objects differ"
        assert chains(ours, key[1]) == chains(go, key[1]), f"{key}: rules differ"
    assert ours == go
    # What Go flanneld wrote reads back as exactly what our missing() expects: no rewrite on adoption.
    assert firewall(n1.ns, "nftables", "missing", spec) == []
    if not dual:
        c.stop_flanneld(n1)  # SIGTERM leaves the tables; doctor now sees what Go flanneld left
        checks = doctor(c, n1)
        assert checks["firewall_mode"] == ("ok", "nftables (tables flannel-ipv4, flannel-ipv6)")
        assert checks["forward_rules"][0] == "ok" and checks["masquerade"][0] == "ok", checks
        run_in(n1.ns, ["nft", "flush", "chain", "ip", "flannel-ipv4", "postrtg"])
        assert doctor(c, n1)["masquerade"] == ("fail", "nftables: chain flannel-ipv4/postrtg: 6 rule(s) missing")
    c.stop_flanneld(n1)


def doctor(c: Cluster, node: Node) -> dict[str, tuple[str, str]]:
    """flannelctl doctor --json in the node's namespace: check name -> (level, detail)."""
    p = c.exec(node.ns, [FLANNELCTL, f"-etcd-endpoints={c.etcd_endpoint}", f"-subnet-file={node.subnet_file}",
                         "doctor", "--json"], check=False, timeout=60)
    return {ch["name"]: (ch["level"], ch["detail"]) for ch in json.loads(p.stdout)["checks"]}


# --- (b) drift repair -------------------------------------------------------------------------------------


@pytest.mark.parametrize("victim", ["ip flannel-ipv4", "ip6 flannel-ipv6"])
def test_deleted_table_comes_back(bare_ns: str, victim: str) -> None:
    assert firewall(bare_ns, "nftables", "ensure", SPEC46) is True
    before = flannel_tables(bare_ns)
    assert firewall(bare_ns, "nftables", "ensure", SPEC46) is False  # nothing drifted: nothing written
    run_in(bare_ns, ["nft", "delete", "table", *victim.split()])
    assert firewall(bare_ns, "nftables", "missing", SPEC46) == [f"table {victim} is missing"]
    assert firewall(bare_ns, "nftables", "ensure", SPEC46) is True
    assert firewall(bare_ns, "nftables", "missing", SPEC46) == []
    assert flannel_tables(bare_ns) == before


def test_changed_rule_and_foreign_chain_are_repaired(bare_ns: str) -> None:
    firewall(bare_ns, "nftables", "ensure", SPEC46)
    want = flannel_tables(bare_ns)
    run_in(bare_ns, ["nft", "flush", "chain", "ip", "flannel-ipv4", "forward"])
    run_in(bare_ns, ["nft", "add", "chain", "ip6", "flannel-ipv6", "extra"])
    assert firewall(bare_ns, "nftables", "missing", SPEC46) == [
        "chain flannel-ipv4/forward: 2 rule(s) missing",
        "chain flannel-ipv6/extra is not flannel's",
    ]
    assert firewall(bare_ns, "nftables", "ensure", SPEC46) is True
    assert flannel_tables(bare_ns) == want


def test_spec_change_rewrites_rules(bare_ns: str) -> None:
    firewall(bare_ns, "nftables", "ensure", SPEC4)
    moved = {**SPEC4, "subnet": "100.64.9.0/24"}
    assert firewall(bare_ns, "nftables", "missing", moved) == [
        "chain flannel-ipv4/postrtg: rule 2 differs",
        "chain flannel-ipv4/postrtg: rule 3 differs",
        "chain flannel-ipv4/postrtg: rule 4 differs",
    ]
    assert firewall(bare_ns, "nftables", "ensure", moved) is True
    assert firewall(bare_ns, "nftables", "missing", moved) == []


def test_ipv6_tables(bare_ns: str) -> None:
    firewall(bare_ns, "nftables", "ensure", SPEC46)
    ch = chains(flannel_tables(bare_ns), "flannel-ipv6")
    assert sorted(ch) == ["forward", "postrtg"]
    masq = ch["postrtg"][4]
    assert masq[0]["match"]["right"] == {"prefix": {"addr": "fd64::", "len": 56}}
    assert masq[1]["match"] == {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "daddr"}},
                                "right": {"prefix": {"addr": "ff00::", "len": 8}}}
    assert ch["forward"][0][0]["match"]["left"]["payload"]["protocol"] == "ip6"


def test_ipv4_only_spec_leaves_empty_ipv6_table(bare_ns: str) -> None:
    """Go flanneld creates flannel-ipv6 at start even without an IPv6 network; so do we."""
    firewall(bare_ns, "nftables", "ensure", SPEC4)
    t = flannel_tables(bare_ns)
    assert t[("ip6", "flannel-ipv6")] == [{"table": {"family": "ip6", "name": "flannel-ipv6"}}]


# --- (c) clean-up and switching -------------------------------------------------------------------------


def test_cleanup_removes_our_tables_only(bare_ns: str) -> None:
    run_in(bare_ns, ["nft", "add", "table", "inet", "someone-else"])
    firewall(bare_ns, "nftables", "ensure", SPEC46)
    firewall(bare_ns, "nftables", "cleanup")
    assert sorted(tables_of(ruleset(bare_ns))) == [("inet", "someone-else")]
    firewall(bare_ns, "nftables", "cleanup")  # nothing left to remove: still fine
    assert firewall(bare_ns, "nftables", "present") == []


IPT_CHAINS = [masq_chain(IPv4Network(NETWORK), IPv4Network(SUBNET), True), forward_chain(IPv4Network(NETWORK))]
# What the iptables mode's clean-up does: drop the jumps, then flush and delete the chains (one commit per table).
IPT_CLEANUP = """\
*nat
-D POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-F FLANNEL-POSTRTG
-X FLANNEL-POSTRTG
COMMIT
*filter
-D FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-F FLANNEL-FWD
-X FLANNEL-FWD
COMMIT
"""


@pytest.mark.skipif(not have("iptables-restore"), reason=IPTABLES_MISSING)
def test_iptables_nftables_iptables_switch(bare_ns: str) -> None:
    install = render_restore(IPT_CHAINS, {(ch.table, ch.chain) for ch in IPT_CHAINS})
    iptables_restore(bare_ns, install)
    assert "FLANNEL-POSTRTG" in iptables_save(bare_ns)

    # iptables -> nftables: the iptables chains go first, then our tables come.
    iptables_restore(bare_ns, IPT_CLEANUP)
    firewall(bare_ns, "nftables", "ensure", SPEC4)
    assert "FLANNEL" not in iptables_save(bare_ns)
    assert firewall(bare_ns, "nftables", "missing", SPEC4) == []

    # nftables -> iptables
    firewall(bare_ns, "nftables", "cleanup")
    iptables_restore(bare_ns, install)
    assert not set(flannel_tables(bare_ns))
    assert iptables_save(bare_ns).count("flanneld masq") == 6


# --- (d) no iptables on the host -------------------------------------------------------------------------


def test_probe_picks_nftables_when_iptables_binaries_are_hidden(bare_ns: str) -> None:
    code = (
        "import json\n"
        "from pyflannel.adapters.nftables import NftablesFirewall, iptables_problem\n"
        "from pyflannel.core.firewall_mode import decide\n"
        + spec_code(SPEC4)
        + "problem = iptables_problem()\n"
        "d = decide(None, problem)\n"
        "fw = NftablesFirewall()\n"
        "wrote = fw.ensure(spec) if d.mode == 'nftables' and not fw.available() else None\n"
        "print(json.dumps({'problem': problem, 'mode': d.mode, 'reason': d.reason, 'wrote': wrote}))\n"
    )
    got = python_in(bare_ns, code, prefix=hidden_iptables())
    assert got["problem"] == "no iptables binary in PATH"
    assert got["mode"] == "nftables"
    assert "iptables is unusable here (no iptables binary in PATH)" in got["reason"]
    assert got["wrote"] is True
    assert firewall(bare_ns, "nftables", "missing", SPEC4) == []
    # Outside the mount namespace iptables is visible again, and the probe says so.
    if have("iptables"):
        assert python_in(bare_ns, "import json\nfrom pyflannel.adapters.nftables import iptables_problem\n"
                                  "print(json.dumps(iptables_problem()))") == ""


def test_flannel_tables_constant_matches_core() -> None:
    from pyflannel.core import nft_rules

    assert (nft_rules.TABLE4, nft_rules.TABLE6) == FLANNEL_TABLES
