"""IPv6-only clusters (EnableIPv4=false) of pyflannel flanneld on a real kernel: 3 nodes, real etcd (issue 13).

Go flanneld cannot run this in etcd mode (its lease-key parser needs an IPv4 part); pyflannel's leases are
``<prefix>/subnets/<v6>-<len6>`` with PublicIP 0.0.0.0. The nodes get their fd18:: LAN addresses after
``Cluster.up()`` (support.dualstack); etcd stays on the IPv4 LAN (the test bed's control plane), but the
pod network is IPv6 only: pods have only an fd64:: address from FLANNEL_IPV6_SUBNET, and flanneld must
create no IPv4 device, route or rule. Shown for vxlan (``flannel-v6.1`` routes, neighbours, FDB), host-gw
(v6 routes via PublicIPv6) and wireguard (wireguard-go, ``flannel-wg-v6``): the v6 ping matrix, the etcd
keys and values, subnet.env, ip6tables, and a restart that keeps the lease.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from ipaddress import IPv4Network, IPv6Interface, IPv6Network
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from support import dualstack
from support.cluster import SUBNETS_PREFIX, Cluster, Node, destroy_prefix

pytestmark = pytest.mark.root

NET6 = "fd64::/48"
V6ONLY = f'"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "{NET6}"'
VXLAN_CONFIG = f'{{{V6ONLY}, "Backend": {{"Type": "vxlan"}}}}'
HOSTGW_CONFIG = f'{{{V6ONLY}, "Backend": {{"Type": "host-gw"}}}}'
WG_CONFIG = f'{{{V6ONLY}, "Backend": {{"Type": "wireguard", "PersistentKeepaliveInterval": 0}}}}'
KEY_RE = re.compile(r"^fd64:0:0:[0-9a-f]{1,4}::-64$")
MAC = r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}"
VXLAN_LEASE_RE = re.compile(r'^\{"PublicIP":"0\.0\.0\.0","PublicIPv6":"fd18::[0-9a-f]+","BackendType":"vxlan",'
                            rf'"BackendV6Data":\{{"VNI":1,"VtepMAC":"{MAC}"\}}\}}$')
HOSTGW_LEASE_RE = re.compile(r'^\{"PublicIP":"0\.0\.0\.0","PublicIPv6":"fd18::[0-9a-f]+",'
                             r'"BackendType":"host-gw"\}$')
WG_LEASE_RE = re.compile(r'^\{"PublicIP":"0\.0\.0\.0","PublicIPv6":"fd18::[0-9a-f]+","BackendType":"wireguard",'
                         r'"BackendV6Data":\{"PublicKey":"[A-Za-z0-9+/]{43}=","Port":51821\}\}$')
POD_RANGE4 = IPv4Network("100.64.0.0/10")


def _need() -> None:
    dualstack.need_v6_cluster(ip6tables=True)


def sn6_of(key: str) -> IPv6Network:
    return IPv6Network(key.replace("-", "/"))


def own6(c: Cluster, node: Node) -> IPv6Network:
    return IPv6Interface(c.read_subnet_env(node)["FLANNEL_IPV6_SUBNET"]).network


def start(prefix: str, workdir: Path, config: str, wrapper: tuple[str, ...] = (),
          env: Mapping[str, str] | None = None, prepare: Callable[[Cluster], None] | None = None) -> Cluster:
    c = Cluster(prefix=prefix, nodes=3, workdir=workdir)
    try:
        c.up()
        dualstack.enable_lan6(c)
        if prepare is not None:
            prepare(c)
        c.start_etcd()
        c.put_config(config)
        for n in c.nodes:
            start_node(c, n, wrapper, env)
        for n in c.nodes:
            dualstack.wait_env6_only(c, n)
            dualstack.add_pods6_only(c, n, 1)
    except BaseException:
        c.down()
        raise
    return c


def start_node(c: Cluster, n: Node, wrapper: tuple[str, ...] = (), env: Mapping[str, str] | None = None) -> None:
    node_env = {k: v.replace("{dir}", str(n.dir)) for k, v in (env or {}).items()}
    c.start_flanneld(n, ["-resync-period=5"], node_env, wrapper=wrapper)


def links(node: Node) -> dict[str, str]:
    with IPRoute(netns=node.ns, flags=0) as ipr:
        return {lk.get("IFLA_IFNAME"): (lk.get("IFLA_LINKINFO") or {}).get("IFLA_INFO_KIND") or ""
                for lk in ipr.get_links()}


def v4_pod_routes(node: Node) -> list[str]:
    """IPv4 routes into the pod range: an IPv6-only network must have none."""
    with IPRoute(netns=node.ns, flags=0) as ipr:
        dsts = [IPv4Network(f"{r.get('RTA_DST') or '0.0.0.0'}/{r['dst_len']}")
                for r in ipr.route("dump", family=2, table=254)]
    return [str(d) for d in dsts if d.prefixlen and d.subnet_of(POD_RANGE4)]


def firewall(c: Cluster, node: Node) -> tuple[str, str]:
    """(``iptables-save``, ``ip6tables-save``) of the node."""
    v4 = c.exec(node.ns, ["iptables-save"]).stdout
    v6 = c.exec(node.ns, ["ip6tables-save"]).stdout
    return v4, v6


FLANNELCTL = str(Path(sys.executable).parent / "flannelctl")


def doctor(c: Cluster, n: Node) -> dict[str, dict[str, str]]:
    """``flannelctl doctor --json`` as the node's flanneld sees things (its flags, its WIREGUARD_KEY_FILE, and,
    through nsenter, its private /run/wireguard): checks by name."""
    proc = c.flanneld_process(n)
    assert proc is not None and proc.poll() is None, f"{n.name}: flanneld is not running"
    flags = [f"-etcd-endpoints={c.etcd_endpoint}", f"-subnet-file={n.subnet_file}", "-iface=eth0"]
    done = c.exec(n.ns, ["nsenter", "-t", str(proc.pid), "-m", "-n", FLANNELCTL, *flags, "doctor", "--json"],
                  check=False, env={"WIREGUARD_KEY_FILE": str(n.dir / "wgkey")})
    return {x["name"]: x for x in json.loads(done.stdout)["checks"]}
    return {x["name"]: x for x in json.loads(proc.stdout)["checks"]}


def check_ipv6_only_node(c: Cluster, n: Node, mtu: int, nft: bool = False) -> None:
    """No IPv4 device, route or rule; the IPv6 rules and subnet.env lines flannel writes; doctor is happy."""
    assert "flannel.1" not in links(n) and "flannel-wg" not in links(n), links(n)
    assert v4_pod_routes(n) == []
    v4, v6 = firewall(c, n)
    assert "FLANNEL" not in v4, v4
    if nft:  # EnableNFTables: flannel-ipv4 exists empty (as flannel creates it), flannel-ipv6 has the rules
        assert "FLANNEL" not in v6, v6
        t4 = c.exec(n.ns, ["nft", "list", "table", "ip", "flannel-ipv4"]).stdout
        t6 = c.exec(n.ns, ["nft", "list", "table", "ip6", "flannel-ipv6"]).stdout
        assert "chain" not in t4, t4
        assert f"ip6 saddr {NET6} ip6 daddr != ff00::/8 masquerade" in t6 and f"ip6 saddr {NET6} accept" in t6, t6
    else:
        assert f"-A FLANNEL-POSTRTG -s {NET6} -d {NET6}" in v6 and f"-A FLANNEL-FWD -s {NET6}" in v6, v6
    sn6 = own6(c, n)
    assert n.subnet_file.read_text() == (f"FLANNEL_IPV6_NETWORK={NET6}\nFLANNEL_IPV6_SUBNET={sn6.network_address + 1}"
                                         f"/64\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=true\n")
    bad = {k: (x["level"], x["detail"]) for k, x in doctor(c, n).items() if x["level"] not in ("ok", "skip")}
    assert bad == {}, bad


def check_restart_keeps_lease(c: Cluster, wrapper: tuple[str, ...] = (), env: Mapping[str, str] | None = None) -> None:
    n1 = c.nodes[0]
    before, keys = own6(c, n1), set(dualstack.raw_leases(c))
    assert c.stop_flanneld(n1, signal.SIGTERM) == 0
    logged = len(n1.flanneld_log.read_bytes())
    start_node(c, n1, wrapper, env)
    want = f"Found lease ({before}) for current IP ({dualstack.node_ip6(n1)}), reusing"
    deadline = time.monotonic() + 30
    while want not in (text := n1.flanneld_log.read_bytes()[logged:].decode(errors="replace")):
        proc = c.flanneld_process(n1)
        assert proc is not None and proc.poll() is None and time.monotonic() < deadline, text[-2000:]
        time.sleep(0.1)
    dualstack.wait_env6_only(c, n1)
    assert own6(c, n1) == before and set(dualstack.raw_leases(c)) == keys
    assert dualstack.ping6_matrix(c) == []


# --- vxlan -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vxlan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    _need()
    prefix = f"p6o{secrets.token_hex(2)}"
    c = start(prefix, tmp_path_factory.mktemp("v6vx"), VXLAN_CONFIG)
    try:
        yield c
    finally:
        c.down()
        destroy_prefix(prefix)


def test_vxlan_v6_only_pods_ping(vxlan: Cluster) -> None:
    assert dualstack.ping6_matrix(vxlan) == []


def test_vxlan_v6_only_etcd_keys_and_values(vxlan: Cluster) -> None:
    raw = dualstack.raw_leases(vxlan)
    print("etcd leases:", json.dumps(raw, indent=1))
    assert len(raw) == 3
    for key, value in raw.items():
        assert KEY_RE.match(key), key
        assert VXLAN_LEASE_RE.match(value), value
    assert sorted(json.loads(v)["PublicIPv6"] for v in raw.values()) == [dualstack.node_ip6(n) for n in vxlan.nodes]


def test_vxlan_v6_only_kernel_state(vxlan: Cluster) -> None:
    leases = {k: json.loads(v) for k, v in dualstack.raw_leases(vxlan).items()}
    for n in vxlan.nodes:
        mine = own6(vxlan, n)
        with IPRoute(netns=n.ns, flags=0) as ipr:
            (link,) = ipr.link("get", ifname="flannel-v6.1")
            data = link.get("IFLA_LINKINFO").get("IFLA_INFO_DATA")
            assert data.get("IFLA_VXLAN_LOCAL6") == dualstack.node_ip6(n) and data.get("IFLA_VXLAN_ID") == 1
            assert link.get("IFLA_MTU") == 1430  # uplink 1500 - 70 (the kernel's value; FLANNEL_MTU says the same)
        routes, neighs, fdbs, addrs = dualstack.vxlan6_state(n.ns)
        assert f"{mine.network_address}/128" in addrs
        want_r, want_n, want_f = set(), set(), set()
        for key, d in leases.items():
            sn6 = sn6_of(key)
            if sn6 == mine:
                assert d["BackendV6Data"]["VtepMAC"] == link.get("IFLA_ADDRESS")
                continue
            vtep = str(sn6.network_address)
            want_r.add((vtep, 64, vtep))
            want_n.add((vtep, d["BackendV6Data"]["VtepMAC"]))
            want_f.add((d["BackendV6Data"]["VtepMAC"], d["PublicIPv6"]))
        assert (routes, neighs, fdbs) == (want_r, want_n, want_f), n.name
        check_ipv6_only_node(vxlan, n, 1430)


def test_vxlan_v6_only_flannelctl(vxlan: Cluster) -> None:
    n = vxlan.nodes[0]
    flannelctl = FLANNELCTL
    flags = [f"-etcd-endpoints={vxlan.etcd_endpoint}", f"-subnet-file={n.subnet_file}", "-iface=eth0"]
    out = vxlan.exec(n.ns, [flannelctl, *flags, "leases", "--json"]).stdout
    rows = json.loads(out)["leases"]
    assert sorted(r["subnet6"] for r in rows) == sorted(str(sn6_of(k)) for k in dualstack.raw_leases(vxlan))
    assert all(r["subnet"] is None and r["public_ip"] == "0.0.0.0" for r in rows)
    st = vxlan.exec(n.ns, [flannelctl, *flags, "status", "--json"], check=False)
    assert st.returncode == 0, st.stderr
    d = json.loads(st.stdout)
    assert d["lease"]["subnet"] == str(own6(vxlan, n)) and d["own_subnet6"] == str(own6(vxlan, n)), d
    assert d["lease"]["public_ip"] == dualstack.node_ip6(n)
    text = vxlan.exec(n.ns, [flannelctl, *flags, "status"], check=False)
    assert text.returncode == 0 and f"{own6(vxlan, n)}, PublicIP {dualstack.node_ip6(n)}" in text.stdout, text.stdout
    doc = vxlan.exec(n.ns, [flannelctl, *flags, "doctor", "--json"], check=False)
    print(doc.stdout)
    checks = {x["name"]: x for x in json.loads(doc.stdout)["checks"]}
    # every check passes, the IPv4-only ones are not run, the flannel-v6.1 peer entries are compared
    assert {k: x["level"] for k, x in checks.items() if x["level"] != "ok"} == {}, checks
    assert doc.returncode == 0 and "ip_forward" not in checks and "masquerade" not in checks
    assert checks["kernel_peers"]["detail"] == "2 peers, every route, neighbour and FDB entry in place"
    assert sorted(r["kernel"] for r in d["peers"]["rows"]) == ["ok", "ok"] and d["peers"]["drift"] == []
    opts = vxlan.exec(n.ns, [flannelctl, "docker-opts", "-f", str(n.subnet_file), "-d", str(n.dir / "docker.env")],
                      check=False)
    assert opts.returncode == 0, opts.stderr
    text = (n.dir / "docker.env").read_text()
    assert "--mtu=1430" in text and "--bip" not in text, text


def test_vxlan_v6_only_restart_keeps_the_lease(vxlan: Cluster) -> None:
    check_restart_keeps_lease(vxlan)


def test_vxlan_v6_only_restart_after_the_key_expired_reuses_subnet_env(vxlan: Cluster) -> None:
    """The key is gone (expired while the node was down): FLANNEL_IPV6_SUBNET brings the same subnet back."""
    c, n2 = vxlan, vxlan.nodes[1]
    before = own6(c, n2)
    key = f"{before.network_address.compressed}-64"
    assert c.stop_flanneld(n2, signal.SIGTERM) == 0
    c.etcdctl("del", SUBNETS_PREFIX + key)
    logged = len(n2.flanneld_log.read_bytes())
    start_node(c, n2)
    want = f"reusing previous IPv6 subnet {before} from the subnet file"
    deadline = time.monotonic() + 30
    while want not in (text := n2.flanneld_log.read_bytes()[logged:].decode(errors="replace")):
        proc = c.flanneld_process(n2)
        assert proc is not None and proc.poll() is None and time.monotonic() < deadline, text[-2000:]
        time.sleep(0.1)
    deadline = time.monotonic() + 10
    while key not in dualstack.raw_leases(c) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert key in dualstack.raw_leases(c) and own6(c, n2) == before
    assert dualstack.ping6_matrix(c) == []


# --- host-gw ---------------------------------------------------------------------------------------------------
DEPRECATED6 = "fd18::91"


def deprecated_address_on_n1(c: Cluster) -> None:
    """A deprecated address (preferred lifetime 0), added after the node's own so it comes first in the
    kernel's list: flanneld must not publish it (flannel #2293; pyflannel/daemon/iface.py select_v6)."""
    with IPRoute(netns=c.nodes[0].ns, flags=0) as ipr:
        (eth,) = ipr.link_lookup(ifname="eth0")
        ipr.addr("add", index=eth, address=DEPRECATED6, prefixlen=64, flags=dualstack.IFA_F_NODAD,
                 preferred=0, valid=3600)
        flags = {a.get("IFA_ADDRESS"): a.get("IFA_FLAGS") or a["flags"] for a in ipr.addr("dump", family=10,
                                                                                          index=eth)}
    assert flags[DEPRECATED6] & 0x20, flags  # IFA_F_DEPRECATED
@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_hostgw_v6_only_cluster(tmp_path: Path, mode: str) -> None:
    _need()
    nft = mode == "nftables"
    if nft and not shutil.which("nft"):
        pytest.skip("needs nft (Debian package nftables)")
    prefix = f"p6o{secrets.token_hex(2)}"
    config = HOSTGW_CONFIG.replace('"EnableIPv4"', '"EnableNFTables": true, "EnableIPv4"') if nft else HOSTGW_CONFIG
    c = start(prefix, tmp_path / "hg", config, prepare=deprecated_address_on_n1)
    try:
        assert dualstack.ping6_matrix(c) == []
        raw = dualstack.raw_leases(c)
        print("etcd leases:", json.dumps(raw, indent=1))
        assert len(raw) == 3
        for key, value in raw.items():
            assert KEY_RE.match(key), key
            assert HOSTGW_LEASE_RE.match(value), value
        assert sorted(json.loads(v)["PublicIPv6"] for v in raw.values()) == [dualstack.node_ip6(n) for n in c.nodes]
        assert DEPRECATED6 not in json.dumps(raw)
        for n in c.nodes:
            mine = own6(c, n)
            with IPRoute(netns=n.ns, flags=0) as ipr:
                (eth,) = ipr.link_lookup(ifname="eth0")
                got = {(r.get("RTA_DST"), r.get("RTA_GATEWAY")) for r in
                       ipr.route("dump", family=10, table=254, oif=eth) if r.get("RTA_GATEWAY")}
            want = {(str(sn6_of(k).network_address), json.loads(v)["PublicIPv6"]) for k, v in raw.items()
                    if sn6_of(k) != mine}
            assert got == want, n.name
            assert not any(k.startswith("flannel") for k in links(n)), links(n)
            check_ipv6_only_node(c, n, 1500, nft)
        check_restart_keeps_lease(c)
    finally:
        c.down()
        destroy_prefix(prefix)


# --- wireguard (wireguard-go) ----------------------------------------------------------------------------------
def test_wireguard_v6_only_cluster(tmp_path: Path) -> None:
    _need()
    if shutil.which("wireguard-go") is None or shutil.which("wg") is None:
        pytest.skip("needs wireguard-go and wg (Debian packages wireguard-go, wireguard-tools)")
    from support.wgagent import PRIVATE_WG_DIR, wg_dump

    prefix = f"p6o{secrets.token_hex(2)}"
    env = {"WIREGUARD_KEY_FILE": "{dir}/wgkey"}
    c = start(prefix, tmp_path / "wg", WG_CONFIG, PRIVATE_WG_DIR, env)
    try:
        raw = dualstack.raw_leases(c)
        print("etcd leases:", json.dumps(raw, indent=1))
        for key, value in raw.items():
            assert KEY_RE.match(key), key
            assert WG_LEASE_RE.match(value), value

        def peers(n: Node) -> dict[str, tuple[str, str]]:
            proc = c.flanneld_process(n)
            assert proc is not None and proc.poll() is None
            return {r[0]: (r[2], r[3]) for r in wg_dump(proc.pid, "flannel-wg-v6")[1:]}

        def expected(n: Node) -> dict[str, tuple[str, str]]:
            mine = own6(c, n)
            return {json.loads(v)["BackendV6Data"]["PublicKey"]: (f"[{json.loads(v)['PublicIPv6']}]:51821",
                                                                  str(sn6_of(k)))
                    for k, v in dualstack.raw_leases(c).items() if sn6_of(k) != mine}

        deadline = time.monotonic() + 30
        while not all(peers(n) == expected(n) for n in c.nodes) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert dualstack.ping6_matrix(c) == []
        for n in c.nodes:
            assert peers(n) == expected(n), n.name
            assert "flannel-wg-v6" in links(n)
            text = n.flanneld_log.read_text()
            assert "devices flannel-wg-v6 via wireguard-go" in text, text[-2000:]
            check_ipv6_only_node(c, n, 1420)
        check_restart_keeps_lease(c, PRIVATE_WG_DIR, env)
    finally:
        c.down()
        destroy_prefix(prefix)
