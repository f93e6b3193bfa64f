"""A mixed etcd-mode vxlan cluster: n1 and n2 run pyflannel, n3 runs Go flanneld v0.28.9.

Every pod pings every pod on the other nodes, both directions; the leases and ``subnet.env`` each side
writes are read by the other (and by pyflannel's own parsers) without complaint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import checks

from .conftest import Mixed, complaints
from .pings import MATRIX_FILE, format_matrix, ping_matrix, save_matrix


@pytest.mark.parametrize("etcd_version", ["3.4", "3.6"], ids=["etcd3.4", "etcd3.6"])
def test_mixed_vxlan_ping_matrix(mixed, etcd_version: str) -> None:
    m: Mixed = mixed(etcd_version=etcd_version)
    c = m.c
    assert c.etcd is not None and c.etcd.version == etcd_version
    assert checks.converged(c), "kernel state differs from the leases on some node"
    matrix = ping_matrix(c)
    text = format_matrix(m, matrix)
    text = f"etcd {etcd_version}, vxlan\n{text}"
    save_matrix(text, MATRIX_FILE.with_name(f"ping-matrix-etcd{etcd_version}.txt"))
    print("\n" + text)
    failed = [f"{a}->{b}" for (a, b), ok in matrix.items() if not ok]
    assert not failed, f"pings failed: {failed}\n{text}"
    # Both directions across the implementation boundary were exercised.
    kinds = {(m.kind(c.node(a[:2])), m.kind(c.node(b[:2]))) for a, b in matrix}
    assert {("py", "go"), ("go", "py"), ("py", "py")} <= kinds


def test_leases_and_subnet_env_read_across(mixed) -> None:
    """Go's lease and subnet.env pass pyflannel's parsers and flannelctl; ours are handled by Go."""
    from pyflannel.core.lease import parse_lease_attrs
    from pyflannel.core.subnet_env import parse_env_text, previous_subnets

    m: Mixed = mixed(pods=0)
    c = m.c
    raw = checks.leases(c)
    by_ip = {json.loads(v)["PublicIP"]: (k, v) for k, v in raw.items()}
    assert set(by_ip) == {n.lan_ip for n in c.nodes}, raw
    shapes = {}
    for n in c.nodes:
        key, value = by_ip[n.lan_ip]
        attrs = parse_lease_attrs(value)  # raises LeaseFormatError on anything it does not accept
        assert str(attrs.public_ip) == n.lan_ip and attrs.backend_type == "vxlan"
        vx = attrs.vxlan_data()
        assert vx.vni == 1
        doc = json.loads(value)
        shapes[m.kind(n)] = (sorted(doc), sorted(doc["BackendData"]))
        env_text = n.subnet_file.read_text()
        env = parse_env_text(env_text, source=str(n.subnet_file))
        sn4, sn6 = previous_subnets(env)
        assert sn6 is None and key.endswith(str(sn4).replace("/", "-")), (key, env)
        assert env["FLANNEL_NETWORK"] == "100.64.0.0/16" and env["FLANNEL_MTU"] == "1450"
        assert env["FLANNEL_IPMASQ"] == "true"
        shapes[m.kind(n) + "-env"] = sorted(env)
    # Same JSON fields and the same subnet.env keys from both implementations.
    assert shapes["go"] == shapes["py"], shapes
    assert shapes["go-env"] == shapes["py-env"], shapes

    # flannelctl (pyflannel's admin CLI) lists Go's lease with its VtepMAC.
    go_node = m.go[0]
    out = c.exec(c.lan_ns, [str(Path(c.flanneld).with_name("flannelctl")), f"-etcd-endpoints={c.etcd_endpoint}",
                            "leases", "--json"]).stdout
    listed = json.dumps(json.loads(out))
    go_mac = json.loads(by_ip[go_node.lan_ip][1])["BackendData"]["VtepMAC"]
    assert go_mac in listed and go_node.lan_ip in listed, out

    # Neither side complained about the other's lease; Go handled each pyflannel lease.
    for n in m.py:
        assert not complaints(n, about=(go_node.lan_ip, by_ip[go_node.lan_ip][0].rsplit("/", 1)[-1])), n.name
    go_log = go_node.flanneld_log.read_text()
    assert not complaints(go_node, about=tuple(p.lan_ip for p in m.py)), go_log[-3000:]
    for p in m.py:
        assert f"PublicIP: {p.lan_ip}," in go_log, f"Go flanneld never handled {p.name}'s lease"


def test_swap_implementation_in_place(mixed) -> None:
    """A node switches implementation over its own state: the successor reads the predecessor's subnet.env,
    reuses its lease (same subnet) and the other nodes keep reaching it.  Go -> pyflannel on n3, then
    pyflannel -> Go on n1."""
    m: Mixed = mixed(pods=1)
    c = m.c
    # What each implementation writes on a node of its own, with the node's subnet made generic.
    reference = {m.kind(n): flannel_rules(c, n) for n in (c.node("n2"), c.node("n3"))}
    for node, to in ((c.node("n3"), "py"), (c.node("n1"), "go")):
        before = checks.leases(c)
        subnet = c.read_subnet_env(node)["FLANNEL_SUBNET"]
        assert m.stop(node) == 0, f"{m.label(node)} did not exit 0 on SIGTERM"
        m.start(node, kind=to)
        m.wait_ready(node)  # lease held, rules written, subnet.env rewritten
        assert c.read_subnet_env(node)["FLANNEL_SUBNET"] == subnet
        checks.wait_converged(c, timeout=30)
        after = checks.leases(c)
        # Same keys and the same values: the successor also kept flannel.1's MAC, so no peer had to change.
        assert after == before, (before, after)
        text = format_matrix(m, ping_matrix(c))
        assert "FAIL" not in text, f"after {node.name} became {to}:\n{text}"
        # No rule of the predecessor is left behind: the successor's rules are exactly its own set.
        got = flannel_rules(c, node)
        assert got == reference[to], f"{node.name} as {to}: iptables rules\n{got}\nexpected\n{reference[to]}"


def flannel_rules(c, node) -> list[str]:
    """The node's flanneld iptables rules (filter and nat), its own subnet replaced by <SUBNET>."""
    subnet = str(checks.own_subnet(c, node))
    out = []
    for table in ("filter", "nat"):
        dump = c.exec(node.ns, ["iptables-save", "-t", table]).stdout
        out += [f"{table}: {line.replace(subnet, '<SUBNET>')}" for line in dump.splitlines()
                if line.startswith("-A ") and "flanneld" in line]
    return out
