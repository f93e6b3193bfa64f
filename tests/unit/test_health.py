"""/healthz and /readyz: a blocked event loop and a reconciler that stopped passing fail liveness, a stale
last pass fails readiness; start_health binds first and fails with one line.

The daemon here is a small stateful stand-in with the attributes health.py reads; the server, the loop
monitor and the watchdog thread are the real ones, on loopback.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from pyflannel.daemon import health
from pyflannel.daemon.health import HealthBindError, HealthBounds, LoopMonitor, liveness_problems, route, stale_sync


@dataclass
class Stats:
    last_sync: float = 0.0
    passes: int = 0
    in_sync: bool = True


@dataclass
class Ready:
    in_sync: bool = True

    def missing(self) -> list[str]:
        return []


@dataclass
class Opts:
    resync_period: float = 10.0
    healthz_ip: str = "127.0.0.1"
    healthz_port: int = 0


@dataclass
class Reconciler:
    stats: Stats = field(default_factory=Stats)


@dataclass
class Lease:
    subnet: str = "100.64.9.0/24"
    expiration: float | None = None
    attrs: Any = field(default_factory=lambda: SimpleNamespace(public_ip="198.18.0.11"))
    lease_id: int = 1
    reserved: bool = False


@dataclass
class Keeper:
    lease: Lease | None = field(default_factory=Lease)


@dataclass
class FakeDaemon:
    opts: Opts = field(default_factory=Opts)
    reconciler: Reconciler = field(default_factory=Reconciler)
    ready: Ready = field(default_factory=Ready)
    config: Any = "cfg"
    keeper: Keeper = field(default_factory=Keeper)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def status_and_body(resp: bytes) -> tuple[int, str]:
    head, _, body = resp.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def test_loop_monitor_reports_a_stall_while_it_lasts_and_for_the_hold_after() -> None:
    clock = Clock()
    m = LoopMonitor(HealthBounds(tick=0.5, loop_bound=5, stall_hold=10), clock)
    clock.t += 0.5
    m.tick()
    assert m.problem() == ""
    clock.t += 7.25  # the loop was stuck; the tick has not run yet
    assert m.problem() == "event loop blocked for 7.2s (bound 5s)"
    m.tick()  # it runs again
    clock.t += 3
    assert m.problem() == "event loop was blocked for 7.2s (bound 5s), 3.0s ago"
    for _ in range(20):
        clock.t += 0.5
        m.tick()
    assert m.problem() == ""


def test_liveness_ignores_sync_before_the_first_pass_then_bounds_it() -> None:
    d = FakeDaemon()
    now = 50_000.0
    assert liveness_problems(d, None, now=now) == []  # waiting for etcd at boot: alive
    d.reconciler.stats.last_sync = now - 34
    assert liveness_problems(d, None, now=now) == []  # 3 x 10 s + 5 s
    d.reconciler.stats.last_sync = now - 36
    assert liveness_problems(d, None, now=now) == [
        "no reconcile pass completed for 36s (bound 35s: 3 x resync period 10s + 5s)"]
    d.opts.resync_period = 60
    assert liveness_problems(d, None, now=now) == []


def test_readyz_names_a_stale_sync() -> None:
    d = FakeDaemon()
    d.reconciler.stats.last_sync = time.time() - 25
    assert stale_sync(d).startswith("last reconcile pass completed 25s ago (bound 20s: 2 x resync period)")
    code, body = status_and_body(route(d, "/readyz"))
    assert code == 503 and "last reconcile pass completed 25s ago" in body
    d.reconciler.stats.last_sync = time.time() - 1
    assert status_and_body(route(d, "/readyz")) == (200, "flanneld is ready\n")
    assert status_and_body(route(d, "/healthz")) == (200, "flanneld is running\n")


def test_healthz_503_names_the_reason() -> None:
    d = FakeDaemon()
    d.reconciler.stats.last_sync = time.time() - 100
    code, body = status_and_body(route(d, "/healthz"))
    assert code == 503
    assert body.startswith("flanneld is not healthy: no reconcile pass completed for 100s (bound 35s")
    assert "\n" not in body.rstrip("\n")


async def get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    return status_and_body(data)


def test_blocked_loop_fails_healthz_and_the_watchdog_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "pyflannel.daemon.health")
    bounds = HealthBounds(tick=0.02, loop_bound=0.3, stall_hold=30)

    async def go() -> list[tuple[int, str]]:
        hs = await health.start_health(FakeDaemon(), bounds)
        port = hs.sockets[0].getsockname()[1]
        try:
            before = await get(port, "/healthz")
            await asyncio.sleep(0.1)  # the monitor task runs
            time.sleep(0.8)  # block the loop, as a CPU-bound or blocking call would
            await asyncio.sleep(0.1)
            after = await get(port, "/healthz")
            return [before, after]
        finally:
            await hs.close()

    before, after = asyncio.run(go())
    assert before == (200, "flanneld is running\n")
    assert after[0] == 503 and "event loop was blocked for 0." in after[1] and "(bound 0.3s)" in after[1]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].getMessage().startswith("Event loop blocked for ")
    assert "blocked in:" in warnings[0].getMessage() and "test_health.py" in warnings[0].getMessage()
    assert any(r.getMessage().startswith("Event loop ran again after being blocked for") for r in caplog.records)


def test_start_health_on_a_bound_port_is_one_line() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        d = FakeDaemon(opts=Opts(healthz_port=port))
        with pytest.raises(HealthBindError) as e:
            asyncio.run(health.start_health(d))
        assert str(e.value) == f"cannot listen on -healthz-ip/-healthz-port 127.0.0.1:{port}: address already in use"
        assert isinstance(e.value, OSError) and e.value.errno == 98
        assert health.check_bind("127.0.0.1", port) == str(e.value)
    finally:
        taken.close()
    assert health.check_bind("127.0.0.1", port) == ""


def test_metrics_registry_is_built_on_the_first_scrape() -> None:
    async def go() -> tuple[int, str]:
        hs = await health.start_health(FakeDaemon())
        try:
            return await get(hs.sockets[0].getsockname()[1], "/metrics")
        finally:
            await hs.close()

    pytest.importorskip("prometheus_client")
    code, body = asyncio.run(go())
    assert code == 200 and "flannel_build_info" in body
