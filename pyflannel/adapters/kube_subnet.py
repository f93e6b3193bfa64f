"""The Kubernetes SubnetManager (``--kube-subnet-mgr``): leases from Node objects, as flannel v0.28.9.

Why it exists: nearly every flannel user runs it as the kube-flannel DaemonSet, where there is no
etcd of flannel's own. Our subnet is our Node's ``spec.podCIDR`` (kube-controller-manager assigns
it); what peers need (PublicIP, backend type and data) goes into annotations on our Node, and the
peers' leases are read from theirs with one list+watch of all Nodes.

Where it is better than flannel (docs/kubernetes.md):

* a podCIDR not assigned yet is waited for (one log line saying what assigns it) instead of
  exiting 1 and crash-looping;
* an API server outage removes nothing: the last known leases stay, retries back off with
  jitter (one WARNING, one INFO), and the nodes are listed again when it is back; "410 Gone"
  relists too, and both are delivered as one LeaseResync;
* ``in_sync`` (for /readyz) is true only while the list+watch is live.

The pure decisions (annotation names, what to patch, Node -> Lease) are in ``pyflannel.core.kube``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from pyflannel.adapters.kube import (
    SA_DIR,
    KubeClient,
    KubeConfig,
    KubeError,
    KubeGone,
    resolve_config,
)
from pyflannel.core import kube as k
from pyflannel.core.backoff import Backoff, BackoffPolicy, OutageLog
from pyflannel.core.config import NetworkConfig
from pyflannel.core.errors import ConfigError, FlannelError, LeaseFormatError
from pyflannel.core.lease import Lease, LeaseAttrs
from pyflannel.ports import (
    BadLeaseSeen,
    LeaseAdded,
    LeaseEvent,
    LeaseRemoved,
    LeaseResync,
    PreviousSubnets,
)

log = logging.getLogger(__name__)

WATCH_TIMEOUT_S = 300  # the server ends each watch after this (client-go: 5-10 min); we re-watch from our version
RECHECK_S = 300.0  # keep_lease re-checks our annotations this often (flannel's informer resync period)


def _slim(node: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a Node the lease depends on (a 1000-node cluster's full objects are megabytes)."""
    spec = node.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    return {
        "metadata": {"name": k.node_name(node), "annotations": k.node_annotations(node)},
        "spec": {"podCIDR": spec.get("podCIDR"), "podCIDRs": spec.get("podCIDRs")},
    }


class KubeSubnetManager:
    """ports.SubnetManager for Kubernetes. Construct it with the flags (see :meth:`from_options`)."""

    name = "kube"

    def __init__(
        self,
        opts: Any = None,
        *,
        api_url: str = "",
        kubeconfig: str = "",
        annotation_prefix: str = k.DEFAULT_PREFIX,
        net_config_path: str = "/etc/kube-flannel/net-conf.json",
        set_node_network_unavailable: bool = True,
        env: Mapping[str, str] | None = None,
        config: KubeConfig | None = None,
        watch_timeout: int = WATCH_TIMEOUT_S,
        rng: random.Random | None = None,
        sa_dir: str = SA_DIR,
    ) -> None:
        if opts is not None:  # flanneld's Options (the catalog constructs managers as Class(opts))
            api_url, kubeconfig = opts.kube_api_url, opts.kubeconfig_file
            annotation_prefix, net_config_path = opts.kube_annotation_prefix, opts.net_config_path
            set_node_network_unavailable = opts.set_node_network_unavailable
        self.env = dict(os.environ if env is None else env)
        self.ann = k.Annotations.for_prefix(annotation_prefix)
        self.net_config_path = net_config_path
        self.set_node_network_unavailable = set_node_network_unavailable
        self.watch_timeout = watch_timeout
        self.kube_config = config or (
            resolve_config(api_url, kubeconfig, self.env) if (api_url or kubeconfig) else
            _in_cluster(self.env, sa_dir)
        )
        self.client = KubeClient(self.kube_config)
        self.node_name = ""
        self.config: NetworkConfig | None = None
        self.relists = 0  # how many times the Nodes were listed (1 + relists after 410 or an outage)
        self._rng = rng or random.Random()
        self._own: dict[str, Any] | None = None  # our Node as last read
        self._lease: Lease | None = None
        self._condition_set = False
        self._republish = asyncio.Event()
        self._in_sync = False
        self._nodes: dict[str, dict[str, Any]] = {}
        self._keys: dict[str, str] = {}

    @classmethod
    def from_options(cls, opts: Any, env: Mapping[str, str] | None = None) -> KubeSubnetManager:
        """From flanneld's Options: kube_api_url, kubeconfig_file, kube_annotation_prefix, net_config_path,
        set_node_network_unavailable."""
        return cls(opts, env=env)

    # --- config and node name ----------------------------------------------------------------

    async def get_network_config(self) -> NetworkConfig:
        try:
            with open(self.net_config_path, "rb") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"failed to read net conf {self.net_config_path!r}: {e.strerror or e}") from None
        self.config = k.parse_net_conf(text, self.net_config_path)
        if not self.node_name:
            self.node_name = await self._resolve_node_name()
            log.info("Kubernetes subnet manager for node %r (%s, %s)", self.node_name, self.kube_config.source,
                     self.kube_config.server)
        if self._own is None:
            self._own = await self._get_own()
        return self.config

    async def _resolve_node_name(self) -> str:
        name = self.env.get("NODE_NAME", "")
        if name:
            return name
        pod, ns = self.env.get("POD_NAME", ""), self.env.get("POD_NAMESPACE", "")
        if not pod or not ns:
            raise ConfigError("env variables POD_NAME and POD_NAMESPACE must be set")
        try:
            obj = await self.client.get_pod(ns, pod)
        except KubeError as e:
            raise KubeError(f"error retrieving pod spec for '{ns}/{pod}': {e}", e.status) from None
        spec = obj.get("spec")
        node = spec.get("nodeName") if isinstance(spec, dict) else None
        if not isinstance(node, str) or not node:
            raise ConfigError(f"node name not present in pod spec '{ns}/{pod}'")
        return node

    async def _get_own(self) -> dict[str, Any] | None:
        try:
            return await self.client.get_node(self.node_name)
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    # --- what the backend reuses from our previous run ------------------------------------------

    def stored_backend_data(self) -> tuple[str | None, str | None]:
        """Our Node's backend-data and backend-v6-data annotations as found at start (after
        get_network_config), e.g. to keep the VtepMAC across restarts."""
        a = k.node_annotations(self._own or {})
        d4 = next((a[key] for key in self.ann.stored_backend_data_keys() if key in a), None)
        d6 = next((a[key] for key in self.ann.stored_backend_data_keys(True) if key in a), None)
        return d4, d6

    def stored_vtep_macs(self) -> tuple[str, str]:
        """flannel's GetStoredMacAddresses: the v4 and v6 VtepMAC of our previous run, "" when none."""
        a = k.node_annotations(self._own or {})
        return k.stored_vtep_mac(a, self.ann), k.stored_vtep_mac(a, self.ann, v6=True)

    def stored_public_ips(self) -> tuple[str, str]:
        """flannel's GetStoredPublicIP: the ``node-public-ip(v6)`` annotations (act as --public-ip(v6))."""
        a = k.node_annotations(self._own or {})
        return a.get(self.ann.node_public_ip, ""), a.get(self.ann.node_public_ipv6, "")

    # --- our lease ---------------------------------------------------------------------------

    async def acquire_lease(self, attrs: LeaseAttrs, previous: PreviousSubnets) -> Lease:
        if self.config is None:
            await self.get_network_config()
        assert self.config is not None
        node = await self._wait_for_pod_cidr()
        v4, v6 = k.pod_cidrs(node)
        if self.config.ipv6_only:  # EnableIPv4=false: only the IPv6 podCIDR counts, as in flannel
            if v6 is None:
                raise k.KubeNodeError(f"node {self.node_name!r}: no IPv6 podCIDR (only {v4}), and the network is "
                                      "IPv6-only (EnableIPv4=false)")
            v4 = None
        elif v4 is None:
            raise k.KubeNodeError(f"node {self.node_name!r}: no IPv4 podCIDR (only {v6}), and the network has IPv4 "
                                  "(EnableIPv4=true)")
        else:
            k.check_in_network(self.config, v4, self.node_name)
        if self.config.enable_ipv6 and v6 is not None:
            k.check_in_network6(self.config, v6, self.node_name)
        if not self.config.ipv6_only:
            attrs = self._with_node_public_ip(attrs, node)
        current = k.node_annotations(node)
        plan = k.plan_publish(current, attrs, self.ann)
        for note in plan.notes:
            log.info("%s", note)
        patch = plan.patch()
        if patch is not None:
            self._own = await self.client.patch_node_status(self.node_name, patch)
            log.info("Published on node %r: %s", self.node_name,
                     ", ".join(f"{name.removeprefix(self.ann.prefix)}={value}" for name, value in plan.changes))
        else:
            self._own = node
        if self.set_node_network_unavailable and not self._condition_set:
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            await self.client.patch_node_status(self.node_name, k.network_unavailable_patch(now))
            self._condition_set = True
            log.info("Node %r: condition NetworkUnavailable=False (FlannelIsUp)", self.node_name)
        lease = Lease(subnet=v4, attrs=attrs, subnet6=v6 if self.config.enable_ipv6 else None)
        if lease != self._lease:
            log.info("Lease: subnet %s%s from node %r", lease.name,
                     f" and {v6}" if lease.subnet is not None and lease.subnet6 else "", self.node_name)
        self._lease = lease
        return lease

    def _with_node_public_ip(self, attrs: LeaseAttrs, node: Mapping[str, Any]) -> LeaseAttrs:
        from dataclasses import replace
        from ipaddress import IPv4Address

        want = k.node_annotations(node).get(self.ann.node_public_ip, "")
        if not want:
            return attrs
        try:
            ip = IPv4Address(want)
        except ValueError:
            log.warning("Node %r: ignoring %s=%r: not an IPv4 address", self.node_name, self.ann.node_public_ip, want)
            return attrs
        if ip != attrs.public_ip:
            log.info("Public IP %s from node annotation '%s'", ip, self.ann.node_public_ip)
        return replace(attrs, public_ip=ip)

    async def _wait_for_pod_cidr(self) -> dict[str, Any]:
        """Our Node once it exists and has a podCIDR; waits (watching it) while not, with one log line."""
        assert self.config is not None
        waiting_since: float | None = None
        backoff = Backoff(BackoffPolicy(base=0.5, cap=10.0), self._rng)
        outage = OutageLog(log, f"Kubernetes API ({self.kube_config.server})", time.monotonic)
        selector = f"metadata.name={self.node_name}"
        while True:
            try:
                node = await self._get_own()
                outage.success()
                backoff.reset()
                if node is not None and any(k.pod_cidrs(node)):
                    if waiting_since is not None:
                        log.info("Node %r: pod cidr %s assigned after %.1fs", self.node_name,
                                 k.pod_cidrs(node)[0], time.monotonic() - waiting_since)
                    return node
                if waiting_since is None:
                    waiting_since = time.monotonic()
                    what = (f"node {self.node_name!r} not found (not registered yet)" if node is None
                            else k.pod_cidr_not_assigned(self.node_name))
                    log.warning("%s: waiting for it; %s", what, k.POD_CIDR_HINT.format(network=self.config.network))
                rv = k.resource_version(node) if node is not None else ""
                async for ev in self.client.watch_nodes(rv, timeout_seconds=60, field_selector=selector):
                    if ev.type in ("ADDED", "MODIFIED") and any(k.pod_cidrs(ev.object)):
                        break
            except KubeGone:
                continue
            except KubeError as e:
                delay = backoff.next_delay()
                outage.failure(e, delay)
                await asyncio.sleep(delay)

    async def keep_lease(self, attrs: Callable[[], LeaseAttrs], on_change: Callable[[Lease], None]) -> None:
        """No TTL in kube mode: re-publish when asked (republish()), when our annotations were changed by
        someone else, and every RECHECK_S. Runs until cancelled."""
        backoff = Backoff(BackoffPolicy(base=1.0, cap=30.0), self._rng)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._republish.wait(), RECHECK_S)
            self._republish.clear()
            before = self._lease
            try:
                lease = await self.acquire_lease(attrs(), PreviousSubnets())
            except FlannelError as e:
                delay = backoff.next_delay()
                log.warning("Re-publishing our lease on node %r failed: %s (retrying in %.1fs)", self.node_name, e,
                            delay)
                await asyncio.sleep(delay)
                self._republish.set()
                continue
            backoff.reset()
            if lease != before:
                on_change(lease)

    def republish(self) -> None:
        self._republish.set()

    # --- peers -------------------------------------------------------------------------------

    @property
    def in_sync(self) -> bool:
        return self._in_sync

    def _enable_ipv6(self) -> bool:
        return bool(self.config and self.config.enable_ipv6)

    def _enable_ipv4(self) -> bool:
        return self.config is None or self.config.enable_ipv4

    def _resync(self, items: list[dict[str, Any]]) -> list[LeaseEvent]:
        self._nodes, self._keys = {}, {}
        leases: list[Lease] = []
        bad: list[LeaseEvent] = []
        for item in items:
            slim = _slim(item)
            name = k.node_name(slim)
            self._nodes[name] = slim
            if not k.is_managed(slim, self.ann):
                continue
            try:
                lease = k.node_to_lease(slim, self.ann, self._enable_ipv6(), self._enable_ipv4())
            except (LeaseFormatError, k.KubeNodeError) as e:
                bad.append(BadLeaseSeen(f"node/{name}", str(e)))
                continue
            self._keys[name] = lease.key_name
            leases.append(lease)
        return [LeaseResync(tuple(leases)), *bad]

    def _apply(self, typ: str, obj: dict[str, Any]) -> list[LeaseEvent]:
        name = k.node_name(obj)
        if typ == "DELETED":
            self._nodes.pop(name, None)
            key = self._keys.pop(name, None)
            return [LeaseRemoved(key)] if key else []
        if typ not in ("ADDED", "MODIFIED"):
            return []
        slim = _slim(obj)
        old = self._nodes.get(name)
        self._nodes[name] = slim
        if name == self.node_name and self._lease is not None and old is not None and \
                k.lease_changed(old, slim, self.ann, self._enable_ipv6()):
            self._republish.set()  # someone changed our annotations: put ours back (patched only if they differ)
        if not k.is_managed(slim, self.ann):
            key = self._keys.pop(name, None)
            return [LeaseRemoved(key)] if key else []
        if old is not None and name in self._keys and not k.lease_changed(old, slim, self.ann, self._enable_ipv6()):
            return []
        out: list[LeaseEvent] = []
        old_key = self._keys.get(name)
        try:
            lease = k.node_to_lease(slim, self.ann, self._enable_ipv6(), self._enable_ipv4())
        except (LeaseFormatError, k.KubeNodeError) as e:
            if old_key:
                out.append(LeaseRemoved(self._keys.pop(name)))
            return [*out, BadLeaseSeen(f"node/{name}", str(e))]
        if old_key and old_key != lease.key_name:
            out.append(LeaseRemoved(old_key))
        self._keys[name] = lease.key_name
        out.append(LeaseAdded(lease.key_name, lease))
        return out

    async def lease_events(self) -> AsyncIterator[list[LeaseEvent]]:
        """One list+watch of all Nodes. The list is a LeaseResync; watch events follow from its version;
        a watch the server ended is resumed from the last version seen (bookmarks keep it fresh); 410
        Gone and any failure lead to a new list (after a jittered backoff for failures)."""
        backoff = Backoff(BackoffPolicy(base=0.5, cap=30.0), self._rng)
        outage = OutageLog(log, f"Kubernetes node watch ({self.kube_config.server})", time.monotonic)
        rv = ""
        need_list = True
        while True:
            try:
                if need_list:
                    items, rv = await self.client.list_nodes()
                    self.relists += 1
                    need_list = False
                    outage.success()
                    backoff.reset()
                    self._in_sync = True
                    batch = self._resync(items)
                    log.info("Listed %d nodes (%d with flannel) at resourceVersion %s", len(items),
                             len(self._keys), rv)
                    yield batch
                async for ev in self.client.watch_nodes(rv, timeout_seconds=self.watch_timeout):
                    rv = k.resource_version(ev.object) or rv
                    if ev.type == "BOOKMARK":
                        continue
                    batch = self._apply(ev.type, ev.object)
                    if batch:
                        yield batch
            except KubeGone as e:
                log.info("Node watch from resourceVersion %s: 410 Gone (%s); listing the nodes again", rv, e)
                need_list = True
            except KubeError as e:
                self._in_sync = False
                need_list = True
                delay = backoff.next_delay()
                outage.failure(e, delay)
                await asyncio.sleep(delay)

    async def close(self) -> None:
        await self.client.close()


def _in_cluster(env: Mapping[str, str], sa_dir: str) -> KubeConfig:
    from pyflannel.adapters.kube import in_cluster_config

    return in_cluster_config(env, sa_dir)
