"""flannelctl commands that only talk to etcd: ``config get|set|validate``, ``leases``,
``reserve`` and ``unreserve``.

Writes are guarded by etcd transactions on the revision that was read, so an operator's
command never overwrites a change a node made a moment earlier (a node renewing or taking
over the same key): it fails with a line saying so, and running it again is safe.

A reservation is a subnet key with no etcd lease, value ``{"PublicIP":"<ip>","PublicIPv6":null}``
(flannel's documented form; flannel issue #1329). pyflannel nodes use it as is and never
attach a TTL to it; a Go flanneld node re-puts it with a 24 h lease (the bug in that issue).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from pyflannel.adapters.etcd import EtcdClient, TLSConfig
from pyflannel.adapters.registry import BadLease, EtcdLease, SubnetRegistry
from pyflannel.core.allocate import subnet4_fits, subnet6_fits
from pyflannel.core.backends import vxlan
from pyflannel.core.backends import wireguard as wgcore
from pyflannel.core.config import NetworkConfig, check_backend_type, parse_config
from pyflannel.core.errors import ConfigError, FlannelError, LeaseFormatError
from pyflannel.core.flags import Options
from pyflannel.core.lease import Lease, LeaseAttrs

log = logging.getLogger("pyflannel.flannelctl")

TTL_CONCURRENCY = 32


class CtlError(FlannelError):
    """A flannelctl command failed; one line naming the thing and the value. Exit status 1."""


def make_client(opts: Options, timeout: float = 5.0) -> EtcdClient:
    """An etcd client from flanneld's connection flags (TLS only with a cert and key, like flanneld)."""
    tls = None
    if opts.etcd_cafile or opts.etcd_certfile:
        tls = TLSConfig(opts.etcd_cafile or None, opts.etcd_certfile or None, opts.etcd_keyfile or None)
    endpoints = [e for e in opts.etcd_endpoints.split(",") if e.strip()]
    return EtcdClient(endpoints, tls=tls, username=opts.etcd_username or None,
                      password=opts.etcd_password or None, timeout=timeout)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# --- config ------------------------------------------------------------------------------


def describe_config(cfg: NetworkConfig) -> dict[str, Any]:
    """The config with flanneld's defaults filled in, in flannel's field names."""
    out: dict[str, Any] = {"Network": str(cfg.network) if cfg.network else None, "SubnetLen": cfg.subnet_len,
                           "SubnetMin": str(cfg.subnet_min) if cfg.subnet_min else None,
                           "SubnetMax": str(cfg.subnet_max) if cfg.subnet_max else None}
    if cfg.network is not None and cfg.subnet_min is not None and cfg.subnet_max is not None:
        size = 1 << (32 - cfg.subnet_len)
        out["Subnets"] = (int(cfg.subnet_max) - int(cfg.subnet_min)) // size + 1
    out["EnableIPv4"] = cfg.enable_ipv4
    out["EnableIPv6"] = cfg.enable_ipv6
    if cfg.enable_ipv6:
        out.update({"IPv6Network": str(cfg.ipv6_network), "IPv6SubnetLen": cfg.ipv6_subnet_len,
                    "IPv6SubnetMin": str(cfg.ipv6_subnet_min), "IPv6SubnetMax": str(cfg.ipv6_subnet_max)})
        if cfg.ipv6_subnet_min is not None and cfg.ipv6_subnet_max is not None:
            size6 = 1 << (128 - cfg.ipv6_subnet_len)
            out["IPv6Subnets"] = (int(cfg.ipv6_subnet_max) - int(cfg.ipv6_subnet_min)) // size6 + 1
    out["BackendType"] = cfg.backend_type
    out["Backend"] = cfg.backend
    return out


def summary_line(cfg: NetworkConfig) -> str:
    d = describe_config(cfg)
    if cfg.ipv6_only:
        return (f"IPv6-only (EnableIPv4=false): IPv6Network {d['IPv6Network']}, IPv6SubnetLen {d['IPv6SubnetLen']}, "
                f"IPv6SubnetMin {d['IPv6SubnetMin']}, IPv6SubnetMax {d['IPv6SubnetMax']} "
                f"({d.get('IPv6Subnets', 0)} subnets), backend {d['BackendType']}")
    return (f"Network {d['Network']}, SubnetLen {d['SubnetLen']}, SubnetMin {d['SubnetMin']}, "
            f"SubnetMax {d['SubnetMax']} ({d.get('Subnets', 0)} subnets), backend {d['BackendType']}")


def validate_text(text: str, source: str) -> NetworkConfig:
    """Parse and check a config as flanneld would; CtlError names the source."""
    try:
        cfg = parse_config(text)
        check_backend_type(cfg)
        if cfg.backend_type == vxlan.BACKEND_TYPE:
            vxlan.parse_options(cfg.backend)
        elif cfg.backend_type == wgcore.BACKEND_TYPE:  # Mode against EnableIPv4/EnableIPv6, as the node checks it
            wgcore.parse_options(cfg.backend, ipv4=cfg.enable_ipv4, ipv6=cfg.enable_ipv6)
    except ConfigError as e:
        raise CtlError(f"{source}: invalid config: {e}") from None
    return cfg


def support_warnings(cfg: NetworkConfig) -> list[str]:
    """What pyflannel nodes will refuse although Go flanneld accepts it."""
    out = []
    if cfg.backend_type not in ("vxlan", "host-gw", "wireguard"):
        out.append(f"backend type {cfg.backend_type!r} is valid for Go flanneld, but pyflannel nodes run only "
                   "vxlan, host-gw and wireguard")
    if cfg.ipv6_only:
        out.append("an IPv6-only network (EnableIPv4=false) works for pyflannel nodes only: Go flanneld cannot run "
                   "IPv6-only in etcd mode and ignores their lease keys (docs/backends.md)")
    return out


async def config_get(reg: SubnetRegistry) -> tuple[str, NetworkConfig | None, str | None]:
    """(raw text, parsed config or None, validation error or None)."""
    text = await reg.get_config_text()
    try:
        return text, validate_text(text, reg.config_key), None
    except CtlError as e:
        return text, None, str(e)


async def v2_only_warning(reg: SubnetRegistry) -> str | None:
    """A warning if the config key exists under the v2 API but not under v3."""
    if await reg.client.get(reg.config_key) is not None:
        return None
    v2 = await reg.client.v2_get(reg.config_key)
    if v2 is None:
        return None
    return (f"{reg.config_key} exists only under the etcd v2 API (value {v2.strip()!r}); flanneld >= 0.18 and "
            "pyflannel read only the v3 API")


async def config_set(reg: SubnetRegistry, text: str, source: str) -> tuple[NetworkConfig, int, list[str]]:
    """Validate, then write. Returns (config, revision, warnings); nothing is written if invalid."""
    cfg = validate_text(text, source)
    warnings = support_warnings(cfg)
    v2 = await v2_only_warning(reg)
    if v2:
        warnings.append(v2 + "; writing it under v3 now")
    leases, _bad, _rev = await reg.list_leases()
    misfits = [le for le in leases if not le.reserved and not (
        subnet4_fits(cfg, le.subnet) and (not cfg.ipv6_only or subnet6_fits(cfg, le.subnet6)))]
    if misfits:
        warnings.append(f"{len(misfits)} existing lease(s) do not fit the new config (e.g. {misfits[0].name}); "
                        "their nodes take a new subnet when flanneld restarts")
    rev = await reg.client.put(reg.config_key, text)
    return cfg, rev, warnings


# --- leases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseRow:
    key: str
    lease: EtcdLease
    ttl: int | None  # seconds left; None for a reservation; -1 if the etcd lease is gone
    granted: int | None

    @property
    def vtep_mac(self) -> str | None:
        """The VtepMAC of flannel.<VNI>, or of flannel-v6.<VNI> for an IPv6-only lease."""
        try:
            if self.lease.subnet is None:
                return self.lease.attrs.vxlan_v6_data().vtep_mac
            return self.lease.attrs.vxlan_data().vtep_mac
        except LeaseFormatError:
            return None

    def expires_in(self) -> str:
        from pyflannel.ctl.output import duration

        if self.ttl is None:
            return "never"
        if self.ttl < 0:
            return "expired"
        return duration(self.ttl)

    def to_json(self, now: float) -> dict[str, Any]:
        a = self.lease.attrs
        return {
            "key": self.key,
            "subnet": str(self.lease.subnet) if self.lease.subnet is not None else None,
            "subnet6": str(self.lease.subnet6) if self.lease.subnet6 is not None else None,
            "public_ip": str(a.public_ip),
            "public_ipv6": str(a.public_ipv6) if a.public_ipv6 else None,
            "backend_type": a.backend_type or None,
            "backend_data": json.loads(a.backend_data) if a.backend_data else None,
            "backend_v6_data": json.loads(a.backend_v6_data) if a.backend_v6_data else None,
            "vtep_mac": self.vtep_mac,
            "lease_id": self.lease.lease_id,
            "lease_id_hex": f"{self.lease.lease_id:x}" if self.lease.lease_id else None,
            "ttl_seconds": self.ttl,
            "granted_ttl_seconds": self.granted,
            "expires_at": round(now + self.ttl, 3) if self.ttl is not None and self.ttl >= 0 else None,
            "reserved": self.lease.reserved,
        }


async def lease_ttls(client: EtcdClient, leases: list[EtcdLease]) -> dict[int, tuple[int, int]]:
    """TimeToLive of every distinct etcd lease behind the keys, a few at a time."""
    sem = asyncio.Semaphore(TTL_CONCURRENCY)

    async def one(lid: int) -> tuple[int, tuple[int, int]]:
        async with sem:
            return lid, await client.lease_ttl(lid)

    ids = sorted({le.lease_id for le in leases if le.lease_id})
    return dict(await asyncio.gather(*(one(i) for i in ids)))


async def lease_rows(reg: SubnetRegistry) -> tuple[list[LeaseRow], list[BadLease]]:
    leases, bad, _rev = await reg.list_leases()
    ttls = await lease_ttls(reg.client, leases)
    rows = []
    for le in sorted(leases, key=lambda x: x.order):
        ttl, granted = ttls.get(le.lease_id, (None, None)) if le.lease_id else (None, None)
        rows.append(LeaseRow(reg.lease_key(le.subnet, le.subnet6), le, ttl, granted))
    return rows, bad


def lease_table_rows(rows: list[LeaseRow]) -> list[list[str]]:
    return [[r.lease.name, str(r.lease.owner_ip), r.lease.attrs.backend_type or "-",
             r.vtep_mac or "-", r.expires_in(), "yes" if r.lease.reserved else "no"] for r in rows]


LEASE_HEADERS = ("SUBNET", "PUBLIC-IP", "BACKEND", "VTEP-MAC", "EXPIRES-IN", "RESERVED")


# --- reservations ------------------------------------------------------------------------


Subnet = IPv4Network | IPv6Network


def parse_subnet(text: str) -> Subnet:
    """``100.64.5.0/24`` or the key form ``100.64.5.0-24``; on an IPv6-only network ``fd64:0:0:5::/64`` or
    ``fd64:0:0:5::-64``. Host bits must be zero."""
    s = text.strip().rsplit("/", 1)[-1] if "subnets/" in text else text.strip()
    if "/" not in s and s.count("-") == 1:
        s = s.replace("-", "/")
    try:
        return IPv6Network(s, strict=True) if ":" in s else IPv4Network(s, strict=True)
    except ValueError as e:
        raise CtlError(f"invalid subnet {text!r}: {e}") from None


def parse_public_ip(text: str) -> IPv4Address | IPv6Address:
    """The node's PublicIP, or its PublicIPv6 for a reservation on an IPv6-only network."""
    try:
        ip: IPv4Address | IPv6Address = IPv6Address(text) if ":" in text else IPv4Address(text)
    except ValueError:
        raise CtlError(f"--public-ip: invalid IP address {text!r}") from None
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        raise CtlError(f"--public-ip: {ip} is not a unicast host address")
    return ip


def _family_checks(cfg: NetworkConfig, subnet: Subnet, ip: IPv4Address | IPv6Address) -> None:
    if cfg.ipv6_only and subnet.version == 4:
        raise CtlError(f"reserve: {subnet} is an IPv4 subnet, but the network is IPv6-only (EnableIPv4=false); "
                       "reserve an IPv6 subnet of the IPv6Network")
    if not cfg.ipv6_only and subnet.version == 6:
        raise CtlError(f"reserve: an IPv6 subnet alone ({subnet}) can be reserved only on an IPv6-only network "
                       "(EnableIPv4=false)")
    if ip.version != subnet.version:
        what = "the node's PublicIPv6" if subnet.version == 6 else "the node's IPv4 PublicIP"
        raise CtlError(f"reserve: --public-ip {ip} must be {what} for the subnet {subnet}")


def _held(le: Lease, subnet: Subnet) -> Subnet | None:
    """The lease's subnet of ``subnet``'s family, if it has one."""
    return le.subnet if subnet.version == 4 else le.subnet6


def check_reservation(cfg: NetworkConfig, subnet: Subnet, ip: IPv4Address | IPv6Address,
                      leases: list[EtcdLease]) -> list[str]:
    """Refuse (CtlError) what no node could use; return warnings for what is odd but allowed."""
    _family_checks(cfg, subnet, ip)
    if isinstance(subnet, IPv6Network):
        net6, slen = cfg.ipv6_network, cfg.ipv6_subnet_len
        assert net6 is not None
        if not subnet.subnet_of(net6):
            raise CtlError(f"reserve: {subnet} is outside the IPv6Network {net6}")
        if subnet.prefixlen != slen:
            raise CtlError(f"reserve: {subnet} is not a /{slen} subnet (the config's IPv6SubnetLen)")
        fits = subnet6_fits(cfg, subnet)
        span = f"IPv6SubnetMin..IPv6SubnetMax ({cfg.ipv6_subnet_min}..{cfg.ipv6_subnet_max})"
    else:
        assert cfg.network is not None
        if not subnet.subnet_of(cfg.network):
            raise CtlError(f"reserve: {subnet} is outside the Network {cfg.network}")
        if subnet.prefixlen != cfg.subnet_len:
            raise CtlError(f"reserve: {subnet} is not a /{cfg.subnet_len} subnet (the config's SubnetLen)")
        fits = cfg.subnet_fits(subnet)
        span = f"SubnetMin..SubnetMax ({cfg.subnet_min}..{cfg.subnet_max})"
    for le in leases:
        held = _held(le, subnet)
        if held is not None and held.overlaps(subnet) and le.owner_ip != ip:  # type: ignore[arg-type]
            kind = "reservation" if le.reserved else "lease"
            raise CtlError(f"reserve: {subnet} overlaps the {kind} {held} of {le.owner_ip}")
    warnings = []
    if not fits:
        warnings.append(f"{subnet} is outside {span}; "
                        "nodes never allocate it, but the reservation is honoured")
    for le in leases:
        if le.owner_ip == ip and _held(le, subnet) != subnet:
            warnings.append(f"{ip} also holds {'reservation' if le.reserved else 'lease'} {le.name}; a pyflannel "
                            "node prefers the reservation at its next start, the old key stays until deleted or "
                            "expired")
    return warnings


def _key_for(reg: SubnetRegistry, subnet: Subnet) -> str:
    return reg.lease_key(None, subnet) if isinstance(subnet, IPv6Network) else reg.lease_key(subnet)


async def reserve(reg: SubnetRegistry, subnet: Subnet, ip: IPv4Address | IPv6Address) -> tuple[str, list[str]]:
    """Write the reservation. Returns (what was done, warnings)."""
    cfg = await reg.get_config()
    leases, _bad, _rev = await reg.list_leases()
    warnings = check_reservation(cfg, subnet, ip, leases)
    key = _key_for(reg, subnet)
    same = next((le for le in leases if le.subnets == (subnet,)), None)
    if same is not None and same.reserved:
        return f"{subnet} is already reserved for {ip} (nothing changed)", warnings
    if same is not None:
        # The node holding it keeps its attrs (VtepMAC, backend); only the TTL goes away.
        body = {
            "compare": [{"target": "MOD", "key": _b64(key), "result": "EQUAL", "mod_revision": str(same.mod_revision)}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(same.attrs.to_json())}}],
            "failure": [],
        }
        res = await reg.client.txn(body)
        if not res.get("succeeded"):
            raise CtlError(f"reserve: {key} changed while it was being converted; run the command again")
        await reg.client.lease_revoke(same.lease_id)
        return (f"converted the lease {subnet} of {ip} into a reservation (etcd lease {same.lease_id:x} revoked, "
                "attributes kept)"), warnings
    # An IPv6-only node publishes PublicIP 0.0.0.0 and is known by its PublicIPv6.
    attrs = (LeaseAttrs(public_ip=IPv4Address(0), public_ipv6=ip) if isinstance(ip, IPv6Address)
             else LeaseAttrs(public_ip=ip))
    ok, _ = await reg.client.create(key, attrs.to_json())
    if not ok:
        raise CtlError(f"reserve: {key} was created by someone else meanwhile; run the command again")
    return f"reserved {subnet} for {ip} ({key}, no TTL)", warnings


async def unreserve(reg: SubnetRegistry, subnet: Subnet) -> str:
    key = _key_for(reg, subnet)
    kv = await reg.client.get(key)
    if kv is None:
        raise CtlError(f"unreserve: no reservation for {subnet} ({key} does not exist)")
    if kv.lease:
        raise CtlError(f"unreserve: {subnet} is a lease with a TTL (etcd lease {kv.lease:x}), not a reservation; "
                       f"to drop it anyway: ETCDCTL_API=3 etcdctl del {key}")
    body = {
        "compare": [{"target": "MOD", "key": _b64(key), "result": "EQUAL", "mod_revision": str(kv.mod_revision)}],
        "success": [{"request_delete_range": {"key": _b64(key)}}],
        "failure": [],
    }
    res = await reg.client.txn(body)
    if not res.get("succeeded"):
        raise CtlError(f"unreserve: {key} changed while it was being removed; run the command again")
    try:
        val = json.loads(kv.value)
        who = str(val.get("PublicIPv6") if isinstance(subnet, IPv6Network) else val.get("PublicIP", "?"))
    except (ValueError, AttributeError):
        who = "?"
    return (f"removed the reservation {subnet} of {who}; if that node runs pyflannel it takes the subnet again as a "
            "normal 24h lease")
