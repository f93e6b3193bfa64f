"""The iptables Firewall port against the real kernel, in a network namespace of its own.

IPv4 and IPv6 chains as flanneld v0.20.2 writes them, the cheap probe (missing) seeing hand-made
drift, a resync that mends it, chains removed when the spec stops calling for them, cleanup, and
20,000 foreign rules in nat and filter left alone. The old RuleManager API keeps working.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Network, IPv6Network

import pytest

from pyflannel.adapters import iptables as ipt
from pyflannel.adapters.iptables import IptablesError, IptablesFirewall, NoSuchChain, RuleManager
from pyflannel.core.rules import forward_chain, masq_chain
from pyflannel.ports import FirewallSpec

pytestmark = pytest.mark.root

NET = IPv4Network("100.64.0.0/16")
SUB = IPv4Network("100.64.9.0/24")
NET6 = IPv6Network("fd64::/56")
SUB6 = IPv6Network("fd64:0:0:9::/64")
SPEC = FirewallSpec(network=NET, subnet=SUB, network6=NET6, subnet6=SUB6, ip_masq=True, forward=True)
FOREIGN = 20_000


@pytest.fixture
def ns(netns_prefix: str) -> Iterator[str]:
    for b in ("iptables", "iptables-restore", "ip6tables", "ip6tables-restore"):
        if shutil.which(b) is None:
            pytest.skip(f"{b} not found (Debian's iptables package)")
    name = f"{netns_prefix}-fw"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def runner_in(ns: str) -> ipt.Runner:
    def run(argv: list[str], stdin: str | None) -> str:
        return ipt._run(["ip", "netns", "exec", ns, *argv], stdin)
    return run


def sh(ns: str, *argv: str, stdin: str | None = None) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True,
                          check=True).stdout


def rules_of(ns: str, binary: str, table: str, chain: str) -> list[str]:
    out = sh(ns, binary, "-w", "5", "-t", table, "-S", chain)
    return [ln for ln in out.splitlines() if ln.startswith("-A ")]


def add_foreign(ns: str, n: int = FOREIGN) -> None:
    for table in ("nat", "filter"):
        lines = [f"*{table}", ":KUBE-FOREIGN - [0:0]"]
        lines += [f"-A KUBE-FOREIGN -s 10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}/32 -j RETURN" for i in range(n)]
        sh(ns, "iptables-restore", "--noflush", stdin="\n".join([*lines, "COMMIT", ""]))


def test_ensure_writes_both_families_and_probe_sees_drift(ns: str) -> None:
    fw = IptablesFirewall(runner=runner_in(ns))
    add_foreign(ns)
    assert fw.ensure(SPEC) is True
    assert fw.missing(SPEC) == []
    assert fw.ensure(SPEC) is False  # nothing to do the second time

    masq = rules_of(ns, "iptables", "nat", "FLANNEL-POSTRTG")
    assert masq == [f"-A FLANNEL-POSTRTG {' '.join(r)}".replace('"flanneld masq"', "flanneld masq")
                    .replace("flanneld masq", '"flanneld masq"') for r in masq_chain(NET, SUB, True).rules]
    masq6 = rules_of(ns, "ip6tables", "nat", "FLANNEL-POSTRTG")
    assert len(masq6) == 5 and any("! -d ff00::/8" in r and "MASQUERADE" in r for r in masq6), masq6
    assert all("fd64::/56" in r for r in masq6[1:]), masq6
    assert len(rules_of(ns, "ip6tables", "filter", "FLANNEL-FWD")) == 2
    for binary in ("iptables", "ip6tables"):
        assert '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG' in \
            sh(ns, binary, "-t", "nat", "-S", "POSTROUTING")
        assert '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD' in \
            sh(ns, binary, "-t", "filter", "-S", "FORWARD")
    assert len(rules_of(ns, "iptables", "nat", "KUBE-FOREIGN")) == FOREIGN
    assert len(rules_of(ns, "iptables", "filter", "KUBE-FOREIGN")) == FOREIGN

    # drift by hand: a rule deleted in v4 FLANNEL-FWD, the v6 POSTROUTING jump deleted
    sh(ns, "iptables", "-t", "filter", "-D", "FLANNEL-FWD", "1")
    sh(ns, "ip6tables", "-t", "nat", "-D", "POSTROUTING", *masq_chain(NET6, SUB6, True).jump)
    assert fw.missing(SPEC) == [
        "iptables filter FLANNEL-FWD: rules differ from what was applied",
        "ip6tables nat POSTROUTING: jump to FLANNEL-POSTRTG missing",
    ]
    assert fw.ensure(SPEC) is True and fw.resyncs == 2
    assert fw.missing(SPEC) == []
    assert len(rules_of(ns, "iptables", "filter", "FLANNEL-FWD")) == 2
    assert sh(ns, "ip6tables", "-t", "nat", "-S", "POSTROUTING").count("FLANNEL-POSTRTG") == 1


def test_unconfigured_chains_are_removed_and_cleanup_removes_all(ns: str) -> None:
    fw = IptablesFirewall(runner=runner_in(ns))
    fw.ensure(SPEC)
    no_masq_no_v6 = FirewallSpec(network=NET, subnet=SUB, ip_masq=False, forward=True)
    assert "ip6tables filter FLANNEL-FWD: not configured any more" in fw.missing(no_masq_no_v6)
    assert fw.ensure(no_masq_no_v6) is True
    assert fw.missing(no_masq_no_v6) == []
    for binary in ("iptables", "ip6tables"):
        assert "FLANNEL-POSTRTG" not in sh(ns, f"{binary}-save", "-t", "nat")
    assert "FLANNEL-FWD" not in sh(ns, "ip6tables-save", "-t", "filter")
    assert len(rules_of(ns, "iptables", "filter", "FLANNEL-FWD")) == 2

    # a new process (nothing applied in memory) still removes what an earlier run left
    fw.ensure(SPEC)
    fresh = IptablesFirewall(runner=runner_in(ns))
    fresh.ensure(no_masq_no_v6)
    assert "FLANNEL-POSTRTG" not in sh(ns, "iptables-save", "-t", "nat")

    fresh.cleanup()
    for binary in ("iptables", "ip6tables"):
        saved = sh(ns, f"{binary}-save")
        assert "FLANNEL" not in saved, saved


def test_forward_policy_drop_is_opened(ns: str) -> None:
    sh(ns, "iptables", "-P", "FORWARD", "DROP")
    fw = IptablesFirewall(runner=runner_in(ns))
    fw.ensure(FirewallSpec(network=NET, subnet=SUB, ip_masq=False, forward=True))
    assert "-P FORWARD ACCEPT" in sh(ns, "iptables", "-S", "FORWARD")


def test_available_and_errors(ns: str) -> None:
    assert IptablesFirewall(runner=runner_in(ns)).available() == ""
    with pytest.raises(NoSuchChain):
        runner_in(ns)(["iptables", "-t", "nat", "-S", "NO-SUCH-CHAIN"], None)
    with pytest.raises(IptablesError):
        runner_in(ns)(["iptables-restore", "--noflush"], "*nat\n-A NOPE -j RETURN\nCOMMIT\n")


def test_rule_manager_old_api_still_works(ns: str) -> None:
    rm = RuleManager(runner=runner_in(ns))
    chains = [masq_chain(NET, SUB, True), forward_chain(NET)]
    assert rm.ensure(chains, True, rm.save_all()) is True  # start-up path: one full save handed in
    assert rm.ensure(chains, True) is False  # resync path: the cheap probe
    sh(ns, "iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG")
    assert rm.ensure(chains, True) is True and rm.resyncs == 1
    assert len(rules_of(ns, "iptables", "nat", "FLANNEL-POSTRTG")) == 5
