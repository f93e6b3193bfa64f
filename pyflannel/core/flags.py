"""flanneld's command line: one table of flags, Go ``flag`` syntax, FLANNELD_* variables.

Go's flag package accepts ``-name`` and ``--name``, ``-name=value`` and ``-name value``
(the latter not for booleans, which take ``-name`` or ``-name=false``), and stops at the
first non-flag argument. A flag not given on the command line is taken from
``FLANNELD_<NAME>`` (upper case, ``-`` -> ``_``). Unlike flanneld, which prints usage and
exits 0 on a bad flag, a bad flag here is one line naming the flag and the value.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyflannel.core.errors import FlagError, shorten


@dataclass(frozen=True)
class FlagSpec:
    name: str
    kind: type  # str, bool, int or list (repeatable string)
    default: Any
    help: str
    secret: bool = False


FLAGS: tuple[FlagSpec, ...] = (
    FlagSpec("etcd-endpoints", str, "http://127.0.0.1:4001,http://127.0.0.1:2379", "comma-separated etcd endpoints"),
    FlagSpec("etcd-prefix", str, "/coreos.com/network", "etcd prefix"),
    FlagSpec("etcd-keyfile", str, "", "SSL key file used to secure etcd communication"),
    FlagSpec("etcd-certfile", str, "", "SSL certification file used to secure etcd communication"),
    FlagSpec("etcd-cafile", str, "", "SSL Certificate Authority file used to secure etcd communication"),
    FlagSpec("etcd-username", str, "", "username for BasicAuth to etcd"),
    FlagSpec("etcd-password", str, "", "password for BasicAuth to etcd", secret=True),
    FlagSpec("kube-subnet-mgr", bool, False, "contact the Kubernetes API for subnet assignment instead of etcd"),
    FlagSpec("kube-api-url", str, "", "Kubernetes API server URL; not needed when running in a pod"),
    FlagSpec("kubeconfig-file", str, "", "kubeconfig file location; not needed when running in a pod"),
    FlagSpec("kube-annotation-prefix", str, "flannel.alpha.coreos.com",
             'Kubernetes annotation prefix; may contain a single "/", otherwise one is appended'),
    FlagSpec("net-config-path", str, "/etc/kube-flannel/net-conf.json",
             "path to the network configuration file (kube)"),
    FlagSpec("set-node-network-unavailable", bool, True, "set NodeNetworkUnavailable=False after ready (kube)"),
    FlagSpec("iface", list, [], "interface to use (IP or name) for inter-host communication; repeatable"),
    FlagSpec("iface-regex", list, [], "regex matching the first interface (IP or name) to use; repeatable"),
    FlagSpec("iface-can-reach", str, "", "detect the interface to use by the route to this IP"),
    FlagSpec("public-ip", str, "", "IP accessible by other nodes for inter-host communication"),
    FlagSpec("public-ipv6", str, "", "IPv6 accessible by other nodes for inter-host communication"),
    FlagSpec("subnet-file", str, "/run/flannel/subnet.env", "filename where env variables are written"),
    FlagSpec("subnet-lease-renew-margin", int, 60, "subnet lease renewal margin, in minutes (1-1439)"),
    FlagSpec("ip-masq", bool, False, "setup IP masquerade rule for traffic destined outside of overlay network"),
    FlagSpec("ip-masq-fully-random-disable", bool, False, "do not use --random-fully on MASQUERADE rules"),
    FlagSpec("iptables-resync", int, 5, "resync period for iptables rules, in seconds"),
    FlagSpec("iptables-forward-rules", bool, True, "add default accept rules to FORWARD chain"),
    FlagSpec("healthz-ip", str, "0.0.0.0", "the IP address for the healthz server to listen on"),
    FlagSpec("healthz-port", int, 0, "the port for the healthz server to listen on (0 to disable)"),
    FlagSpec("resync-period", int, 300,
             "pyflannel: period of the full data-plane resync (the safety net; drift is repaired from "
             "netlink notifications at once), in seconds"),
    FlagSpec("log-format", str, "text", "pyflannel: log format, text or json"),
    FlagSpec("v", int, 0, "log level for V logs (2: per-peer changes, 4: netlink calls)"),
    FlagSpec("vmodule", str, "", "accepted for compatibility with flanneld; ignored"),
    FlagSpec("log_backtrace_at", str, "", "accepted for compatibility with flanneld; ignored"),
    FlagSpec("logtostderr", bool, True, "accepted for compatibility (logs always go to stderr)"),
    FlagSpec("alsologtostderr", bool, False, "accepted for compatibility; ignored"),
    FlagSpec("log_dir", str, "", "accepted for compatibility; ignored"),
    FlagSpec("subnet-dir", str, "", "flanneld v0.7 multi-network directory; accepted and ignored"),
    FlagSpec("version", bool, False, "print version and exit"),
    FlagSpec("help", bool, False, "print usage and exit"),
)
_BY_NAME = {f.name: f for f in FLAGS}
_ALIASES = {"h": "help"}


@dataclass(frozen=True)
class Options:
    """Parsed flags, by flag name with ``-`` replaced by ``_``."""

    values: Mapping[str, Any]
    set_on_command_line: frozenset[str] = field(default_factory=frozenset)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def redacted(self) -> dict[str, Any]:
        """Every value, with secrets replaced, for the start-up log line."""
        out = {}
        for f in FLAGS:
            v = self.values[f.name.replace("-", "_")]
            out[f.name] = "<redacted>" if f.secret and v else v
        return out


# strconv.ParseBool.
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
# strconv.ParseInt(s, 0, 64): Go literal syntax, ASCII only, no spaces; a leading 0 means octal;
# '_' only between digits or after a base prefix.
_GO_INT_RE = re.compile(
    r"[+-]?(?:0[xX](?:_?[0-9a-fA-F])+|0[oO](?:_?[0-7])+|0[bB](?:_?[01])+|0(?:_?[0-7])+|0|[1-9](?:_?[0-9])*)\Z",
    re.ASCII,
)
_INT64 = 1 << 63


def _go_int(raw: str) -> int | None:
    if not _GO_INT_RE.match(raw):
        return None
    body = raw.lstrip("+-").replace("_", "")
    if len(body) > 80:  # beyond int64 in any base; int() refuses more than 4300 digits anyway
        return _INT64
    if body[:2].lower() in ("0x", "0o", "0b"):
        v = int(body, 0)
    elif body.startswith("0") and len(body) > 1:
        v = int(body, 8)
    else:
        v = int(body)
    return -v if raw.startswith("-") else v


def _convert(spec: FlagSpec, raw: str, source: str) -> Any:
    if spec.kind is bool:
        if raw in _TRUE:
            return True
        if raw in _FALSE:
            return False
        raise FlagError(f"invalid boolean value {shorten(raw)} for {source} -{spec.name}")
    if spec.kind is int:
        v = _go_int(raw)
        if v is None:
            raise FlagError(f"invalid integer value {shorten(raw)} for {source} -{spec.name}")
        if not -_INT64 <= v < _INT64:
            raise FlagError(f"integer value {shorten(raw)} for {source} -{spec.name} is out of range")
        return v
    return raw


def _arg(text: str) -> str:
    """An argument as typed when it is short and printable, else quoted and cut: messages stay one line."""
    return text if len(text) <= 80 and text.isprintable() else shorten(text)


def parse_flags(argv: Sequence[str], env: Mapping[str, str]) -> Options:
    """Parse argv (without the program name) and the environment into Options."""
    values: dict[str, Any] = {f.name: (list(f.default) if f.kind is list else f.default) for f in FLAGS}
    seen: set[str] = set()
    i = 0
    args = list(argv)
    while i < len(args):
        a = args[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-") or a == "-":
            break
        body = a[2:] if a.startswith("--") else a[1:]
        if not body or body.startswith("-") or body.startswith("="):
            raise FlagError(f"bad flag syntax: {_arg(a)}")
        name, eq, raw = body.partition("=")
        name = _ALIASES.get(name, name)
        spec = _BY_NAME.get(name)
        if spec is None:
            raise FlagError(f"flag provided but not defined: -{_arg(name)}")
        if not eq:
            if spec.kind is bool:
                raw = "true"
            else:
                if i + 1 >= len(args):
                    raise FlagError(f"flag needs an argument: -{name}")
                i += 1
                raw = args[i]
        value = _convert(spec, raw, "flag")
        if spec.kind is list:
            if name not in seen:
                values[name] = []
            values[name].append(value)
        else:
            values[name] = value
        seen.add(name)
        i += 1
    if i < len(args):
        raise FlagError(f"unexpected argument {shorten(args[i])} (flanneld takes only flags)")

    for spec in FLAGS:
        if spec.name in seen:
            continue
        key = "FLANNELD_" + spec.name.upper().replace("-", "_")
        # Like flanneld (coreos/pkg flagutil): an empty variable is the same as an unset one.
        if env.get(key):
            raw = env[key]
            value = _convert(spec, raw, f"environment variable {key} for")
            values[spec.name] = [value] if spec.kind is list else value
    opts = Options({k.replace("-", "_"): v for k, v in values.items()}, frozenset(seen))
    validate(opts)
    return opts


def validate(o: Options) -> None:
    """Range and format checks; every failure names the flag and the value."""
    if not 1 <= o.subnet_lease_renew_margin <= 1439:
        raise FlagError(
            "Invalid subnet-lease-renew-margin option, out of acceptable range "
            f"(1-1439 minutes): {o.subnet_lease_renew_margin}"
        )
    if o.iptables_resync < 1:
        raise FlagError(f"-iptables-resync must be at least 1 second: {o.iptables_resync}")
    if o.resync_period < 1:
        raise FlagError(f"-resync-period must be at least 1 second: {o.resync_period}")
    if not 0 <= o.healthz_port <= 65535:
        raise FlagError(f"-healthz-port must be 0-65535: {o.healthz_port}")
    if o.log_format not in ("text", "json"):
        raise FlagError(f"-log-format must be text or json: {shorten(o.log_format)}")
    for name in ("public_ip", "healthz_ip", "iface_can_reach"):
        v = getattr(o, name)
        if v:
            try:
                ip = ipaddress.ip_address(v)
            except ValueError:
                raise FlagError(f"-{name.replace('_', '-')}: invalid IP address {shorten(v)}") from None
            if name == "public_ip" and ip.version != 4:
                raise FlagError(f"-public-ip: not an IPv4 address {shorten(v)}")
    if o.public_ipv6:
        try:
            ipaddress.IPv6Address(o.public_ipv6)
        except ValueError:
            raise FlagError(f"-public-ipv6: invalid IPv6 address {shorten(o.public_ipv6)}") from None
    for rx in o.iface_regex:
        try:
            re.compile(rx)
        except (re.error, OverflowError, RecursionError) as e:
            why = "nested too deeply" if isinstance(e, RecursionError) else str(e)
            raise FlagError(f"-iface-regex: invalid regular expression {shorten(rx)}: {why}") from None
    eps = [e for e in o.etcd_endpoints.split(",") if e.strip()]
    if not eps:
        raise FlagError("-etcd-endpoints: no endpoint given")
    for ep in eps:
        check_endpoint(ep.strip())
    if not o.subnet_file:
        raise FlagError("-subnet-file must not be empty")
    if bool(o.etcd_certfile) != bool(o.etcd_keyfile):
        raise FlagError("-etcd-certfile and -etcd-keyfile must be given together")
    if not o.etcd_prefix.startswith("/"):
        raise FlagError(f"-etcd-prefix must start with '/': {shorten(o.etcd_prefix)}")
    if o.kube_subnet_mgr:
        from pyflannel.core.kube import normalize_prefix

        normalize_prefix(o.kube_annotation_prefix)  # raises FlagError naming the prefix
        if o.kube_api_url:
            check_kube_api_url(o.kube_api_url)


_HOST_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?\Z",
                      re.ASCII)


def check_endpoint(ep: str) -> None:
    """An etcd endpoint must be ``http(s)://host[:port][/]``; anything else fails later and less clearly.

    Credentials in the URL are refused without echoing them: they would end up in every
    error message that names the endpoint.
    """
    want = "(want http://host:port or https://host:port)"
    try:
        u = urllib.parse.urlsplit(ep)
        port = u.port
        host = u.hostname
    except ValueError:
        raise FlagError(f"-etcd-endpoints: invalid endpoint {shorten(ep)} {want}") from None
    if "@" in u.netloc:
        raise FlagError(f"-etcd-endpoints: credentials in endpoint {u.scheme}://***@{u.netloc.rpartition('@')[2]} "
                        "are not supported; use -etcd-username and -etcd-password")
    ok = (
        u.scheme in ("http", "https")
        and ep.startswith(u.scheme + "://")
        and u.path in ("", "/")
        and not u.query
        and not u.fragment
        and not any(c.isspace() for c in ep)
        and bool(host)
        and port != 0
    )
    if ok and host is not None:
        if u.netloc.startswith("["):
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                ok = False
        else:
            ok = bool(_HOST_RE.match(host))
    if not ok:
        raise FlagError(f"-etcd-endpoints: invalid endpoint {shorten(ep)} {want}")


def check_kube_api_url(url: str) -> None:
    """--kube-api-url must be ``http(s)://host[:port][/path]``: anything else fails later and less clearly."""
    try:
        u = urllib.parse.urlsplit(url)
        _ = u.port
    except ValueError:
        u = None
    if u is None or u.scheme not in ("http", "https") or not u.hostname or any(c.isspace() for c in url):
        raise FlagError(f"-kube-api-url: invalid URL {shorten(url)} (want https://host:port)")


def usage() -> str:
    lines = ["Usage: flanneld [OPTION]...", ""]
    for f in FLAGS:
        d = "" if f.default in ("", [], False) else f" (default {f.default})"
        lines.append(f"  -{f.name}: {f.help}{d}")
    return "\n".join(lines) + "\n"
