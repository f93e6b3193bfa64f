"""The network config at ``<prefix>/config``: parsing, defaults and validation.

Behaviour follows flanneld v0.20.2 (``subnet/config.go``): Go's JSON decoding matches field
names case-insensitively and ignores unknown keys; the defaults and the error messages are
flanneld's, so an operator's config means the same thing to a Go node and to ours. Every
error is one line that names the field and its value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from pyflannel.core.errors import ConfigError, shorten, shorten_json
from pyflannel.core.lease import loads_strict

# Backends flanneld v0.20.2 knows by name. Only some are implemented here; the daemon says
# which when it is asked for one it cannot run.
KNOWN_BACKENDS = frozenset(
    {"udp", "vxlan", "host-gw", "ipip", "wireguard", "ipsec", "alloc", "extension", "tencent-vpc"}
)


@dataclass(frozen=True)
class NetworkConfig:
    network: IPv4Network | None
    subnet_len: int
    subnet_min: IPv4Address | None
    subnet_max: IPv4Address | None
    enable_ipv4: bool = True
    enable_ipv6: bool = False
    ipv6_network: IPv6Network | None = None
    ipv6_subnet_len: int = 0
    ipv6_subnet_min: IPv6Address | None = None
    ipv6_subnet_max: IPv6Address | None = None
    backend_type: str = "udp"
    # EnableNFTables (flannel v0.25+); None when absent, so the host may decide (docs/firewall.md).
    enable_nftables: bool | None = None
    # The Backend object as decoded JSON; compared by the fields above, not by this.
    backend: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def ipv6_only(self) -> bool:
        """EnableIPv4=false, EnableIPv6=true: leases have only an IPv6 subnet (pyflannel only in etcd mode)."""
        return self.enable_ipv6 and not self.enable_ipv4

    def subnet_fits(self, subnet: IPv4Network) -> bool:
        """True if ``subnet`` is one flanneld would hand out under this config."""
        if self.network is None or self.subnet_min is None or self.subnet_max is None:
            return False
        return (
            subnet.prefixlen == self.subnet_len
            and self.subnet_min <= subnet.network_address <= self.subnet_max
        )


def _lower_keys(obj: dict[str, Any]) -> dict[str, Any]:
    """Go's decoder prefers an exact-case match but accepts any case; last one wins."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        out[k.lower()] = v
    return out


def _get_str(d: dict[str, Any], name: str) -> str | None:
    v = d.get(name.lower())
    if v is None:
        return None
    if not isinstance(v, str):
        raise ConfigError(f"config field {name}: expected a string, got {shorten_json(v)}")
    return v


def _get_int(d: dict[str, Any], name: str) -> int:
    v = d.get(name.lower())
    if v is None:
        return 0
    # Go will not decode 24.0 into an int field, so neither do we.
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"config field {name}: expected an integer, got {shorten_json(v)}")
    if not 0 <= int(v) <= 0xFFFFFFFF:
        raise ConfigError(f"config field {name}: out of range, got {shorten_json(v)}")
    return int(v)


def _get_bool(d: dict[str, Any], name: str, default: bool) -> bool:
    v = d.get(name.lower())
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ConfigError(f"config field {name}: expected true or false, got {shorten_json(v)}")
    return v


def _parse_net4(text: str | None, name: str) -> IPv4Network | None:
    if text is None or text == "":
        return None
    try:
        from ipaddress import IPv4Interface

        if "/" not in text:
            raise ValueError
        net = IPv4Interface(text).network
    except ValueError:
        raise ConfigError(f"config field {name}: invalid CIDR address {shorten(text)}") from None
    return None if net == IPv4Network("0.0.0.0/0") else net


def _parse_net6(text: str | None, name: str) -> IPv6Network | None:
    if text is None or text == "":
        return None
    try:
        from ipaddress import IPv6Interface

        if "/" not in text:
            raise ValueError
        net = IPv6Interface(text).network
    except ValueError:
        raise ConfigError(f"config field {name}: invalid CIDR address {shorten(text)}") from None
    return None if net.prefixlen == 0 and int(net.network_address) == 0 else net


def _parse_ip4(text: str | None, name: str) -> IPv4Address | None:
    if text is None or text == "":
        return None
    try:
        ip = IPv4Address(text)
    except ValueError:
        raise ConfigError(f"config field {name}: invalid IP address {shorten(text)}") from None
    return None if int(ip) == 0 else ip


def _parse_ip6(text: str | None, name: str) -> IPv6Address | None:
    if text is None or text == "":
        return None
    try:
        ip = IPv6Address(text)
    except ValueError:
        raise ConfigError(f"config field {name}: invalid IP address {shorten(text)}") from None
    return None if int(ip) == 0 else ip


def parse_config(text: str | bytes) -> NetworkConfig:
    """Decode and validate a network config, filling in flanneld's defaults.

    Raises ConfigError with a single-line message.
    """
    try:
        raw = loads_strict(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"config is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config must be a JSON object, got {type(raw).__name__}")
    d = _lower_keys(raw)

    enable_ipv4 = _get_bool(d, "EnableIPv4", True)
    enable_ipv6 = _get_bool(d, "EnableIPv6", False)
    network_text = _get_str(d, "Network")
    network = _parse_net4(network_text, "Network")
    ipv6_network_text = _get_str(d, "IPv6Network")
    subnet_len = _get_int(d, "SubnetLen")
    subnet_min = _parse_ip4(_get_str(d, "SubnetMin"), "SubnetMin")
    subnet_max = _parse_ip4(_get_str(d, "SubnetMax"), "SubnetMax")
    ipv6_network = _parse_net6(_get_str(d, "IPv6Network"), "IPv6Network")
    ipv6_subnet_len = _get_int(d, "IPv6SubnetLen")
    ipv6_subnet_min = _parse_ip6(_get_str(d, "IPv6SubnetMin"), "IPv6SubnetMin")
    ipv6_subnet_max = _parse_ip6(_get_str(d, "IPv6SubnetMax"), "IPv6SubnetMax")

    backend_raw = d.get("backend")
    if backend_raw is None:
        # flanneld's code (not its docs) falls back to udp; kept for interop.
        backend: dict[str, Any] = {"Type": "udp"}
    elif not isinstance(backend_raw, dict):
        raise ConfigError(
            f"error decoding Backend property of config: expected an object, got {shorten_json(backend_raw)}"
        )
    else:
        backend = backend_raw
    btype = _lower_keys(backend).get("type", "")
    if not isinstance(btype, str):
        raise ConfigError(
            f"error decoding Backend property of config: Type must be a string, got {shorten_json(btype)}"
        )

    if not enable_ipv4 and not enable_ipv6:
        raise ConfigError("config enables neither IPv4 nor IPv6 (EnableIPv4=false, EnableIPv6=false)")

    if enable_ipv4 and network is None:
        # flannel's message, then what was found (and, with an IPv6Network, the way to an IPv6-only network)
        hint = "; for an IPv6-only network set EnableIPv4=false" if ipv6_network is not None else ""
        raise ConfigError("please define a correct Network parameter in the flannel config "
                          f"(EnableIPv4=true, Network={_shown(network_text)}{hint})")
    if enable_ipv6 and ipv6_network is None:
        raise ConfigError("please define a correct IPv6Network parameter in the flannel config "
                          f"(EnableIPv6=true, IPv6Network={_shown(ipv6_network_text)})")
    if enable_ipv4:
        network, subnet_len, subnet_min, subnet_max = _check_v4(network, subnet_len, subnet_min, subnet_max)
    else:
        # An IPv6-only network (issue 13): flanneld ignores the IPv4 fields, and so does everything here, so no
        # code can act on a Network that is not in use. ``ignored_ipv4_fields`` keeps the names for a warning.
        network, subnet_len, subnet_min, subnet_max = None, 0, None, None
    if enable_ipv6:
        ipv6_network, ipv6_subnet_len, ipv6_subnet_min, ipv6_subnet_max = _check_v6(
            ipv6_network, ipv6_subnet_len, ipv6_subnet_min, ipv6_subnet_max
        )
    return NetworkConfig(
        network=network,
        subnet_len=subnet_len,
        subnet_min=subnet_min,
        subnet_max=subnet_max,
        enable_ipv4=enable_ipv4,
        enable_ipv6=enable_ipv6,
        ipv6_network=ipv6_network,
        ipv6_subnet_len=ipv6_subnet_len,
        ipv6_subnet_min=ipv6_subnet_min,
        ipv6_subnet_max=ipv6_subnet_max,
        backend_type=btype.lower(),
        enable_nftables=None if d.get("enablenftables") is None else _get_bool(d, "EnableNFTables", False),
        backend=backend,
    )


def _shown(text: str | None) -> str:
    """A network field's value for an error: missing, or as given (``0.0.0.0/0`` and ``::/0`` count as empty)."""
    return "missing" if not text else shorten(text)


def _check_v4(
    network: IPv4Network | None, subnet_len: int, smin: IPv4Address | None, smax: IPv4Address | None
) -> tuple[IPv4Network, int, IPv4Address, IPv4Address]:
    if network is None:
        raise ConfigError("please define a correct Network parameter in the flannel config")
    if subnet_len > 0:
        if subnet_len > 30:
            raise ConfigError(f"SubnetLen must be less than /31 (SubnetLen={subnet_len})")
        if subnet_len < network.prefixlen + 2:
            raise ConfigError(
                "network must be able to accommodate at least four subnets "
                f"(Network={network}, SubnetLen={subnet_len})"
            )
    elif network.prefixlen > 28:
        raise ConfigError(f"network is too small. Minimum useful network prefix is /28 (Network={network})")
    elif network.prefixlen <= 22:
        subnet_len = 24
    else:
        subnet_len = network.prefixlen + 2
    size = 1 << (32 - subnet_len)
    if smin is None:
        smin = network.network_address + size
    elif smin not in network:
        raise ConfigError(f"SubnetMin is not in the range of the Network (SubnetMin={smin}, Network={network})")
    if smax is None:
        smax = IPv4Address(int(network.broadcast_address) + 1 - size)
    elif smax not in network:
        raise ConfigError(f"SubnetMax is not in the range of the Network (SubnetMax={smax}, Network={network})")
    mask = (0xFFFFFFFF << (32 - subnet_len)) & 0xFFFFFFFF
    if int(smin) & mask != int(smin):
        raise ConfigError(f"SubnetMin is not on a SubnetLen boundary: {smin}")
    if int(smax) & mask != int(smax):
        raise ConfigError(f"SubnetMax is not on a SubnetLen boundary: {smax}")
    return network, subnet_len, smin, smax


def _check_v6(
    network: IPv6Network | None, subnet_len: int, smin: IPv6Address | None, smax: IPv6Address | None
) -> tuple[IPv6Network, int, IPv6Address, IPv6Address]:
    if network is None:
        raise ConfigError("please define a correct IPv6Network parameter in the flannel config")
    if subnet_len > 0:
        if subnet_len > 126:
            raise ConfigError(f"SubnetLen must be less than /127 (IPv6SubnetLen={subnet_len})")
        if subnet_len < network.prefixlen + 2:
            raise ConfigError(
                "IPv6Network must be able to accommodate at least four subnets "
                f"(IPv6Network={network}, IPv6SubnetLen={subnet_len})"
            )
    elif network.prefixlen > 124:
        raise ConfigError(
            f"IPv6Network is too small. Minimum useful network prefix is /124 (IPv6Network={network})"
        )
    elif network.prefixlen <= 62:
        subnet_len = 64
    else:
        subnet_len = network.prefixlen + 2
    size = 1 << (128 - subnet_len)
    if smin is None:
        smin = network.network_address + size
    elif smin not in network:
        raise ConfigError(
            f"IPv6SubnetMin is not in the range of the IPv6Network (IPv6SubnetMin={smin}, IPv6Network={network})"
        )
    if smax is None:
        smax = IPv6Address(int(network.broadcast_address) + 1 - size)
    elif smax not in network:
        raise ConfigError(
            f"IPv6SubnetMax is not in the range of the IPv6Network (IPv6SubnetMax={smax}, IPv6Network={network})"
        )
    mask = ((1 << 128) - 1) ^ (size - 1)
    if int(smin) & mask != int(smin):
        raise ConfigError(f"IPv6SubnetMin is not on a SubnetLen boundary: {smin}")
    if int(smax) & mask != int(smax):
        raise ConfigError(f"IPv6SubnetMax is not on a SubnetLen boundary: {smax}")
    return network, subnet_len, smin, smax


def check_backend_type(config: NetworkConfig) -> None:
    """flanneld fails to start on a Backend.Type it does not know."""
    if config.backend_type not in KNOWN_BACKENDS:
        raise ConfigError(f"unknown backend type: {config.backend_type}")
