"""flannelctl --kube-subnet-mgr against a real kube-apiserver, with the flannel ServiceAccount's kubeconfig.

Backend choice is data: each scenario is a set of Nodes annotated as flannel would annotate them for one
backend (vxlan, host-gw dual-stack, wireguard, dual-stack vxlan), kept apart on one API server by their
annotation prefix (``--kube-annotation-prefix``), so every table, status and doctor run sees only its own
flannel Nodes. What is shown here is the Kubernetes side (columns, the backend/v6/annotation checks, which
kernel checks run); the kernel side against a real node is in tests/kube/test_kube_dualstack.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import kube as ks

from pyflannel.cli import flannelctl
from pyflannel.core.backends.wireguard import generate_private_key, public_key

pytestmark = pytest.mark.skipif(ks.missing_reason() is not None, reason=ks.missing_reason() or "")

VXLAN_CONF = '{"Network": "100.64.0.0/16", "Backend": {"Type": "vxlan"}}'
DS = '"Network": "100.64.0.0/16", "EnableIPv6": true, "IPv6Network": "fd64::/48"'
HOSTGW6_CONF = '{' + DS + ', "Backend": {"Type": "host-gw"}}'
WG_CONF = '{"Network": "100.64.0.0/16", "Backend": {"Type": "wireguard"}}'
VXLAN6_CONF = '{' + DS + ', "Backend": {"Type": "vxlan"}}'
ENV4 = "FLANNEL_NETWORK=100.64.0.0/16\nFLANNEL_SUBNET={sub}.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
ENV6 = ENV4 + "FLANNEL_IPV6_NETWORK=fd64::/48\nFLANNEL_IPV6_SUBNET={sub6}1/64\n"
WG_KEYS = {n: public_key(generate_private_key()) for n in ("w1", "w2")}
VXLAN_CHECKS = {"vxlan_device", "kernel_peers", "peer_reachability", "tx_checksum"}
HOSTGW_CHECKS = {"hostgw_l2", "hostgw_routes"}
WG_CHECKS = {"wg_device", "wg_key_file", "wg_public_key", "wg_listen_port", "wg_peers", "wg_handshake"}


def flannel_node(api: ks.KubeApiServer, name: str, prefix: str, btype: str, i: int, data: str = "null",
                 data6: str | None = None, v6: bool = False) -> None:
    """A Node as a running flannel leaves it (annotations under ``prefix``), podCIDR 100.64.<i>.0/24 (+ fd64)."""
    ann = {f"{prefix}/kube-subnet-manager": "true", f"{prefix}/backend-type": btype,
           f"{prefix}/backend-data": data, f"{prefix}/public-ip": f"198.18.0.{i}"}
    if v6:
        ann |= {f"{prefix}/backend-v6-data": data6 or "null", f"{prefix}/public-ipv6": f"fd18::{i:x}"}
    cidrs = [f"100.64.{i}.0/24"] + ([f"fd64:0:0:{i:x}::/64"] if v6 else [])
    api.create_node(name, cidrs[0], pod_cidrs=cidrs, annotations=ann)


def vx(mac: str) -> str:
    return json.dumps({"VNI": 1, "VtepMAC": mac}, separators=(",", ":"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ks.KubeApiServer, Path]]:
    with ks.running_apiserver(tmp_path_factory.mktemp("api")) as api:
        kc = ks.flannel_kubeconfig(api, api.workdir / "kc")
        api.create_flannel_node("c1", "100.64.1.0/24", "198.18.0.1", "0a:00:00:00:00:01")
        api.create_node("c2", "100.64.2.0/24")
        api.create_node("c3")
        flannel_node(api, "h1", "hostgw.test", "host-gw", 11, v6=True)
        flannel_node(api, "h2", "hostgw.test", "host-gw", 12, v6=True)
        for i, n in ((21, "w1"), (22, "w2")):
            flannel_node(api, n, "wg.test", "wireguard", i,
                         data=json.dumps({"PublicKey": WG_KEYS[n], "Port": 51820}, separators=(",", ":")))
        flannel_node(api, "d1", "ds.test", "vxlan", 31, data=vx("0a:00:00:00:31:04"), data6=vx("0a:00:00:00:31:06"),
                     v6=True)
        flannel_node(api, "d2", "ds.test", "vxlan", 32, data=vx("0a:00:00:00:32:04"), data6=vx("0a:00:00:00:32:06"),
                     v6=True)
        # A broken dual-stack world: b2 runs another backend, b3 has no v6 podCIDR.
        flannel_node(api, "b1", "bad.test", "vxlan", 41, data=vx("0a:00:00:00:41:04"), data6=vx("0a:00:00:00:41:06"),
                     v6=True)
        flannel_node(api, "b2", "bad.test", "host-gw", 42, v6=True)
        flannel_node(api, "b3", "bad.test", "vxlan", 43, data=vx("0a:00:00:00:43:04"))
        yield api, kc


def run(capsys: pytest.CaptureFixture[str], kc: Path, tmp: Path, *args: str, node: str = "c1",
        prefix: str = "", net_conf: str = VXLAN_CONF, env: str | None = None) -> tuple[int, str]:
    (tmp / "net-conf.json").write_text(net_conf)
    (tmp / "subnet.env").write_text(env if env is not None else ENV4.format(sub="100.64.1"))
    argv = ["--kube-subnet-mgr", f"--kubeconfig-file={kc}", f"--net-config-path={tmp / 'net-conf.json'}",
            f"--subnet-file={tmp / 'subnet.env'}", *([f"--kube-annotation-prefix={prefix}"] if prefix else []),
            *args]
    rc = flannelctl.main(argv, {"NODE_NAME": node})
    return rc, capsys.readouterr().out


def checks_of(out: str) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in json.loads(out)["checks"]}


def test_leases_from_nodes(cluster: tuple[ks.KubeApiServer, Path], capsys: pytest.CaptureFixture[str],
                           tmp_path: Path) -> None:
    _api, kc = cluster
    rc, out = run(capsys, kc, tmp_path, "leases", "--json")
    assert rc == 0
    rows = {r["name"]: r for r in json.loads(out)["nodes"]}
    assert rows["c1"]["managed"] and rows["c1"]["vtep_mac"] == "0a:00:00:00:00:01"
    assert rows["c2"]["subnet"] == "100.64.2.0/24" and not rows["c2"]["managed"]
    assert rows["c3"]["subnet"] == ""
    assert not rows["h1"]["managed"]  # another prefix's flannel: not ours
    rc, out = run(capsys, kc, tmp_path, "leases")
    # d1/h1 have v6 podCIDRs, so the v6 columns show even though their flannel annotations are not ours.
    assert out.splitlines()[0].split() == ["NODE", "SUBNET", "SUBNET-V6", "PUBLIC-IP", "PUBLIC-IPV6", "BACKEND",
                                           "VTEPMAC", "FLANNEL", "NETWORK-CONDITION"]


def test_doctor_and_status(cluster: tuple[ks.KubeApiServer, Path], capsys: pytest.CaptureFixture[str],
                           tmp_path: Path) -> None:
    _api, kc = cluster
    rc, out = run(capsys, kc, tmp_path, "doctor", "--json")
    checks = checks_of(out)
    assert all(checks[f"rbac {w}"]["level"] == "ok" for w in ("pods get", "nodes list", "nodes/status patch"))
    assert checks["pod cidr"]["level"] == "ok" and checks["annotations"]["level"] == "ok"
    assert checks["subnet.env"]["level"] == "ok"
    assert checks["backend"]["level"] == "ok" and "VtepMAC 0a:00:00:00:00:01" in checks["backend"]["detail"]
    # The vxlan kernel checks run (here on a kernel without flannel.1); the other backends' do not, nor etcd's.
    assert set(checks) >= VXLAN_CHECKS and not (HOSTGW_CHECKS | WG_CHECKS) & set(checks)
    assert not {"etcd", "lease", "config", "pod cidr v6", "ipv6_forwarding"} & set(checks)
    assert rc == (1 if any(c["level"] == "fail" for c in checks.values()) else 0)
    rc, out = run(capsys, kc, tmp_path, "doctor", node="c3")
    assert rc == 1 and 'node "c3" pod cidr not assigned' in out and "--allocate-node-cidrs" in out
    rc, out = run(capsys, kc, tmp_path, "status")
    assert rc == 0 and "pod cidr:    100.64.1.0/24\n" in out
    assert "backend:     vxlan, VtepMAC 0a:00:00:00:00:01\n" in out


def test_hostgw_dual_stack(cluster: tuple[ks.KubeApiServer, Path], capsys: pytest.CaptureFixture[str],
                           tmp_path: Path) -> None:
    _api, kc = cluster
    kw: dict[str, Any] = {"node": "h1", "prefix": "hostgw.test", "net_conf": HOSTGW6_CONF,
                          "env": ENV6.format(sub="100.64.11", sub6="fd64:0:0:b::")}
    rc, out = run(capsys, kc, tmp_path, "leases", **kw)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NODE", "SUBNET", "SUBNET-V6", "PUBLIC-IP", "PUBLIC-IPV6", "BACKEND", "FLANNEL",
                                "NETWORK-CONDITION"]  # host-gw has no backend data column
    h2 = next(ln.split() for ln in lines if ln.startswith("h2 "))
    assert h2 == ["h2", "100.64.12.0/24", "fd64:0:0:c::/64", "198.18.0.12", "fd18::c", "host-gw", "yes", "-"]

    rc, out = run(capsys, kc, tmp_path, "doctor", "--json", **kw)
    checks = checks_of(out)
    assert checks["backend"]["level"] == "ok", checks["backend"]
    assert checks["pod cidr v6"] == {"name": "pod cidr v6", "level": "ok", "detail": "fd64:0:0:b::/64",
                                     "hint": ""}
    assert "peers v6" not in checks
    assert checks["annotations"]["detail"] == "kube-subnet-manager=true public-ip=198.18.0.11 public-ipv6=fd18::b"
    assert checks["subnet.env"]["level"] == "ok", checks["subnet.env"]
    assert HOSTGW_CHECKS | {"ipv6_forwarding", "ipv6_rules"} <= set(checks)
    assert not (VXLAN_CHECKS | WG_CHECKS) & set(checks)

    rc, out = run(capsys, kc, tmp_path, "status", "--json", **kw)
    doc = json.loads(out)
    assert rc == 0 and doc["kernel"]["backend"]["type"] == "host-gw"
    assert [(p["name"], p["subnet6"], p["public_ipv6"]) for p in doc["peers"]] == [("h2", "fd64:0:0:c::/64",
                                                                                     "fd18::c")]
    rc, out = run(capsys, kc, tmp_path, "status", **kw)
    assert "pod cidr:    100.64.11.0/24 fd64:0:0:b::/64\n" in out and "public ip:   198.18.0.11 fd18::b\n" in out
    assert "backend:     host-gw\n" in out and "subnet.env:  100.64.11.1/24 fd64:0:0:b::1/64\n" in out
    # A v6 subnet.env that is not the v6 podCIDR fails doctor.
    kw["env"] = ENV6.format(sub="100.64.11", sub6="fd64:0:0:99::")
    rc, out = run(capsys, kc, tmp_path, "doctor", "--json", **kw)
    assert rc == 1 and checks_of(out)["subnet.env"]["level"] == "fail"


def test_wireguard(cluster: tuple[ks.KubeApiServer, Path], capsys: pytest.CaptureFixture[str],
                   tmp_path: Path) -> None:
    _api, kc = cluster
    kw: dict[str, Any] = {"node": "w1", "prefix": "wg.test", "net_conf": WG_CONF,
                          "env": ENV4.format(sub="100.64.21")}
    rc, out = run(capsys, kc, tmp_path, "leases", "--json", **kw)
    rows = {r["name"]: r for r in json.loads(out)["nodes"]}
    assert (rows["w2"]["public_key"], rows["w2"]["wg_port"], rows["w2"]["vtep_mac"]) == (WG_KEYS["w2"], 51820, "")
    rc, out = run(capsys, kc, tmp_path, "leases", **kw)
    lines = out.splitlines()
    assert lines[0].split() == ["NODE", "SUBNET", "SUBNET-V6", "PUBLIC-IP", "PUBLIC-IPV6", "BACKEND", "PUBLIC-KEY",
                                "WG-PORT", "FLANNEL", "NETWORK-CONDITION"]
    w2 = next(ln.split() for ln in lines if ln.startswith("w2 "))
    assert w2 == ["w2", "100.64.22.0/24", "-", "198.18.0.22", "-", "wireguard", WG_KEYS["w2"], "51820", "yes", "-"]

    rc, out = run(capsys, kc, tmp_path, "doctor", "--json", **kw)
    checks = checks_of(out)
    assert checks["backend"]["level"] == "ok" and WG_KEYS["w1"] in checks["backend"]["detail"]
    assert set(checks) >= WG_CHECKS and not (VXLAN_CHECKS | HOSTGW_CHECKS) & set(checks)
    rc, out = run(capsys, kc, tmp_path, "status", **kw)
    assert f"backend:     wireguard, PublicKey {WG_KEYS['w1']}, port 51820\n" in out
    assert "kernel:      " in out


def test_vxlan_dual_stack_columns(cluster: tuple[ks.KubeApiServer, Path], capsys: pytest.CaptureFixture[str],
                                  tmp_path: Path) -> None:
    _api, kc = cluster
    kw: dict[str, Any] = {"node": "d1", "prefix": "ds.test", "net_conf": VXLAN6_CONF,
                          "env": ENV6.format(sub="100.64.31", sub6="fd64:0:0:1f::")}
    rc, out = run(capsys, kc, tmp_path, "leases", **kw)
    lines = out.splitlines()
    assert lines[0].split() == ["NODE", "SUBNET", "SUBNET-V6", "PUBLIC-IP", "PUBLIC-IPV6", "BACKEND", "VTEPMAC",
                                "VTEPMAC-V6", "FLANNEL", "NETWORK-CONDITION"]
    d2 = next(ln.split() for ln in lines if ln.startswith("d2 "))
    assert d2 == ["d2", "100.64.32.0/24", "fd64:0:0:20::/64", "198.18.0.32", "fd18::20", "vxlan",
                  "0a:00:00:00:32:04", "0a:00:00:00:32:06", "yes", "-"]
    rc, out = run(capsys, kc, tmp_path, "doctor", "--json", **kw)
    checks = checks_of(out)
    assert (checks["backend"]["level"], checks["pod cidr v6"]["level"], checks["subnet.env"]["level"]) == \
        ("ok", "ok", "ok"), checks
    assert "v6 VtepMAC 0a:00:00:00:31:06" in checks["backend"]["detail"]
    assert VXLAN_CHECKS | {"ipv6_forwarding", "ipv6_rules"} <= set(checks)


def test_doctor_names_a_peer_with_another_backend_or_no_v6(cluster: tuple[ks.KubeApiServer, Path],
                                                           capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _api, kc = cluster
    rc, out = run(capsys, kc, tmp_path, "doctor", "--json", node="b1", prefix="bad.test", net_conf=VXLAN6_CONF,
                  env=ENV6.format(sub="100.64.41", sub6="fd64:0:0:29::"))
    checks = checks_of(out)
    assert rc == 1
    assert checks["backend"]["level"] == "fail"
    assert "flannel Nodes with another backend-type: b2 (host-gw)" in checks["backend"]["detail"]
    assert checks["peers v6"]["level"] == "fail" and "without an IPv6 podCIDR or public-ipv6: b3" in \
        checks["peers v6"]["detail"]
    # Our own node publishes the wrong backend for the net-conf: named with both types.
    rc, out = run(capsys, kc, tmp_path, "doctor", "--json", node="b2", prefix="bad.test", net_conf=VXLAN6_CONF,
                  env=ENV6.format(sub="100.64.42", sub6="fd64:0:0:2a::"))
    assert "node 'b2' publishes backend-type host-gw, net-conf.json says vxlan" in checks_of(out)["backend"]["detail"]


def test_etcd_only_commands_refused(cluster: tuple[ks.KubeApiServer, Path], capsys: pytest.CaptureFixture[str],
                                    tmp_path: Path) -> None:
    _api, kc = cluster
    rc, _ = run(capsys, kc, tmp_path, "reserve", "100.64.9.0/24", "--public-ip", "198.18.0.9")
    assert rc == 2
