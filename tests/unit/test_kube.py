"""pyflannel.core.kube and the kubeconfig reader: flannel's prefix rules, Node -> Lease, what gets patched."""

from __future__ import annotations

import base64
import json
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

import pytest

from pyflannel.adapters.kube import KubeConfigError, in_cluster_config, load_kubeconfig, resolve_config
from pyflannel.core import kube as k
from pyflannel.core.errors import ConfigError, FlagError, LeaseFormatError
from pyflannel.core.lease import LeaseAttrs

ANN = k.Annotations.for_prefix()
P = "flannel.alpha.coreos.com/"


@pytest.mark.parametrize(("raw", "want"), [
    ("flannel.alpha.coreos.com", "flannel.alpha.coreos.com/"),
    ("flannel.alpha.coreos.com/", "flannel.alpha.coreos.com/"),
    ("example.com/flannel", "example.com/flannel-"),
    ("example.com/flannel-", "example.com/flannel-"),
])
def test_prefix_normalised_as_flannel(raw: str, want: str) -> None:
    assert k.normalize_prefix(raw) == want


@pytest.mark.parametrize(("raw", "msg"), [
    ("a/b/c", "prefix can contain at most single slash"),
    ("Example.com", "prefix must be in a format: fqdn/[0-9a-z-_]*"),
    ("nodots", "prefix must be in a format"),
])
def test_bad_prefix_is_one_line_naming_it(raw: str, msg: str) -> None:
    with pytest.raises(FlagError) as e:
        k.normalize_prefix(raw)
    assert msg in str(e.value) and "\n" not in str(e.value) and "-kube-annotation-prefix" in str(e.value)


def node(name: str = "n1", cidr: str | None = "100.64.1.0/24", cidrs: list[str] | None = None,
         ann: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if cidr:
        spec["podCIDR"] = cidr
    if cidrs is not None:
        spec["podCIDRs"] = cidrs
    return {"metadata": {"name": name, "annotations": ann or {}}, "spec": spec}


def flannel_ann(ip: str = "198.18.0.1", mac: str = "0a:00:00:00:00:01") -> dict[str, str]:
    return {P + "kube-subnet-manager": "true", P + "backend-type": "vxlan", P + "public-ip": ip,
            P + "backend-data": f'{{"VNI":1,"VtepMAC":"{mac}"}}'}


def test_pod_cidrs_first_of_each_family() -> None:
    n = node(cidr="fd64::/64", cidrs=["fd64::/64", "100.64.2.0/24"])
    assert k.pod_cidrs(n) == (IPv4Network("100.64.2.0/24"), IPv6Network("fd64::/64"))
    assert k.pod_cidrs(node(cidr="100.64.3.0/24")) == (IPv4Network("100.64.3.0/24"), None)
    assert k.pod_cidrs(node(cidr=None)) == (None, None)
    with pytest.raises(k.KubeNodeError, match='^node "n1" pod cidrs should be IPv4/IPv6 only or dualstack$'):
        k.pod_cidrs(node(cidrs=["100.64.1.0/24", "100.64.2.0/24", "fd64::/64"]))
    with pytest.raises(k.KubeNodeError, match="invalid podCIDR 'nope'"):
        k.pod_cidrs(node(cidr="nope"))


def test_node_to_lease() -> None:
    lease = k.node_to_lease(node(ann=flannel_ann()), ANN)
    assert lease.subnet == IPv4Network("100.64.1.0/24")
    want = LeaseAttrs(IPv4Address("198.18.0.1"), None, "vxlan", '{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"}')
    assert lease.attrs == want
    assert lease.key_name == "100.64.1.0-24" and lease.expiration is None
    with pytest.raises(LeaseFormatError, match="bad flannel.alpha.coreos.com/public-ip annotation 'x'"):
        k.node_to_lease(node(ann={**flannel_ann(), P + "public-ip": "x"}), ANN)
    with pytest.raises(LeaseFormatError, match="backend-data is not JSON"):
        k.node_to_lease(node(ann={**flannel_ann(), P + "backend-data": "{"}), ANN)


def test_lease_changed_only_for_flannels_annotations() -> None:
    a = node(ann=flannel_ann())
    assert not k.lease_changed(a, node(ann={**flannel_ann(), "other/x": "1"}), ANN)
    assert k.lease_changed(a, node(ann=flannel_ann(mac="0a:00:00:00:00:02")), ANN)
    assert k.lease_changed(a, node(ann=flannel_ann(ip="198.18.0.2")), ANN)
    assert k.lease_changed(a, node(ann={**flannel_ann(), P + "backend-type": "host-gw"}), ANN)


def attrs(data: str | None = '{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"}', btype: str = "vxlan") -> LeaseAttrs:
    return LeaseAttrs(IPv4Address("198.18.0.1"), None, btype, data)


def test_publish_only_what_differs() -> None:
    first = k.plan_publish({}, attrs(), ANN)
    assert first.patch() == {"metadata": {"annotations": flannel_ann()}}
    assert k.plan_publish(flannel_ann(), attrs(), ANN).patch() is None
    changed = k.plan_publish(flannel_ann(), attrs('{"VNI":1,"VtepMAC":"0a:00:00:00:00:09"}'), ANN)
    new_data = '{"VNI":1,"VtepMAC":"0a:00:00:00:00:09"}'
    assert changed.patch() == {"metadata": {"annotations": {P + "backend-data": new_data}}}


def test_public_ip_overwrite_and_vxlan_null_data() -> None:
    cur = {P + "public-ip-overwrite": "198.18.5.5"}
    plan = k.plan_publish(cur, attrs(), ANN)
    assert dict(plan.changes)[P + "public-ip"] == "198.18.5.5"
    assert plan.notes == ("Overriding public ip with '198.18.5.5' from node annotation "
                          "'flannel.alpha.coreos.com/public-ip-overwrite'",)
    # Applied once, nothing differs any more (flannel would patch on every start here).
    assert k.plan_publish({**cur, **dict(plan.changes)}, attrs(), ANN).patch() is None
    # vxlan without data: neither backend-data nor public-ip is written.
    assert set(dict(k.plan_publish({}, attrs(None), ANN).changes)) == {P + "backend-type", P + "kube-subnet-manager"}
    # host-gw's null data is written.
    assert dict(k.plan_publish({}, attrs(None, "host-gw"), ANN).changes)[P + "backend-data"] == "null"


def test_stored_vtep_mac_normalised_and_flannels_raw_key() -> None:
    assert k.stored_vtep_mac(flannel_ann(), ANN) == "0a:00:00:00:00:01"
    custom = k.Annotations.for_prefix("example.com/fl")
    assert custom.stored_backend_data_keys() == ("example.com/fl-backend-data", "example.com/fl/backend-data")
    assert k.stored_vtep_mac({"example.com/fl/backend-data": '{"VtepMAC":"0a:00:00:00:00:07"}'}, custom) == \
        "0a:00:00:00:00:07"
    assert k.stored_vtep_mac({P + "backend-data": "garbage"}, ANN) == ""


def test_condition_body_as_go_writes_it() -> None:
    body = k.network_unavailable_patch("2025-01-02T03:04:05Z")
    assert json.dumps(body, separators=(",", ":")) == (
        '{"status":{"conditions":[{"type":"NetworkUnavailable","status":"False",'
        '"lastHeartbeatTime":"2025-01-02T03:04:05Z","lastTransitionTime":"2025-01-02T03:04:05Z",'
        '"reason":"FlannelIsUp","message":"Flannel is running on this node"}]}}'
    )


def test_check_in_network_message() -> None:
    cfg = k.parse_net_conf('{"Network": "100.64.0.0/16", "Backend": {"Type": "vxlan"}}')
    k.check_in_network(cfg, IPv4Network("100.64.9.0/24"), "n1")
    with pytest.raises(k.KubeNodeError) as e:
        k.check_in_network(cfg, IPv4Network("100.65.0.0/24"), "n1")
    assert str(e.value) == ('subnet "100.64.0.0/16" specified in the flannel net config doesn\'t contain '
                            '"100.65.0.0/24" PodCIDR of the "n1" node')


def test_net_conf_ignores_allocation_fields() -> None:
    # SubnetLen 8 would be refused in etcd mode; kube mode does not allocate.
    cfg = k.parse_net_conf('{"Network": "100.64.0.0/16", "SubnetLen": 8, "Backend": {"Type": "vxlan"}}')
    assert cfg.network == IPv4Network("100.64.0.0/16") and cfg.backend_type == "vxlan"
    with pytest.raises(ConfigError, match="^/etc/x.json: config is not valid JSON"):
        k.parse_net_conf("{", "/etc/x.json")


# --- kubeconfig ---------------------------------------------------------------------------------


def test_kubeconfig_token_file_relative_ca_and_cert_data(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("x")
    kc = tmp_path / "kc"
    kc.write_text(f"""
apiVersion: v1
kind: Config
current-context: b
clusters:
- name: c1
  cluster: {{server: "https://198.18.0.1:6443", certificate-authority: ca.crt}}
users:
- name: u1
  user: {{tokenFile: /var/tok, client-certificate-data: {base64.b64encode(b"CERT").decode()}}}
contexts:
- {{name: a, context: {{cluster: nope, user: u1}}}}
- {{name: b, context: {{cluster: c1, user: u1}}}}
""")
    cfg = load_kubeconfig(str(kc))
    assert cfg.server == "https://198.18.0.1:6443"
    assert cfg.ca_file == str(tmp_path / "ca.crt")
    assert cfg.token_file == "/var/tok" and cfg.cert_data == b"CERT"
    assert load_kubeconfig(str(kc), "https://198.18.0.2:443").server == "https://198.18.0.2:443"


@pytest.mark.parametrize(("text", "msg"), [
    ("{", "not valid YAML"),
    ("[]", "not a kubeconfig"),
    ("current-context: x\ncontexts: []\n", "context 'x' not found"),
    ("current-context: a\ncontexts: [{name: a, context: {cluster: c}}]\nclusters: [{name: c, cluster: {}}]\n",
     "cluster 'c' has no server"),
    ("current-context: a\ncontexts: [{name: a, context: {cluster: c}}]\n"
     "clusters: [{name: c, cluster: {server: 'ftp://x'}}]\n", "invalid API server URL 'ftp://x'"),
])
def test_bad_kubeconfig_is_one_line(tmp_path: Path, text: str, msg: str) -> None:
    kc = tmp_path / "kc"
    kc.write_text(text)
    with pytest.raises(KubeConfigError) as e:
        load_kubeconfig(str(kc))
    assert msg in str(e.value) and str(kc) in str(e.value) and "\n" not in str(e.value)


def test_missing_kubeconfig_and_in_cluster(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match=f"kubeconfig {tmp_path}/nope: cannot read: No such file"):
        resolve_config("", str(tmp_path / "nope"), {})
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be defined"):
        resolve_config("", "", {})
    (tmp_path / "token").write_text("t\n")
    cfg = in_cluster_config({"KUBERNETES_SERVICE_HOST": "fd18::1", "KUBERNETES_SERVICE_PORT": "443"}, str(tmp_path))
    assert cfg.server == "https://[fd18::1]:443" and cfg.token_file == str(tmp_path / "token") and cfg.ca_file is None
    assert resolve_config("http://127.0.0.1:8080", "", {}).server == "http://127.0.0.1:8080"
