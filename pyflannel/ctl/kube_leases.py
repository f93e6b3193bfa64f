"""flannelctl in Kubernetes mode (``--kube-subnet-mgr``): leases, status and doctor from Node objects.

Why: in kube mode there is no etcd keyspace to read; the leases are the Nodes' podCIDRs and
flannel's annotations on them. These commands use the same flags and credentials as flanneld
(``--kubeconfig-file``, ``--kube-api-url`` or the in-cluster service account, and
``--kube-annotation-prefix``), so they also show whether those credentials are enough.

Backend choice is data here too: each Node's ``backend-type`` annotation decides what its row shows
(vxlan: VtepMAC, wireguard: PublicKey, host-gw: nothing beyond the PublicIP), and dual-stack Nodes
add the v6 podCIDR, ``public-ipv6`` and BackendV6Data columns. ``status`` and ``doctor`` build the
same ``NodeFacts`` as etcd mode (ctl/node.py) from net-conf.json and the Nodes' leases, read the
kernel the same way, and so show the same per-backend peer view and run the same backend checks
(host-gw L2 adjacency, WireGuard port and handshakes, IPv6 forwarding); only the etcd checks
(config, lease TTL, endpoints) are replaced by the Kubernetes ones.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from pyflannel.adapters.kube import KubeClient, KubeError, resolve_config
from pyflannel.core import kube as k
from pyflannel.core.backends import wireguard as wgcore
from pyflannel.core.config import NetworkConfig
from pyflannel.core.errors import ConfigError, FlannelError, LeaseFormatError, SubnetEnvError
from pyflannel.core.lease import _vxlan_data
from pyflannel.core.subnet_env import parse_env_text, previous_subnets
from pyflannel.ctl import doctor as etcd_doctor
from pyflannel.ctl import node as nodefacts
from pyflannel.ctl import status as etcd_status
from pyflannel.ctl.doctor import Check, Level
from pyflannel.ctl.doctor import render as render_checks
from pyflannel.ctl.doctor import to_json as checks_json
from pyflannel.ctl.output import emit, emit_json, table

# What flanneld needs (deploy/kube-flannel.yml's ClusterRole), checked with SelfSubjectAccessReview.
NEEDED = (("", "pods", "get"), ("", "nodes", "get"), ("", "nodes", "list"), ("", "nodes", "watch"),
          ("status", "nodes", "patch"))
# The etcd-mode checks that kube mode replaces with its own (net-conf, podCIDR, annotations, API server).
NOT_IN_KUBE = (etcd_doctor.check_config, etcd_doctor.check_lease, etcd_doctor.check_etcd)


@dataclass(frozen=True)
class NodeRow:
    """One Node as flannel sees it; the backend fields are those of its ``backend-type``."""

    name: str
    subnet: str
    public_ip: str
    backend: str
    vtep_mac: str
    managed: bool
    condition: str
    error: str = ""
    subnet6: str = ""
    public_ipv6: str = ""
    vtep_mac6: str = ""  # vxlan: BackendV6Data's VtepMAC (flannel-v6.<VNI>)
    public_key: str = ""  # wireguard: BackendData's PublicKey
    public_key6: str = ""  # wireguard: BackendV6Data's PublicKey (flannel-wg-v6)
    wg_port: int = 0  # wireguard: the published Port (0: not published)
    data_error: str = ""  # backend-data / backend-v6-data that do not decode for the backend type


def _decode(btype: str, text: str, what: str) -> tuple[str, int, str]:
    """(VtepMAC or PublicKey, wireguard Port, error) from one backend data annotation."""
    if not text or text == "null":
        return "", 0, ""
    try:
        if btype == "vxlan":
            return _vxlan_data(text).vtep_mac, 0, ""
        if btype == wgcore.BACKEND_TYPE:
            d = wgcore.parse_data(text)
            return d.public_key, d.port, ""
    except LeaseFormatError as e:
        return "", 0, f"{what}: {e}"
    return "", 0, ""


def row_of(node: Mapping[str, Any], ann: k.Annotations) -> NodeRow:
    a = k.node_annotations(node)
    try:
        v4, v6 = k.pod_cidrs(node)
        v6_only = v4 is None and v6 is not None
        # the IPv4 podCIDR, or the IPv6 one on a node that has only that (an IPv6-only network); subnet6 is
        # the second family of a dual-stack node
        subnet = str(v4) if v4 else str(v6) if v6 else ""
        subnet6, error = (str(v6) if v6 and v4 else ""), ""
    except k.KubeNodeError as e:
        subnet, subnet6, error, v6_only = "", "", str(e), False
    cond = k.network_condition(node)
    btype = a.get(ann.backend_type, "")
    d4, port, e4 = _decode(btype, a.get(ann.backend_data, ""), "backend-data")
    d6, port6, e6 = _decode(btype, a.get(ann.backend_v6_data, ""), "backend-v6-data")
    wg = btype == wgcore.BACKEND_TYPE
    pub = a.get(ann.public_ip, "")
    if v6_only:
        pub = a.get(ann.public_ipv6, "") or pub
    return NodeRow(
        name=k.node_name(node), subnet=subnet, public_ip=pub, backend=btype,
        vtep_mac=(d4 or (d6 if v6_only else "")) if btype == "vxlan" else "", managed=k.is_managed(node, ann),
        condition=f"{cond.get('status')}/{cond.get('reason')}" if cond else "", error=error,
        subnet6=subnet6, public_ipv6=a.get(ann.public_ipv6, ""), vtep_mac6=d6 if btype == "vxlan" else "",
        public_key=d4 if wg else "", public_key6=d6 if wg else "", wg_port=(port or port6) if wg else 0,
        data_error="; ".join(x for x in (e4, e6) if x),
    )  # fmt: skip


def columns(rows: list[NodeRow]) -> list[tuple[str, str]]:
    """(header, NodeRow field) of the table: the v6 columns only when a Node is dual-stack, the backend data
    columns only for the backend types present (host-gw has none)."""
    v6 = any(r.subnet6 or r.public_ipv6 for r in rows)
    types = {r.backend for r in rows}
    cols = [("NODE", "name"), ("SUBNET", "subnet")] + ([("SUBNET-V6", "subnet6")] if v6 else [])
    cols += [("PUBLIC-IP", "public_ip")] + ([("PUBLIC-IPV6", "public_ipv6")] if v6 else [])
    cols.append(("BACKEND", "backend"))
    if "vxlan" in types:
        cols.append(("VTEPMAC", "vtep_mac"))
        if any(r.vtep_mac6 for r in rows):
            cols.append(("VTEPMAC-V6", "vtep_mac6"))
    if wgcore.BACKEND_TYPE in types:
        cols.append(("PUBLIC-KEY", "public_key"))
        if any(r.public_key6 and r.public_key6 != r.public_key for r in rows):
            cols.append(("PUBLIC-KEY-V6", "public_key6"))
        cols.append(("WG-PORT", "wg_port"))
    return [*cols, ("FLANNEL", "managed"), ("NETWORK-CONDITION", "condition")]


def render_table(rows: list[NodeRow]) -> str:
    cols = columns(rows)

    def cell(r: NodeRow, f: str) -> str:
        v = getattr(r, f)
        if f == "managed":
            return "yes" if v else "no"
        return str(v) if v else "-"

    return table([h for h, _ in cols], [[cell(r, f) for _, f in cols] for r in rows])


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
        emit(render_table(rows))
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
    out: dict[str, Any] = {"node": name, "api": "", "api_error": "", "own": None, "nodes": [], "raw": [],
                           "access": {}}
    try:
        client = _client(opts, env)
    except FlannelError as e:
        out["api_error"] = str(e)
        return out
    out["api"] = client.config.server
    try:
        nodes, _rv = await client.list_nodes()
        out["raw"] = nodes
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


def _net_conf(opts: Any) -> tuple[NetworkConfig | None, Check | None]:
    """net-conf.json, or the check saying why it cannot be used."""
    try:
        with open(opts.net_config_path, "rb") as f:
            return k.parse_net_conf(f.read(), opts.net_config_path), None
    except OSError as e:
        return None, Check("net-conf", "warn", f"{opts.net_config_path}: {e.strerror or e}",
                           "give --net-config-path (the ConfigMap's net-conf.json)")
    except FlannelError as e:
        return None, Check("net-conf", "fail", str(e), "fix net-conf.json in ConfigMap kube-flannel-cfg")


def kube_facts(opts: Any, data: dict[str, Any], net: NetworkConfig | None) -> nodefacts.NodeFacts:
    """etcd mode's NodeFacts with the config from net-conf.json and the leases from the flannel Nodes."""
    from pyflannel.adapters.registry import BadLease
    from pyflannel.daemon.metrics import status_path

    f = nodefacts.NodeFacts(str(opts.subnet_file), str(status_path(opts.subnet_file)), now=time.time())
    nodefacts.read_files(f)
    if net is not None:
        f.config = net
        try:
            nodefacts.set_backend_options(f)
        except ConfigError as e:
            f.config_error = str(e)
    ann = k.Annotations.for_prefix(opts.kube_annotation_prefix)
    v6 = bool(net is not None and net.enable_ipv6)
    for node in data["raw"]:
        if not k.is_managed(node, ann):
            continue
        try:
            le = k.node_to_lease(node, ann, v6)
        except (LeaseFormatError, k.KubeNodeError) as e:
            f.bad_leases.append(BadLease(f"node/{k.node_name(node)}", str(e)))
            continue
        f.leases.append(le)
        if k.node_name(node) == data["node"]:
            f.own = le
    return f


async def read_facts(opts: Any, data: dict[str, Any], net: NetworkConfig | None) -> nodefacts.NodeFacts:
    """kube_facts, then the kernel read as etcd mode reads it (only the backend's state). pyroute2's
    synchronous socket runs an event loop of its own, so the kernel is read on a worker thread."""
    f = kube_facts(opts, data, net)
    await asyncio.to_thread(nodefacts.read_kernel, f)
    return f


def kernel_report(f: nodefacts.NodeFacts) -> dict[str, Any]:
    """The etcd-mode status view of this node's kernel against the Nodes' leases, per backend."""
    return {
        "backend": etcd_status.backend_report(f),
        "error": f.kernel_error,
        "leases": etcd_status._etcd_peers(f),
        "kernel": etcd_status.kernel_peer_count(f),
        "rows": etcd_status.peer_rows(f),
        "rejected": etcd_status._rejected(f) + [{"key": b.key, "reason": b.reason} for b in f.bad_leases],
        "drift": etcd_status.drift(f),
        "mtu": etcd_status.mtu_report(f),
    }


def own_backend_line(r: NodeRow) -> str:
    if r.backend == "vxlan":
        text = f"vxlan, VtepMAC {r.vtep_mac or '-'}" + (f", v6 VtepMAC {r.vtep_mac6}" if r.vtep_mac6 else "")
    elif r.backend == wgcore.BACKEND_TYPE:
        text = f"wireguard, PublicKey {r.public_key or '-'}" + (
            f", v6 PublicKey {r.public_key6}" if r.public_key6 and r.public_key6 != r.public_key else "") + (
            f", port {r.wg_port}" if r.wg_port else "")
    else:
        text = r.backend or "-"
    return text + (f" ({r.data_error})" if r.data_error else "")


def _kernel_lines(kr: dict[str, Any]) -> tuple[list[str], str]:
    """The summary line(s) and the per-peer table (etcd mode's, for the backend) of a kernel_report."""
    b = kr["backend"]
    if kr["error"]:
        return [f"kernel:      not read ({kr['error']})"], ""
    n = len(kr["drift"])
    drift = "none" if not n else f"{n} {'entry' if n == 1 else 'entries'}"
    lines = [f"kernel:      {b['type']}: {kr['kernel']} of {kr['leases']} peers in place, drift {drift}"]
    if b["type"] != "vxlan":
        lines.append(f"             {etcd_status._backend_line(b)}")
    lines += [f"mtu:         {etcd_status._mtu_line(kr['mtu'])}"]
    out = ""
    if kr["rows"]:
        out += etcd_status._peer_table(b["type"], kr["rows"])
    if kr["drift"]:
        out += "drift:\n" + "".join(f"  {x}\n" for x in kr["drift"])
    for r in kr["rejected"]:
        out += f"ignored lease {r['key']}: {r['reason']}\n"
    return lines, out


async def status(opts: Any, env: Mapping[str, str], as_json: bool) -> int:
    data = await _collect(opts, env)
    ann = k.Annotations.for_prefix(opts.kube_annotation_prefix)
    own = data["own"]
    se, se_err = _subnet_env(opts.subnet_file)
    own_row = row_of(own, ann) if own else None
    peers = [r for r in data["nodes"] if r.managed and r.name != data["node"]]
    net, net_check = _net_conf(opts)
    kr = kernel_report(await read_facts(opts, data, net))
    doc = {
        "node": data["node"], "api": data["api"], "api_error": data["api_error"],
        "own": own_row.__dict__ if own_row else None,
        "subnet_env": se, "subnet_env_error": se_err,
        "net_conf_error": net_check.detail if net_check else "",
        "peers": [r.__dict__ for r in peers],
        "kernel": kr,
    }
    if as_json:
        emit_json(doc)
    else:
        lines = [f"node:        {data['node']}", f"api server:  {data['api'] or '-'} {data['api_error']}".rstrip()]
        if own_row:
            lines += [f"pod cidr:    {own_row.subnet or '(not assigned)'}"
                      + (f" {own_row.subnet6}" if own_row.subnet6 else ""),
                      f"public ip:   {own_row.public_ip or '-'}" + (f" {own_row.public_ipv6}"
                                                                   if own_row.public_ipv6 else ""),
                      f"backend:     {own_backend_line(own_row)}",
                      f"flannel:     {'yes' if own_row.managed else 'no'}  condition: {own_row.condition or '-'}"]
        else:
            lines.append("own node:    not found")
        env6 = f" {se['FLANNEL_IPV6_SUBNET']}" if se and se.get("FLANNEL_IPV6_SUBNET") else ""
        lines.append(f"subnet.env:  {se.get('FLANNEL_SUBNET', '-') + env6 if se else se_err}")
        if net_check:
            lines.append(f"net-conf:    {net_check.detail}")
        klines, ktable = _kernel_lines(kr)
        lines += klines
        lines += ["", f"peers ({len(peers)}):", render_table(peers).rstrip()]
        if ktable:
            lines += ["", ktable.rstrip()]
        emit("\n".join(lines))
    return 0 if own_row and own_row.managed else 1


def _backend_check(row: NodeRow, rows: list[NodeRow], net: NetworkConfig | None) -> Check:
    """Our Node publishes the net-conf's backend with data that decodes for it, and every flannel Node agrees."""
    want = net.backend_type if net is not None else row.backend
    problems = []
    if row.managed and row.backend != want:
        problems.append(f"node {row.name!r} publishes backend-type {row.backend or '(none)'}, net-conf.json says "
                        f"{want}")
    others = sorted(f"{r.name} ({r.backend or 'none'})" for r in rows if r.managed and r.backend != want)
    if others:
        problems.append(f"flannel Nodes with another backend-type: {', '.join(others)} (they cannot reach "
                        "each other)")
    if row.data_error:
        problems.append(row.data_error)
    elif row.managed and want == "vxlan" and not row.vtep_mac:
        problems.append("backend-data has no VtepMAC")
    elif row.managed and want == wgcore.BACKEND_TYPE and not row.public_key:
        problems.append("backend-data has no PublicKey")
    if problems:
        return Check("backend", "fail", "; ".join(problems),
                     "every node must run the Backend of net-conf.json: fix the ConfigMap, then restart the "
                     "kube-flannel pods")
    n = sum(1 for r in rows if r.managed)
    return Check("backend", "ok", f"{own_backend_line(row) if row.managed else want}; {n} flannel node(s) agree")


def _v6_checks(row: NodeRow, rows: list[NodeRow], net: NetworkConfig) -> list[Check]:
    """EnableIPv6: our second podCIDR inside IPv6Network, our public-ipv6, and peers that can be v6 leases."""
    hint = ("kube-controller-manager needs a dual-stack --cluster-cidr=<v4>,<v6> (kubeadm: "
            f"--pod-network-cidr=<v4>,{net.ipv6_network})")
    out = []
    if not row.subnet6:
        out.append(Check("pod cidr v6", "fail", f"node {row.name!r} has no IPv6 entry in spec.podCIDRs "
                         f"(EnableIPv6 is set in net-conf.json)", hint))
    else:
        try:
            k.check_in_network6(net, IPv6Network(row.subnet6), row.name)
            out.append(Check("pod cidr v6", "ok", row.subnet6))
        except k.KubeNodeError as e:
            out.append(Check("pod cidr v6", "fail", str(e), "make --cluster-cidr and net-conf.json's IPv6Network "
                             "agree"))
    bad = sorted(r.name for r in rows if r.managed and r.name != row.name and not (r.subnet6 and r.public_ipv6))
    if bad:
        out.append(Check("peers v6", "fail", f"flannel Nodes without an IPv6 podCIDR or public-ipv6: {', '.join(bad)}"
                         " (flannel ignores them: no route to them at all)", hint))
    return out


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
    net, net_check = _net_conf(opts)
    if net_check is not None:
        checks.append(net_check)
    if not row.subnet:
        checks.append(Check("pod cidr", "fail", row.error or k.pod_cidr_not_assigned(row.name),
                            k.POD_CIDR_HINT.format(network=net.network if net else "<Network>")))
    else:
        detail, cidr_level = row.subnet, "ok"
        if net is not None:
            try:
                if ":" in row.subnet:
                    k.check_in_network6(net, IPv6Network(row.subnet), row.name)
                else:
                    k.check_in_network(net, IPv4Network(row.subnet), row.name)
            except k.KubeNodeError as e:
                detail, cidr_level = str(e), "fail"
        checks.append(Check("pod cidr", "fail" if cidr_level == "fail" else "ok", detail,
                            "make --cluster-cidr and net-conf.json's Network agree"))
    v6 = net is not None and net.enable_ipv6
    dual = v6 and net is not None and net.enable_ipv4  # the second-family checks; IPv6-only has one family
    if dual and net is not None:
        checks += _v6_checks(row, data["nodes"], net)
    checks.append(_backend_check(row, data["nodes"], net))
    ann_ok = row.managed and row.public_ip and (row.public_ipv6 or not v6)
    checks.append(Check("annotations", "ok" if ann_ok else "fail",
                        f"kube-subnet-manager={'true' if row.managed else 'missing'} public-ip={row.public_ip or '-'}"
                        + (f" public-ipv6={row.public_ipv6 or '-'}" if v6 else ""),
                        "is flanneld running on this node? (kubectl -n kube-flannel logs)"))
    checks.append(Check("network condition", "ok" if row.condition == "False/FlannelIsUp" else "warn",
                        row.condition or "not set", "set by flanneld after start (--set-node-network-unavailable)"))
    se, se_err = _subnet_env(opts.subnet_file)
    if se is None:
        checks.append(Check("subnet.env", "warn", se_err, "written by flanneld once it holds its lease"))
    else:
        try:
            sn4, sn6 = previous_subnets(se)
        except SubnetEnvError as e:
            sn4 = sn6 = None
            se_err = str(e)
        v6_row = ":" in row.subnet  # an IPv6-only node: its one subnet is the IPv6 one
        got = sn6 if v6_row else sn4
        key = "FLANNEL_IPV6_SUBNET" if v6_row else "FLANNEL_SUBNET"
        same = bool(row.subnet) and got is not None and str(got) == row.subnet
        detail = se_err or f"{key}={se.get(key)}"
        if dual:
            same = same and bool(row.subnet6) and sn6 is not None and str(sn6) == row.subnet6
            detail += f" FLANNEL_IPV6_SUBNET={se.get('FLANNEL_IPV6_SUBNET') or '-'}"
        want = row.subnet + (f" and {row.subnet6 or '(no IPv6 podCIDR)'}" if dual else "")
        checks.append(Check("subnet.env", "ok" if same else "fail", detail,
                            f"should be inside the podCIDR {want}; restart flanneld"))
    # What the backend needs on this node's kernel: etcd mode's checks on the same facts.
    facts = await read_facts(opts, data, net)
    checks += [c(facts, opts) for c in etcd_doctor.checks_for(facts) if c not in NOT_IN_KUBE]
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
