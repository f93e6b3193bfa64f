"""``/healthz`` (liveness), ``/readyz`` (readiness) and ``/metrics`` on -healthz-ip:-healthz-port.

flanneld's /healthz always answers 200. Ours answers 503 with the reason when the daemon is
alive but no longer working, so a liveness probe restarts it:

* the event loop is blocked: a small task (``LoopMonitor.run``) records a tick every
  ``tick`` seconds; a lag above ``loop_bound`` fails /healthz. The handler itself runs on the
  loop, so while the loop is stuck it cannot answer at all (the probe times out, which is a
  failure too); a watchdog thread sees the stale tick, logs one WARNING with the stack of the
  blocked thread, and once the loop runs again /healthz keeps failing for ``stall_hold``
  seconds so the first probe answered after the stall still reports it;
* the reconciler stopped passing: once a pass has completed, none for
  ``live_sync_periods`` resync periods plus ``sync_slack`` seconds. Before the first pass
  (waiting for etcd at boot) liveness does not look at it: a node waiting for etcd must not
  be restarted in a loop.

/readyz answers 200 only while the lease is held, the rules are installed, subnet.env is
written, the kernel matches the latest lease snapshot and the last pass is no older than
``ready_sync_periods`` resync periods; otherwise 503 and what is missing
(``metrics.readiness_problems`` plus the stale-sync check here). /metrics is the Prometheus
text format from a private registry (``metrics.make_registry``). docs/operators.md
documents the thresholds.

``start_health`` binds before anything else starts, so a port already in use is one error
line at start-up instead of a task dying later. A tiny asyncio responder, one request per
connection, no framework: the probes and a scrape every few seconds are all the traffic it
sees. prometheus_client is imported when the server starts, not when the daemon does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyflannel.daemon import metrics

log = logging.getLogger(__name__)

TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class HealthBounds:
    """Thresholds of /healthz and /readyz (seconds, or multiples of --resync-period)."""

    tick: float = 0.5  # how often the loop monitor ticks
    loop_bound: float = 5.0  # a tick later than this: the loop is (or was) blocked
    stall_hold: float = 10.0  # /healthz keeps failing this long after a stall ended
    live_sync_periods: float = 3.0  # /healthz: no pass for this many resync periods ...
    sync_slack: float = 5.0  # ... plus this
    ready_sync_periods: float = 2.0  # /readyz: the last pass is older than this many periods


DEFAULT_BOUNDS = HealthBounds()


class HealthBindError(OSError):
    """The health server cannot listen; the message names the flags and their values."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "healthz: cannot listen"


class LoopMonitor:
    """Measures event-loop lag from a periodic task; a watchdog thread notices a stuck loop.

    ``last_tick`` is the monotonic time of the latest tick. A stall is a gap between ticks
    above ``bounds.loop_bound``; the longest gap of the last stall and when it ended are kept
    for ``problem``.
    """

    def __init__(self, bounds: HealthBounds = DEFAULT_BOUNDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.bounds = bounds
        self.clock = clock
        self.last_tick = clock()
        self.stall_length = 0.0  # length of the last stall (s); 0 = none seen
        self.stall_ended = 0.0  # monotonic time it ended
        self._warned = False
        self._loop_thread: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        """Record one tick (called on the loop)."""
        now = self.clock()
        gap = now - self.last_tick
        if gap > self.bounds.loop_bound:
            self.stall_length, self.stall_ended = gap, now
            log.info("Event loop ran again after being blocked for %.1fs", gap)
            self._warned = False
        self.last_tick = now

    async def run(self) -> None:
        self._loop_thread = threading.get_ident()
        self.last_tick = self.clock()
        while True:
            await asyncio.sleep(self.bounds.tick)
            self.tick()

    def problem(self, now: float | None = None) -> str:
        """Why the loop is not healthy, or "" when it is."""
        now = self.clock() if now is None else now
        gap = now - self.last_tick
        b = self.bounds
        if gap > b.loop_bound:
            return f"event loop blocked for {gap:.1f}s (bound {b.loop_bound:g}s)"
        if self.stall_length and now - self.stall_ended < b.stall_hold:
            return (f"event loop was blocked for {self.stall_length:.1f}s (bound {b.loop_bound:g}s), "
                    f"{now - self.stall_ended:.1f}s ago")
        return ""

    # --- watchdog thread ------------------------------------------------------------------

    def start_watchdog(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, name="healthz-watchdog", daemon=True)
        self._thread.start()

    def stop_watchdog(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.bounds.tick):
            gap = self.clock() - self.last_tick
            if gap > self.bounds.loop_bound and not self._warned:
                self._warned = True
                log.warning("Event loop blocked for %.1fs (bound %gs); /healthz fails until it runs again%s",
                            gap, self.bounds.loop_bound, self._where())

    def _where(self) -> str:
        frame = sys._current_frames().get(self._loop_thread) if self._loop_thread is not None else None
        if frame is None:
            return ""
        last = traceback.extract_stack(frame)[-3:]
        return "; blocked in: " + " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}"
                                               for f in reversed(last))


def sync_age(daemon: Any, now: float | None = None) -> float | None:
    """Seconds since the last completed reconcile pass; None before the first one (or without a reconciler)."""
    stats = getattr(getattr(daemon, "reconciler", None), "stats", None)
    last = float(getattr(stats, "last_sync", 0) or 0)
    if not last:
        return None
    return max(0.0, (time.time() if now is None else now) - last)


def _resync_period(daemon: Any) -> float:
    return float(getattr(getattr(daemon, "opts", None), "resync_period", 10) or 10)


def liveness_problems(daemon: Any, monitor: LoopMonitor | None, bounds: HealthBounds = DEFAULT_BOUNDS,
                      now: float | None = None) -> list[str]:
    """Why /healthz fails; empty when the daemon is alive and working."""
    out: list[str] = []
    if monitor is not None and (p := monitor.problem()):
        out.append(p)
    age = sync_age(daemon, now)
    period = _resync_period(daemon)
    limit = bounds.live_sync_periods * period + bounds.sync_slack
    if age is not None and age > limit:
        out.append(f"no reconcile pass completed for {age:.0f}s (bound {limit:g}s: "
                   f"{bounds.live_sync_periods:g} x resync period {period:g}s + {bounds.sync_slack:g}s)")
    return out


def stale_sync(daemon: Any, bounds: HealthBounds = DEFAULT_BOUNDS, now: float | None = None) -> str:
    """The /readyz line for a stale last pass, or ""."""
    age = sync_age(daemon, now)
    period = _resync_period(daemon)
    limit = bounds.ready_sync_periods * period
    if age is not None and age > limit:
        return (f"last reconcile pass completed {age:.0f}s ago (bound {limit:g}s: "
                f"{bounds.ready_sync_periods:g} x resync period)")
    return ""


def _response(status: str, body: str | bytes, ctype: str = TEXT, head_only: bool = False) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    return head.encode() + (b"" if head_only else data)


def route(daemon: Any, path: str, registry: Any = None, method: str = "GET", monitor: LoopMonitor | None = None,
          bounds: HealthBounds = DEFAULT_BOUNDS) -> bytes:
    head = method == "HEAD"
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", "only GET and HEAD\n", head_only=head)
    if path == "/healthz":
        sick = liveness_problems(daemon, monitor, bounds)
        if sick:
            return _response("503 Service Unavailable", "flanneld is not healthy: " + "; ".join(sick) + "\n",
                             head_only=head)
        return _response("200 OK", "flanneld is running\n", head_only=head)
    if path == "/readyz":
        missing = metrics.readiness_problems(daemon)
        if stale := stale_sync(daemon, bounds):
            missing.append(stale)
        if missing:
            return _response("503 Service Unavailable", "flanneld is not ready yet: " + "; ".join(missing) + "\n",
                             head_only=head)
        return _response("200 OK", "flanneld is ready\n", head_only=head)
    if path == "/metrics" and registry is not None:
        body, ctype = metrics.render(registry)
        return _response("200 OK", body, ctype, head_only=head)
    return _response("404 Not Found", "not found\n", head_only=head)


class HealthServer:
    """The listening health server, its loop monitor task and watchdog thread (``start_health``)."""

    def __init__(self, server: asyncio.AbstractServer, monitor: LoopMonitor, task: asyncio.Task[None]) -> None:
        self.server = server
        self.monitor = monitor
        self._task = task

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(getattr(self.server, "sockets", ()) or ())

    async def serve_forever(self) -> None:
        """Wait until cancelled (the server is already accepting), then close."""
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    async def close(self) -> None:
        self.monitor.stop_watchdog()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)


def _reason(e: OSError) -> str:
    """``address already in use``: the C library's text for the errno, not asyncio's wrapper sentence."""
    import os

    if e.errno:
        return os.strerror(e.errno).lower()
    return (e.strerror or str(e)).lower()


def bind_problem(ip: str, port: int) -> str:
    """The one-line message for a health server that cannot listen on ip:port."""
    return f"-healthz-ip/-healthz-port {ip}:{port}"


async def start_health(daemon: Any, bounds: HealthBounds = DEFAULT_BOUNDS) -> HealthServer:
    """Bind -healthz-ip:-healthz-port and start answering; raises HealthBindError (an OSError) at once.

    The message is one line naming the flags and the value, e.g. ``cannot listen on
    -healthz-ip/-healthz-port 0.0.0.0:10256: address already in use``.
    """
    ip, port = daemon.opts.healthz_ip, daemon.opts.healthz_port
    monitor = LoopMonitor(bounds)
    registry_box: list[Any] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        path = "?"
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            parts = line.decode(errors="replace").split()
            method = parts[0] if parts else "GET"
            path = parts[1].split("?")[0] if len(parts) >= 2 else "/"
            # Drain headers; the body of a GET is ignored.
            while (h := await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                _ = h
            if path == "/metrics" and not registry_box:
                registry_box.append(metrics.make_registry(daemon))
            writer.write(route(daemon, path, registry_box[0] if registry_box else None, method, monitor, bounds))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        except Exception:  # a scrape must never take the server down
            log.exception("healthz: error answering %r", path)
        finally:
            writer.close()

    try:
        server = await asyncio.start_server(handle, ip, port)
    except OSError as e:
        err = HealthBindError(f"cannot listen on {bind_problem(ip, port)}: {_reason(e)}")
        err.errno = e.errno
        raise err from None
    task = asyncio.create_task(monitor.run(), name="healthz-loop-monitor")
    monitor.start_watchdog()
    log.info("Start healthz server on %s:%d (/healthz, /readyz, /metrics)", ip, port)
    return HealthServer(server, monitor, task)


async def serve_health(daemon: Any) -> None:
    """The old entry point: start, then serve until cancelled (prefer ``start_health`` before start-up)."""
    hs = await start_health(daemon)
    await hs.serve_forever()


def check_bind(ip: str, port: int) -> str:
    """A synchronous pre-flight: "" if ip:port can be bound now, else the one-line error.

    For the CLI, until the daemon calls ``start_health`` before its start-up steps.
    """
    import socket

    try:
        infos = socket.getaddrinfo(ip or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as e:
        return f"cannot listen on {bind_problem(ip, port)}: {_reason(e)}"
    for family, kind, proto, _, addr in infos[:1]:
        s = socket.socket(family, kind, proto)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
        except OSError as e:
            return f"cannot listen on {bind_problem(ip, port)}: {_reason(e)}"
        finally:
            s.close()
    return ""
