"""A mixed wireguard cluster: n1 and n2 run pyflannel, n3 runs Go flanneld v0.28.9 (issue 13).

Go flanneld's wireguard backend creates a kernel ``wireguard`` link and has no userspace fallback: on a
kernel without the module (this project's test kernel, 6.18 with no wireguard.ko) it exits 1 with ``could not
create wireguard interface: operation not supported``. A mixed cluster therefore needs a host with the
module; elsewhere this test skips with exactly that reason (probed in a scratch network namespace by
``support.wgagent.kernel_wireguard_missing``). Where the module exists, pyflannel picks the kernel driver
too, and every pod pings every pod on the other nodes, both directions.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from support import checks
from support.cluster import Cluster, Node
from support.wgagent import kernel_wireguard_missing

from .conftest import Mixed, _require_env, complaints
from .pings import MATRIX_FILE, format_matrix, ping_matrix, save_matrix

CONFIG = '{"Network": "100.64.0.0/16", "Backend": {"Type": "wireguard", "PersistentKeepaliveInterval": 5}}'


def wg_peers(c: Cluster, node: Node) -> dict[str, tuple[str, str]]:
    """The node's kernel WireGuard peers as ``wg show flannel-wg dump`` reports them: {key: (endpoint, ips)}."""
    proc = c.exec(node.ns, ["wg", "show", "flannel-wg", "dump"], check=False)
    if proc.returncode != 0:
        return {}
    rows = [line.split("\t") for line in proc.stdout.splitlines() if line]
    return {r[0]: (r[2], r[3]) for r in rows[1:]}


def expected_peers(c: Cluster, node: Node) -> dict[str, tuple[str, str]]:
    own = checks.own_subnet(c, node)
    return {v["BackendData"]["PublicKey"]: (f"{v['PublicIP']}:{v['BackendData'].get('Port', 51820)}", k)
            for k, v in c.leases().items() if IPv4Network(k) != own}


@pytest.fixture
def wg_mixed(interop_prefix: str, tmp_path: Path) -> Iterator[Callable[[], Mixed]]:
    go_binary = _require_env()
    if shutil.which("wg") is None:
        pytest.skip("needs wg (Debian package wireguard-tools)")
    reason = kernel_wireguard_missing()
    if reason is not None:
        # Not a missing package: the kernel itself cannot run Go flanneld's wireguard (no userspace fallback).
        pytest.skip(reason)
    made: list[Mixed] = []

    def factory() -> Mixed:
        c = Cluster(prefix=interop_prefix, nodes=3, workdir=tmp_path / "cluster")
        m = Mixed(c, go_binary, {"n3"})
        made.append(m)
        c.up()
        c.start_etcd()
        c.put_config(CONFIG)
        for n in c.nodes:
            _start(m, n)
        for n in c.nodes:
            c.wait_subnet_env(n)
        checks.wait_for(
            lambda: len(c.leases()) == 3 and all(wg_peers(c, n) == expected_peers(c, n) for n in c.nodes),
            30, "every node's WireGuard peers",
        )  # fmt: skip
        for n in c.nodes:
            c.add_pods(n, 2)
        return m

    yield factory
    for m in made:
        close = getattr(m, "close", None)
        if callable(close):
            close()
        m.c.down()


def _start(m: Mixed, node: Node) -> None:
    """The node's daemon with its own key file (both implementations read WIREGUARD_KEY_FILE)."""
    env = {"WIREGUARD_KEY_FILE": str(node.dir / "wgkey")}
    if m.kind(node) == "go":
        m.c.start_flanneld(node, ["-v=1"], env, binary=m.go_binary)
    else:
        m.c.start_flanneld(node, [], env)


def test_mixed_wireguard_ping_matrix(wg_mixed: Callable[[], Mixed]) -> None:
    m = wg_mixed()
    c = m.c
    matrix = ping_matrix(c)
    text = "etcd 3.4, wireguard (kernel)\n" + format_matrix(m, matrix)
    save_matrix(text, MATRIX_FILE.with_name("ping-matrix-wireguard.txt"))
    print("\n" + text)
    failed = [f"{a}->{b}" for (a, b), ok in matrix.items() if not ok]
    assert not failed, f"pings failed: {failed}\n{text}"
    kinds = {(m.kind(c.node(a[:2])), m.kind(c.node(b[:2]))) for a, b in matrix}
    assert {("py", "go"), ("go", "py"), ("py", "py")} <= kinds
    for n in m.py:
        assert "wireguard: using the kernel module" in n.flanneld_log.read_text()
        assert not complaints(n, about=(m.go[0].lan_ip,)), complaints(n)
    assert not complaints(m.go[0], about=tuple(p.lan_ip for p in m.py)), m.go[0].flanneld_log.read_text()[-3000:]
