"""What the ``flannel`` CNI plugin decides, without doing any of it.

Why this module exists
======================
The ``flannel`` CNI plugin is a meta-plugin (flannel-io/cni-plugin): it owns no interface.  On ADD it reads
the node's ``subnet.env``, turns it into a network config for a *delegate* plugin (``bridge`` with
``host-local`` IPAM) and hands the real work to that delegate; on DEL it replays the config it saved for the
container.  Every decision is therefore a function from (network config, subnet.env, environment) to a dict,
and those functions live here, pure, so they can be tested and fuzzed without processes or a kernel.  The
runner that reads files and executes the delegate is :mod:`pyflannel.cli.cni`.

The semantics mirror flannel-io/cni-plugin (``flannel.go``, ``flannel_linux.go``) and the checks of the CNI
library's ``skel`` package.  Deliberate differences, each stricter or safer than Go:

* Errors use the CNI spec's codes (1 incompatible version, 3 unknown container, 4 bad environment, 5 I/O,
  6 undecodable content, 7 invalid network config, 11 try again later) instead of libcni's catch-all 999.
  A missing ``subnet.env`` is 11: it means flanneld has not got its lease yet, which clears up by itself.
* ``FLANNEL_IPMASQ`` must be ``true`` or ``false`` (Go silently treats any other value as false, which would
  turn masquerading *on* in the bridge), ``FLANNEL_MTU`` must be 68..65535, ``subnetFile``/``dataDir``
  must be absolute paths, and the delegate ``type`` must be a plain file name (it is looked up on CNI_PATH).
* A user ``ipam.routes`` entry with the same ``dst`` as the flannel network is not added twice.

Import cost matters: the plugin is a new process for every pod ADD/DEL, so this module imports only ``json``
and ``ipaddress`` at run time; type-only names (``typing`` costs ~2 ms) sit behind ``TYPE_CHECKING``.  It
deliberately does not reuse :func:`pyflannel.core.subnet_env.parse_env_text`: that parser rejects lines the
Go plugin ignores, and importing it pulls in ``dataclasses``/``inspect``, about 5 ms of start-up per pod.
"""

from __future__ import annotations

import json
from ipaddress import ip_interface

from pyflannel.core.errors import FlannelError

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs ~2 ms per plugin process
    from collections.abc import Mapping
    from typing import Any, TypedDict

    class FlannelEnv(TypedDict):
        """``subnet.env`` as the plugin uses it: CIDRs masked to their networks (``10.5.72.0/24``)."""

        network: str | None
        subnet: str | None
        ipv6_network: str | None
        ipv6_subnet: str | None
        mtu: int
        ipmasq: bool


SUPPORTED_VERSIONS: tuple[str, ...] = ("0.3.1", "0.4.0", "1.0.0")
#: CHECK exists since spec 0.4.0; libcni refuses it for older configs.
CHECK_VERSIONS: tuple[str, ...] = ("0.4.0", "1.0.0")
#: The version used for VERSION replies and for errors raised before the config's version is known.
LATEST_VERSION = "1.0.0"
#: What libcni assumes when a config has no ``cniVersion``.
IMPLICIT_VERSION = "0.1.0"
DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/flannel"
DEFAULT_DELEGATE_TYPE = "bridge"
DEFAULT_IPAM_TYPE = "host-local"
COMMANDS: tuple[str, ...] = ("ADD", "DEL", "CHECK", "VERSION")

# CNI spec error codes (SPEC.md "Error" section).
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_NETCONF = 7
ERR_TRY_AGAIN_LATER = 11
#: Plugin-specific (the spec leaves 100+ to plugins): an unexpected failure inside this plugin, i.e. a bug.
ERR_INTERNAL = 100

_MAX_IFNAME = 15  # IFNAMSIZ - 1
_MIN_MTU, _MAX_MTU = 68, 65535


class CNIError(FlannelError):
    """A failure reported to the runtime as CNI error JSON: ``{"code": .., "msg": .., "details": ..}``."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"{msg}; {details}" if details else msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str = LATEST_VERSION) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


class CNIRequest:
    """The CNI_* environment of one invocation, validated as libcni's ``skel`` does."""

    __slots__ = ("command", "container_id", "netns", "ifname", "args", "path")

    def __init__(self, command: str, container_id: str, netns: str, ifname: str, args: str, path: str) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = args
        self.path = path

    @property
    def path_list(self) -> list[str]:
        """CNI_PATH split like Go's ``filepath.SplitList`` (empty entries dropped)."""
        return [p for p in self.path.split(":") if p]


# --------------------------------------------------------------------------------------------------------
# The invocation: CNI_* variables
# --------------------------------------------------------------------------------------------------------

_REQUIRED: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),  # the netns may already be gone
    "VERSION": ("CNI_COMMAND",),
}


def request_from_env(env: Mapping[str, str]) -> CNIRequest:
    """Read and validate the CNI_* variables; raise :class:`CNIError` (code 3 or 4) naming what is wrong."""
    command = env.get("CNI_COMMAND", "")
    if command not in _REQUIRED:
        raise CNIError(
            ERR_INVALID_ENV,
            f"unknown CNI_COMMAND: {command}" if command else "required env variables [CNI_COMMAND] missing",
        )
    missing = [k for k in _REQUIRED[command] if not env.get(k)]
    if missing:
        raise CNIError(ERR_INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
    req = CNIRequest(
        command=command,
        container_id=env.get("CNI_CONTAINERID", ""),
        netns=env.get("CNI_NETNS", ""),
        ifname=env.get("CNI_IFNAME", ""),
        args=env.get("CNI_ARGS", ""),
        path=env.get("CNI_PATH", ""),
    )
    if command != "VERSION":
        validate_container_id(req.container_id)
        validate_ifname(req.ifname)
    return req


def _valid_name(s: str) -> bool:
    """libcni's ``^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$`` (ASCII only), without importing ``re``."""
    if not s or not (s[0].isascii() and s[0].isalnum()):
        return False
    return all(c.isascii() and (c.isalnum() or c in "_.-") for c in s)


def validate_container_id(container_id: str) -> None:
    """The container ID names a file in ``dataDir``, so it must never contain ``/`` or start with ``.``."""
    if not container_id:
        raise CNIError(ERR_UNKNOWN_CONTAINER, "missing containerID")
    if not _valid_name(container_id):
        raise CNIError(ERR_INVALID_ENV, "invalid characters in containerID", container_id)


def validate_ifname(ifname: str) -> None:
    if not ifname:
        raise CNIError(ERR_INVALID_ENV, "interface name is empty")
    if len(ifname.encode("utf-8", "surrogatepass")) > _MAX_IFNAME:
        raise CNIError(ERR_INVALID_ENV, "interface name is too long",
                       f"interface name should be less than {_MAX_IFNAME + 1} characters")
    if ifname in (".", ".."):
        raise CNIError(ERR_INVALID_ENV, "interface name is . or ..")
    if any(c in "/:" or c.isspace() for c in ifname):
        raise CNIError(ERR_INVALID_ENV, "interface name contains / or : or whitespace characters")


# --------------------------------------------------------------------------------------------------------
# The network config (stdin)
# --------------------------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_json(data: bytes | str, what: str) -> Any:
    """``json.loads`` that rejects NaN/Infinity (Go does) and turns every failure into a code-6 CNIError."""
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CNIError(ERR_DECODE, f"failed to load {what}: {exc}") from None


def _short(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to one short line: a config value can be megabytes long or deeply nested."""
    try:
        text = repr(value)
    except RecursionError:
        return f"<{type(value).__name__} nested too deeply>"
    return text if len(text) <= limit else f"{text[:limit]}..."


def _check_path(netconf: Mapping[str, Any], key: str) -> None:
    value = netconf[key]
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise CNIError(ERR_INVALID_NETCONF, f"{key} must be an absolute path, not {_short(value)}")


def parse_netconf(data: bytes | str) -> dict[str, Any]:
    """Decode and check the network config on stdin; fill ``subnetFile`` and ``dataDir`` defaults.

    Checks what every command needs (the JSON, the network ``name``, the types of flannel's own keys). The
    version is checked by :func:`check_version` and the delegate section by :func:`delegate_config`, so that
    DEL stays as forgiving as Go's (it only needs ``dataDir``).
    """
    conf = decode_json(data, "netconf")
    if not isinstance(conf, dict):
        raise CNIError(ERR_DECODE, f"failed to load netconf: expected a JSON object, got {type(conf).__name__}")
    name = conf.get("name")
    if not isinstance(name, str) or not name:
        raise CNIError(ERR_INVALID_NETCONF, "missing network name")
    if not _valid_name(name):
        raise CNIError(ERR_INVALID_NETCONF, "invalid characters found in network name", name[:80])
    version = conf.get("cniVersion", "")
    if not isinstance(version, str):
        raise CNIError(ERR_DECODE, f"failed to load netconf: cniVersion must be a string, not {_short(version)}")
    out = dict(conf)
    out.setdefault("subnetFile", DEFAULT_SUBNET_FILE)
    out.setdefault("dataDir", DEFAULT_DATA_DIR)
    _check_path(out, "subnetFile")
    _check_path(out, "dataDir")
    for key in ("delegate", "ipam", "runtimeConfig"):
        if key in out and out[key] is not None and not isinstance(out[key], dict):
            raise CNIError(ERR_INVALID_NETCONF, f"'{key}' must be a JSON object, not {type(out[key]).__name__}")
    return out


def config_version(netconf: Mapping[str, Any]) -> str:
    v = netconf.get("cniVersion") or IMPLICIT_VERSION
    return v if isinstance(v, str) else IMPLICIT_VERSION


def check_version(netconf: Mapping[str, Any], command: str) -> str:
    """Return the config's ``cniVersion`` if this plugin speaks it for ``command``; else a code-1 CNIError."""
    version = config_version(netconf)
    if version not in SUPPORTED_VERSIONS:
        supported = " ".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
        raise CNIError(ERR_INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f'config is "{version[:40]}", plugin supports [{supported}]')
    if command == "CHECK" and version not in CHECK_VERSIONS:
        raise CNIError(ERR_INCOMPATIBLE_VERSION, "config version does not allow CHECK",
                       f'config is "{version}"; CHECK needs 0.4.0 or later')
    return version


def reply_version(netconf: Mapping[str, Any] | None) -> str:
    """The ``cniVersion`` to put in an error reply: the config's own if we speak it, else the latest."""
    if netconf is not None:
        v = netconf.get("cniVersion")
        if isinstance(v, str) and v in SUPPORTED_VERSIONS:
            return v
    return LATEST_VERSION


def version_info() -> dict[str, Any]:
    """The VERSION reply."""
    return {"cniVersion": LATEST_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


# --------------------------------------------------------------------------------------------------------
# subnet.env
# --------------------------------------------------------------------------------------------------------

_CIDR_KEYS = {
    "FLANNEL_NETWORK": ("network", 4),
    "FLANNEL_SUBNET": ("subnet", 4),
    "FLANNEL_IPV6_NETWORK": ("ipv6_network", 6),
    "FLANNEL_IPV6_SUBNET": ("ipv6_subnet", 6),
}


def _masked(path: str, key: str, value: str, family: int) -> str:
    """``10.5.72.1/24`` -> ``10.5.72.0/24``, as Go's ``net.ParseCIDR`` network; the prefix is required."""
    addr, slash, plen = value.partition("/")
    if slash and plen.isascii() and plen.isdigit() and len(plen) <= 3 and "%" not in addr:
        try:
            iface = ip_interface(f"{addr}/{int(plen)}")
        except ValueError:
            iface = None
        if iface is not None and iface.version == family:
            return iface.network.compressed
    raise CNIError(ERR_DECODE, f"loadFlannelSubnetEnv failed: {path}: {key}: invalid CIDR {value[:80]!r}")


def parse_subnet_env(text: str, path: str = DEFAULT_SUBNET_FILE) -> FlannelEnv:
    """Parse the subnet file flanneld writes, like the Go plugin's ``loadFlannelSubnetEnv``.

    Lines are ``KEY=VALUE``; unknown keys and lines without ``=`` are ignored (Go ignores them too), and an
    ``export`` prefix, surrounding blanks and matching quotes are tolerated so hand-written files work.
    Needs a network, a subnet (IPv4 and/or IPv6), FLANNEL_MTU and FLANNEL_IPMASQ; otherwise a code-6
    CNIError with Go's message (``<file> is missing FLANNEL_MTU``).
    """
    cidrs: dict[str, str] = {}
    mtu: int | None = None
    ipmasq: bool | None = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("export "):
            s = s[len("export "):].lstrip()
        key, sep, value = s.partition("=")
        key = key.strip()
        if not sep or not key:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if key in _CIDR_KEYS:
            field, family = _CIDR_KEYS[key]
            cidrs[field] = _masked(path, key, value, family)
        elif key == "FLANNEL_MTU":
            if not (value.isascii() and value.isdigit() and len(value) <= 6 and _MIN_MTU <= int(value) <= _MAX_MTU):
                raise CNIError(ERR_DECODE, f"loadFlannelSubnetEnv failed: {path}: FLANNEL_MTU: "
                                           f"invalid value {value[:80]!r} (want {_MIN_MTU}..{_MAX_MTU})")
            mtu = int(value)
        elif key == "FLANNEL_IPMASQ":
            if value not in ("true", "false"):
                raise CNIError(ERR_DECODE, f"loadFlannelSubnetEnv failed: {path}: FLANNEL_IPMASQ: "
                                           f"invalid value {value[:80]!r} (want true or false)")
            ipmasq = value == "true"
    missing: list[str] = []
    if "network" not in cidrs and "ipv6_network" not in cidrs:
        missing += ["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]
    if "subnet" not in cidrs and "ipv6_subnet" not in cidrs:
        missing += ["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]
    if mtu is None:
        missing.append("FLANNEL_MTU")
    if ipmasq is None:
        missing.append("FLANNEL_IPMASQ")
    if missing or mtu is None or ipmasq is None:
        raise CNIError(ERR_DECODE, f"loadFlannelSubnetEnv failed: {path} is missing {', '.join(missing)}")
    return {
        "network": cidrs.get("network"),
        "subnet": cidrs.get("subnet"),
        "ipv6_network": cidrs.get("ipv6_network"),
        "ipv6_subnet": cidrs.get("ipv6_subnet"),
        "mtu": mtu,
        "ipmasq": ipmasq,
    }


# --------------------------------------------------------------------------------------------------------
# The delegate config
# --------------------------------------------------------------------------------------------------------


def _user_routes(ipam: Mapping[str, Any]) -> list[dict[str, Any]]:
    routes = ipam.get("routes")
    if routes is None:
        return []
    if not isinstance(routes, list):
        raise CNIError(ERR_INVALID_NETCONF, "failed to read IPAM routes: ipam.routes must be a list")
    out: list[dict[str, Any]] = []
    for i, r in enumerate(routes):
        if not isinstance(r, dict) or not isinstance(r.get("dst"), str):
            raise CNIError(ERR_INVALID_NETCONF, f"failed to read IPAM routes: ipam.routes[{i}] needs a string 'dst'")
        try:
            ip_interface(r["dst"])
        except ValueError:
            msg = f"failed to read IPAM routes: ipam.routes[{i}].dst: invalid CIDR {r['dst'][:80]!r}"
            raise CNIError(ERR_INVALID_NETCONF, msg) from None
        gw = r.get("gw")
        if gw is not None and not isinstance(gw, str):
            raise CNIError(ERR_INVALID_NETCONF, f"failed to read IPAM routes: ipam.routes[{i}].gw must be a string")
        out.append(dict(r))
    return out


def delegate_ipam(netconf: Mapping[str, Any], fenv: FlannelEnv) -> dict[str, Any]:
    """The delegate's ``ipam``: the user's ``ipam`` with flannel's ranges and routes (``getDelegateIPAM``).

    ``type`` defaults to host-local; ``ranges`` is always replaced by the node's subnet(s); ``routes`` is the
    user's routes followed by one route per flannel network.  Other keys (``dataDir``...) pass through.
    """
    user = netconf.get("ipam") or {}
    ipam: dict[str, Any] = dict(user)
    if not isinstance(ipam.get("type"), str) or not ipam["type"]:
        if "type" in ipam:
            raise CNIError(ERR_INVALID_NETCONF, "ipam.type must be a non-empty string")
        ipam["type"] = DEFAULT_IPAM_TYPE
    ranges: list[list[dict[str, Any]]] = []
    for sn in (fenv["subnet"], fenv["ipv6_subnet"]):
        if sn:
            ranges.append([{"subnet": sn}])
    ipam["ranges"] = ranges
    routes = _user_routes(ipam)
    have = {r["dst"] for r in routes}
    for nw in (fenv["network"], fenv["ipv6_network"]):
        if nw and nw not in have:
            routes.append({"dst": nw})
    ipam["routes"] = routes
    return ipam


def delegate_config(netconf: Mapping[str, Any], fenv: FlannelEnv) -> dict[str, Any]:
    """The complete config the delegate (``bridge`` by default) is called with on ADD (``doCmdAdd``).

    Starts from the user's ``delegate`` section (``hairpinMode``, ``isDefaultGateway``...), which must not
    set ``name`` or ``ipam`` (flannel sets them), then fills: ``name`` and ``cniVersion`` from the network
    config, ``type`` = bridge, ``ipMasq`` = not FLANNEL_IPMASQ (if flanneld does not masquerade, the bridge
    must), ``mtu`` = FLANNEL_MTU, ``isGateway`` = true for bridge, ``ipam`` from :func:`delegate_ipam`, and
    ``runtimeConfig`` when the runtime passed one.  User keys win over every default except name and ipam.
    """
    user = check_delegate_section(netconf)
    d: dict[str, Any] = dict(user)
    d["name"] = netconf["name"]
    d.setdefault("type", DEFAULT_DELEGATE_TYPE)
    d.setdefault("ipMasq", not fenv["ipmasq"])
    d.setdefault("mtu", fenv["mtu"])
    if d["type"] == "bridge":
        d.setdefault("isGateway", True)
    version = netconf.get("cniVersion")
    if isinstance(version, str) and version:
        d["cniVersion"] = version
    d["ipam"] = delegate_ipam(netconf, fenv)
    runtime_config = netconf.get("runtimeConfig")
    if runtime_config is not None:
        d["runtimeConfig"] = runtime_config
    return d


def check_delegate_section(netconf: Mapping[str, Any]) -> dict[str, Any]:
    """Check the user's ``delegate`` and ``ipam`` sections (before subnet.env is read); return ``delegate``."""
    user: dict[str, Any] = netconf.get("delegate") or {}
    if "type" in user and (not isinstance(user["type"], str) or not user["type"]):
        raise CNIError(ERR_INVALID_NETCONF, "'delegate' dictionary, if present, must have (string) 'type' field")
    if "name" in user:
        raise CNIError(ERR_INVALID_NETCONF, "'delegate' dictionary must not have 'name' field, it'll be set by flannel")
    if "ipam" in user:
        raise CNIError(ERR_INVALID_NETCONF, "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel")
    kind = user.get("type", DEFAULT_DELEGATE_TYPE)
    if kind in (".", "..") or "/" in kind or "\0" in kind:
        raise CNIError(ERR_INVALID_NETCONF, f"delegate type must be a plugin name, not {_short(kind)}")
    ipam = netconf.get("ipam") or {}
    if "type" in ipam and (not isinstance(ipam["type"], str) or not ipam["type"]):
        raise CNIError(ERR_INVALID_NETCONF, "ipam.type must be a non-empty string")
    _user_routes(ipam)
    return user


def stale_reason(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """Why a container set up with ``saved`` no longer fits what ADD would build now, or None if it fits.

    Used by CHECK.  Only what breaks the pod's traffic counts: the delegate type and the address ranges
    (flanneld got a different subnet after losing its lease, or the network config changed).
    """
    if saved.get("type") != current.get("type"):
        return f"delegate type changed from {_short(saved.get('type'))} to {_short(current.get('type'))}"
    s_ipam, c_ipam = saved.get("ipam"), current.get("ipam")
    s_ranges = s_ipam.get("ranges") if isinstance(s_ipam, dict) else None
    c_ranges = c_ipam.get("ranges") if isinstance(c_ipam, dict) else None
    if s_ranges != c_ranges:
        return f"container was set up for ranges {s_ranges} but subnet.env now gives {c_ranges}"
    return None
