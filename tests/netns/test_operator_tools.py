"""flannelctl and flanneld's HTTP endpoints on real nodes: network namespaces, a real etcd, real flanneld.

flannelctl runs inside a node's namespace with the node's flags (``cluster.exec(node.ns, [flannelctl, ...])``),
as an operator would run it on the host. The health server listens on each node's LAN address
(198.18.0.1x), so every request stays inside 198.18.0.0/15. Breakages are made by the tests, inside the node
namespaces only: MTU mismatch, missing iptables rules, ip_forward off, a deleted peer route, checksum offload.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pyroute2 import IPRoute
from support.checks import wait_for
from support.cluster import Cluster, Node, destroy_prefix

pytestmark = pytest.mark.root
CONFIG = '{"Network": "100.64.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}'
FLANNELCTL = str(Path(sys.executable).parent / "flannelctl")
HEALTH_PORT = 10256
# Long periods on the breakable cluster, so nothing repairs a breakage before doctor looks at it.
FROZEN = ("-resync-period=3600", "-iptables-resync=3600")




def health_args(node: Node) -> tuple[str, ...]:
    return (f"-healthz-ip={node.lan_ip}", f"-healthz-port={HEALTH_PORT}")


def ctl(c: Cluster, node: Node, *argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """flannelctl in the node's namespace, with the flags its flanneld runs with."""
    return c.exec(node.ns, [FLANNELCTL, f"-etcd-endpoints={c.etcd_endpoint}", f"-subnet-file={node.subnet_file}",
                            *argv], check=check, timeout=60)


def http(c: Cluster, node: Node, path: str) -> tuple[int, str]:
    """GET http://<node LAN IP>:<port><path> from inside the node: (status, body); (0, error) if refused."""
    code = (
        "import sys, urllib.request, urllib.error\n"
        f"try:\n    r = urllib.request.urlopen('http://{node.lan_ip}:{HEALTH_PORT}{path}', timeout=5)\n"
        "    print(r.status); sys.stdout.write(r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n    print(e.code); sys.stdout.write(e.read().decode())\n"
        "except OSError as e:\n    print(0); print(e)\n"
    )
    out = c.exec(node.ns, [sys.executable, "-c", code], timeout=30).stdout
    status, _, body = out.partition("\n")
    return int(status), body


def metrics(c: Cluster, node: Node) -> dict[str, float]:
    status, text = http(c, node, "/metrics")
    assert status == 200, text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name + (json.dumps(s.labels, sort_keys=True) if s.labels else "")] = s.value
    return out


def own_subnet(c: Cluster, node: Node) -> IPv4Network:
    return IPv4Network(c.read_subnet_env(node)["FLANNEL_SUBNET"], strict=False)


def start(prefix: str, workdir: Path, nodes: int, extra: tuple[str, ...] = (), config_first: bool = True) -> Cluster:
    c = Cluster(prefix=prefix, nodes=nodes, workdir=workdir)
    try:
        c.up()
        c.start_etcd()
        if config_first:
            c.put_config(CONFIG)
        for n in c.nodes:
            c.start_flanneld(n, (*health_args(n), *extra))
    except BaseException:
        c.down()
        raise
    return c


def wait_ready(c: Cluster, nodes: list[Node] | None = None) -> None:
    for n in nodes or c.nodes:
        c.wait_subnet_env(n)
        wait_for(lambda n=n: http(c, n, "/readyz")[0] == 200, 20, f"{n.name} /readyz 200")  # type: ignore[misc]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("etcd"):
        pytest.skip("needs root, iproute2 and etcd (creates network namespaces)")
    prefix = f"pfo{secrets.token_hex(2)}"
    c = start(prefix, tmp_path_factory.mktemp("ops"), 3)
    try:
        wait_ready(c)
        # every node has seen both peers
        wait_for(lambda: all(len(c.peer_routes(n) or []) == 2 for n in c.nodes), 15, "peer routes")
        yield c
    finally:
        c.down()
        destroy_prefix(prefix)


def test_status_reports_lease_peers_mtu_sync_and_etcd(cluster: Cluster) -> None:
    n1 = cluster.nodes[0]
    mine = own_subnet(cluster, n1)
    p = ctl(cluster, n1, "status", "--json", check=True)
    d = json.loads(p.stdout)
    assert d["lease"]["subnet"] == str(mine) and d["lease"]["public_ip"] == n1.lan_ip
    assert 86000 < d["lease"]["ttl_seconds"] <= 86400 and not d["lease"]["reserved"]
    assert d["peers"]["etcd"] == 2 and d["peers"]["kernel"] == 2 and d["peers"]["drift"] == []
    assert {r["public_ip"] for r in d["peers"]["rows"]} == {"198.18.0.12", "198.18.0.13"}
    assert all(r["kernel"] == "ok" for r in d["peers"]["rows"])
    assert d["mtu"] == {"uplink": "eth0", "uplink_mtu": 1500, "device": "flannel.1", "device_mtu": 1450,
                        "subnet_env_mtu": 1450, "expected": 1450, "consistent": True, "problems": []}
    dm = d["daemon"]
    assert dm["running"] is True and dm["ready"] is True and dm["in_sync"] is True
    assert 0 <= dm["last_sync_age"] < 15 and dm["passes"] >= 1
    assert d["etcd"] == [{"endpoint": cluster.etcd_endpoint, "ok": True, "version": d["etcd"][0]["version"],
                          "leader": True, "db_size": d["etcd"][0]["db_size"], "raft_index": d["etcd"][0]["raft_index"],
                          "error": None}]
    text = ctl(cluster, n1, "status", check=True).stdout
    assert f"lease:     {mine}, PublicIP {n1.lan_ip}, expires in 23h5" in text
    assert "peers:     etcd 2, kernel 2, drift none" in text
    assert "mtu:       uplink eth0 1500, flannel.1 1450, subnet.env 1450: consistent" in text


def test_leases_from_a_node(cluster: Cluster) -> None:
    d = json.loads(ctl(cluster, cluster.nodes[1], "leases", "--json", check=True).stdout)
    assert sorted(x["public_ip"] for x in d["leases"]) == ["198.18.0.11", "198.18.0.12", "198.18.0.13"]
    assert all(x["backend_type"] == "vxlan" and not x["reserved"] and x["ttl_seconds"] > 86000 for x in d["leases"])
    text = ctl(cluster, cluster.nodes[1], "leases", check=True).stdout
    assert text.splitlines()[0].split() == ["SUBNET", "PUBLIC-IP", "BACKEND", "VTEP-MAC", "EXPIRES-IN", "RESERVED"]
    assert len(text.splitlines()) == 4


def test_doctor_passes_on_a_healthy_node(cluster: Cluster) -> None:
    p = ctl(cluster, cluster.nodes[0], "doctor")
    assert p.returncode == 0, p.stdout
    lines = p.stdout.splitlines()
    assert "[FAIL]" not in p.stdout
    assert lines[-1].startswith("17 checks: 0 failed")
    assert len(lines) == 18


def test_health_readiness_and_metrics(cluster: Cluster) -> None:
    n2 = cluster.nodes[1]
    assert http(cluster, n2, "/healthz") == (200, "flanneld is running\n")
    assert http(cluster, n2, "/readyz") == (200, "flanneld is ready\n")
    m = metrics(cluster, n2)
    mine = str(own_subnet(cluster, n2))
    key = json.dumps({"public_ip": n2.lan_ip, "subnet": mine}, sort_keys=True)
    assert abs(m["flannel_lease_expiry_timestamp_seconds" + key] - (time.time() + 86400)) < 120
    assert m["flannel_lease_reserved" + key] == 0
    assert m["flannel_peers_desired"] == 2 and m["flannel_peers_installed"] == 2
    assert m["flannel_kernel_entries_installed"] == 6 and m["flannel_in_sync"] == 1 and m["flannel_ready"] == 1
    assert m["flannel_reconcile_duration_seconds_count"] >= 1
    assert m["flannel_reconcile_passes_total"] == m["flannel_reconcile_duration_seconds_count"]
    for name in ("flannel_netlink_errors_total", "flannel_etcd_errors_total", "flannel_etcd_watch_restarts_total",
                 "flannel_iptables_resyncs_total"):
        assert name in m
    assert any(k.startswith("flannel_build_info") for k in m)
    status = json.loads((n2.dir / "pyflannel-status.json").read_text())
    assert status["lease"]["subnet"] == mine and status["ready"] is True


def _mk_docker_opts_script() -> str:
    """flannel's mk-docker-opts.sh, embedded (with its license header) in the integration test module."""
    path = Path(__file__).resolve().parents[1] / "integration" / "test_flannelctl_docker_opts.py"
    spec = importlib.util.spec_from_file_location("_mk_docker_opts_case", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.MK_DOCKER_OPTS)


def test_docker_opts_matches_the_script_on_a_node(cluster: Cluster, tmp_path: Path) -> None:
    n1 = cluster.nodes[0]
    script = tmp_path / "mk-docker-opts.sh"
    script.write_text(_mk_docker_opts_script())
    peer_env = tmp_path / "peer-subnet.env"
    peer = own_subnet(cluster, cluster.nodes[2])
    # a subnet.env claiming a peer's subnet: the node already routes it via flannel.1, both tools must refuse
    peer_env.write_text(n1.subnet_file.read_text().replace(str(own_subnet(cluster, n1).network_address + 1),
                                                           str(peer.network_address + 1)))
    for env_file, want_rc in ((n1.subnet_file, 0), (peer_env, 1)):
        for flags in ([], ["-c", "-k", "DOCKER_NETWORK_OPTIONS"], ["-i", "-m"]):
            res = []
            for i, tool in enumerate((["sh", str(script)], [FLANNELCTL, "docker-opts"])):
                out = tmp_path / f"out{i}.env"
                out.unlink(missing_ok=True)
                p = cluster.exec(n1.ns, [*tool, "-f", str(env_file), "-d", str(out), *flags], check=False)
                res.append((p.returncode, p.stderr, out.read_text()))
            assert res[0] == res[1], (env_file, flags)
            assert res[0][0] == want_rc
    # `ip route show` ends the line with a blank; both tools pass it through
    assert res[1][1] == (f"Your routing table already contains the subnet: {peer} via {peer.network_address} "
                         "dev flannel.1 onlink \n")
    assert res[1][2] == f'DOCKER_OPT_BIP="--bip={peer.network_address + 1}/24"\nDOCKER_OPT_MTU="--mtu=1450"\n'


# --- a cluster we break -----------------------------------------------------------------


def set_tx_checksum(c: Cluster, node: Node, on: bool) -> None:
    """ethtool -K flannel.1 tx off, via the ETHTOOL_STXCSUM ioctl, inside the node's namespace."""
    code = (
        "import array, fcntl, socket, struct\n"
        f"buf = array.array('B', struct.pack('II', 0x17, {int(on)}))\n"
        "ifr = struct.pack('16sP', b'flannel.1', buf.buffer_info()[0])\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "fcntl.ioctl(s.fileno(), 0x8946, ifr)\n"
    )
    c.exec(node.ns, [sys.executable, "-c", code])


def lines_of(out: str) -> dict[str, str]:
    """doctor's lines by check name ("[FAIL] mtu  ..." -> "mtu")."""
    return {line[7:].split()[0]: line for line in out.splitlines() if line.startswith("[")}


def test_readiness_before_config_and_doctor_on_a_broken_node(netns_prefix: str, tmp_path: Path) -> None:
    c = start(netns_prefix, tmp_path / "c", 2, FROZEN, config_first=False)
    try:
        n1, n2 = c.nodes
        # before the config exists: alive, not ready, and it says why
        wait_for(lambda: http(c, n1, "/healthz")[0] == 200, 20, "healthz to answer")
        status, body = http(c, n1, "/readyz")
        assert status == 503
        assert body.startswith("flanneld is not ready yet: waiting for the network config in etcd; no subnet lease")
        assert metrics(c, n1)["flannel_lease_held"] == 0
        c.put_config(CONFIG)
        wait_ready(c)
        wait_for(lambda: len(c.peer_routes(n1) or []) == 1, 15, "n1 to route to n2")
        p = ctl(c, n1, "doctor")
        assert p.returncode == 0, p.stdout

        peer = own_subnet(c, n2)
        # flanneld would repair the deleted route at once (from its notification): freeze it, as a wedged
        # daemon would be, so that doctor sees the broken state.
        proc = c.flanneld_process(n1)
        assert proc is not None
        os.kill(proc.pid, signal.SIGSTOP)
        c.exec(n1.ns, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])
        with IPRoute(netns=n1.ns, flags=0) as ipr:
            (i,) = ipr.link_lookup(ifname="flannel.1")
            ipr.link("set", index=i, mtu=1400)
            ipr.route("del", dst=str(peer), gateway=str(peer.network_address), oif=i)
        c.exec(n1.ns, ["iptables", "-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment", "flanneld masq",
                       "-j", "FLANNEL-POSTRTG"])
        c.exec(n1.ns, ["iptables", "-t", "filter", "-D", "FLANNEL-FWD", "-s", "100.64.0.0/16", "-m", "comment",
                       "--comment", "flanneld forward", "-j", "ACCEPT"])
        set_tx_checksum(c, n1, False)

        p = ctl(c, n1, "doctor")
        assert p.returncode == 1
        got = lines_of(p.stdout)
        for name in ("ip_forward", "mtu", "kernel_peers", "masquerade", "forward_rules"):
            assert got[name].startswith("[FAIL]") and "-- fix: " in got[name], got[name]
        assert "net.ipv4.ip_forward = 0" in got["ip_forward"] and "sysctl -w net.ipv4.ip_forward=1" in got["ip_forward"]
        assert "flannel.1 MTU 1400 differs from FLANNEL_MTU 1450" in got["mtu"]
        assert "ip link set flannel.1 mtu 1450" in got["mtu"]
        assert f"missing route {peer} via {peer.network_address} dev flannel.1 onlink" in got["kernel_peers"]
        assert "-A POSTROUTING ... -j FLANNEL-POSTRTG" in got["masquerade"]
        assert "-A FLANNEL-FWD -s 100.64.0.0/16" in got["forward_rules"]
        assert got["tx_checksum"].startswith("[ OK ]") and "offload off on flannel.1" in got["tx_checksum"]
        for name in ("lease", "etcd", "duplicate_public_ip", "network_overlap", "peer_reachability"):
            assert got[name].startswith("[ OK ]"), got[name]
        assert p.stdout.splitlines()[-1] == "17 checks: 5 failed, 0 warnings"
        d = json.loads(ctl(c, n1, "doctor", "--json").stdout)
        assert d["ok"] is False and {x["name"] for x in d["checks"] if x["level"] == "fail"} == {
            "ip_forward", "mtu", "kernel_peers", "masquerade", "forward_rules"}

        st = json.loads(ctl(c, n1, "status", "--json", check=True).stdout)
        assert st["peers"]["kernel"] == 0 and st["peers"]["etcd"] == 1
        assert st["peers"]["rows"][0]["kernel"] == "missing route"
        assert st["mtu"]["consistent"] is False
        text = ctl(c, n1, "status", check=True).stdout
        assert "drift 1 entry" in text and f"  missing route {peer} via {peer.network_address}" in text
        os.kill(proc.pid, signal.SIGCONT)
        wait_for(lambda: len(c.peer_routes(n1) or []) == 1, 15, "the thawed daemon to put the route back")
    finally:
        c.down()

