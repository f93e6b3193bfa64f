"""The kube tier on an IPv6-only network (EnableIPv4=false): 3 netns nodes, a real kube-apiserver (issue 13).

flannel's kube subnet manager reads and writes only the IPv6 podCIDR and annotations when IPv4 is off; so
does pyflannel's. The nodes get their fd18:: LAN addresses and IPv6-only podCIDRs; the apiserver stays on the
IPv4 LAN (the test bed's control plane). Pods come from the flannel CNI plugin and get only an fd64:: address.
"""

from __future__ import annotations

import json
import time
from ipaddress import IPv6Interface, IPv6Network
from pathlib import Path

from support import dualstack

from .conftest import KubeCluster, cni_pods

P = "flannel.alpha.coreos.com/"
NET_CONF = '{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd64::/48", "Backend": {"Type": "vxlan"}}'


def test_ipv6_only_vxlan_pods_ping_and_annotations_as_flannel(kube_cluster: KubeCluster, tmp_path: Path) -> None:
    k, c = kube_cluster, kube_cluster.c
    bin_dir = tmp_path / "bin"
    k.net_conf.write_text(NET_CONF)
    dualstack.enable_lan6(c)
    for n in c.nodes:  # a podCIDR cannot be changed: the Nodes are registered again with an IPv6 one
        k.api.delete_node(n.name)
        k.api.create_node(n.name, f"fd64:0:0:{n.index}::/64", internal_ip=n.lan_ip)
    for n in c.nodes:
        k.start(n)
    for n in c.nodes:
        env = dualstack.wait_env6_only(c, n)
        assert n.subnet_file.read_text() == ("FLANNEL_IPV6_NETWORK=fd64::/48\n"
                                             f"FLANNEL_IPV6_SUBNET=fd64:0:0:{n.index}::1/64\n"
                                             "FLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n"), env
    pods = cni_pods(c, bin_dir, ipv6_only=True)
    assert {n: IPv6Interface(ip).network for n, (_ns, ip) in pods.items()} == {
        n.name: IPv6Network(f"fd64:0:0:{n.index}::/64") for n in c.nodes}
    deadline = time.monotonic() + 60
    while True:
        fails = [f"{a}->{b}" for a, (ns, _) in pods.items() for b, (_, ip) in pods.items()
                 if a != b and not dualstack.ping6(c, ns, str(IPv6Interface(ip).ip), timeout=1)]
        if not fails or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert fails == []
    macs = {}
    for n in c.nodes:
        ann = {a: v for a, v in k.api.get_node(n.name)["metadata"]["annotations"].items() if a.startswith(P)}
        assert set(ann) == {P + s for s in ("kube-subnet-manager", "backend-type", "backend-v6-data", "public-ipv6")}
        assert ann[P + "public-ipv6"] == dualstack.node_ip6(n) and ann[P + "backend-type"] == "vxlan"
        macs[n.name] = json.loads(ann[P + "backend-v6-data"])["VtepMAC"]
    deadline = time.monotonic() + 20
    while True:
        states = {n.name: dualstack.vxlan6_state(n.ns) for n in c.nodes}
        want = {n.name: ({(f"fd64:0:0:{m.index}::", 64, f"fd64:0:0:{m.index}::") for m in c.nodes if m is not n},
                         {(f"fd64:0:0:{m.index}::", macs[m.name]) for m in c.nodes if m is not n},
                         {(macs[m.name], dualstack.node_ip6(m)) for m in c.nodes if m is not n}) for n in c.nodes}
        if all(states[x][:3] == want[x] for x in want) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for n in c.nodes:
        assert states[n.name][:3] == want[n.name], n.name
        assert f"fd64:0:0:{n.index}::/128" in states[n.name][3]
        with open(n.flanneld_log) as f:
            assert "flannel.1" not in f.read()
    # a deleted Node's v6 routes go from every peer
    k.api.delete_node("n3")
    deadline = time.monotonic() + 30
    while any(("fd64:0:0:3::", 64, "fd64:0:0:3::") in dualstack.vxlan6_state(n.ns)[0] for n in c.nodes[:2]):
        assert time.monotonic() < deadline, "n3's subnet did not leave n1 and n2"
        time.sleep(0.2)
