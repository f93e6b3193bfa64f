"""The CNI plugin's dual-stack delegate from the subnet.env a dual-stack pyflannel node writes.

flannel's cni-plugin (``getDelegateIPAM``) gives the bridge delegate one host-local range per family and one
route per flannel network; this checks the whole delegate for the file our daemon renders (SubnetEnv).
"""

from __future__ import annotations

import json
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from pyflannel.core import cni_conf as cc
from pyflannel.core.subnet_env import SubnetEnv

ENV = SubnetEnv(IPv4Network("100.64.71.0/16", strict=False), IPv4Network("100.64.71.0/24"), 1450, True,
                IPv6Network("fd64::/48"), IPv6Network("fd64:0:0:1e::/64")).render()
NETCONF = {"name": "cbr0", "cniVersion": "0.3.1", "type": "flannel",
           "delegate": {"hairpinMode": True, "isDefaultGateway": True}}


def delegate(**kw: Any) -> dict[str, Any]:
    return cc.delegate_config(cc.parse_netconf(json.dumps({**NETCONF, **kw})),
                              cc.parse_subnet_env(ENV, "/run/flannel/subnet.env"))


def test_rendered_env_is_dual_stack() -> None:
    assert ENV == ("FLANNEL_NETWORK=100.64.0.0/16\nFLANNEL_SUBNET=100.64.71.1/24\nFLANNEL_IPV6_NETWORK=fd64::/48\n"
                   "FLANNEL_IPV6_SUBNET=fd64:0:0:1e::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")


def test_two_ranges_and_two_routes() -> None:
    d = delegate()
    assert d["ipam"] == {
        "type": "host-local",
        "ranges": [[{"subnet": "100.64.71.0/24"}], [{"subnet": "fd64:0:0:1e::/64"}]],
        "routes": [{"dst": "100.64.0.0/16"}, {"dst": "fd64::/48"}],
    }
    assert d["type"] == "bridge" and d["mtu"] == 1450
    # ipMasq on the delegate is the opposite of FLANNEL_IPMASQ: flanneld already masquerades.
    assert d["ipMasq"] is False
    assert d["isDefaultGateway"] is True and d["hairpinMode"] is True


def test_user_routes_first_and_the_v6_network_not_twice() -> None:
    d = delegate(ipam={"routes": [{"dst": "fd64::/48"}, {"dst": "198.18.0.0/15"}], "dataDir": "/var/lib/x"})
    assert d["ipam"]["routes"] == [{"dst": "fd64::/48"}, {"dst": "198.18.0.0/15"}, {"dst": "100.64.0.0/16"}]
    assert d["ipam"]["ranges"] == [[{"subnet": "100.64.71.0/24"}], [{"subnet": "fd64:0:0:1e::/64"}]]
    assert d["ipam"]["dataDir"] == "/var/lib/x"
