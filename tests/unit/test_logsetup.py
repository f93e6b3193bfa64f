"""-v levels: 2 adds per-peer detail (reconciler and watcher DEBUG lines), 4 adds every DEBUG line."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from pyflannel import logsetup


@pytest.fixture(autouse=True)
def _per_peer_levels_restored() -> Iterator[None]:
    yield
    for name in logsetup.PER_PEER_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


def emit() -> None:
    logging.getLogger("pyflannel.daemon.reconciler").debug("peer op replace route 100.64.9.0/24")
    logging.getLogger("pyflannel.adapters.etcd_watcher").debug("lease added: 100.64.9.0-24 198.18.0.12")
    logging.getLogger("pyflannel.adapters.netlink").debug("netlink call")
    logging.getLogger("pyflannel.flanneld").info("a change")


@pytest.mark.parametrize(("v", "want", "unwanted"), [
    (0, ["a change"], ["peer op", "lease added", "netlink call"]),
    (1, ["a change"], ["peer op", "lease added", "netlink call"]),
    (2, ["a change", "peer op", "lease added"], ["netlink call"]),
    (3, ["a change", "peer op", "lease added"], ["netlink call"]),
    (4, ["a change", "peer op", "lease added", "netlink call"], []),
])
def test_verbosity_levels(capsys: pytest.CaptureFixture[str], v: int, want: list[str], unwanted: list[str]) -> None:
    logsetup.setup("text", v)
    emit()
    out = capsys.readouterr().err
    for w in want:
        assert w in out, (v, w, out)
    for u in unwanted:
        assert u not in out, (v, u, out)


def test_lower_verbosity_after_higher_turns_per_peer_detail_off(capsys: pytest.CaptureFixture[str]) -> None:
    logsetup.setup("text", 2)
    logsetup.setup("text", 0)
    emit()
    assert "peer op" not in capsys.readouterr().err
