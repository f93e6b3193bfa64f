"""flannelctl --kube-subnet-mgr against a real kube-apiserver, with the flannel ServiceAccount's kubeconfig."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import kube as ks

from pyflannel.cli import flannelctl

pytestmark = pytest.mark.skipif(ks.missing_reason() is not None, reason=ks.missing_reason() or "")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ks.KubeApiServer, Path]]:
    with ks.running_apiserver(tmp_path_factory.mktemp("api")) as api:
        kc = ks.flannel_kubeconfig(api, api.workdir / "kc")
        api.create_flannel_node("c1", "100.64.1.0/24", "198.18.0.1", "0a:00:00:00:00:01")
        api.create_node("c2", "100.64.2.0/24")
        api.create_node("c3")
        yield api, kc


def run(capsys: pytest.CaptureFixture[str], kc: Path, tmp: Path, *args: str, node: str = "c1") -> tuple[int, str]:
    (tmp / "net-conf.json").write_text('{"Network": "100.64.0.0/16", "Backend": {"Type": "vxlan"}}')
    (tmp / "subnet.env").write_text("FLANNEL_NETWORK=100.64.0.0/16\nFLANNEL_SUBNET=100.64.1.1/24\n"
                                    "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    argv = ["--kube-subnet-mgr", f"--kubeconfig-file={kc}", f"--net-config-path={tmp / 'net-conf.json'}",
            f"--subnet-file={tmp / 'subnet.env'}", *args]
    rc = flannelctl.main(argv, {"NODE_NAME": node})
    return rc, capsys.readouterr().out


def test_leases_from_nodes(cluster: tuple[ks.KubeApiServer, Path], capsys: pytest.CaptureFixture[str],
                           tmp_path: Path) -> None:
    _api, kc = cluster
    rc, out = run(capsys, kc, tmp_path, "leases", "--json")
    assert rc == 0
    rows = {r["name"]: r for r in json.loads(out)["nodes"]}
    assert rows["c1"]["managed"] and rows["c1"]["vtep_mac"] == "0a:00:00:00:00:01"
    assert rows["c2"]["subnet"] == "100.64.2.0/24" and not rows["c2"]["managed"]
    assert rows["c3"]["subnet"] == ""
    rc, out = run(capsys, kc, tmp_path, "leases")
    assert out.splitlines()[0].split() == ["NODE", "SUBNET", "PUBLIC-IP", "BACKEND", "VTEPMAC", "FLANNEL",
                                           "NETWORK-CONDITION"]


def test_doctor_and_status(cluster: tuple[ks.KubeApiServer, Path], capsys: pytest.CaptureFixture[str],
                           tmp_path: Path) -> None:
    _api, kc = cluster
    rc, out = run(capsys, kc, tmp_path, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert all(checks[f"rbac {w}"]["level"] == "ok" for w in ("pods get", "nodes list", "nodes/status patch"))
    assert checks["pod cidr"]["level"] == "ok" and checks["annotations"]["level"] == "ok"
    assert checks["subnet.env"]["level"] == "ok"
    assert rc == 0
    rc, out = run(capsys, kc, tmp_path, "doctor", node="c3")
    assert rc == 1 and 'node "c3" pod cidr not assigned' in out and "--allocate-node-cidrs" in out
    rc, out = run(capsys, kc, tmp_path, "status")
    assert rc == 0 and "pod cidr:    100.64.1.0/24" in out


def test_etcd_only_commands_refused(cluster: tuple[ks.KubeApiServer, Path], capsys: pytest.CaptureFixture[str],
                                    tmp_path: Path) -> None:
    _api, kc = cluster
    rc, _ = run(capsys, kc, tmp_path, "reserve", "100.64.9.0/24", "--public-ip", "198.18.0.9")
    assert rc == 2
