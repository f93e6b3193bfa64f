"""``-public-ip`` set to a second address on eth0: where the two implementations put the vxlan ``local``.

Go flanneld v0.28 uses the public IP as the vxlan device's ``local`` (the outer source address);
pyflannel uses the interface address, as flanneld up to v0.2x did (see docs/interop.md).  The leases carry
the public IP either way, and peers send to the lease's PublicIP, so the mixed cluster must work in this
set-up too: every pod reaches every pod.
"""

from __future__ import annotations

import json

from pyroute2 import IPRoute
from support import checks
from support.cluster import NODE_IFACE, Cluster

from .conftest import Mixed
from .pings import format_matrix, ping_matrix


def public_ip(index: int) -> str:
    return f"198.18.0.{110 + index}"


def add_public_addresses(c: Cluster) -> None:
    for n in c.nodes:
        with IPRoute(netns=n.ns, flags=0) as ipr:
            (eth,) = ipr.link_lookup(ifname=NODE_IFACE)
            ipr.addr("add", index=eth, address=public_ip(n.index), prefixlen=24)


def vxlan_local(ns: str) -> str | None:
    with IPRoute(netns=ns, flags=0) as ipr:
        (link,) = ipr.link("get", ifname="flannel.1")
        data = link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
        return data.get_attr("IFLA_VXLAN_LOCAL")


def test_public_ip_differs_from_interface_address(mixed) -> None:
    m: Mixed = mixed(
        pods=1, before_start=add_public_addresses,
        extra_args={f"n{i}": [f"-public-ip={public_ip(i)}"] for i in (1, 2, 3)},
    )  # fmt: skip
    c = m.c
    published = {json.loads(v)["PublicIP"] for v in checks.leases(c).values()}
    assert published == {public_ip(n.index) for n in c.nodes}
    locals_ = {m.label(n): vxlan_local(n.ns) for n in c.nodes}
    print(f"\nvxlan local with -public-ip: {locals_}")
    for n in m.go:
        assert locals_[m.label(n)] == public_ip(n.index), "Go flanneld v0.28 is documented to use the public IP"
    matrix = ping_matrix(c)
    text = format_matrix(m, matrix)
    assert all(matrix.values()), f"with -public-ip, vxlan local {locals_}:\n{text}"
