"""Kubernetes-mode dual-stack: flanneld --kube-subnet-mgr with EnableIPv6 on 3 netns nodes, real kube-apiserver.

Why: in kube mode the v6 half of a lease travels only in Node annotations (``backend-v6-data``,
``public-ipv6``) and the second entry of ``spec.podCIDRs``; nothing in the etcd-mode dual-stack tests
(tests/netns/test_dualstack_daemon.py) reads or writes those. Shown here against a real API server:

* v4 and v6 pod pings between every pair of nodes (the matrix is printed), for vxlan, host-gw and
  wireguard (wireguard-go here: flanneld runs behind support.wgagent.PRIVATE_WG_DIR);
* the annotations exactly as flannel v0.28.9 writes them (docs: ../shared/spec/kube-mode.md §2);
* ``flannel-v6.<VNI>``: local address, VNI, the /128 address, and per peer the route, neighbour and FDB
  entry that the peers' annotations call for;
* the v6 lines of subnet.env;
* a restart after both VXLAN devices were deleted keeps both VtepMACs: the v4 one comes back from
  ``backend-data``, the v6 one from ``backend-v6-data`` (KubeSubnetManager.stored_backend_data);
* flannelctl status/doctor on a node (kube mode) pass the backend's own checks and list each peer's
  kernel state (vxlan entries, host-gw routes, WireGuard peers and handshakes);
* a mixed cluster with Go flanneld v0.28.9 on n3, in kube mode, pinging v4 and v6 both ways (vxlan and
  host-gw), and Go restoring both VtepMACs from its annotations after a restart without devices.

The Nodes are created by the test (no kube-controller-manager): node i gets podCIDRs
``[100.64.i.0/24, fd64:0:0:i::/64]`` and the LAN gets fd18::/64 addresses (support.dualstack).
The cluster is built here rather than by conftest's ``kube_cluster`` because the LAN must have IPv6
before the Nodes and the net-conf are made; the parts (Cluster, support.kube, KubeCluster) are shared.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv6Interface
from pathlib import Path
from typing import Any

import pytest
from netns.test_dualstack_daemon import add_pods6, wait_env6
from pyroute2 import IPRoute
from support import dualstack
from support import kube as ks
from support.cluster import Cluster, Node, destroy_prefix
from support.wgagent import PRIVATE_WG_DIR

from pyflannel.core.backends.wireguard import public_key

from .conftest import LAN_IP, KubeCluster, _skip_reason

pytestmark = pytest.mark.root

P = "flannel.alpha.coreos.com/"
NETWORK6 = "fd64::/48"
MAC = r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}"
VXLAN_DATA_RE = re.compile(rf'^\{{"VNI":1,"VtepMAC":"{MAC}"\}}$')
FLANNELCTL = str(Path(sys.executable).parent / "flannelctl")
ANNOTATIONS = {P + s for s in ("kube-subnet-manager", "backend-type", "backend-data", "backend-v6-data", "public-ip",
                               "public-ipv6")}


def net_conf(backend: str) -> str:
    return json.dumps({"Network": "100.64.0.0/16", "EnableIPv6": True, "IPv6Network": NETWORK6,
                       "Backend": {"Type": backend}})


def subnet6(node: Node) -> str:
    return f"fd64:0:0:{node.index:x}::/64"


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def kube_ds(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KubeCluster]:
    """3 nodes with fd18:: LAN addresses, an API server in the LAN namespace, dual-stack Nodes and net-conf.

    ``request.param`` is the backend type (indirect parametrisation; vxlan by default).
    """
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    backend = getattr(request, "param", "vxlan")
    prefix = f"kds{secrets.token_hex(2)}"
    destroy_prefix(prefix)
    c = Cluster(prefix=prefix, nodes=3, workdir=tmp_path / "cluster")
    api = None
    try:
        c.up()
        dualstack.enable_lan6(c)
        api = ks.start_apiserver(tmp_path / "api", host=LAN_IP, netns=c.lan_ns)
        kc = ks.flannel_kubeconfig(api, tmp_path / "flannel.kubeconfig")
        conf = tmp_path / "net-conf.json"
        conf.write_text(net_conf(backend))
        for n in c.nodes:
            api.create_node(n.name, f"100.64.{n.index}.0/24", pod_cidrs=[f"100.64.{n.index}.0/24", subnet6(n)],
                            internal_ip=n.lan_ip)
        yield KubeCluster(c, api, kc, conf)
    finally:
        c.down()
        if api is not None:
            api.close()
        destroy_prefix(prefix)


def flannel_annotations(k: KubeCluster, node: Node) -> dict[str, str]:
    ann = k.api.get_node(node.name)["metadata"].get("annotations") or {}
    return {a: v for a, v in ann.items() if a.startswith(P)}


def published(k: KubeCluster, node: Node) -> bool:
    return set(flannel_annotations(k, node)) == ANNOTATIONS


def start_and_add_pods(k: KubeCluster, go_nodes: tuple[str, ...] = (),
                       start: Callable[[Node], object] | None = None) -> dict[str, str]:
    """flanneld on every node (Go on ``go_nodes``, or ``start(node)``), one pod per node with a v4 and a v6
    address. Returns node name -> the pod's v6 address.
    """
    c = k.c
    for n in c.nodes:
        if start is not None:
            start(n)
        else:
            k.start(n, go=n.name in go_nodes)
    pods6 = {}
    for n in c.nodes:
        env = wait_env6(c, n)
        c.add_pods(n, 1)
        pods6[n.name] = add_pods6(c, n, IPv6Interface(env["FLANNEL_IPV6_SUBNET"]))[0]
    wait_for(lambda: all(published(k, n) for n in c.nodes), 30, "every node's flannel annotations")
    return pods6


def ping_matrix(c: Cluster, pods6: dict[str, str], label: Callable[[Node], str] = lambda n: n.name,
                timeout: float = 60.0) -> dict[tuple[str, str, str], bool]:
    """Every node's pod to every other node's pod, v4 and v6, until all answer or ``timeout``; printed."""
    deadline = time.monotonic() + timeout
    while True:
        res = {}
        for a in c.pods:
            for b in c.pods:
                if a.node is not b.node:
                    res[(label(a.node), label(b.node), "v4")] = c.ping(a, b.ip, count=1, timeout=1)
                    res[(label(a.node), label(b.node), "v6")] = dualstack.ping6(c, a.ns, pods6[b.node.name],
                                                                                timeout=1)
        if all(res.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    names = [label(n) for n in c.nodes]
    width = max(len("from\\to"), *(len(x) for x in names)) + 2

    def cell(s: str, d: str) -> str:
        if s == d:
            return "-"
        return " ".join(f"{f}:{'ok' if res[(s, d, f)] else 'FAIL'}" for f in ("v4", "v6"))

    rows = ["from\\to".ljust(width) + "".join(d.ljust(14) for d in names)]
    rows += [s.ljust(width) + "".join(cell(s, d).ljust(14) for d in names) for s in names]
    print("\nping matrix (pod -> pod):\n" + "\n".join(rows))
    return res


def vxlan6_state(node: Node) -> dict[str, Any]:
    """What the node's kernel has on flannel-v6.1: link data, addresses, gateway routes, permanent neighbours, FDB."""
    with IPRoute(netns=node.ns, flags=0) as ipr:
        (link,) = ipr.link("get", ifname="flannel-v6.1")
        data = link.get("IFLA_LINKINFO").get("IFLA_INFO_DATA")
        idx = link["index"]
        return {
            "mac": link.get("IFLA_ADDRESS"),
            "local6": data.get("IFLA_VXLAN_LOCAL6"),
            "vni": data.get("IFLA_VXLAN_ID"),
            "addrs": {f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.addr("dump", family=10, index=idx)},
            "routes": {(r.get("RTA_DST"), r["dst_len"], r.get("RTA_GATEWAY"))
                       for r in ipr.route("dump", family=10, table=254, oif=idx) if r.get("RTA_GATEWAY")},
            "neighs": {(nb.get("NDA_DST"), nb.get("NDA_LLADDR")) for nb in ipr.neigh("dump", family=10, ifindex=idx)
                       if nb["state"] & 0x80},
            "fdb": {(nb.get("NDA_LLADDR"), nb.get("NDA_DST")) for nb in ipr.fdb("dump", ifindex=idx)
                    if nb.get("NDA_DST")},
        }


def link_mac(node: Node, ifname: str) -> str | None:
    with IPRoute(netns=node.ns, flags=0) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        return ipr.link("get", index=found[0])[0].get("IFLA_ADDRESS") if found else None


def wg_env(node: Node) -> dict[str, str]:
    return {"NODE_NAME": node.name, "WIREGUARD_KEY_FILE": str(node.dir / "wgkey")}


def flannelctl(k: KubeCluster, node: Node, *argv: str) -> tuple[int, Any, str]:
    """flannelctl with the node's flanneld flags where its flanneld runs: (exit status, the --json document, the
    text). For wireguard that is flanneld's own mount namespace too (its private /run/wireguard)."""
    cmd = [FLANNELCTL, *k.kube_args(), f"-subnet-file={node.subnet_file}"]
    env = {"NODE_NAME": node.name}
    proc = k.c.flanneld_process(node)
    if (node.dir / "wgkey").exists() and proc is not None:
        env = wg_env(node)

        def run(args: list[str]) -> Any:
            return subprocess.run(["nsenter", "-t", str(proc.pid), "-m", "-n", "env",
                                   *(f"{a}={b}" for a, b in env.items()), *args],
                                  capture_output=True, text=True, timeout=60, check=False)
    else:
        def run(args: list[str]) -> Any:
            return k.c.exec(node.ns, args, check=False, timeout=60, env=env)
    p = run([*cmd, *argv, "--json"])
    assert p.stdout, p.stderr
    text = run([*cmd, *argv]).stdout
    print(f"\n$ flannelctl {' '.join(argv)} (on {node.name})\n{text}")
    return p.returncode, json.loads(p.stdout), text


def doctor_fails(k: KubeCluster, node: Node) -> tuple[int, dict[str, Any]]:
    rc, doc, _ = flannelctl(k, node, "doctor")
    checks = {c["name"]: c for c in doc["checks"]}
    return rc, {n: c for n, c in checks.items() if c["level"] == "fail"} | {"_all": checks}


def complaints(node: Node, about: tuple[str, ...]) -> list[str]:
    """Error/fatal lines of the node's flanneld log (klog format, either implementation), and warnings naming
    any of ``about``; a stop's "context canceled" is not a complaint."""
    text = node.flanneld_log.read_text(errors="replace") if node.flanneld_log.exists() else ""
    return [ln for ln in text.splitlines() if re.match(r"[EFW]\d{4} ", ln) and "context canceled" not in ln
            and (ln[0] != "W" or any(a in ln for a in about))]


def vteps(k: KubeCluster, node: Node) -> tuple[str, str]:
    a = flannel_annotations(k, node)
    return json.loads(a[P + "backend-data"])["VtepMAC"], json.loads(a[P + "backend-v6-data"])["VtepMAC"]


# --- vxlan ------------------------------------------------------------------------------------------------


def test_vxlan_dual_stack_pings_annotations_kernel_and_subnet_env(kube_ds: KubeCluster) -> None:
    k, c = kube_ds, kube_ds.c
    pods6 = start_and_add_pods(k)
    res = ping_matrix(c, pods6)
    assert all(res.values()), [key for key, ok in res.items() if not ok]

    anns = {n.name: flannel_annotations(k, n) for n in c.nodes}
    print("annotations:", json.dumps(anns, indent=1, sort_keys=True))
    for n in c.nodes:
        a = anns[n.name]
        assert set(a) == ANNOTATIONS, n.name
        assert a[P + "kube-subnet-manager"] == "true" and a[P + "backend-type"] == "vxlan"
        assert a[P + "public-ip"] == n.lan_ip and a[P + "public-ipv6"] == dualstack.node_ip6(n)
        # Go's json.Marshal of vxlan's lease attrs: compact, VNI then VtepMAC.
        assert VXLAN_DATA_RE.match(a[P + "backend-data"]), a[P + "backend-data"]
        assert VXLAN_DATA_RE.match(a[P + "backend-v6-data"]), a[P + "backend-v6-data"]
        mac4, mac6 = vteps(k, n)
        assert mac4 != mac6
        assert (link_mac(n, "flannel.1"), link_mac(n, "flannel-v6.1")) == (mac4, mac6)
        cond = next(x for x in k.api.get_node(n.name)["status"]["conditions"] if x["type"] == "NetworkUnavailable")
        assert (cond["status"], cond["reason"]) == ("False", "FlannelIsUp")

    for n in c.nodes:
        st = vxlan6_state(n)
        assert (st["local6"], st["vni"]) == (dualstack.node_ip6(n), 1), n.name
        assert f"fd64:0:0:{n.index:x}::/128" in st["addrs"], (n.name, st["addrs"])
        peers = [p for p in c.nodes if p is not n]
        want_routes = {(f"fd64:0:0:{p.index:x}::", 64, f"fd64:0:0:{p.index:x}::") for p in peers}
        want_neighs = {(f"fd64:0:0:{p.index:x}::", vteps(k, p)[1]) for p in peers}
        want_fdb = {(vteps(k, p)[1], dualstack.node_ip6(p)) for p in peers}
        assert (st["routes"], st["neighs"], st["fdb"]) == (want_routes, want_neighs, want_fdb), n.name

        env = c.read_subnet_env(n)
        assert env["FLANNEL_NETWORK"] == "100.64.0.0/16" and env["FLANNEL_SUBNET"] == f"100.64.{n.index}.1/24"
        assert env["FLANNEL_IPV6_NETWORK"] == NETWORK6
        assert env["FLANNEL_IPV6_SUBNET"] == f"fd64:0:0:{n.index:x}::1/64"

    # flannelctl on a node: the kube checks and the vxlan + IPv6 kernel checks pass; status shows every peer's
    # kernel entries in place and the dual-stack columns.
    n1 = c.nodes[0]
    rc, fails = doctor_fails(k, n1)
    checks = fails.pop("_all")
    assert (rc, fails) == (0, {}), fails
    assert {"backend", "pod cidr v6", "vxlan_device", "kernel_peers", "ipv6_forwarding", "ipv6_rules"} <= set(checks)
    assert checks["kernel_peers"]["level"] == "ok" and checks["pod cidr v6"]["detail"] == subnet6(n1)
    rc, doc, text = flannelctl(k, n1, "status")
    kr = doc["kernel"]
    assert rc == 0 and (kr["error"], kr["leases"], kr["kernel"], kr["drift"]) == (None, 2, 2, [])
    assert sorted((r["subnet"], r["kernel"], r["subnet6"], r["vtep_mac6"], r["kernel6"]) for r in kr["rows"]) == [
        (f"100.64.{p.index}.0/24", "ok", subnet6(p), vteps(k, p)[1], "ok") for p in c.nodes[1:]]
    assert {(p["name"], p["subnet6"], p["vtep_mac6"]) for p in doc["peers"]} == {
        (p.name, subnet6(p), vteps(k, p)[1]) for p in c.nodes[1:]}
    assert "VTEPMAC-V6" in text and "KERNEL-V6" in text
    assert "flannel-v6.1 up, local fd18::b" in checks["vxlan_device"]["detail"]

    # A v6 route deleted while flanneld is stopped (SIGSTOP: its repair cannot hide it) is what they report.
    proc = c.flanneld_process(n1)
    assert proc is not None
    proc.send_signal(signal.SIGSTOP)
    try:
        with IPRoute(netns=n1.ns, flags=0) as ipr:
            ipr.route("del", dst="fd64:0:0:2::/64", family=10, oif=ipr.link_lookup(ifname="flannel-v6.1")[0])
        rc, fails = doctor_fails(k, n1)
        fails.pop("_all")
        assert rc == 1 and set(fails) == {"kernel_peers"}, fails
        assert "missing route fd64:0:0:2::/64 via fd64:0:0:2:: dev flannel-v6.1" in fails["kernel_peers"]["detail"]
        _rc, doc, _text = flannelctl(k, n1, "status")
        row = next(r for r in doc["kernel"]["rows"] if r["subnet"] == "100.64.2.0/24")
        assert (row["kernel"], row["kernel6"]) == ("ok", "missing route")
    finally:
        proc.send_signal(signal.SIGCONT)
    wait_for(lambda: flannelctl(k, n1, "status")[1]["kernel"]["drift"] == [], 30, "flanneld to put the v6 route back")


def test_vxlan_dual_stack_restart_keeps_both_vtep_macs(kube_ds: KubeCluster) -> None:
    """Both devices deleted while flanneld is down: the MACs can only come back from the annotations."""
    k, c = kube_ds, kube_ds.c
    pods6 = start_and_add_pods(k)
    assert all(ping_matrix(c, pods6).values())
    n1 = c.nodes[0]
    before = {n.name: vteps(k, n) for n in c.nodes}

    c.stop_flanneld(n1)
    with IPRoute(netns=n1.ns, flags=0) as ipr:
        for dev in ("flannel.1", "flannel-v6.1"):
            ipr.link("del", index=ipr.link_lookup(ifname=dev)[0])
    k.start(n1)
    wait_for(lambda: link_mac(n1, "flannel-v6.1") is not None and "FLANNEL_IPV6_SUBNET" in c.read_subnet_env(n1),
             30, "n1's devices after the restart")
    assert (link_mac(n1, "flannel.1"), link_mac(n1, "flannel-v6.1")) == before["n1"]
    res = ping_matrix(c, pods6)
    assert all(res.values()), [key for key, ok in res.items() if not ok]
    assert {n.name: vteps(k, n) for n in c.nodes} == before


# --- host-gw ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kube_ds", ["host-gw"], indirect=True)
def test_hostgw_dual_stack_pings_and_annotations(kube_ds: KubeCluster) -> None:
    k, c = kube_ds, kube_ds.c
    pods6 = start_and_add_pods(k)
    res = ping_matrix(c, pods6)
    assert all(res.values()), [key for key, ok in res.items() if not ok]
    for n in c.nodes:
        a = flannel_annotations(k, n)
        assert a == {P + "kube-subnet-manager": "true", P + "backend-type": "host-gw", P + "backend-data": "null",
                     P + "backend-v6-data": "null", P + "public-ip": n.lan_ip,
                     P + "public-ipv6": dualstack.node_ip6(n)}, n.name
        with IPRoute(netns=n.ns, flags=0) as ipr:
            routes6 = {(r.get("RTA_DST"), r["dst_len"], r.get("RTA_GATEWAY"))
                       for r in ipr.route("dump", family=10, table=254) if r.get("RTA_GATEWAY")}
        want = {(f"fd64:0:0:{p.index:x}::", 64, dualstack.node_ip6(p)) for p in c.nodes if p is not n}
        assert want <= routes6, (n.name, routes6)
        assert c.read_subnet_env(n)["FLANNEL_IPV6_SUBNET"] == f"fd64:0:0:{n.index:x}::1/64"

    # flannelctl on a node: host-gw's checks (gateways on the L2, routes in place, both families) pass.
    n1 = c.nodes[0]
    rc, fails = doctor_fails(k, n1)
    checks = fails.pop("_all")
    assert (rc, fails) == (0, {}), fails
    assert {"backend", "pod cidr v6", "hostgw_l2", "hostgw_routes", "ipv6_forwarding"} <= set(checks)
    assert "vxlan_device" not in checks and "4 peer gateway(s) on-link on eth0" in checks["hostgw_l2"]["detail"]
    rc, doc, _text = flannelctl(k, n1, "status")
    kr = doc["kernel"]
    assert rc == 0 and kr["backend"]["type"] == "host-gw" and kr["drift"] == []
    assert sorted((r["subnet"], r["subnet6"], r["route"], r["on_l2"]) for r in kr["rows"]) == [
        (f"100.64.{p.index}.0/24", subnet6(p), True, True) for p in c.nodes[1:]]


# --- wireguard (wireguard-go on a kernel without the module) -----------------------------------------------


@pytest.mark.parametrize("kube_ds", ["wireguard"], indirect=True)
def test_wireguard_dual_stack_pings_annotations_and_flannelctl(kube_ds: KubeCluster) -> None:
    if shutil.which("wireguard-go") is None and not Path("/sys/module/wireguard").exists():
        pytest.skip("needs the wireguard kernel module or wireguard-go (Debian package wireguard-go)")
    k, c = kube_ds, kube_ds.c

    def start(n: Node) -> object:
        return c.start_flanneld(n, k.kube_args(), wg_env(n), wrapper=PRIVATE_WG_DIR)

    pods6 = start_and_add_pods(k, start=start)
    res = ping_matrix(c, pods6)
    assert all(res.values()), [key for key, ok in res.items() if not ok]
    for n in c.nodes:
        a = flannel_annotations(k, n)
        key = public_key((n.dir / "wgkey").read_text())
        assert set(a) == ANNOTATIONS and a[P + "backend-type"] == "wireguard", n.name
        # Mode "separate" (the default): flannel-wg on ListenPort, flannel-wg-v6 on ListenPortV6, one key.
        assert a[P + "backend-data"] == json.dumps({"PublicKey": key, "Port": 51820}, separators=(",", ":"))
        assert a[P + "backend-v6-data"] == json.dumps({"PublicKey": key, "Port": 51821}, separators=(",", ":"))
        assert a[P + "public-ipv6"] == dualstack.node_ip6(n)

    n1 = c.nodes[0]
    rc, fails = doctor_fails(k, n1)
    checks = fails.pop("_all")
    assert (rc, fails) == (0, {}), fails
    assert {"backend", "pod cidr v6", "wg_device", "wg_listen_port", "wg_public_key", "wg_peers",
            "ipv6_forwarding"} <= set(checks)
    assert "vxlan_device" not in checks and "hostgw_l2" not in checks
    rc, doc, text = flannelctl(k, n1, "status")
    kr = doc["kernel"]
    assert rc == 0 and kr["backend"]["type"] == "wireguard" and kr["drift"] == []
    assert sorted((r["device"], r["subnet"], r["configured"]) for r in kr["rows"]) == sorted(
        (dev, f"100.64.{p.index}.0/24", True) for p in c.nodes[1:] for dev in ("flannel-wg", "flannel-wg-v6"))
    assert "PUBLIC-KEY" in text and "WG-PORT" in text


# --- mixed with Go flanneld -------------------------------------------------------------------------------


@pytest.mark.parametrize("kube_ds", ["vxlan", "host-gw"], indirect=True)
def test_dual_stack_mixed_with_go_flanneld(kube_ds: KubeCluster) -> None:
    """n1 and n2 pyflannel, n3 Go flanneld v0.28.9, all --kube-subnet-mgr with EnableIPv6."""
    k, c = kube_ds, kube_ds.c
    go = c.nodes[2]
    backend = json.loads(k.net_conf.read_text())["Backend"]["Type"]

    def label(n: Node) -> str:
        return f"{n.name}(go)" if n is go else f"{n.name}(py)"

    pods6 = start_and_add_pods(k, go_nodes=(go.name,))
    res = ping_matrix(c, pods6, label)
    assert all(res.values()), [key for key, ok in res.items() if not ok]
    kinds = {(s[-3:-1], d[-3:-1], fam) for s, d, fam in res}
    assert {("py", "go", "v6"), ("go", "py", "v6"), ("py", "go", "v4"), ("go", "py", "v4")} <= kinds

    anns = {label(n): flannel_annotations(k, n) for n in c.nodes}
    print("annotations:", json.dumps(anns, indent=1, sort_keys=True))
    # Go's annotations have exactly our names and value shapes; ours are what Go reads (it pings us).
    for n in c.nodes:
        a = anns[label(n)]
        assert set(a) == ANNOTATIONS, label(n)
        assert a[P + "backend-type"] == backend and a[P + "public-ipv6"] == dualstack.node_ip6(n), label(n)
        if backend == "vxlan":
            assert VXLAN_DATA_RE.match(a[P + "backend-data"]), (label(n), a)
            assert VXLAN_DATA_RE.match(a[P + "backend-v6-data"]), (label(n), a)
        else:
            assert (a[P + "backend-data"], a[P + "backend-v6-data"]) == ("null", "null"), (label(n), a)
    for n in c.nodes:  # neither side complains about the other (Go logs "context canceled" when it stops)
        assert not complaints(n, about=tuple(p.lan_ip for p in c.nodes if p is not n)), label(n)
    if backend != "vxlan":
        return
    st = vxlan6_state(go)
    assert st["local6"] == dualstack.node_ip6(go)
    assert {(vteps(k, p)[1], dualstack.node_ip6(p)) for p in c.nodes[:2]} <= st["fdb"], st["fdb"]

    # Go restarted without its devices takes both MACs back from the annotations (its GetStoredMacAddresses);
    # the pyflannel peers keep pinging it.
    before = vteps(k, go)
    c.stop_flanneld(go)
    with IPRoute(netns=go.ns, flags=0) as ipr:
        for dev in ("flannel.1", "flannel-v6.1"):
            ipr.link("del", index=ipr.link_lookup(ifname=dev)[0])
    k.start(go, go=True)
    wait_for(lambda: link_mac(go, "flannel-v6.1") is not None, 30, "Go's flannel-v6.1 after its restart")
    res = ping_matrix(c, pods6, label)
    assert all(res.values()), [key for key, ok in res.items() if not ok]
    assert (link_mac(go, "flannel.1"), link_mac(go, "flannel-v6.1"), vteps(k, go)) == (*before, before)
