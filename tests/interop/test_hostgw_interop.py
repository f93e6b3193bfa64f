"""A mixed host-gw cluster: n1 and n2 run pyflannel, n3 runs Go flanneld v0.28.9 (issue 13).

Every pod pings every pod on the other nodes, both directions across the implementation boundary; each node
holds exactly ``<peer subnet> via <peer PublicIP> dev eth0`` for the other two leases (proto boot, whoever
wrote it), and both implementations write the same lease JSON. The conftest's ``mixed`` factory waits for
vxlan state, so this file builds its cluster itself with the same parts (``Mixed``, the ping matrix).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from support import checks
from support.cluster import Cluster, Node

from .conftest import Mixed, _require_env, complaints
from .pings import MATRIX_FILE, format_matrix, ping_matrix, save_matrix

CONFIG = '{"Network": "100.64.0.0/16", "Backend": {"Type": "host-gw"}}'
NETWORK = IPv4Network("100.64.0.0/16")


def hostgw_rows(node: Node) -> set[tuple[str, str, int, int]]:
    """(dst, gateway, proto, scope) of the main-table routes inside the Network that leave through eth0."""
    with IPRoute(netns=node.ns, flags=0) as ipr:
        (eth0,) = ipr.link_lookup(ifname="eth0")
        return {
            (f"{r.get('RTA_DST')}/{r['dst_len']}", r.get("RTA_GATEWAY"), r["proto"], r["scope"])
            for r in ipr.route("dump", family=2, table=254)
            if r.get("RTA_OIF") == eth0 and r.get("RTA_DST") and IPv4Address(r.get("RTA_DST")) in NETWORK
        }


def expected_rows(c: Cluster, node: Node) -> set[tuple[str, str, int, int]]:
    own = checks.own_subnet(c, node)
    return {(k, v["PublicIP"], 3, 0) for k, v in c.leases().items() if IPv4Network(k) != own}


def converged(c: Cluster) -> bool:
    return len(c.leases()) == len(c.nodes) and all(hostgw_rows(n) == expected_rows(c, n) for n in c.nodes)


@pytest.fixture
def hostgw_mixed(interop_prefix: str, tmp_path: Path) -> Iterator[Callable[[], Mixed]]:
    go_binary = _require_env()
    made: list[Mixed] = []

    def factory() -> Mixed:
        c = Cluster(prefix=interop_prefix, nodes=3, workdir=tmp_path / "cluster")
        m = Mixed(c, go_binary, {"n3"})
        made.append(m)
        c.up()
        c.start_etcd()
        c.put_config(CONFIG)
        for n in c.nodes:
            m.start(n)
        for n in c.nodes:
            c.wait_subnet_env(n)
        checks.wait_for(lambda: converged(c), 30, "host-gw routes on every node")
        for n in c.nodes:
            c.add_pods(n, 2)
        return m

    yield factory
    for m in made:
        close = getattr(m, "close", None)
        if callable(close):
            close()
        m.c.down()


def test_mixed_hostgw_ping_matrix(hostgw_mixed: Callable[[], Mixed]) -> None:
    m = hostgw_mixed()
    c = m.c
    matrix = ping_matrix(c)
    text = "etcd 3.4, host-gw\n" + format_matrix(m, matrix)
    save_matrix(text, MATRIX_FILE.with_name("ping-matrix-hostgw.txt"))
    print("\n" + text)
    failed = [f"{a}->{b}" for (a, b), ok in matrix.items() if not ok]
    assert not failed, f"pings failed: {failed}\n{text}"
    kinds = {(m.kind(c.node(a[:2])), m.kind(c.node(b[:2]))) for a, b in matrix}
    assert {("py", "go"), ("go", "py"), ("py", "py")} <= kinds

    # Same lease JSON from both implementations, and each one's routes to the other's node.
    leases = c.leases()
    shapes = {m.kind(n): sorted(leases[str(checks.own_subnet(c, n))].items()) for n in c.nodes}
    go_node = m.go[0]
    go_ip = go_node.lan_ip
    assert shapes["go"] == [("BackendType", "host-gw"), ("PublicIP", go_ip), ("PublicIPv6", None)], shapes
    assert [k for k, _ in shapes["py"]] == [k for k, _ in shapes["go"]], shapes
    for n in m.py:
        assert (str(checks.own_subnet(c, go_node)), go_ip, 3, 0) in hostgw_rows(n)
        assert not complaints(n, about=(go_ip,)), complaints(n, about=(go_ip,))
    go_log = go_node.flanneld_log.read_text()
    assert not complaints(go_node, about=tuple(p.lan_ip for p in m.py)), go_log[-3000:]
    for p in m.py:
        assert f"Subnet added: {checks.own_subnet(c, p)} via {p.lan_ip}" in go_log, f"Go never handled {p.name}'s lease"
    print(json.dumps(leases, sort_keys=True))
