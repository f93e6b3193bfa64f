"""The kube tier: flanneld --kube-subnet-mgr on 3 netns nodes against a real kube-apiserver.

Pods are made through the `flannel` CNI plugin (the Runtime of tests/netns/test_cni.py plays the
container runtime). Needs the daemon wired to KubeSubnetManager ("kube" in the catalog).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from support.cluster import Cluster

from .conftest import KubeCluster, cni_pods

P = "flannel.alpha.coreos.com/"


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def meshed(c: Cluster, want: int) -> bool:
    return all(len(c.peer_routes(n) or []) == want for n in c.nodes)


def test_three_nodes_pods_ping_and_annotations_as_flannel(kube_cluster: KubeCluster, tmp_path: Path) -> None:
    k, c = kube_cluster, kube_cluster.c
    for n in c.nodes:
        k.start(n)
    for n in c.nodes:
        assert c.wait_subnet_env(n)["FLANNEL_SUBNET"] == f"100.64.{n.index}.1/24"
    wait_for(lambda: meshed(c, 2), 30, "every node to route to both peers")
    for n in c.nodes:
        node = k.api.get_node(n.name)
        ann = {a: v for a, v in node["metadata"]["annotations"].items() if a.startswith(P)}
        assert set(ann) == {P + s for s in ("kube-subnet-manager", "backend-type", "backend-data", "public-ip")}
        assert ann[P + "public-ip"] == n.lan_ip and ann[P + "backend-type"] == "vxlan"
        assert list(json.loads(ann[P + "backend-data"])) == ["VNI", "VtepMAC"]
        cond = next(x for x in node["status"]["conditions"] if x["type"] == "NetworkUnavailable")
        assert (cond["status"], cond["reason"]) == ("False", "FlannelIsUp")
    pods = cni_pods(c, tmp_path / "bin")
    for src, (ns, _ip) in pods.items():
        for dst, (_ns, ip) in pods.items():
            if src != dst:
                assert c.ping(ns, ip, count=2), f"{src} -> {dst} ({ip})"
    # A deleted Node's routes go from every peer.
    k.api.delete_node("n3")
    wait_for(lambda: all("100.64.3.0/24" not in (c.peer_routes(n) or []) for n in c.nodes[:2]), 30,
             "n3's subnet to leave n1 and n2")


def test_pod_cidr_missing_then_assigned(kube_cluster: KubeCluster) -> None:
    k, c = kube_cluster, kube_cluster.c
    k.api.delete_node("n1")
    k.api.create_node("n1", internal_ip=c.nodes[0].lan_ip)
    k.start(c.nodes[0])
    wait_for(lambda: "pod cidr not assigned" in c.nodes[0].flanneld_log.read_text(errors="replace"), 30,
             "the one log line about the missing podCIDR")
    k.api.set_pod_cidr("n1", "100.64.1.0/24")
    assert c.wait_subnet_env(c.nodes[0], timeout=30)["FLANNEL_SUBNET"] == "100.64.1.1/24"
    assert c.nodes[0].flanneld_log.read_text(errors="replace").count("pod cidr not assigned") == 1


def test_apiserver_down_30s_keeps_routes_and_catches_up(kube_cluster: KubeCluster) -> None:
    k, c = kube_cluster, kube_cluster.c
    for n in c.nodes[:2]:
        k.start(n)
    wait_for(lambda: all(len(c.peer_routes(n) or []) == 1 for n in c.nodes[:2]), 30, "n1 and n2 meshed")
    k.api.stop()
    time.sleep(30)
    assert all(len(c.peer_routes(n) or []) == 1 for n in c.nodes[:2]), "a route was lost during the outage"
    k.api.start()
    k.start(c.nodes[2])  # n3 joins right after the API server is back
    wait_for(lambda: meshed(c, 2), 60, "n3 installed on n1 and n2 after the outage")


def test_mixed_with_go_flanneld(kube_cluster: KubeCluster, tmp_path: Path) -> None:
    k, c = kube_cluster, kube_cluster.c
    k.start(c.nodes[0])
    k.start(c.nodes[1])
    k.start(c.nodes[2], go=True)
    for n in c.nodes:
        c.wait_subnet_env(n)
    wait_for(lambda: meshed(c, 2), 45, "pyflannel and Go flanneld meshed")
    pods = cni_pods(c, tmp_path / "bin")
    for src, (ns, _ip) in pods.items():
        for dst, (_ns, ip) in pods.items():
            if src != dst:
                assert c.ping(ns, ip, count=2), f"{src} -> {dst} ({ip})"
    for n in (c.nodes[0], c.nodes[2]):  # restarts on either side keep the mesh
        c.stop_flanneld(n)
        k.start(n, go=n is c.nodes[2])
    wait_for(lambda: meshed(c, 2), 45, "the mesh after restarts")
    for src, (ns, _ip) in pods.items():
        for dst, (_ns, ip) in pods.items():
            if src != dst:
                assert c.ping(ns, ip, count=2), f"after restarts: {src} -> {dst} ({ip})"
