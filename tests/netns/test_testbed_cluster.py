"""The namespace test bed itself, checked without flanneld: LAN, pods, probes and, above all, clean teardown."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns
from support.cluster import (
    Cluster,
    ClusterError,
    Node,
    check_destination,
    destroy_prefix,
    parse_subnet_env,
    prefix_namespaces,
)

ROOT_OK = os.geteuid() == 0 and shutil.which("ip") is not None
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not ROOT_OK, reason="needs root and iproute2's `ip` (creates network namespaces)"),
]

FAKE_SUBNETS = {"n1": "100.64.1.1/24", "n2": "100.64.2.1/24"}


def write_subnet_env(node: Node, subnet: str, mtu: int = 1450) -> None:
    """What flanneld would write (reference-state.md section 1)."""
    node.subnet_file.write_text(
        f"FLANNEL_NETWORK=100.64.0.0/16\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=true\n"
    )


def sysctl(cluster: Cluster, ns: str, key: str) -> str:
    return cluster.exec(ns, ["sysctl", "-n", key]).stdout.strip()


def link(ns: str, ifname: str) -> dict[str, object]:
    with IPRoute(netns=ns, flags=0) as ipr:
        (idx,) = ipr.link_lookup(ifname=ifname)
        msg = ipr.get_links(idx)[0]
        addrs = [f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx, family=2)]
        master = msg.get("IFLA_MASTER")
        master_name = ipr.get_links(master)[0].get("IFLA_IFNAME") if master else None
        return {"mtu": msg.get("IFLA_MTU"), "state": msg.get("state"), "addrs": addrs, "master": master_name}


def default_gateway(ns: str) -> str | None:
    with IPRoute(netns=ns, flags=0) as ipr:
        for route in ipr.route("dump", table=254):
            if route["dst_len"] == 0:
                return str(route.get("gateway"))
    return None


# ---- pure helpers (still in this module: they are the test bed's own safety rails) ---------------------


@pytest.mark.parametrize("dst", ["8.8.8.8", "127.0.0.1", "192.168.1.1", "10.0.0.1", "100.128.0.1", "::1", "x"])
def test_ping_refuses_destinations_outside_the_test_ranges(dst: str, netns_prefix: str) -> None:
    cluster = Cluster(prefix=netns_prefix, nodes=1)  # never brought up: the check comes before any exec
    with pytest.raises(ValueError):
        cluster.ping(netns_prefix + "-n1", dst)
    cluster.down()


@pytest.mark.parametrize("dst", ["100.64.0.1", "100.127.255.254", "198.18.0.1", "198.19.255.1"])
def test_check_destination_accepts_the_test_ranges(dst: str) -> None:
    assert check_destination(dst) == dst


def test_parse_subnet_env() -> None:
    text = "# written by flanneld\nFLANNEL_NETWORK=100.64.0.0/16\n\nFLANNEL_SUBNET=100.64.67.1/24\nFLANNEL_MTU=1450\n"
    assert parse_subnet_env(text) == {
        "FLANNEL_NETWORK": "100.64.0.0/16",
        "FLANNEL_SUBNET": "100.64.67.1/24",
        "FLANNEL_MTU": "1450",
    }


@pytest.mark.parametrize("prefix", ["", "a-b", "has space", "x" * 25, "../etc"])
def test_invalid_prefixes_are_rejected(prefix: str) -> None:
    with pytest.raises(ValueError):
        Cluster(prefix=prefix)


# ---- the topology ---------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_two_node_cluster_lan_and_pods(netns_prefix: str, tmp_path: Path) -> None:
    with Cluster(prefix=netns_prefix, nodes=2, workdir=tmp_path) as c:
        n1, n2 = c.nodes
        assert set(c.namespaces()) == {f"{netns_prefix}-lan", n1.ns, n2.ns}
        assert (n1.name, n1.ns, n1.lan_ip, n1.dir) == ("n1", f"{netns_prefix}-n1", "198.18.0.11", tmp_path / "n1")
        assert n2.lan_ip == "198.18.0.12"
        assert c.etcd_endpoint == "http://198.18.0.1:2379"

        # LAN: the switch holds the gateway address and does not route; nodes forward.
        lan_br = link(c.lan_ns, "br-lan")
        assert lan_br["addrs"] == ["198.18.0.1/24"] and lan_br["state"] == "up"
        assert sysctl(c, c.lan_ns, "net.ipv4.ip_forward") == "0"
        for node in c.nodes:
            eth0 = link(node.ns, "eth0")
            assert eth0 == {"mtu": 1500, "state": "up", "addrs": [f"{node.lan_ip}/24"], "master": None}
            assert default_gateway(node.ns) == "198.18.0.1"
            assert sysctl(c, node.ns, "net.ipv4.ip_forward") == "1"
            assert link(c.lan_ns, f"veth-{node.name}")["master"] == "br-lan"

        assert c.ping(n1, n2.lan_ip)
        assert c.ping(n2, n1.lan_ip)
        assert c.ping(n1.ns, "198.18.0.1")

        # Pods, from a hand-written subnet file (flanneld is not needed for the bridge side).
        for node in c.nodes:
            write_subnet_env(node, FAKE_SUBNETS[node.name])
        pods1 = c.add_pods(n1, 2)
        pods2 = c.add_pods(n2, 2)
        assert [(p.name, p.ns, p.ip, p.gateway) for p in pods1] == [
            ("n1p1", f"{netns_prefix}-n1p1", "100.64.1.2", "100.64.1.1"),
            ("n1p2", f"{netns_prefix}-n1p2", "100.64.1.3", "100.64.1.1"),
        ]
        assert [p.ip for p in pods2] == ["100.64.2.2", "100.64.2.3"]
        assert c.pods == pods1 + pods2 and all(p.node is n1 for p in pods1)
        docker0 = link(n1.ns, "docker0")
        assert docker0["mtu"] == 1450 and docker0["addrs"] == ["100.64.1.1/24"] and docker0["state"] == "up"
        assert link(n1.ns, "veth1")["master"] == "docker0"
        pod_eth0 = link(pods1[0].ns, "eth0")
        assert pod_eth0 == {"mtu": 1450, "state": "up", "addrs": ["100.64.1.2/24"], "master": None}
        assert default_gateway(pods1[0].ns) == "100.64.1.1"

        for pod in c.pods:
            assert c.ping(pod, pod.gateway), f"{pod.name} cannot reach its gateway"
        assert c.ping(pods1[0], pods1[1].ip, count=2, interval=0.2)  # across the docker0 bridge
        # Without flanneld there is no overlay, and the LAN namespace must not route pod traffic.
        assert not c.ping(pods1[0], pods2[0].ip, timeout=1)

        # More pods later reuse the bridge and continue the numbering.
        (p3,) = c.add_pods(n1, 1)
        assert (p3.name, p3.ip, p3.host_ifname) == ("n1p3", "100.64.1.4", "veth3")
        assert c.ping(p3, pods1[0].ip)

    assert prefix_namespaces(netns_prefix) == []


# ---- teardown -------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_down_runs_when_the_body_raises_and_kills_processes(netns_prefix: str, tmp_path: Path) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    with pytest.raises(RuntimeError, match="boom"), Cluster(prefix=netns_prefix, nodes=2, workdir=tmp_path) as c:
        write_subnet_env(c.nodes[0], FAKE_SUBNETS["n1"])
        (pod,) = c.add_pods(c.nodes[0], 1)
        procs.append(c.popen(c.nodes[1].ns, ["sleep", "600"], tmp_path / "sleep-node.log"))
        procs.append(c.popen(pod.ns, ["sleep", "600"], tmp_path / "sleep-pod.log"))
        # A process that ignores SIGTERM, started outside the helper: down() must still find and kill it.
        stubborn = subprocess.Popen(
            ["ip", "netns", "exec", c.lan_ns, sys.executable, "-c", "import signal, time; "
             "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        procs.append(stubborn)
        assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
        raise RuntimeError("boom")
    assert prefix_namespaces(netns_prefix) == []
    for proc in procs:
        assert proc.wait(timeout=10) is not None
    assert stubborn.returncode == -signal.SIGKILL
    assert stubborn.stdout is not None
    stubborn.stdout.close()


@pytest.mark.timeout(120)
def test_up_failing_halfway_leaves_nothing(netns_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_build = Cluster._build_node

    def build_then_fail(self: Cluster, node: Node) -> None:
        if node.name == "n2":
            raise OSError("simulated failure while building n2")
        real_build(self, node)

    monkeypatch.setattr(Cluster, "_build_node", build_then_fail)
    c = Cluster(prefix=netns_prefix, nodes=3, workdir=tmp_path)
    with pytest.raises(OSError, match="simulated"):
        c.up()
    assert prefix_namespaces(netns_prefix) == []
    c.down()  # idempotent after a failed up()
    c.down()


@pytest.mark.timeout(60)
def test_down_is_idempotent(netns_prefix: str, tmp_path: Path) -> None:
    c = Cluster(prefix=netns_prefix, nodes=1, workdir=tmp_path)
    c.down()  # never brought up
    c.up()
    c.down()
    c.down()
    assert prefix_namespaces(netns_prefix) == []


@pytest.mark.timeout(60)
def test_up_refuses_existing_namespaces_and_leaves_them_alone(netns_prefix: str, tmp_path: Path) -> None:
    netns.create(f"{netns_prefix}-lan")
    c = Cluster(prefix=netns_prefix, nodes=1, workdir=tmp_path)
    with pytest.raises(ClusterError, match="already exist"):
        c.up()
    assert prefix_namespaces(netns_prefix) == [f"{netns_prefix}-lan"]  # not ours to delete
    assert destroy_prefix(netns_prefix) == [f"{netns_prefix}-lan"]


@pytest.mark.timeout(60)
def test_destroy_prefix_kills_processes_and_spares_other_prefixes(netns_prefix: str) -> None:
    mine, other = f"{netns_prefix}-n1p1", f"{netns_prefix}x-lan"
    netns.create(mine)
    netns.create(other)
    try:
        sleeper = subprocess.Popen(["ip", "netns", "exec", mine, "sleep", "600"])
        assert destroy_prefix(netns_prefix) == [mine]
        assert sleeper.wait(timeout=10) == -signal.SIGTERM
        assert other in netns.listnetns()
        assert destroy_prefix(netns_prefix) == []
    finally:
        destroy_prefix(f"{netns_prefix}x")
    assert other not in netns.listnetns()


# ---- flanneld and etcd plumbing (with stand-ins where the real thing is not needed) -------------------


def stand_in_flanneld(path: Path, exit_code: int | None = None) -> Path:
    """A tiny executable that behaves like flanneld as far as the test bed can see."""
    body = f"""\
        #!{sys.executable}
        import json, signal, sys, time
        from pathlib import Path
        args = sys.argv[1:]
        Path(sys.argv[0] + ".argv.json").write_text(json.dumps(args))
        print("stand-in flanneld starting", flush=True)
        if {exit_code!r} is not None:
            print("stand-in: giving up", flush=True)
            sys.exit({exit_code!r})
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        subnet_file = next(a.split("=", 1)[1] for a in args if a.startswith("-subnet-file="))
        time.sleep(0.3)
        Path(subnet_file).write_text("FLANNEL_NETWORK=100.64.0.0/16\\nFLANNEL_SUBNET=100.64.9.1/24\\n"
                                     "FLANNEL_MTU=1450\\nFLANNEL_IPMASQ=true\\n")
        while True:
            time.sleep(1)
        """
    path.write_text(textwrap.dedent(body))
    path.chmod(0o755)
    return path


@pytest.mark.timeout(120)
def test_flanneld_start_wait_and_stop(make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    fake = stand_in_flanneld(tmp_path / "flanneld")
    c = make_cluster(nodes=1, flanneld=fake)
    (n1,) = c.nodes
    c.start_flanneld(n1, extra_args=["-v=2"])
    env = c.wait_subnet_env(n1, timeout=20)
    assert env["FLANNEL_SUBNET"] == "100.64.9.1/24" and env["FLANNEL_MTU"] == "1450"
    assert json.loads(Path(f"{fake}.argv.json").read_text()) == [
        "-etcd-endpoints=http://198.18.0.1:2379",
        "-iface=eth0",
        "-ip-masq",
        f"-subnet-file={n1.dir / 'subnet.env'}",
        "-v=2",
    ]
    with pytest.raises(ClusterError, match="already running"):
        c.start_flanneld(n1)
    (pod,) = c.add_pods(n1, 1)
    assert pod.ip == "100.64.9.2"
    assert c.stop_flanneld(n1) == 0
    assert "stand-in flanneld starting" in n1.flanneld_log.read_text()
    assert c.peer_routes(n1) is None  # no flannel.1 without the real daemon


@pytest.mark.timeout(60)
def test_wait_subnet_env_reports_a_crashed_flanneld(make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    c = make_cluster(nodes=1, flanneld=stand_in_flanneld(tmp_path / "flanneld", exit_code=3))
    c.start_flanneld(c.nodes[0])
    with pytest.raises(ClusterError, match=r"exited with 3(.|\n)*stand-in: giving up"):
        c.wait_subnet_env(c.nodes[0], timeout=20)


@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("etcd") is None or shutil.which("etcdctl") is None, reason="needs etcd + etcdctl")
def test_etcd_in_the_lan_namespace(make_cluster: Callable[..., Cluster]) -> None:
    pytest.importorskip("support.etcd")
    c = make_cluster(nodes=2)
    server = c.start_etcd()
    assert server.client_url == "http://198.18.0.1:2379"
    config = '{"Network": "100.64.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}'
    c.put_config(config)
    got = c.etcdctl("get", "--print-value-only", "/coreos.com/network/config").stdout.strip()
    assert got == config
    # Nodes reach etcd across the LAN.
    health = c.exec(c.nodes[1].ns, ["etcdctl", "--endpoints", c.etcd_endpoint, "endpoint", "health"])
    assert "is healthy" in health.stdout + health.stderr
    assert c.leases() == {}
    lease = {"PublicIP": "198.18.0.11", "PublicIPv6": None, "BackendType": "vxlan",
             "BackendData": {"VNI": 1, "VtepMAC": "b6:3a:f4:a5:6f:94"}}  # fmt: skip
    c.etcdctl("put", "/coreos.com/network/subnets/100.64.67.0-24", json.dumps(lease, separators=(",", ":")))
    assert c.leases() == {"100.64.67.0/24": lease}
    with pytest.raises(ValueError):
        c.put_config("{not json")
    c.down()
    assert c.etcd is None and server.proc.poll() is not None
