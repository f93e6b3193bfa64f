"""cli.flanneld.describe_startup_error: each kind of start-up error becomes one line naming the thing; a bug
(any other exception) is left alone so it keeps its traceback."""

from __future__ import annotations

import errno

from pyroute2.netlink.exceptions import NetlinkError

from pyflannel.adapters.netlink import DataplaneError
from pyflannel.cli.flanneld import describe_startup_error
from pyflannel.daemon.health import HealthBindError
from pyflannel.daemon.iface import InterfaceError


def raised(e: BaseException) -> BaseException:
    def ensure_vxlan() -> None:  # a frame to name; its file is not under pyflannel/, so "?" is expected
        raise e

    try:
        ensure_vxlan()
    except BaseException as caught:  # noqa: BLE001
        return caught
    raise AssertionError("unreachable")


def test_raw_netlink_refusal_names_errno_and_capability() -> None:
    line = describe_startup_error(raised(NetlinkError(errno.EPERM, "Operation not permitted")))
    assert line == ("netlink request ? refused by the kernel: operation not permitted (errno 1); "
                    "flanneld needs root or CAP_NET_ADMIN")


def test_flannel_errors_are_their_own_first_line() -> None:
    assert describe_startup_error(InterfaceError("Failed to find IPv4 address for interface bare0")) == \
        "Failed to find IPv4 address for interface bare0"
    assert describe_startup_error(DataplaneError("create flannel.1 (vxlan id 1): Operation not permitted")) == \
        "create flannel.1 (vxlan id 1): Operation not permitted (flanneld needs root or CAP_NET_ADMIN)"


def test_os_errors_name_the_file_or_the_bind() -> None:
    e = PermissionError(errno.EACCES, "Permission denied", "/run/flannel/subnet.env")
    assert describe_startup_error(e) == "start-up failed: '/run/flannel/subnet.env': permission denied"
    b = HealthBindError("cannot listen on -healthz-ip/-healthz-port 0.0.0.0:10256: address already in use")
    assert describe_startup_error(b) == str(b)


def test_a_bug_keeps_its_traceback() -> None:
    assert describe_startup_error(KeyError("x")) is None
    assert describe_startup_error(AssertionError()) is None
