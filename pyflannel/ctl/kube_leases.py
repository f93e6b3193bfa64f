"""flannelctl in Kubernetes mode (``--kube-subnet-mgr``): leases, status and doctor from Node objects.

Why: in kube mode there is no etcd keyspace to read; the leases are the Nodes' podCIDRs and
flannel's annotations on them. These commands use the same flags and credentials as flanneld
(``--kubeconfig-file``, ``--kube-api-url`` or the in-cluster service account, and
``--kube-annotation-prefix``), so they also show whether those credentials are enough.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyflannel.adapters.kube import KubeClient, KubeError, resolve_config
from pyflannel.core import kube as k
from pyflannel.core.errors import FlannelError, SubnetEnvError
from pyflannel.core.subnet_env import parse_env_text, previous_subnets
from pyflannel.ctl.doctor import Check, Level
from pyflannel.ctl.doctor import render as render_checks
from pyflannel.ctl.doctor import to_json as checks_json
from pyflannel.ctl.output import emit, emit_json, table

HEADERS = ("NODE", "SUBNET", "PUBLIC-IP", "BACKEND", "VTEPMAC", "FLANNEL", "NETWORK-CONDITION")
# What flanneld needs (deploy/kube-flannel.yml's ClusterRole), checked with SelfSubjectAccessReview.
NEEDED = (("", "pods", "get"), ("", "nodes", "get"), ("", "nodes", "list"), ("", "nodes", "watch"),
          ("status", "nodes", "patch"))


@dataclass(frozen=True)
class NodeRow:
    name: str
    subnet: str
    public_ip: str
    backend: str
    vtep_mac: str
    managed: bool
    condition: str
    error: str = ""

    def cells(self) -> tuple[str, ...]:
        return (self.name, self.subnet or "-", self.public_ip or "-", self.backend or "-", self.vtep_mac or "-",
                "yes" if self.managed else "no", self.condition or "-")


def row_of(node: Mapping[str, Any], ann: k.Annotations) -> NodeRow:
    a = k.node_annotations(node)
    try:
        v4, v6 = k.pod_cidrs(node)
        # the IPv4 podCIDR, or the IPv6 one on a node that has only that (an IPv6-only network)
        subnet, error = (str(v4) if v4 else str(v6) if v6 else ""), ""
    except k.KubeNodeError as e:
        subnet, v6, error = "", None, str(e)
    cond = k.network_condition(node)
    pub = a.get(ann.public_ip, "")
    if v6 is not None and (not subnet or ":" in subnet):
        pub = a.get(ann.public_ipv6, "") or pub
    return NodeRow(
        name=k.node_name(node), subnet=subnet, public_ip=pub,
        backend=a.get(ann.backend_type, ""), vtep_mac=k.stored_vtep_mac(a, ann), managed=k.is_managed(node, ann),
        condition=f"{cond.get('status')}/{cond.get('reason')}" if cond else "", error=error,
    )  # fmt: skip


def _client(opts: Any, env: Mapping[str, str]) -> KubeClient:
    return KubeClient(resolve_config(opts.kube_api_url, opts.kubeconfig_file, env), timeout=5.0)


def own_node_name(env: Mapping[str, str]) -> str:
    return env.get("NODE_NAME") or socket.gethostname()


async def leases(opts: Any, env: Mapping[str, str], as_json: bool) -> int:
    ann = k.Annotations.for_prefix(opts.kube_annotation_prefix)
    client = _client(opts, env)
    try:
        nodes, rv = await client.list_nodes()
    finally:
        await client.close()
    rows = sorted((row_of(n, ann) for n in nodes), key=lambda r: r.name)
    if as_json:
        emit_json({"resourceVersion": rv, "nodes": [r.__dict__ for r in rows]})
    else:
        emit(table(HEADERS, [r.cells() for r in rows]))
    return 0


def _subnet_env(path: str) -> tuple[dict[str, str] | None, str]:
    try:
        with open(path) as f:
            return parse_env_text(f.read(), path), ""
    except OSError as e:
        return None, f"{path}: {e.strerror or e}"
    except SubnetEnvError as e:
        return None, str(e)


async def _collect(opts: Any, env: Mapping[str, str]) -> dict[str, Any]:
    ann = k.Annotations.for_prefix(opts.kube_annotation_prefix)
    name = own_node_name(env)
    out: dict[str, Any] = {"node": name, "api": "", "api_error": "", "own": None, "nodes": [], "access": {}}
    try:
        client = _client(opts, env)
    except FlannelError as e:
        out["api_error"] = str(e)
        return out
    out["api"] = client.config.server
    try:
        nodes, _rv = await client.list_nodes()
        out["nodes"] = [row_of(n, ann) for n in nodes]
        own = next((n for n in nodes if k.node_name(n) == name), None)
        out["own"] = own
        for group_sub, res, verb in NEEDED:
            body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                    "spec": {"resourceAttributes": {"resource": res, "verb": verb, "subresource": group_sub,
                                                    "namespace": "" if res == "nodes" else "kube-flannel"}}}
            try:
                r = await client.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=body)
                out["access"][f"{res}{'/' + group_sub if group_sub else ''} {verb}"] = bool(
                    r.get("status", {}).get("allowed"))
            except KubeError:
                out["access"][f"{res}{'/' + group_sub if group_sub else ''} {verb}"] = None
    except KubeError as e:
        out["api_error"] = str(e)
    finally:
        await client.close()
    return out


async def status(opts: Any, env: Mapping[str, str], as_json: bool) -> int:
    data = await _collect(opts, env)
    ann = k.Annotations.for_prefix(opts.kube_annotation_prefix)
    own = data["own"]
    se, se_err = _subnet_env(opts.subnet_file)
    own_row = row_of(own, ann) if own else None
    peers = [r for r in data["nodes"] if r.managed and r.name != data["node"]]
    doc = {
        "node": data["node"], "api": data["api"], "api_error": data["api_error"],
        "own": own_row.__dict__ if own_row else None,
        "subnet_env": se, "subnet_env_error": se_err,
        "peers": [r.__dict__ for r in peers],
    }
    if as_json:
        emit_json(doc)
    else:
        lines = [f"node:        {data['node']}", f"api server:  {data['api'] or '-'} {data['api_error']}".rstrip()]
        if own_row:
            lines += [f"pod cidr:    {own_row.subnet or '(not assigned)'}",
                      f"public ip:   {own_row.public_ip or '-'}  backend: {own_row.backend or '-'}  "
                      f"vtep mac: {own_row.vtep_mac or '-'}",
                      f"flannel:     {'yes' if own_row.managed else 'no'}  condition: {own_row.condition or '-'}"]
        else:
            lines.append("own node:    not found")
        lines.append(f"subnet.env:  {se.get('FLANNEL_SUBNET', '-') if se else se_err}")
        lines += ["", f"peers ({len(peers)}):", table(HEADERS, [r.cells() for r in peers]).rstrip()]
        emit("\n".join(lines))
    return 0 if own_row and own_row.managed else 1


async def doctor(opts: Any, env: Mapping[str, str], as_json: bool) -> int:
    data = await _collect(opts, env)
    ann = k.Annotations.for_prefix(opts.kube_annotation_prefix)
    checks: list[Check] = []
    if data["api_error"]:
        checks.append(Check("api server", "fail", data["api_error"],
                            "check --kubeconfig-file / --kube-api-url, or the pod's service account"))
        return _report(checks, as_json)
    checks.append(Check("api server", "ok", f"{data['api']}: listed {len(data['nodes'])} nodes"))
    for what, allowed in data["access"].items():
        level: Level = "ok" if allowed else ("skip" if allowed is None else "fail")
        checks.append(Check(f"rbac {what}", level, "allowed" if allowed else "denied" if allowed is False
                            else "could not ask", "kubectl apply -f deploy/kube-flannel.yml (ClusterRole flannel)"))
    own = data["own"]
    if own is None:
        checks.append(Check("own node", "fail", f"node {data['node']!r} not found",
                            "set NODE_NAME to the Node's name (kubectl get nodes)"))
        return _report(checks, as_json)
    row = row_of(own, ann)
    net = None
    try:
        with open(opts.net_config_path, "rb") as f:
            net = k.parse_net_conf(f.read(), opts.net_config_path)
    except OSError as e:
        checks.append(Check("net-conf", "warn", f"{opts.net_config_path}: {e.strerror or e}",
                            "give --net-config-path (the ConfigMap's net-conf.json)"))
    except FlannelError as e:
        checks.append(Check("net-conf", "fail", str(e), "fix net-conf.json in ConfigMap kube-flannel-cfg"))
    if not row.subnet:
        checks.append(Check("pod cidr", "fail", row.error or k.pod_cidr_not_assigned(row.name),
                            k.POD_CIDR_HINT.format(network=net.network if net else "<Network>")))
    else:
        detail, cidr_level = row.subnet, "ok"
        if net is not None:
            try:
                from ipaddress import IPv4Network, IPv6Network

                if ":" in row.subnet:
                    k.check_in_network6(net, IPv6Network(row.subnet), row.name)
                else:
                    k.check_in_network(net, IPv4Network(row.subnet), row.name)
            except k.KubeNodeError as e:
                detail, cidr_level = str(e), "fail"
        checks.append(Check("pod cidr", "fail" if cidr_level == "fail" else "ok", detail,
                            "make --cluster-cidr and net-conf.json's Network agree"))
    checks.append(Check("annotations", "ok" if row.managed and row.public_ip else "fail",
                        f"kube-subnet-manager={'true' if row.managed else 'missing'} public-ip={row.public_ip or '-'}",
                        "is flanneld running on this node? (kubectl -n kube-flannel logs)"))
    checks.append(Check("network condition", "ok" if row.condition == "False/FlannelIsUp" else "warn",
                        row.condition or "not set", "set by flanneld after start (--set-node-network-unavailable)"))
    se, se_err = _subnet_env(opts.subnet_file)
    if se is None:
        checks.append(Check("subnet.env", "warn", se_err, "written by flanneld once it holds its lease"))
    else:
        sn4, sn6 = previous_subnets(se)
        v6_row = ":" in row.subnet
        got = sn6 if v6_row else sn4
        same = row.subnet and got is not None and str(got) == row.subnet
        key = "FLANNEL_IPV6_SUBNET" if v6_row else "FLANNEL_SUBNET"
        checks.append(Check("subnet.env", "ok" if same else "fail", f"{key}={se.get(key)}",
                            f"should be inside the podCIDR {row.subnet}; restart flanneld"))
    return _report(checks, as_json)


def _report(checks: list[Check], as_json: bool) -> int:
    if as_json:
        emit_json(checks_json(checks))
    else:
        emit(render_checks(checks))
    return 1 if any(c.level == "fail" for c in checks) else 0


async def run(command: str, opts: Any, env: Mapping[str, str] | None, as_json: bool) -> int:
    environ = os.environ if env is None else env
    fn = {"leases": leases, "status": status, "doctor": doctor}[command]
    return await fn(opts, environ, as_json)
