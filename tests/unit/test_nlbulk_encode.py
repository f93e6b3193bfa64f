"""The one-pack IPv4 encoders of nlbulk give exactly the bytes of the attribute-by-attribute reference."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from pyflannel.adapters.nlbulk import encode, encode_generic
from pyflannel.core.model import Fdb, Neigh, Route
from pyflannel.core.plan import Op

IDX = {"flannel.1": 7, "eth0": 2, "flannel-v6.1": 9}
ENTRIES = [
    Route(IPv4Network("100.64.8.0/29"), IPv4Address("100.64.8.0"), "flannel.1", True),
    Route(IPv4Network("100.64.8.0/24"), IPv4Address("198.18.0.12"), "eth0", False),
    Route(IPv4Network("100.127.255.248/29"), IPv4Address("100.127.255.248"), "flannel.1", True),
    Neigh(IPv4Address("100.64.8.0"), "0e:00:00:00:00:08", "flannel.1"),
    Neigh(IPv4Address("100.127.255.255"), "ff:fe:fd:fc:fb:fa", "flannel.1"),
    Fdb("0e:00:00:00:00:08", IPv4Address("198.18.1.8"), "flannel.1"),
    Fdb("02:ab:CD:ef:00:01", IPv4Address("198.19.255.254"), "flannel.1"),
    # IPv6 entries take the generic path; included so that encode() is checked to hand them over intact.
    Route(IPv6Network("fd64:0:0:8::/64"), IPv6Address("fd64:0:0:8::"), "flannel-v6.1", True),
    Neigh(IPv6Address("fd64:0:0:8::"), "0e:00:00:00:00:08", "flannel-v6.1"),
    Fdb("0e:00:00:00:00:08", IPv6Address("fd18::12"), "flannel-v6.1"),
]


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: f"{type(e).__name__}-{getattr(e, 'dev', '')}")
@pytest.mark.parametrize("action", ["replace", "delete"])
@pytest.mark.parametrize("ack", [True, False])
def test_fast_path_equals_reference(entry: object, action: str, ack: bool) -> None:
    op = Op(action, entry)  # type: ignore[arg-type]
    assert encode(op, 12345, IDX, ack) == encode_generic(op, 12345, IDX, ack)


def test_bad_mac_and_unknown_device_are_errors_not_garbage() -> None:
    with pytest.raises(ValueError, match="bad MAC"):
        encode(Op("replace", Neigh(IPv4Address("100.64.8.0"), "0e:00:00:00:08", "flannel.1")), 1, IDX)
    with pytest.raises(KeyError):
        encode(Op("replace", Route(IPv4Network("100.64.8.0/29"), IPv4Address("100.64.8.0"), "nope", True)), 1, IDX)


def test_unknown_entry_type_is_refused() -> None:
    with pytest.raises(TypeError, match="no rtnetlink encoding"):
        encode(Op("replace", object()), 1, IDX)  # type: ignore[arg-type]
