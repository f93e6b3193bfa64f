"""IPv6 uplink address selection: never a temporary, deprecated or tentative address (flannel #2293)."""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest

from pyflannel.daemon.iface import (
    IFA_F_DEPRECATED,
    IFA_F_PERMANENT,
    IFA_F_TEMPORARY,
    IFA_F_TENTATIVE,
    Addr6,
    InterfaceError,
    pick_v6,
    select_v6,
)


def a(ip: str, flags: int = 0) -> Addr6:
    return Addr6(IPv6Address(ip), 64, flags)


def test_temporary_deprecated_tentative_never_picked() -> None:
    addrs = [
        a("fd18::aaaa", IFA_F_TEMPORARY),
        a("fd18::bbbb", IFA_F_DEPRECATED),
        a("fd18::cccc", IFA_F_TENTATIVE | IFA_F_PERMANENT),
        a("fd18::11"),  # SLAAC (dynamic), stable
    ]
    assert pick_v6(addrs) == IPv6Address("fd18::11")


def test_order_global_then_permanent() -> None:
    addrs = [a("fe80::1", IFA_F_PERMANENT), a("fd18::99"), a("fd18::11", IFA_F_PERMANENT)]
    assert pick_v6(addrs) == IPv6Address("fd18::11")
    assert pick_v6([a("fe80::1", IFA_F_PERMANENT)]) == IPv6Address("fe80::1")


def test_none_usable_is_one_line_error() -> None:
    with pytest.raises(InterfaceError) as e:
        select_v6([a("fd18::aaaa", IFA_F_TEMPORARY)], "eth0")
    assert "eth0" in str(e.value) and "\n" not in str(e.value)


def test_public_ipv6_flag_wins() -> None:
    assert select_v6([a("fd18::11")], "eth0", "fd18::77") == (IPv6Address("fd18::11"), IPv6Address("fd18::77"))
    with pytest.raises(InterfaceError, match="-public-ipv6"):
        select_v6([a("fd18::11")], "eth0", "10.0.0.1")
