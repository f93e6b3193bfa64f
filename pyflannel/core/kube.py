"""Kubernetes mode, the pure part: Node objects in, leases and annotation patches out.

In kube mode (``--kube-subnet-mgr``) there is no etcd of flannel's own: a node's subnet is its
``spec.podCIDR`` (assigned by kube-controller-manager) and what peers need to know about it
(PublicIP, backend type and data) is published as annotations on the Node. Everything here is
decided from plain JSON (the Node as the API server returns it) so that it can be tested without
a server; ``pyflannel.adapters.kube_subnet`` does the talking. Names, the prefix rules and the
messages are those of flannel v0.28.9, so a Go node and ours read each other's Nodes
(docs/kubernetes.md has the details).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Any, TypeVar

from pyflannel.core.config import NetworkConfig, parse_config
from pyflannel.core.errors import ConfigError, FlagError, FlannelError, LeaseFormatError, shorten
from pyflannel.core.lease import Lease, LeaseAttrs, _compact, loads_strict

DEFAULT_PREFIX = "flannel.alpha.coreos.com"
MANAGED = "true"

# flannel's condition on its own Node once it is up (node condition NetworkUnavailable).
CONDITION_TYPE = "NetworkUnavailable"
CONDITION_REASON = "FlannelIsUp"
CONDITION_MESSAGE = "Flannel is running on this node"

# What assigns podCIDRs, for the one log line while ours is missing.
POD_CIDR_HINT = (
    "kube-controller-manager must run with --allocate-node-cidrs=true and --cluster-cidr={network} "
    "(kubeadm: kubeadm init --pod-network-cidr={network}), or spec.podCIDR must be set by hand"
)

_PREFIX_RE = re.compile(r"(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?\Z")


class KubeNodeError(FlannelError, ValueError):
    """A Node object cannot be used as a lease (no podCIDR, too many podCIDRs, outside the Network)."""


def normalize_prefix(prefix: str) -> str:
    """The annotation prefix as flannel uses it: ``fqdn/`` or ``fqdn/name-``.

    No ``/`` gets one appended; a prefix not ending in ``/`` or ``-`` gets a ``-``. Raises FlagError
    naming the prefix when the result is not a valid annotation prefix.
    """
    if prefix.count("/") > 1:
        raise FlagError(
            f"-kube-annotation-prefix {shorten(prefix)}: subnet/kube: prefix can contain at most single slash"
        )
    if "/" not in prefix:
        prefix += "/"
    if not prefix.endswith(("/", "-")):
        prefix += "-"
    if not _PREFIX_RE.match(prefix):
        raise FlagError(
            f"-kube-annotation-prefix {shorten(prefix)}: subnet/kube: prefix must be in a format: fqdn/[0-9a-z-_]*"
        )
    return prefix


@dataclass(frozen=True, slots=True)
class Annotations:
    """The full annotation names for one prefix (flannel's ``annotations`` struct)."""

    raw_prefix: str
    prefix: str

    @classmethod
    def for_prefix(cls, raw_prefix: str = DEFAULT_PREFIX) -> Annotations:
        return cls(raw_prefix=raw_prefix, prefix=normalize_prefix(raw_prefix))

    @property
    def subnet_kube_managed(self) -> str:
        return self.prefix + "kube-subnet-manager"

    @property
    def backend_data(self) -> str:
        return self.prefix + "backend-data"

    @property
    def backend_v6_data(self) -> str:
        return self.prefix + "backend-v6-data"

    @property
    def backend_type(self) -> str:
        return self.prefix + "backend-type"

    @property
    def public_ip(self) -> str:
        return self.prefix + "public-ip"

    @property
    def public_ipv6(self) -> str:
        return self.prefix + "public-ipv6"

    @property
    def node_public_ip(self) -> str:
        return self.prefix + "node-public-ip"

    @property
    def node_public_ipv6(self) -> str:
        return self.prefix + "node-public-ipv6"

    @property
    def public_ip_overwrite(self) -> str:
        return self.prefix + "public-ip-overwrite"

    @property
    def public_ipv6_overwrite(self) -> str:
        return self.prefix + "public-ipv6-overwrite"

    def stored_backend_data_keys(self, v6: bool = False) -> tuple[str, ...]:
        """Where our previous backend data may be: the normalised name, then flannel's lookup name.

        flannel looks its stored VtepMAC up under the raw prefix plus ``/backend-data``, which is the
        name it writes only for a prefix without a slash; both are tried so that neither side's
        restart changes the MAC.
        """
        name = "backend-v6-data" if v6 else "backend-data"
        keys = [self.prefix + name, f"{self.raw_prefix}/{name}"]
        return tuple(dict.fromkeys(keys))


# --- reading Nodes -----------------------------------------------------------------------------


def node_name(node: Mapping[str, Any]) -> str:
    meta = node.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    return name if isinstance(name, str) else ""


def node_annotations(node: Mapping[str, Any]) -> dict[str, str]:
    meta = node.get("metadata")
    ann = meta.get("annotations") if isinstance(meta, Mapping) else None
    if not isinstance(ann, Mapping):
        return {}
    return {k: v for k, v in ann.items() if isinstance(k, str) and isinstance(v, str)}


def resource_version(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    return rv if isinstance(rv, str) else ""


def is_managed(node: Mapping[str, Any], ann: Annotations) -> bool:
    """Whether flannel (Go or ours) runs on this node: ``kube-subnet-manager`` is ``"true"``."""
    return node_annotations(node).get(ann.subnet_kube_managed) == MANAGED


def pod_cidrs(node: Mapping[str, Any]) -> tuple[IPv4Network | None, IPv6Network | None]:
    """The node's pod CIDRs: the first IPv4 and the first IPv6 entry of ``spec.podCIDRs``, else ``spec.podCIDR``.

    Raises KubeNodeError with flannel's message for more than two entries, and naming the value for
    one that is not a CIDR.
    """
    name = node_name(node)
    spec = node.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    many = spec.get("podCIDRs")
    texts: list[Any]
    if isinstance(many, list) and many:
        if len(many) > 2:
            raise KubeNodeError(f"node {_q(name)} pod cidrs should be IPv4/IPv6 only or dualstack")
        texts = many
    else:
        one = spec.get("podCIDR")
        texts = [one] if one else []
    v4: IPv4Network | None = None
    v6: IPv6Network | None = None
    for text in texts:
        try:
            net = ip_network(text, strict=False) if isinstance(text, str) else None
        except ValueError:
            net = None
        if net is None:
            raise KubeNodeError(f"node {_q(name)}: invalid podCIDR {shorten(text)}")
        if isinstance(net, IPv4Network):
            v4 = v4 or net
        else:
            v6 = v6 or net
    return v4, v6


def pod_cidr_not_assigned(name: str) -> str:
    return f"node {_q(name)} pod cidr not assigned"


def check_in_network(config: NetworkConfig, cidr: IPv4Network, name: str) -> None:
    """flannel's check that our podCIDR lies inside the net-conf Network."""
    net = config.network
    if net is None or not cidr.subnet_of(net):
        raise KubeNodeError(
            f"subnet {_q(str(net) if net else '0.0.0.0/0')} specified in the flannel net config doesn't contain "
            f"{_q(str(cidr))} PodCIDR of the {_q(name)} node"
        )


def check_in_network6(config: NetworkConfig, cidr: IPv6Network, name: str) -> None:
    net = config.ipv6_network
    if net is None or not cidr.subnet_of(net):
        raise KubeNodeError(
            f"subnet {_q(str(net) if net else '::/0')} specified in the flannel net config doesn't contain "
            f"{_q(str(cidr))} IPv6 PodCIDR of the {_q(name)} node"
        )


def _json_annotation(text: str | None, what: str, name: str) -> str | None:
    """An annotation holding JSON, compacted as the etcd leases keep it; ``None`` when absent or ``null``."""
    if text is None or text == "":
        return None
    try:
        value = loads_strict(text)
    except ValueError:
        raise LeaseFormatError(f"node {_q(name)}: {what} is not JSON: {shorten(text)}") from None
    return None if value is None else _compact(value)


_Ip = TypeVar("_Ip", IPv4Address, IPv6Address)


def _annotated_ip(a: Mapping[str, str], key: str, kind: Callable[[str], _Ip], name: str) -> _Ip:
    text = a.get(key, "")
    try:
        return kind(text)
    except ValueError:
        raise LeaseFormatError(f"node {_q(name)}: bad {key} annotation {shorten(text)}") from None


def node_to_lease(node: Mapping[str, Any], ann: Annotations, enable_ipv6: bool = False,
                  enable_ipv4: bool = True) -> Lease:
    """A peer's lease from its Node (flannel's nodeToLease). Raises LeaseFormatError or KubeNodeError.

    Kube leases have no TTL: no expiration (and they are not reservations). With ``enable_ipv4`` false
    (an IPv6-only network) the IPv4 annotations and podCIDR are not read, as flannel does not read them:
    the lease has PublicIP 0.0.0.0 and only the IPv6 subnet.
    """
    name = node_name(node)
    a = node_annotations(node)
    v4, v6 = pod_cidrs(node)
    public_ip = IPv4Address(0)
    if enable_ipv4:
        public_ip = _annotated_ip(a, ann.public_ip, IPv4Address, name)
        if v4 is None:
            raise KubeNodeError(f"node {_q(name)}: missing IPv4 address on n.Spec.PodCIDRs")
    else:
        v4 = None
    public_ipv6: IPv6Address | None = None
    data6: str | None = None
    subnet6: IPv6Network | None = None
    if enable_ipv6:
        public_ipv6 = _annotated_ip(a, ann.public_ipv6, IPv6Address, name)
        if v6 is None:
            raise KubeNodeError(f"node {_q(name)}: missing IPv6 address on n.Spec.PodCIDRs")
        subnet6 = v6
        data6 = _json_annotation(a.get(ann.backend_v6_data), ann.backend_v6_data, name)
    attrs = LeaseAttrs(
        public_ip=public_ip,
        public_ipv6=public_ipv6,
        backend_type=a.get(ann.backend_type, ""),
        backend_data=_json_annotation(a.get(ann.backend_data), ann.backend_data, name) if enable_ipv4 else None,
        backend_v6_data=data6,
    )
    return Lease(subnet=v4, attrs=attrs, subnet6=subnet6)


def lease_changed(old: Mapping[str, Any], new: Mapping[str, Any], ann: Annotations, enable_ipv6: bool = False) -> bool:
    """Whether a Node update is a lease change: backend-type, backend-data, public-ip (and the v6 forms).

    Unlike flannel, a change of the IPv4 annotations counts on a dual-stack node even when the v6 ones
    stayed the same. A podCIDR appearing counts too (flannel would see it only with the annotations).
    """
    keys = [ann.subnet_kube_managed, ann.backend_type, ann.backend_data, ann.public_ip]
    if enable_ipv6:
        keys += [ann.backend_v6_data, ann.public_ipv6]
    a, b = node_annotations(old), node_annotations(new)
    if any(a.get(k) != b.get(k) for k in keys):
        return True
    try:
        return pod_cidrs(old) != pod_cidrs(new)
    except KubeNodeError:
        return True


def stored_vtep_mac(annotations: Mapping[str, str], ann: Annotations, v6: bool = False) -> str:
    """The VtepMAC in our own previous backend data, or "" (so a restart keeps the device's MAC)."""
    for key in ann.stored_backend_data_keys(v6):
        text = annotations.get(key)
        if not text:
            continue
        try:
            data = loads_strict(text)
        except ValueError:
            continue
        if isinstance(data, dict):
            mac = {str(k).lower(): v for k, v in data.items()}.get("vtepmac")
            if isinstance(mac, str) and mac:
                return mac
    return ""


# --- writing our Node --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publish:
    """What our Node's annotations must become: the changed ones (empty: nothing to PATCH) and notes for the log."""

    changes: tuple[tuple[str, str], ...]
    notes: tuple[str, ...] = ()

    def patch(self) -> dict[str, Any] | None:
        """The strategic-merge patch body for ``nodes/<name>/status``, or None when nothing differs."""
        if not self.changes:
            return None
        return {"metadata": {"annotations": dict(self.changes)}}


def desired_annotations(
    current: Mapping[str, str], attrs: LeaseAttrs, ann: Annotations
) -> tuple[dict[str, str], list[str]]:
    """The annotations flannel writes for ``attrs`` on a Node that has ``current`` (flannel's AcquireLease).

    backend-data is written unless it is vxlan's ``null``; public-ip is the ``public-ip-overwrite``
    annotation when set, else ``attrs.public_ip``. The v6 forms are written for a v6 PublicIP.
    """
    want: dict[str, str] = {ann.backend_type: attrs.backend_type}
    notes: list[str] = []
    bd = attrs.backend_data if attrs.backend_data is not None else "null"
    if attrs.backend_type != "vxlan" or bd != "null":
        want[ann.backend_data] = bd
        over = current.get(ann.public_ip_overwrite, "")
        if over:
            if current.get(ann.public_ip) != over:
                notes.append(f"Overriding public ip with '{over}' from node annotation '{ann.public_ip_overwrite}'")
            want[ann.public_ip] = over
        else:
            want[ann.public_ip] = str(attrs.public_ip)
    bd6 = attrs.backend_v6_data if attrs.backend_v6_data is not None else "null"
    if attrs.public_ipv6 is not None and (
        (attrs.backend_type in ("vxlan", "wireguard") and bd6 != "null")
        or attrs.backend_type in ("host-gw", "extension")
    ):
        want[ann.backend_v6_data] = bd6
        over6 = current.get(ann.public_ipv6_overwrite, "")
        if over6:
            if current.get(ann.public_ipv6) != over6:
                notes.append(
                    f"Overriding public ipv6 with '{over6}' from node annotation '{ann.public_ipv6_overwrite}'"
                )
            want[ann.public_ipv6] = over6
        else:
            want[ann.public_ipv6] = attrs.public_ipv6.compressed
    want[ann.subnet_kube_managed] = MANAGED
    return want, notes


def plan_publish(current: Mapping[str, str], attrs: LeaseAttrs, ann: Annotations) -> Publish:
    """Only the annotations that differ from ``current``; an unchanged Node is not patched."""
    want, notes = desired_annotations(current, attrs, ann)
    changes = tuple((k, v) for k, v in want.items() if current.get(k) != v)
    return Publish(changes=changes, notes=tuple(notes) if changes else ())


def network_unavailable_patch(now_rfc3339: str) -> dict[str, Any]:
    """The status patch flannel sends once it is up: NetworkUnavailable=False, reason FlannelIsUp.

    ``now_rfc3339`` is a UTC time to the second (``2006-01-02T15:04:05Z``), as Kubernetes' metav1.Time
    serialises it. The keys are in the order Go's encoder writes them.
    """
    cond = {
        "type": CONDITION_TYPE,
        "status": "False",
        "lastHeartbeatTime": now_rfc3339,
        "lastTransitionTime": now_rfc3339,
        "reason": CONDITION_REASON,
        "message": CONDITION_MESSAGE,
    }
    return {"status": {"conditions": [cond]}}


def network_condition(node: Mapping[str, Any]) -> dict[str, Any] | None:
    """The node's NetworkUnavailable condition, if any (for flannelctl and the tests)."""
    status = node.get("status")
    conds = status.get("conditions") if isinstance(status, Mapping) else None
    for c in conds if isinstance(conds, list) else []:
        if isinstance(c, dict) and c.get("type") == CONDITION_TYPE:
            return c
    return None


# --- the net-conf.json file ----------------------------------------------------------------------

_ALLOCATION_KEYS = frozenset({"subnetlen", "subnetmin", "subnetmax", "ipv6subnetlen", "ipv6subnetmin", "ipv6subnetmax"})


def parse_net_conf(text: str | bytes, path: str = "net-conf.json") -> NetworkConfig:
    """net-conf.json as kube mode reads it: the etcd config's format, without the SubnetLen allocation
    fields (the API server hands out the subnets). Raises ConfigError naming the file."""
    try:
        raw = loads_strict(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: config is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: config must be a JSON object, got {type(raw).__name__}")
    kept = {k: v for k, v in raw.items() if str(k).lower() not in _ALLOCATION_KEYS}
    try:
        return parse_config(json.dumps(kept))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _q(text: str) -> str:
    """Go's %q for the short, printable names in flannel's messages."""
    return json.dumps(text, ensure_ascii=False)
