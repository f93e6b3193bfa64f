"""flannel's nftables tables as libnftables JSON, compatible with flannel v0.28.9's nftables mode.

Why this exists: with ``"EnableNFTables": true`` (or on a host without usable iptables) the masquerade
and forward rules live in two tables flannel owns, ``flannel-ipv4`` (family ``ip``) and
``flannel-ipv6`` (family ``ip6``), instead of iptables chains. A Go flanneld and pyflannel on the same
node must leave the same kernel state, so this module builds exactly the tables, chains and rules
flannel writes (docs/firewall.md lists them), in its order.

Everything here is pure: :func:`tables` turns a FirewallSpec into :class:`NftTable` values,
:func:`write_batch` renders the one transaction that replaces both tables, :func:`listing` is what
``nft -j list table`` prints for a table once it holds them, and :func:`normalise` / :func:`diff`
compare a real listing against it. The expressions are written in the form nft *prints* them (a
``/32`` as a bare address, the mark as an integer, ``{"masquerade": null}``), so the same objects
serve as input and as the expected read-back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING, Any

from pyflannel.core.errors import FlannelError

if TYPE_CHECKING:
    from pyflannel.core.model import FirewallSpec

JSON = dict[str, Any]

TABLE4 = "flannel-ipv4"
TABLE6 = "flannel-ipv6"
POSTRTG = "postrtg"
FORWARD = "forward"
#: kube-proxy marks packets it will masquerade itself; flannel's first rule lets them pass untouched.
#: In nft this is an exact ``meta mark 0x4000`` (flannel's choice), not iptables' ``0x4000/0x4000``.
KUBE_PROXY_MARK = 0x4000
SRCNAT_PRIORITY = 100  # "priority srcnat" in a nat postrouting chain of family ip/ip6
FILTER_PRIORITY = 0  # "priority filter"
MULTICAST4 = IPv4Network("224.0.0.0/4")
MULTICAST6 = IPv6Network("ff00::/8")

TABLE_COMMENT = "rules for {name}"
POSTRTG_COMMENT = "chain to manage traffic masquerading by flannel"
FORWARD_COMMENT = "chain to accept flannel traffic"

Net = IPv4Network | IPv6Network


class NftSpecError(FlannelError, ValueError):
    """A FirewallSpec the tables cannot be built from (e.g. a subnet outside the network)."""


@dataclass(frozen=True)
class NftChain:
    """A base chain and its rules (each rule a tuple of nft JSON expressions)."""

    name: str
    type: str
    hook: str
    prio: int
    comment: str
    rules: tuple[tuple[JSON, ...], ...]


@dataclass(frozen=True)
class NftTable:
    family: str  # "ip" | "ip6"
    name: str
    chains: tuple[NftChain, ...]

    @property
    def label(self) -> str:
        """``ip flannel-ipv4``: how nft names the table on its command line."""
        return f"{self.family} {self.name}"


# --- expressions ------------------------------------------------------------------------------------


def _addr(net: Net) -> JSON | str:
    # nft prints a full-length prefix as a bare address, so it is written that way too.
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _match(family: str, field: str, net: Net, negate: bool = False) -> JSON:
    return {
        "match": {
            "op": "!=" if negate else "==",
            "left": {"payload": {"protocol": family, "field": field}},
            "right": _addr(net),
        }
    }


RETURN: JSON = {"return": None}
ACCEPT: JSON = {"accept": None}
MARK_RETURN: tuple[JSON, ...] = (
    {"match": {"op": "==", "left": {"meta": {"key": "mark"}}, "right": KUBE_PROXY_MARK}},
    RETURN,
)


def _masquerade(random_fully: bool) -> JSON:
    return {"masquerade": {"flags": "fully-random"}} if random_fully else {"masquerade": None}


# --- chains -----------------------------------------------------------------------------------------


def postrtg_chain(family: str, network: Net, subnet: Net, random_fully: bool) -> NftChain:
    """The masquerade chain, flannel v0.28.9's order: it differs from the iptables chain's order."""
    multicast: Net = MULTICAST4 if family == "ip" else MULTICAST6
    masq = _masquerade(random_fully)
    rules: tuple[tuple[JSON, ...], ...] = (
        MARK_RETURN,
        # pod -> cluster and cluster -> pod: never NATed
        (_match(family, "saddr", subnet), _match(family, "daddr", network), RETURN),
        (_match(family, "saddr", network), _match(family, "daddr", subnet), RETURN),
        # traffic from outside to another node's pod (arrives here forwarded): left alone
        (_match(family, "saddr", subnet, negate=True), _match(family, "daddr", network), RETURN),
        # pods to the outside world, except multicast
        (_match(family, "saddr", network), _match(family, "daddr", multicast, negate=True), masq),
        # the host itself talking into the overlay
        (_match(family, "saddr", network, negate=True), _match(family, "daddr", network), masq),
    )
    return NftChain(POSTRTG, "nat", "postrouting", SRCNAT_PRIORITY, POSTRTG_COMMENT, rules)


def forward_chain(family: str, network: Net) -> NftChain:
    rules = ((_match(family, "saddr", network), ACCEPT), (_match(family, "daddr", network), ACCEPT))
    return NftChain(FORWARD, "filter", "forward", FILTER_PRIORITY, FORWARD_COMMENT, rules)


def _inside(subnet: Net, network: Net) -> bool:
    return (
        subnet.version == network.version
        and subnet.prefixlen >= network.prefixlen
        and subnet.network_address in network
    )


def _table(family: str, name: str, network: Net | None, subnet: Net | None, spec: FirewallSpec) -> NftTable:
    chains: list[NftChain] = []
    if network is not None:
        # Same order as flanneld: masquerade chain first (set up before the forward rules).
        if spec.ip_masq:
            if subnet is None:
                raise NftSpecError(f"ip_masq for network {network} needs the node's subnet, got none")
            if not _inside(subnet, network):
                raise NftSpecError(f"subnet {subnet} is not inside network {network}")
            chains.append(postrtg_chain(family, network, subnet, spec.random_fully))
        if spec.forward:
            chains.append(forward_chain(family, network))
    return NftTable(family, name, tuple(chains))


def tables(spec: FirewallSpec) -> tuple[NftTable, NftTable]:
    """Both tables, always: flanneld creates ``flannel-ipv6`` (empty) even on an IPv4-only network."""
    return (
        _table("ip", TABLE4, spec.network, spec.subnet, spec),
        _table("ip6", TABLE6, spec.network6, spec.subnet6, spec),
    )


# --- transactions -----------------------------------------------------------------------------------

METAINFO: JSON = {"metainfo": {"json_schema_version": 1}}


def _table_obj(family: str, name: str, comment: bool = True) -> JSON:
    obj: JSON = {"family": family, "name": name}
    if comment:
        obj["comment"] = TABLE_COMMENT.format(name=name)
    return {"table": obj}


def _chain_obj(t: NftTable, c: NftChain) -> JSON:
    return {
        "chain": {
            "family": t.family,
            "table": t.name,
            "name": c.name,
            "type": c.type,
            "hook": c.hook,
            "prio": c.prio,
            "policy": "accept",
            "comment": c.comment,
        }
    }


def _rule_obj(t: NftTable, c: NftChain, rule: Sequence[JSON]) -> JSON:
    return {"rule": {"family": t.family, "table": t.name, "chain": c.name, "expr": list(rule)}}


def _drop_table(family: str, name: str) -> list[JSON]:
    # "add" first makes the "delete" valid whether or not the table exists (nft < 1.0.8 has no
    # "destroy"); both happen inside the same transaction, so nobody ever sees the empty table.
    return [{"add": _table_obj(family, name, comment=False)}, {"delete": _table_obj(family, name, comment=False)}]


def write_batch(ts: Iterable[NftTable]) -> JSON:
    """One transaction that deletes and re-creates every table in ``ts`` with exactly its chains and rules.

    Deleting the whole table (not flushing chains, as flanneld does) also removes anything a person added
    to a flannel-owned table, so the result never depends on what was there before.
    """
    cmds: list[JSON] = [METAINFO]
    for t in ts:
        cmds += _drop_table(t.family, t.name)
        cmds.append({"add": _table_obj(t.family, t.name)})
        for c in t.chains:
            cmds.append({"add": _chain_obj(t, c)})
        for c in t.chains:
            cmds += [{"add": _rule_obj(t, c, r)} for r in c.rules]
    return {"nftables": cmds}


def delete_batch(names: Iterable[tuple[str, str]] = (("ip", TABLE4), ("ip6", TABLE6))) -> JSON:
    """One transaction that removes the given (family, name) tables, present or not."""
    cmds: list[JSON] = [METAINFO]
    for family, name in names:
        cmds += _drop_table(family, name)
    return {"nftables": cmds}


# --- read-back --------------------------------------------------------------------------------------


def listing(t: NftTable) -> list[JSON]:
    """What ``nft -j list table`` prints for ``t``, after :func:`normalise`: table, chains, then rules."""
    out: list[JSON] = [_table_obj(t.family, t.name)]
    out += [_chain_obj(t, c) for c in t.chains]
    for c in t.chains:
        out += [_rule_obj(t, c, r) for r in c.rules]
    return [_normalise_obj(o) for o in out]


# Keys that carry no rule semantics: kernel-assigned handles, and table/chain comments, which
# nft 1.0.6 neither prints nor accepts in JSON (newer nft does both); see docs/firewall.md.
_VOLATILE = {"handle", "comment"}


def _normalise_obj(obj: JSON) -> JSON:
    ((kind, body),) = obj.items()
    if kind in ("table", "chain"):
        body = {k: v for k, v in body.items() if k not in _VOLATILE}
    elif kind == "rule":
        body = {k: v for k, v in body.items() if k != "handle"}
    return {kind: body}


def normalise(doc: JSON) -> list[JSON]:
    """The objects of an ``nft -j list ...`` document without metainfo, handles and table/chain comments."""
    items = doc.get("nftables")
    if not isinstance(items, list):
        raise ValueError(f"nft JSON without an 'nftables' list: {str(doc)[:80]}")
    return [_normalise_obj(o) for o in items if isinstance(o, dict) and len(o) == 1 and "metainfo" not in o]


def chain_diff(table: NftTable, chain: NftChain, actual: list[JSON]) -> list[str]:
    """Differences of one chain of ``table`` against a normalised listing of that table."""
    where = f"chain {table.name}/{chain.name}"
    got = next((o for o in actual if "chain" in o and o["chain"].get("name") == chain.name), None)
    if got is None:
        return [f"{where} is missing"]
    problems: list[str] = []
    if got != _normalise_obj(_chain_obj(table, chain)):
        problems.append(f"{where} has the wrong type, hook, priority or policy")
    want_rules = [_normalise_obj(_rule_obj(table, chain, r)) for r in chain.rules]
    have_rules = [o for o in actual if "rule" in o and o["rule"].get("chain") == chain.name]
    for i, (w, h) in enumerate(zip(want_rules, have_rules, strict=False), start=1):
        if w != h:
            problems.append(f"{where}: rule {i} differs")
    if len(have_rules) < len(want_rules):
        problems.append(f"{where}: {len(want_rules) - len(have_rules)} rule(s) missing")
    elif len(have_rules) > len(want_rules):
        problems.append(f"{where}: {len(have_rules) - len(want_rules)} extra rule(s)")
    return problems


def diff(expected: NftTable, actual: list[JSON] | None) -> list[str]:
    """Human-readable differences between a table's expected and actual (normalised) listing.

    ``actual`` None means the table does not exist. Empty result: the table is exactly as expected.
    """
    if actual is None:
        return [f"table {expected.label} is missing"]
    want = listing(expected)
    if actual == want:
        return []
    problems: list[str] = []
    have_chains = {o["chain"]["name"] for o in actual if "chain" in o}
    for c in expected.chains:
        have_chains.discard(c.name)
        problems += chain_diff(expected, c, actual)
    problems += [f"chain {expected.name}/{name} is not flannel's" for name in sorted(have_chains)]
    if not problems:
        problems.append(f"table {expected.label} differs")  # e.g. extra objects (sets, maps)
    return problems
