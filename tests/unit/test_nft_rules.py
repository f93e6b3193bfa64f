"""flannel's nftables tables as JSON: rule order and forms, both families, the batch and the read-back diff.

The expected listing below is what Go flanneld v0.28.9 leaves in the kernel (``nft -j list table ip
flannel-ipv4`` on nft 1.0.6, handles removed) for Network 100.64.0.0/16 and subnet 100.64.7.0/24;
tests/netns/test_nftables.py checks the same against the running Go binary.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.core import nft_rules
from pyflannel.core.nft_rules import NftSpecError, diff, listing, normalise, tables, write_batch
from pyflannel.ports import FirewallSpec

N4, S4 = IPv4Network("100.64.0.0/16"), IPv4Network("100.64.7.0/24")
N6, S6 = IPv6Network("fd64::/56"), IPv6Network("fd64:0:0:7::/64")
SPEC = FirewallSpec(network=N4, subnet=S4, network6=N6, subnet6=S6, ip_masq=True)


def m(field: str, addr: str, plen: int, op: str = "==", proto: str = "ip") -> dict[str, Any]:
    return {"match": {"op": op, "left": {"payload": {"protocol": proto, "field": field}},
                      "right": {"prefix": {"addr": addr, "len": plen}}}}


MASQ = {"masquerade": {"flags": "fully-random"}}
RET = {"return": None}
MARK = {"match": {"op": "==", "left": {"meta": {"key": "mark"}}, "right": 16384}}

GO_IPV4 = [
    {"table": {"family": "ip", "name": "flannel-ipv4"}},
    {"chain": {"family": "ip", "table": "flannel-ipv4", "name": "postrtg", "type": "nat", "hook": "postrouting",
               "prio": 100, "policy": "accept"}},
    {"chain": {"family": "ip", "table": "flannel-ipv4", "name": "forward", "type": "filter", "hook": "forward",
               "prio": 0, "policy": "accept"}},
    *[{"rule": {"family": "ip", "table": "flannel-ipv4", "chain": "postrtg", "expr": e}} for e in (
        [MARK, RET],
        [m("saddr", "100.64.7.0", 24), m("daddr", "100.64.0.0", 16), RET],
        [m("saddr", "100.64.0.0", 16), m("daddr", "100.64.7.0", 24), RET],
        [m("saddr", "100.64.7.0", 24, "!="), m("daddr", "100.64.0.0", 16), RET],
        [m("saddr", "100.64.0.0", 16), m("daddr", "224.0.0.0", 4, "!="), MASQ],
        [m("saddr", "100.64.0.0", 16, "!="), m("daddr", "100.64.0.0", 16), MASQ],
    )],
    *[{"rule": {"family": "ip", "table": "flannel-ipv4", "chain": "forward", "expr": e}} for e in (
        [m("saddr", "100.64.0.0", 16), {"accept": None}],
        [m("daddr", "100.64.0.0", 16), {"accept": None}],
    )],
]


def test_ipv4_table_is_flannels() -> None:
    t4, _ = tables(SPEC)
    assert listing(t4) == GO_IPV4


def test_ipv6_table_uses_ip6_payloads_and_ff00_multicast() -> None:
    _, t6 = tables(SPEC)
    assert (t6.family, t6.name, [c.name for c in t6.chains]) == ("ip6", "flannel-ipv6", ["postrtg", "forward"])
    masq = t6.chains[0].rules[4]
    assert masq[0] == m("saddr", "fd64::", 56, proto="ip6")
    assert masq[1] == m("daddr", "ff00::", 8, "!=", proto="ip6")
    assert t6.chains[0].rules[1][0] == m("saddr", "fd64:0:0:7::", 64, proto="ip6")


def test_ipv4_only_still_has_an_empty_ipv6_table() -> None:
    _, t6 = tables(FirewallSpec(network=N4, subnet=S4, ip_masq=True))
    assert t6.chains == ()
    assert listing(t6) == [{"table": {"family": "ip6", "name": "flannel-ipv6"}}]


def test_fully_random_disabled_gives_plain_masquerade() -> None:
    t4, _ = tables(FirewallSpec(network=N4, subnet=S4, ip_masq=True, random_fully=False))
    assert t4.chains[0].rules[4][-1] == {"masquerade": None}
    assert t4.chains[0].rules[5][-1] == {"masquerade": None}


def test_without_ip_masq_only_forward_and_without_forward_only_postrtg() -> None:
    t4, _ = tables(FirewallSpec(network=N4, subnet=S4, ip_masq=False))
    assert [c.name for c in t4.chains] == ["forward"]
    t4, _ = tables(FirewallSpec(network=N4, subnet=S4, ip_masq=True, forward=False))
    assert [c.name for c in t4.chains] == ["postrtg"]


def test_full_length_prefix_is_a_bare_address() -> None:
    t4, _ = tables(FirewallSpec(network=N4, subnet=IPv4Network("100.64.7.9/32"), ip_masq=True))
    assert t4.chains[0].rules[1][0]["match"]["right"] == "100.64.7.9"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (FirewallSpec(network=N4, subnet=None, ip_masq=True),
         "ip_masq for network 100.64.0.0/16 needs the node's subnet"),
        (FirewallSpec(network=N4, subnet=IPv4Network("100.65.0.0/24"), ip_masq=True),
         "subnet 100.65.0.0/24 is not inside network 100.64.0.0/16"),
        (FirewallSpec(network=N4, subnet=IPv4Network("100.64.0.0/8", strict=False), ip_masq=True),
         "subnet 100.0.0.0/8 is not inside network 100.64.0.0/16"),
    ],
)
def test_bad_spec_is_one_line_naming_the_value(spec: FirewallSpec, message: str) -> None:
    with pytest.raises(NftSpecError, match=message):
        tables(spec)


def test_write_batch_replaces_each_table_in_one_transaction() -> None:
    t4, t6 = tables(SPEC)
    cmds = write_batch([t4, t6])["nftables"]
    assert cmds[0] == {"metainfo": {"json_schema_version": 1}}
    # add (so delete never fails), delete, add with the comment Go flanneld uses, then chains, then rules.
    assert cmds[1] == {"add": {"table": {"family": "ip", "name": "flannel-ipv4"}}}
    assert cmds[2] == {"delete": {"table": {"family": "ip", "name": "flannel-ipv4"}}}
    assert cmds[3] == {"add": {"table": {"family": "ip", "name": "flannel-ipv4", "comment": "rules for flannel-ipv4"}}}
    assert cmds[4]["add"]["chain"]["comment"] == "chain to manage traffic masquerading by flannel"
    assert cmds[5]["add"]["chain"]["comment"] == "chain to accept flannel traffic"
    assert [c["add"]["rule"]["chain"] for c in cmds[6:14]] == ["postrtg"] * 6 + ["forward"] * 2
    assert cmds[14] == {"add": {"table": {"family": "ip6", "name": "flannel-ipv6"}}}
    assert len(cmds) == 1 + 2 * (3 + 2 + 8)


def test_delete_batch_is_idempotent_form() -> None:
    cmds = nft_rules.delete_batch()["nftables"][1:]
    assert [next(iter(c)) for c in cmds] == ["add", "delete", "add", "delete"]


def _with_handles(objs: list[dict[str, Any]]) -> dict[str, Any]:
    out: list[dict[str, Any]] = [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]
    for i, o in enumerate(objs, start=1):
        ((k, v),) = o.items()
        out.append({k: {**v, "handle": i}})
    return {"nftables": out}


def test_normalise_drops_metainfo_handles_and_table_chain_comments() -> None:
    t4, _ = tables(SPEC)
    raw = _with_handles(listing(t4))
    raw["nftables"][1]["table"]["comment"] = "rules for flannel-ipv4"  # newer nft prints it
    assert normalise(raw) == listing(t4)
    assert diff(t4, normalise(raw)) == []


def test_diff_names_what_is_wrong() -> None:
    t4, _ = tables(SPEC)
    want = listing(t4)
    assert diff(t4, None) == ["table ip flannel-ipv4 is missing"]
    no_forward = [o for o in want if not ("chain" in o and o["chain"]["name"] == "forward")
                  and not ("rule" in o and o["rule"]["chain"] == "forward")]
    assert diff(t4, no_forward) == ["chain flannel-ipv4/forward is missing"]
    swapped = want[:4] + [want[5], want[4]] + want[6:]
    assert diff(t4, swapped) == [
        "chain flannel-ipv4/postrtg: rule 2 differs",
        "chain flannel-ipv4/postrtg: rule 3 differs",
    ]
    assert diff(t4, want[:-1]) == ["chain flannel-ipv4/forward: 1 rule(s) missing"]
    prio = [dict(o) for o in want]
    prio[1] = {"chain": {**want[1]["chain"], "prio": 0}}
    assert diff(t4, prio) == ["chain flannel-ipv4/postrtg has the wrong type, hook, priority or policy"]
    extra = [*want, {"set": {"family": "ip", "table": "flannel-ipv4", "name": "s"}}]
    assert diff(t4, extra) == ["table ip flannel-ipv4 differs"]


def test_normalise_rejects_non_nft_documents() -> None:
    with pytest.raises(ValueError, match="nft JSON without an 'nftables' list"):
        normalise({"foo": 1})


@given(
    net=st.integers(min_value=8, max_value=28).flatmap(
        lambda plen: st.tuples(st.just(plen), st.integers(min_value=0, max_value=2**plen - 1))
    ),
    extra=st.integers(min_value=0, max_value=4),
    pick=st.integers(min_value=0),
)
def test_any_valid_spec_reads_back_as_itself(net: tuple[int, int], extra: int, pick: int) -> None:
    plen, idx = net
    network = IPv4Network((idx << (32 - plen), plen))
    subs = list(network.subnets(prefixlen_diff=extra)) if extra else [network]
    subnet = subs[pick % len(subs)]
    t4, t6 = tables(FirewallSpec(network=network, subnet=subnet, ip_masq=True))
    assert diff(t4, normalise(_with_handles(listing(t4)))) == []
    assert len(t4.chains[0].rules) == 6
    assert diff(t6, listing(t6)) == []
