"""Implementations of the ports, looked up by name (as flannel's ``backend.Register`` does).

The daemon asks this module for "the etcd subnet manager", "the vxlan backend", "the
iptables firewall"; it never imports an implementation itself. Each entry is imported only
when chosen, so a node in etcd mode never loads the Kubernetes client, and the CNI plugin
loads none of this.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from pyflannel.core.config import NetworkConfig
from pyflannel.core.errors import ConfigError
from pyflannel.core.flags import Options
from pyflannel.ports import Backend, Dataplane, Firewall, SubnetManager

# name -> "module:attribute" of a factory
SUBNET_MANAGERS = {
    "etcd": "pyflannel.adapters.etcd_subnet:EtcdSubnetManager",
    "kube": "pyflannel.adapters.kube_subnet:KubeSubnetManager",
}
BACKENDS = {
    "vxlan": "pyflannel.adapters.vxlan_backend:make",
    "host-gw": "pyflannel.adapters.hostgw_backend:HostGwBackend",
    "wireguard": "pyflannel.adapters.wireguard_backend:WireguardBackend",
}
FIREWALLS = {
    "iptables": "pyflannel.adapters.iptables:IptablesFirewall",
    "nftables": "pyflannel.adapters.nftables:NftablesFirewall",
}
# Backends flannel has that pyflannel deliberately does not implement, with what to use instead.
NOT_SUPPORTED = {
    "udp": "the udp backend is debug-only in flannel and not supported by pyflannel; use vxlan (or "
           "host-gw on a flat L2, wireguard for encryption)",
    "ipip": "the ipip backend is not supported by pyflannel; use vxlan, or host-gw on a flat L2",
    "alloc": "the alloc backend is not supported by pyflannel; use vxlan or host-gw",
}


def _load(table: dict[str, str], name: str, what: str) -> Callable[..., Any]:
    try:
        target = table[name]
    except KeyError:
        raise ConfigError(f"unknown {what}: {name} (known: {', '.join(sorted(table))})") from None
    module, attr = target.split(":")
    try:
        factory: Callable[..., Any] = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{what} {name} is not available in this build: {e}") from None
    return factory


def subnet_manager(opts: Options) -> SubnetManager:
    name = "kube" if opts.kube_subnet_mgr else "etcd"
    sm: SubnetManager = _load(SUBNET_MANAGERS, name, "subnet manager")(opts)
    return sm


class Host:
    """The host's kernel, shared by the data plane and the backends (one netlink thread)."""

    def __init__(self) -> None:
        from pyflannel.adapters.netlink import NetlinkThread
        from pyflannel.adapters.rtnl_dataplane import RtnlDataplane

        self.nl = NetlinkThread()
        self.dataplane: Dataplane = RtnlDataplane(self.nl)


def check_backend(config: NetworkConfig) -> None:
    """Raise ConfigError (flannel's message) for a Backend a node could not run: unknown, refused, bad options."""
    btype = config.backend_type
    if btype in NOT_SUPPORTED:
        raise ConfigError(NOT_SUPPORTED[btype])
    if btype not in BACKENDS:
        raise ConfigError(f"unknown backend type: {btype}")
    module = importlib.import_module(f"pyflannel.core.backends.{btype.replace('-', '')}")
    parse = getattr(module, "parse_options", None)
    if parse is not None:
        parse(config.backend)


def backend(config: NetworkConfig, host: Host, sm: SubnetManager) -> Backend:
    btype = config.backend_type
    if btype in NOT_SUPPORTED:
        raise ConfigError(NOT_SUPPORTED[btype])
    factory = _load(BACKENDS, btype, "backend type")
    stored = getattr(sm, "stored_backend_data", None)
    data = stored() if callable(stored) else None
    kw: dict[str, Any] = {}
    if isinstance(data, tuple):  # kube mode: (backend-data, backend-v6-data)
        data, data6 = data
        if btype == "vxlan":  # flannel-v6.<VNI> keeps its VtepMAC from backend-v6-data too
            kw["stored_backend_v6_data"] = data6
    be: Backend = factory(host=host, config=config, stored_backend_data=data, **kw)
    if btype == "wireguard":
        from pyflannel.core.model import WgPeer

        # WireGuard peers are not rtnetlink objects: the backend applies and observes them itself,
        # and a replaced key file means a new PublicKey to publish.
        host.dataplane.register(WgPeer, be.apply_peers, be.observe_peers)  # type: ignore[attr-defined]
        be.on_key_change = sm.republish  # type: ignore[attr-defined]
    return be


def firewall(name: str) -> Firewall:
    fw: Firewall = _load(FIREWALLS, name, "firewall mode")()
    return fw
