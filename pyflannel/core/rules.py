"""Masquerade and forward rules, byte-compatible with flanneld v0.20.2.

The rules live in flannel-owned chains (FLANNEL-POSTRTG in nat, FLANNEL-FWD in filter)
with flanneld's comments, so a Go flanneld started on the same host adopts them, and
``iptables-save`` shows exactly what docs/kernel-notes.md lists. The builders are pure; the
capability probe (``--random-fully``) is done by the adapter and passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

MASQ_CHAIN = "FLANNEL-POSTRTG"
FWD_CHAIN = "FLANNEL-FWD"
MASQ_COMMENT = "flanneld masq"
FWD_COMMENT = "flanneld forward"
# kube-proxy marks packets it wants masqueraded with 0x4000; they bypass ours.
KUBE_PROXY_MARK = "0x4000/0x4000"


@dataclass(frozen=True)
class ChainSpec:
    table: str
    chain: str
    parent: str  # built-in chain holding the jump
    comment: str
    rules: tuple[tuple[str, ...], ...]

    @property
    def jump(self) -> tuple[str, ...]:
        return ("-m", "comment", "--comment", self.comment, "-j", self.chain)


MULTICAST4 = "224.0.0.0/4"
MULTICAST6 = "ff00::/8"


def masq_chain(network: IPv4Network | IPv6Network, subnet: IPv4Network | IPv6Network, random_fully: bool) -> ChainSpec:
    """FLANNEL-POSTRTG for one family: the same rules for IPv6 (in ip6tables), with multicast ff00::/8."""
    n, sn = str(network), str(subnet)
    mcast = MULTICAST4 if network.version == 4 else MULTICAST6
    c = ("-m", "comment", "--comment", MASQ_COMMENT)
    masq = ("-j", "MASQUERADE", "--random-fully") if random_fully else ("-j", "MASQUERADE")
    rules = (
        ("-m", "mark", "--mark", KUBE_PROXY_MARK, *c, "-j", "RETURN"),
        ("-s", n, "-d", n, *c, "-j", "RETURN"),
        ("-s", n, "!", "-d", mcast, *c, *masq),
        ("!", "-s", n, "-d", sn, *c, "-j", "RETURN"),
        ("!", "-s", n, "-d", n, *c, *masq),
    )
    return ChainSpec("nat", MASQ_CHAIN, "POSTROUTING", MASQ_COMMENT, rules)


def forward_chain(network: IPv4Network | IPv6Network) -> ChainSpec:
    n = str(network)
    c = ("-m", "comment", "--comment", FWD_COMMENT)
    rules = (("-s", n, *c, "-j", "ACCEPT"), ("-d", n, *c, "-j", "ACCEPT"))
    return ChainSpec("filter", FWD_CHAIN, "FORWARD", FWD_COMMENT, rules)


def quote(arg: str) -> str:
    """Quote one argument for iptables-restore's line parser."""
    if arg and all(c.isalnum() or c in "-_./:!" for c in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_restore(chains: list[ChainSpec], missing_jumps: set[tuple[str, str]]) -> str:
    """An ``iptables-restore --noflush`` payload.

    Under --noflush a ``:CHAIN - [0:0]`` line creates the chain or flushes only that chain,
    so the whole body is replaced in one atomic commit per table. Jump rules live in
    built-in chains that must not be flushed; they are inserted only when missing
    (``missing_jumps`` holds (table, chain) pairs), at position 1 as flanneld v0.20.2 does.
    """
    out: list[str] = []
    for table in sorted({c.table for c in chains}):
        out.append(f"*{table}")
        tchains = [c for c in chains if c.table == table]
        for c in tchains:
            out.append(f":{c.chain} - [0:0]")
        for c in tchains:
            for r in c.rules:
                out.append(" ".join(["-A", c.chain, *map(quote, r)]))
        for c in tchains:
            if (c.table, c.chain) in missing_jumps:
                out.append(" ".join(["-I", c.parent, "1", *map(quote, c.jump)]))
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def chain_lines(save_output: str, table: str, chain: str) -> list[str]:
    """The ``-A <chain>`` lines of one table in ``iptables-save`` output, as printed."""
    lines: list[str] = []
    cur = None
    for line in save_output.splitlines():
        if line.startswith("*"):
            cur = line[1:].strip()
        elif cur == table and line.startswith(f"-A {chain} "):
            lines.append(line)
    return lines


def has_jump(save_output: str, spec: ChainSpec) -> bool:
    """Whether the built-in chain holds our jump (``save_output`` may hold several tables)."""
    return any(
        f"-j {spec.chain}" in line and spec.comment in line
        for line in chain_lines(save_output, spec.table, spec.parent)
    )
