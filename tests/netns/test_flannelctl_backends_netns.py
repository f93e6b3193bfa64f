"""``flannelctl doctor`` and ``status`` on host-gw and wireguard nodes run by the real flanneld (issue 13, item 5).

Why: the backend is data (the network config's ``Backend.Type``), so the operator tools must check what that
backend needs, on the kernel state the daemon really writes. Each cluster is healthy first (doctor exits 0, status
shows every peer), then broken the way an operator would break it:

* host-gw: a peer route deleted while the daemon is stopped (SIGSTOP, so its notification-driven repair cannot
  hide the breakage), and a lease whose PublicIP is not on the uplink's L2 (doctor's ``hostgw_l2`` names it);
* wireguard (wireguard-go on this kernel): the key file replaced without a restart (``-resync-period=3600``, so
  the daemon does not re-read it yet: ``wg_public_key`` fails), and a peer that never answers (a lease for an
  address no node holds: ``wg_handshake`` warns that the UDP port may be blocked).

flannelctl runs where the node's flanneld runs. For wireguard that is inside flanneld's own mount namespace
(``support.wgagent.PRIVATE_WG_DIR`` gives each node a private /run/wireguard), entered with ``nsenter``, so
it finds the same UAPI socket, with the same ``WIREGUARD_KEY_FILE``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute
from support import checks
from support.cluster import Cluster, Node
from support.wgagent import PRIVATE_WG_DIR

from pyflannel.core.backends.wireguard import generate_private_key, public_key

pytestmark = pytest.mark.root

HOSTGW_CONFIG = '{"Network": "100.64.0.0/16", "Backend": {"Type": "host-gw"}}'
WG_CONFIG = '{"Network": "100.64.0.0/16", "Backend": {"Type": "wireguard"}}'
FLANNELCTL = str(Path(sys.executable).parent / "flannelctl")
SUBNETS = "/coreos.com/network/subnets/"
OFF_L2_SUBNET = "100.64.200.0/24"
OFF_L2_IP = "198.19.0.50"  # inside the test range 198.18.0.0/15, outside the nodes' 198.18.0.0/24
SILENT_SUBNET = "100.64.201.0/24"
SILENT_IP = "198.18.0.99"  # on the LAN, but no node holds it


@pytest.fixture
def cluster(make_cluster: Any) -> Iterator[Cluster]:
    if shutil.which("etcd") is None:
        pytest.skip("needs etcd (build/testdeps or Debian's etcd-server)")
    c = make_cluster(nodes=3)
    c.start_etcd()
    yield c


def ctl(c: Cluster, node: Node, *argv: str, wrap: tuple[str, ...] = (), env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    """flannelctl with the node's flags, in the node's network namespace (or behind ``wrap``)."""
    cmd = [FLANNELCTL, f"-etcd-endpoints={c.etcd_endpoint}", f"-subnet-file={node.subnet_file}", *argv]
    if not wrap:
        return c.exec(node.ns, cmd, check=False, timeout=60, env=env)
    return subprocess.run([*wrap, "env", *(f"{k}={v}" for k, v in (env or {}).items()), *cmd],
                          capture_output=True, text=True, timeout=60, check=False)


def doctor(c: Cluster, node: Node, **kw: Any) -> tuple[int, dict[str, dict[str, str]], str]:
    """(exit status, {check name: check}, text output)."""
    p = ctl(c, node, "doctor", "--json", **kw)
    assert p.stdout, p.stderr
    d = json.loads(p.stdout)
    text = ctl(c, node, "doctor", **kw).stdout
    return p.returncode, {x["name"]: x for x in d["checks"]}, text


def status(c: Cluster, node: Node, **kw: Any) -> tuple[dict[str, Any], str]:
    p = ctl(c, node, "status", "--json", **kw)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout), ctl(c, node, "status", **kw).stdout


def bad(checks_: dict[str, dict[str, str]]) -> dict[str, str]:
    return {n: x["level"] for n, x in checks_.items() if x["level"] not in ("ok",)}


def put_lease(c: Cluster, subnet: str, value: dict[str, Any]) -> None:
    c.etcdctl("put", SUBNETS + subnet.replace("/", "-"), json.dumps(value))


# --- host-gw ---------------------------------------------------------------------------------------------


def hostgw_routes(node: Node) -> set[str]:
    with IPRoute(netns=node.ns, flags=0) as ipr:
        return {f"{r.get_attr('RTA_DST')}/{r['dst_len']}" for r in ipr.route("dump", family=2, table=254)
                if r.get_attr("RTA_GATEWAY") and r.get_attr("RTA_DST", "").startswith("100.64.")}


def test_hostgw_doctor_and_status(cluster: Cluster) -> None:
    c = cluster
    c.put_config(HOSTGW_CONFIG)
    for n in c.nodes:
        c.start_flanneld(n, ["-resync-period=3600"])
    for n in c.nodes:
        c.wait_subnet_env(n)
    checks.wait_for(lambda: all(len(hostgw_routes(n)) == 2 for n in c.nodes), 30, "host-gw routes on every node")
    n1, n2, n3 = c.nodes
    sub2, sub3 = str(checks.own_subnet(c, n2)), str(checks.own_subnet(c, n3))

    rc, got, text = doctor(c, n1)
    print(text)
    assert rc == 0, text
    assert set(bad(got)) <= {"br_netfilter"}, text  # br_netfilter is host-wide: absent on some test hosts
    assert "vxlan_device" not in got and "tx_checksum" not in got and "kernel_peers" not in got  # vxlan's only
    assert got["hostgw_l2"]["level"] == "ok" and "198.18.0.0/24" in got["hostgw_l2"]["detail"]
    assert got["hostgw_routes"]["detail"].startswith("2 route(s) <subnet> via <PublicIP> dev eth0, all present")
    assert got["mtu"]["detail"] == "uplink eth0 1500, subnet.env 1500"
    assert got["config"]["detail"].endswith("backend host-gw")

    d, stext = status(c, n1)
    print(stext)
    assert d["backend"] == {"type": "host-gw", "uplink": "eth0"}
    assert d["peers"]["etcd"] == 2 and d["peers"]["kernel"] == 2 and d["peers"]["drift"] == []
    assert {(r["subnet"], r["public_ip"], r["route"], r["on_l2"]) for r in d["peers"]["rows"]} == {
        (sub2, n2.lan_ip, True, True), (sub3, n3.lan_ip, True, True)}
    assert "backend:   host-gw, routes via the peers' PublicIPs on eth0" in stext
    assert "mtu:       uplink eth0 1500, subnet.env 1500: consistent" in stext

    # Broken 1: n2's route deleted while n1's flanneld is stopped (it would put the route back at once).
    proc = c.flanneld_process(n1)
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        with IPRoute(netns=n1.ns, flags=0) as ipr:
            ipr.route("del", dst=sub2, table=254)
        rc, got, text = doctor(c, n1)
        print(text)
        assert rc == 1
        assert got["hostgw_routes"]["level"] == "fail", got["hostgw_routes"]
        assert f"missing {sub2} via {n2.lan_ip} dev eth0" in got["hostgw_routes"]["detail"]
        assert "[FAIL] hostgw_routes" in text and "-- fix: flanneld puts host-gw routes back" in text
        d, stext = status(c, n1)
        print(stext)
        rows = {r["subnet"]: r for r in d["peers"]["rows"]}
        assert rows[sub2]["route"] is False and rows[sub3]["route"] is True
        assert d["peers"]["drift"] == [f"missing route {sub2} via {n2.lan_ip} dev eth0"]
        assert "peers:     etcd 2, kernel 1, drift 1 entry" in stext
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    checks.wait_for(lambda: sub2 in hostgw_routes(n1), 30, "n1's flanneld to put the route back")
    assert doctor(c, n1)[0] == 0

    # Broken 2: a peer whose PublicIP is not on eth0's L2 (a router would be needed: host-gw cannot work).
    put_lease(c, OFF_L2_SUBNET, {"PublicIP": OFF_L2_IP, "PublicIPv6": None, "BackendType": "host-gw"})
    rc, got, text = doctor(c, n1)
    print(text)
    assert rc == 1 and got["hostgw_l2"]["level"] == "fail", got["hostgw_l2"]
    detail = got["hostgw_l2"]["detail"]
    assert f"peer {OFF_L2_SUBNET} ({OFF_L2_IP})" in detail and "in none of eth0's prefixes (198.18.0.0/24)" in detail
    assert "route get 198.19.0.50 gives via 198.18.0.1 dev eth0, not on-link on eth0" in detail
    assert got["hostgw_routes"]["level"] == "ok"  # the daemon refuses that route: not a missing one
    d, stext = status(c, n1)
    print(stext)
    row = next(r for r in d["peers"]["rows"] if r["subnet"] == OFF_L2_SUBNET)
    assert row["on_l2"] is False and row["route"] is False  # the daemon refuses to write it


# --- wireguard -------------------------------------------------------------------------------------------


def wg_env(node: Node) -> dict[str, str]:
    return {"WIREGUARD_KEY_FILE": str(node.dir / "wgkey")}


def wrap(c: Cluster, node: Node) -> tuple[str, ...]:
    """nsenter into the node's flanneld: its network namespace and its private /run/wireguard."""
    proc = c.flanneld_process(node)
    assert proc is not None and proc.poll() is None, f"{node.name}: flanneld is not running"
    return ("nsenter", "-t", str(proc.pid), "-m", "-n")


def wg_rows(c: Cluster, node: Node) -> list[dict[str, Any]]:
    return list(status(c, node, wrap=wrap(c, node), env=wg_env(node))[0]["peers"]["rows"])


def test_wireguard_doctor_and_status(cluster: Cluster) -> None:
    if shutil.which("wireguard-go") is None:
        pytest.skip("needs wireguard-go (Debian package wireguard-go)")
    c = cluster
    c.put_config(WG_CONFIG)
    n1, n2, n3 = c.nodes
    for n in c.nodes:
        c.start_flanneld(n, ["-resync-period=3600"], wg_env(n), wrapper=PRIVATE_WG_DIR)
    for n in c.nodes:
        c.wait_subnet_env(n)
    checks.wait_for(lambda: len(c.leases()) == 3 and all(
        len([r for r in wg_rows(c, n) if r["configured"]]) == 2 for n in c.nodes), 30, "WireGuard peers everywhere")
    for n in c.nodes:
        c.add_pods(n, 1)
    assert all(c.ping(s, d.ip, count=2, timeout=3) for s in c.pods for d in c.pods if s.node is not d.node)
    kw: dict[str, Any] = {"wrap": wrap(c, n1), "env": wg_env(n1)}

    rc, got, text = doctor(c, n1, **kw)
    print(text)
    assert rc == 0, text
    assert set(bad(got)) <= {"br_netfilter"}, text
    assert "vxlan_device" not in got and "hostgw_l2" not in got
    own_key = public_key((n1.dir / "wgkey").read_text())
    assert got["wg_device"]["detail"] == ("flannel-wg up (wireguard-go, UAPI /var/run/wireguard/flannel-wg.sock), "
                                          "MTU 1420")
    assert got["wg_listen_port"]["detail"].startswith("flannel-wg UDP 51820 (UAPI answers)")
    assert got["wg_public_key"]["detail"] == f"PublicKey {own_key}: key file, lease and device(s) agree"
    assert got["wg_key_file"]["detail"] == f"{n1.dir / 'wgkey'} mode 0400"
    assert got["wg_peers"]["level"] == "ok" and got["wg_handshake"]["detail"].startswith("2 peer(s) with a handshake")
    assert got["mtu"]["detail"] == "uplink eth0 1500, flannel-wg 1420, subnet.env 1420"

    d, stext = status(c, n1, **kw)
    print(stext)
    assert d["backend"]["devices"][0]["driver"] == "wireguard-go"
    assert d["backend"]["devices"][0]["public_key"] == own_key
    rows = {r["subnet"]: r for r in d["peers"]["rows"]}
    for n in (n2, n3):
        r = rows[str(checks.own_subnet(c, n))]
        assert r["endpoint"] == f"{n.lan_ip}:51820" and r["allowed_ips"] == [str(checks.own_subnet(c, n))]
        assert r["last_handshake_age"] is not None and 0 <= r["last_handshake_age"] < 180
        assert r["rx_bytes"] > 0 and r["tx_bytes"] > 0
    assert d["peers"]["drift"] == []
    assert "backend:   wireguard, flannel-wg (wireguard-go) UDP 51820, PublicKey " + own_key in stext
    assert " ago " in stext and "ENDPOINT" in stext and "HANDSHAKE" in stext

    # Broken 1: a peer that never answers (a lease for an address no node holds): no handshake ever.
    put_lease(c, SILENT_SUBNET, {"PublicIP": SILENT_IP, "PublicIPv6": None, "BackendType": "wireguard",
                                 "BackendData": {"PublicKey": public_key(generate_private_key()), "Port": 51820}})
    checks.wait_for(lambda: any(r["subnet"] == SILENT_SUBNET and r["configured"] for r in wg_rows(c, n1)), 30,
                    "n1 to configure the silent peer")
    rc, got, text = doctor(c, n1, **kw)
    print(text)
    assert rc == 0 and got["wg_handshake"]["level"] == "warn", got["wg_handshake"]
    assert (f"no handshake ever with {SILENT_SUBNET} ({SILENT_IP}): UDP port 51820 may be blocked between "
            f"{n1.lan_ip} and {SILENT_IP}") in got["wg_handshake"]["detail"]
    row = next(r for r in wg_rows(c, n1) if r["subnet"] == SILENT_SUBNET)
    assert row["last_handshake"] is None and row["endpoint"] == f"{SILENT_IP}:51820"
    c.etcdctl("del", SUBNETS + SILENT_SUBNET.replace("/", "-"))

    # Broken 2: the key file replaced without a restart (an hour's resync: flanneld does not re-read it yet).
    key_file = n1.dir / "wgkey"
    tmp = n1.dir / "wgkey.new"
    new_key = generate_private_key()
    tmp.write_text(new_key + "\n")
    tmp.chmod(0o400)
    tmp.rename(key_file)
    rc, got, text = doctor(c, n1, **kw)
    print(text)
    assert rc == 1 and got["wg_public_key"]["level"] == "fail", got["wg_public_key"]
    detail = got["wg_public_key"]["detail"]
    assert f"the lease publishes PublicKey {own_key} but key file {key_file} holds the key of {public_key(new_key)}" \
        in detail
    assert f"flannel-wg runs with PublicKey {own_key}, not the key file's" in detail
    assert "[FAIL] wg_public_key" in text and "restart flanneld" in text
    # A key file others can read is a failure of its own.
    key_file.chmod(0o644)
    rc, got, _ = doctor(c, n1, **kw)
    assert got["wg_key_file"]["level"] == "fail" and "mode 0644" in got["wg_key_file"]["detail"]
