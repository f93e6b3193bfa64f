"""Each side restarts (SIGTERM, then kill -9) while pods ping across: the other side's routes, neighbours
and FDB entries stay exactly as they were the whole time, and pings survive.

Both implementations leave the data plane, the lease and subnet.env in place when they stop, so the peers
see no lease change and traffic keeps flowing through a restart; the restarted daemon takes its lease,
subnet and VtepMAC back.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest
from support import checks
from support.checks import Pinger

from .conftest import Mixed

INTERVAL = 0.1


class Sampler(threading.Thread):
    """Reads the kernel state of some nodes over and over and remembers every sample that differs."""

    def __init__(self, expected: dict[str, checks.KernelState]) -> None:
        super().__init__(daemon=True)
        self.expected = expected
        self.samples = 0
        self.diffs: list[str] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            for ns, want in self.expected.items():
                got = checks.kernel(ns)
                if got != want:
                    gone = {k: sorted(want[k] - got[k]) for k in want if want[k] - got[k]}
                    extra = {k: sorted(got[k] - want[k]) for k in got if got[k] - want[k]}
                    self.diffs.append(f"{ns}: missing {gone} extra {extra}")
            self.samples += 1
            self._done.wait(0.2)

    def finish(self) -> None:
        self._done.set()
        self.join(timeout=10)


@pytest.mark.parametrize("side", ["go", "py"])
def test_restart_keeps_peer_state_and_pings(mixed, side: str) -> None:
    m: Mixed = mixed(pods=1)
    c = m.c
    target = (m.go if side == "go" else m.py)[0]
    others = [n for n in c.nodes if n is not target]
    leases_before = checks.leases(c)
    expected = {n.ns: checks.kernel(n.ns) for n in c.nodes}
    assert all(expected[n.ns] == checks.expected(c, n) for n in c.nodes), "not converged at start"

    pingers = {}
    for o in others:
        pingers[f"{o.pods[0].name}->{target.pods[0].name}"] = Pinger(o.pods[0].ns, target.pods[0].ip, INTERVAL)
        pingers[f"{target.pods[0].name}->{o.pods[0].name}"] = Pinger(target.pods[0].ns, o.pods[0].ip, INTERVAL)
    # The restarted node's own entries are watched too: neither implementation removes them on exit.
    sampler = Sampler(expected)
    sampler.start()
    windows = []
    try:
        time.sleep(1)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            t0 = time.monotonic()
            rc = m.stop(target, sig)
            expected_rc = 0 if sig == signal.SIGTERM else -signal.SIGKILL
            assert rc == expected_rc, f"{m.label(target)} exited {rc} on signal {sig}"
            time.sleep(1)  # down for a while: the peers must not react
            m.start(target)
            m.wait_ready(target)
            checks.wait_converged(c, timeout=30)
            windows.append(time.monotonic() - t0)
            time.sleep(1)
    finally:
        sampler.finish()
        results = {name: p.stop() for name, p in pingers.items()}
    lost = {name: sent - got for name, (sent, got) in results.items()}
    print(f"\nrestart of {m.label(target)}: windows {[round(w, 1) for w in windows]} s, "
          f"pings (sent, received) {results}, state samples {sampler.samples}")
    assert not sampler.diffs, f"kernel state changed during {m.label(target)}'s restarts: {sampler.diffs[:5]}"
    assert checks.leases(c) == leases_before, "the restarted node did not take its lease back unchanged"
    # The data plane never went away, so not a single ping may be lost (a ping is lost only when it gets no
    # reply within 1 s, far longer than a vxlan round trip here).
    assert all(v == 0 for v in lost.values()), f"pings lost across {m.label(target)}'s restarts: {lost}"
