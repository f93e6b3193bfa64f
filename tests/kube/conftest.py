"""Fixtures for the kube tier: a netns cluster whose LAN namespace runs etcd 3.6 + kube-apiserver.

Root only. The apiserver listens on the LAN bridge address (198.18.0.1); every flanneld gets the
kubeconfig of ServiceAccount kube-flannel/flannel (the manifest's RBAC) and NODE_NAME = its node.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from netns.test_cni import DEBIAN_CNI, Runtime, ip_of
from support import dualstack
from support import kube as ks
from support.cluster import Cluster, Node, destroy_prefix

NET_CONF = '{"Network": "100.64.0.0/16", "Backend": {"Type": "vxlan"}}'
LAN_IP = "198.18.0.1"


@dataclass
class KubeCluster:
    c: Cluster
    api: ks.KubeApiServer
    kubeconfig: Path
    net_conf: Path

    def kube_args(self) -> list[str]:
        return ["--kube-subnet-mgr", f"--kubeconfig-file={self.kubeconfig}", f"--net-config-path={self.net_conf}",
                "--healthz-port=8081"]

    def start(self, node: Node, *, go: bool = False) -> None:
        binary = ks.binary("flanneld") if go else None
        args = self.kube_args() if not go else [a for a in self.kube_args() if not a.startswith("--healthz")]
        self.c.start_flanneld(node, args, env={"NODE_NAME": node.name}, binary=binary)


def _skip_reason() -> str | None:
    if os.geteuid() != 0 or not shutil.which("ip"):
        return "needs root and iproute2's `ip` (creates network namespaces)"
    return ks.missing_reason()


@pytest.fixture
def kube_cluster(tmp_path: Path) -> Iterator[KubeCluster]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    prefix = f"kube{secrets.token_hex(2)}"
    destroy_prefix(prefix)
    c = Cluster(prefix=prefix, nodes=3, workdir=tmp_path / "cluster")
    api = None
    try:
        c.up()
        api = ks.start_apiserver(tmp_path / "api", host=LAN_IP, netns=c.lan_ns)
        kc = ks.flannel_kubeconfig(api, tmp_path / "flannel.kubeconfig")
        net_conf = tmp_path / "net-conf.json"
        net_conf.write_text(NET_CONF)
        for n in c.nodes:
            api.create_node(n.name, f"100.64.{n.index}.0/24", internal_ip=n.lan_ip)
        yield KubeCluster(c, api, kc, net_conf)
    finally:
        c.down()
        if api is not None:
            api.close()
        destroy_prefix(prefix)


def cni_pods(c: Cluster, bin_dir: Path, *, ipv6_only: bool = False) -> dict[str, tuple[str, str]]:
    """One pod per node through the flannel CNI plugin: node name -> (pod netns, pod address).

    The address is the pod's IPv4 address; with ``ipv6_only`` IPv6 is turned on in the pod first and the
    address is its one IPv6 address with the prefix length (``fd64:0:0:1::2/64``).
    """
    if not (DEBIAN_CNI / "bridge").exists():
        pytest.skip("needs Debian's containernetworking-plugins in /usr/lib/cni")
    bin_dir.mkdir(exist_ok=True)
    flannel = bin_dir / "flannel"
    if not flannel.exists():
        flannel.symlink_to(c.flanneld.parent / "flannel")
    out = {}
    for n in c.nodes:
        rt = Runtime(c, n, bin_dir)
        ns = rt.new_netns()
        if ipv6_only:
            dualstack._enable(c, ns, forwarding=False)
            (ip,) = rt.add(f"cid-{n.name}", ns)["ips"]
            out[n.name] = (ns, ip["address"])
        else:
            out[n.name] = (ns, str(ip_of(rt.add(f"cid-{n.name}", ns)).ip))
    return out
