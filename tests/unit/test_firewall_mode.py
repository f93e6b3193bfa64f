"""Mode selection (EnableNFTables, or nftables when unset and iptables is unusable) and doctor's firewall checks."""

from __future__ import annotations

from ipaddress import IPv4Network
from types import SimpleNamespace

import pytest

from pyflannel.core import nft_rules
from pyflannel.core.config import parse_config
from pyflannel.core.firewall_mode import ModeDecision, decide
from pyflannel.ctl import doctor
from pyflannel.ctl.node import NodeFacts
from pyflannel.ports import FirewallSpec

NO_IPT = "no iptables binary in PATH"


@pytest.mark.parametrize(
    ("enable", "problem", "mode", "unusable", "says"),
    [
        (True, "", "nftables", False, "EnableNFTables is true"),
        (True, NO_IPT, "nftables", False, "EnableNFTables is true"),
        (False, "", "iptables", False, "EnableNFTables is false"),
        (False, NO_IPT, "iptables", True, f"iptables is unusable ({NO_IPT}); set EnableNFTables to true"),
        (None, "", "iptables", False, "EnableNFTables is not set (flannel's default)"),
        (None, NO_IPT, "nftables", False, f"EnableNFTables is not set and iptables is unusable here ({NO_IPT})"),
    ],
)
def test_decide(enable: bool | None, problem: str, mode: str, unusable: bool, says: str) -> None:
    d = decide(enable, problem)
    assert (d.mode, d.unusable) == (mode, unusable)
    assert says in d.reason
    assert "\n" not in d.reason
    assert d.other == ("iptables" if mode == "nftables" else "nftables")


def test_decision_is_frozen() -> None:
    d = decide(None, "")
    with pytest.raises(AttributeError):
        d.mode = "nftables"  # type: ignore[misc]
    assert isinstance(d, ModeDecision)


def test_non_boolean_is_refused_with_the_value() -> None:
    with pytest.raises(ValueError, match="EnableNFTables must be true, false or absent, not 'yes'"):
        decide("yes", "")  # type: ignore[arg-type]


# --- flannelctl doctor: which mode is active, and its rules -----------------------------------------------

NET, OWN = IPv4Network("100.64.0.0/16"), IPv4Network("100.64.67.0/24")
OPTS = SimpleNamespace(iptables_forward_rules=True)


def nft_facts(random_fully: bool = True) -> NodeFacts:
    t4, t6 = nft_rules.tables(FirewallSpec(network=NET, subnet=OWN, ip_masq=True, random_fully=random_fully))
    return NodeFacts(
        subnet_file="/run/flannel/subnet.env", status_file="/run/flannel/pyflannel-status.json",
        env={"FLANNEL_NETWORK": str(NET), "FLANNEL_SUBNET": "100.64.67.1/24", "FLANNEL_IPMASQ": "true"},
        config=parse_config('{"Network":"100.64.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}'),
        iptables={"nat": "*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n",
                  "filter": "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n"},
        nftables={t4.name: nft_rules.listing(t4), t6.name: nft_rules.listing(t6)},
    )


def by_name(f: NodeFacts) -> dict[str, doctor.Check]:
    return {c.name: c for c in doctor.run_checks(f, OPTS) if c.name in ("firewall_mode", "forward_rules", "masquerade")}


@pytest.mark.parametrize("random_fully", [True, False])
def test_doctor_nftables_node_is_healthy(random_fully: bool) -> None:
    c = by_name(nft_facts(random_fully))
    mode = c["firewall_mode"]
    assert (mode.level, mode.detail) == ("ok", "nftables (tables flannel-ipv4, flannel-ipv6)")
    assert c["forward_rules"].level == "ok" and c["forward_rules"].detail.startswith("nftables:")
    assert c["masquerade"].level == "ok" and c["masquerade"].detail.startswith("nftables:")


def test_doctor_finds_missing_nft_rules() -> None:
    f = nft_facts()
    listing = f.nftables["flannel-ipv4"]
    assert listing is not None
    f.nftables["flannel-ipv4"] = [o for o in listing if not ("rule" in o and o["rule"]["chain"] == "forward")][:-1]
    c = by_name(f)
    assert c["forward_rules"].level == "fail"
    assert "chain flannel-ipv4/forward: 2 rule(s) missing" in c["forward_rules"].detail
    assert c["masquerade"].level == "fail"
    assert "chain flannel-ipv4/postrtg: 1 rule(s) missing" in c["masquerade"].detail


def test_doctor_missing_ipv4_table_in_nftables_mode() -> None:
    f = nft_facts()
    f.nftables["flannel-ipv4"] = None  # flannel-ipv6 still there: the node is in nftables mode
    c = by_name(f)
    assert c["firewall_mode"].level == "ok"
    assert c["forward_rules"].detail == "nftables: table ip flannel-ipv4 is missing"
    assert c["masquerade"].level == "fail"


def test_doctor_fails_when_both_modes_hold_rules() -> None:
    f = nft_facts()
    f.iptables["nat"] = "*nat\n:POSTROUTING ACCEPT [0:0]\n:FLANNEL-POSTRTG - [0:0]\nCOMMIT\n"
    c = by_name(f)["firewall_mode"]
    assert c.level == "fail" and "a node must hold one mode" in c.detail


def test_doctor_no_rules_in_either_mode_warns() -> None:
    f = nft_facts()
    f.nftables = {"flannel-ipv4": None, "flannel-ipv6": None}
    c = by_name(f)
    assert c["firewall_mode"].level == "warn"
    assert c["masquerade"].level == "fail"  # falls back to the iptables check, which finds nothing
