"""deploy/kube-flannel.yml against a real kube-apiserver: every object is accepted (server-side validation).

The objects are created for real in dependency order (the Namespace first), then each is sent again
with dryRun=All and fieldValidation=Strict, so an unknown or misspelt field fails the test instead of
being dropped silently. The ClusterRole must hold exactly flannel's rules.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import kube as ks

pytestmark = pytest.mark.skipif(ks.missing_reason() is not None, reason=ks.missing_reason() or "")

ORDER = ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"]


def test_every_object_accepted_by_the_apiserver(tmp_path: Path) -> None:
    objs = ks.manifest_objects()
    assert sorted(o["kind"] for o in objs) == sorted(ORDER)
    with ks.running_apiserver(tmp_path / "api") as api:
        for obj in sorted(objs, key=lambda o: ORDER.index(o["kind"])):
            path = ks.api_path(obj)
            status, body = api.raw("POST", path + "?fieldValidation=Strict", obj)
            assert status == 201, (obj["kind"], status, body)
            status, body = api.raw("PUT", ks.api_path(obj, named=True) + "?dryRun=All&fieldValidation=Strict",
                                   {**obj, "metadata": {**obj["metadata"], "resourceVersion": body["metadata"][
                                       "resourceVersion"]}})
            assert status == 200, (obj["kind"], status, body)
        ds = api.admin("GET", "/apis/apps/v1/namespaces/kube-flannel/daemonsets/kube-flannel-ds")
        pod = ds["spec"]["template"]["spec"]
        assert pod["hostNetwork"] is True and pod["serviceAccountName"] == "flannel"
        c = pod["containers"][0]
        assert c["args"][:2] == ["--ip-masq", "--kube-subnet-mgr"]
        assert c["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        paths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
        assert paths == {"/run/flannel", "/run/xtables.lock", "/etc/cni/net.d", "/opt/cni/bin"}
        assert [i["name"] for i in pod["initContainers"]] == ["install-cni-plugin", "install-cni"]
        role = api.admin("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles/flannel")
        rules = {(r["resources"][0], tuple(r["verbs"])) for r in role["rules"]}
        assert rules == {("pods", ("get",)), ("nodes", ("get", "list", "watch")), ("nodes/status", ("patch",))}
        cm = api.admin("GET", "/api/v1/namespaces/kube-flannel/configmaps/kube-flannel-cfg")
        conflist = json.loads(cm["data"]["cni-conf.json"])
        assert [p["type"] for p in conflist["plugins"]] == ["flannel", "portmap"]
        assert json.loads(cm["data"]["net-conf.json"])["Backend"] == {"Type": "vxlan"}
