"""The subnet file (``/run/flannel/subnet.env``) that Docker, the CNI plugin and flanneld
itself (on restart) read.

The byte layout is flanneld's: fixed key order, the subnet written with its first host
address (``100.64.52.1/24``), booleans as ``true``/``false``.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network

from pyflannel.core.errors import SubnetEnvError, shorten


@dataclass(frozen=True)
class SubnetEnv:
    network: IPv4Network | None
    subnet: IPv4Network | None
    mtu: int
    ipmasq: bool
    ipv6_network: IPv6Network | None = None
    ipv6_subnet: IPv6Network | None = None

    def render(self) -> str:
        lines = []
        if self.network is not None and self.subnet is not None:
            lines.append(f"FLANNEL_NETWORK={self.network}")
            lines.append(f"FLANNEL_SUBNET={self.subnet.network_address + 1}/{self.subnet.prefixlen}")
        if self.ipv6_network is not None and self.ipv6_subnet is not None:
            lines.append(f"FLANNEL_IPV6_NETWORK={self.ipv6_network.compressed}")
            lines.append(
                f"FLANNEL_IPV6_SUBNET={(self.ipv6_subnet.network_address + 1).compressed}/"
                f"{self.ipv6_subnet.prefixlen}"
            )
        lines.append(f"FLANNEL_MTU={self.mtu}")
        lines.append(f"FLANNEL_IPMASQ={'true' if self.ipmasq else 'false'}")
        return "\n".join(lines) + "\n"


def parse_env_text(text: str, source: str = "subnet file") -> dict[str, str]:
    """Parse KEY=VALUE lines as godotenv does for the files flanneld writes.

    Blank lines and ``#`` comments are skipped, an ``export`` prefix and matching quotes
    are stripped; any other line is an error naming the line.
    """
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("export "):
            s = s[len("export ") :].lstrip()
        key, sep, value = s.partition("=")
        key = key.strip()
        if not sep or not key or not all(c.isalnum() or c == "_" for c in key):
            raise SubnetEnvError(f"{source} line {n}: not KEY=VALUE: {line[:80]!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[key] = value
    return out


def previous_subnets(env: dict[str, str]) -> tuple[IPv4Network | None, IPv6Network | None]:
    """FLANNEL_SUBNET / FLANNEL_IPV6_SUBNET masked to their networks (``.1/24`` -> ``.0/24``)."""
    sn4 = sn6 = None
    v4 = env.get("FLANNEL_SUBNET")
    if v4:
        try:
            sn4 = IPv4Interface(v4).network
        except ValueError:
            raise SubnetEnvError(f"FLANNEL_SUBNET: invalid value {shorten(v4)}") from None
    v6 = env.get("FLANNEL_IPV6_SUBNET")
    if v6:
        try:
            sn6 = IPv6Interface(v6).network
        except ValueError:
            raise SubnetEnvError(f"FLANNEL_IPV6_SUBNET: invalid value {shorten(v6)}") from None
    return sn4, sn6
