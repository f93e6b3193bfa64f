"""IptablesFirewall.chains: which owned chains a FirewallSpec calls for, per family (pure)."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

from pyflannel.adapters.iptables import IptablesFirewall
from pyflannel.core.rules import masq_chain
from pyflannel.ports import FirewallSpec

NET, SUB = IPv4Network("100.64.0.0/16"), IPv4Network("100.64.9.0/24")
NET6, SUB6 = IPv6Network("fd64::/56"), IPv6Network("fd64:0:0:9::/64")


def names(spec: FirewallSpec) -> dict[int, list[str]]:
    return {v: [c.chain for c in cs] for v, cs in IptablesFirewall.chains(spec).items()}


def test_chains_per_family() -> None:
    assert names(FirewallSpec(NET, SUB, ip_masq=True)) == {4: ["FLANNEL-POSTRTG", "FLANNEL-FWD"], 6: []}
    assert names(FirewallSpec(NET, SUB, ip_masq=False, forward=False)) == {4: [], 6: []}
    assert names(FirewallSpec(NET, SUB, NET6, SUB6, ip_masq=True, forward=False)) == {
        4: ["FLANNEL-POSTRTG"], 6: ["FLANNEL-POSTRTG"]}
    assert names(FirewallSpec(None, None, NET6, None, ip_masq=True)) == {4: [], 6: ["FLANNEL-FWD"]}


def test_ipv6_masq_uses_ff00_multicast_and_random_fully_follows_the_spec() -> None:
    six = IptablesFirewall.chains(FirewallSpec(None, None, NET6, SUB6, ip_masq=True, random_fully=False))[6][0]
    assert six.rules[2] == ("-s", "fd64::/56", "!", "-d", "ff00::/8", "-m", "comment", "--comment", "flanneld masq",
                            "-j", "MASQUERADE")
    assert masq_chain(NET, SUB, True).rules[2][4] == "224.0.0.0/4"
