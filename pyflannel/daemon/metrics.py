"""What flanneld tells operators about itself: Prometheus metrics, readiness and a status file.

Nothing here keeps its own copy of the daemon's state. The daemon calls ``after_pass`` at the
end of each reconcile pass; that feeds the reconcile-duration histogram (the one thing that
must be accumulated) and rewrites the status file. Everything else is read from the daemon's
objects when someone asks: a scrape of ``/metrics`` runs ``DaemonCollector.collect`` and a
probe of ``/readyz`` runs ``readiness_problems``.

``prometheus_client`` is imported only inside ``make_registry`` and ``collect``, which run
on the first scrape of /metrics: a daemon without ``-healthz-port`` never loads it (about
14 MB of RSS and 60 ms of start-up, docs/design-notes.md). Metrics go to a private
CollectorRegistry, so the library's process/platform/GC collectors stay out.

The status file (``<subnet-file dir>/pyflannel-status.json``) is for ``flannelctl status``
and ``doctor`` on the same node: last sync, lease, device, counters, readiness. It is written
with rename(2) so a reader never sees half a file, but without fsync: it is advisory, gone
after a reboot like /run, and rewritten by the next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyflannel import __version__

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

STATUS_FILE_NAME = "pyflannel-status.json"
STATUS_VERSION = 1
# Seconds; a pass is a netlink dump plus a diff, normally a few milliseconds.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COMPAT = "v0.20.2"


STATUS_INTERVAL = 1.0  # s between two status-file writes at most


def status_path(subnet_file: str | Path) -> Path:
    return Path(subnet_file).parent / STATUS_FILE_NAME


class DurationHistogram:
    """Cumulative-bucket histogram state, exposed at scrape time as a Prometheus histogram."""

    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        i = next((n for n, le in enumerate(self.buckets) if value <= le), len(self.buckets))
        self.counts[i] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for le, c in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            total += c
            out.append((le, total))
        return out


def lease_fingerprint(daemon: Any) -> tuple[int, int]:
    """(number of leases, highest mod revision) of the watcher's map: changes with any lease event."""
    watcher = getattr(daemon, "watcher", None)
    leases = getattr(watcher, "leases", None) or {}
    return len(leases), max((getattr(le, "mod_revision", 0) for le in leases.values()), default=0)


class DaemonMetrics:
    """Owned by the daemon; ``after_pass`` is its only writer."""

    def __init__(self, status_file: Path | None) -> None:
        self.status_file = status_file
        self.reconcile = DurationHistogram()
        self.last_pass_failures = 0
        self.synced_fingerprint: tuple[int, int] | None = None
        self._seen_passes = 0
        # The status file is for flannelctl, read by people: rewriting it after every pass (every lease
        # event) cost a third of the loop's CPU under churn. At most once per STATUS_INTERVAL; the rules
        # loop flushes a pending one.
        self._status_written = 0.0
        self._status_pending = False
        self._status_timer = False
        self._status_key: tuple[Any, ...] | None = None
        self._seen_errors = 0
        self._status_error: str | None = None

    def after_pass(self, daemon: Any) -> None:
        stats = daemon.reconciler.stats
        if stats.passes != self._seen_passes:
            self.reconcile.observe(stats.last_duration)
            self.last_pass_failures = max(0, stats.netlink_errors - self._seen_errors)
            self._seen_passes, self._seen_errors = stats.passes, stats.netlink_errors
        self.synced_fingerprint = lease_fingerprint(daemon)
        self._status_pending = True
        # A change of readiness is written at once (flannelctl status must not show "not ready" for up to a
        # second after the node became ready); only the routine rewrites are rate-limited.
        key = (tuple(daemon.ready.missing()), bool(stats.in_sync))
        force = key != self._status_key
        self._status_key = key
        self.flush_status(daemon, force=force)

    def flush_status(self, daemon: Any, force: bool = False) -> None:
        """Write the status file if a pass happened since the last write and the interval has passed."""
        if self.status_file is None or not self._status_pending:
            return
        now = time.monotonic()
        wait = STATUS_INTERVAL - (now - self._status_written)
        if not force and wait > 0:
            if not self._status_timer:
                # A trailing write, so the file never stays behind the last pass for long.
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    return
                self._status_timer = True
                loop.call_later(wait, self._timed_flush, daemon)
            return
        self._status_written = now
        self._status_pending = False
        self.write_status(snapshot(daemon))

    def _timed_flush(self, daemon: Any) -> None:
        self._status_timer = False
        self.flush_status(daemon)

    def write_status(self, data: dict[str, Any]) -> None:
        assert self.status_file is not None
        tmp = self.status_file.parent / f".{self.status_file.name}.tmp{os.getpid()}"
        try:
            tmp.write_text(json.dumps(data, indent=1) + "\n")
            os.replace(tmp, self.status_file)
            self._status_error = None
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if str(e) != self._status_error:  # once per distinct error, not every pass
                log.warning("Failed to write status file %s: %s", self.status_file, e)
            self._status_error = str(e)


def readiness_problems(daemon: Any, now: float | None = None) -> list[str]:
    """Why the node is not ready; empty when it is.

    Ready means: the lease is held (and not past its expiry), the rules are installed,
    subnet.env is written, and the last reconcile pass left the kernel matching the lease
    map as it is now (a lease event since that pass means a pass is still due).
    """
    now = time.time() if now is None else now
    missing = list(daemon.ready.missing())
    if getattr(daemon, "config", True) is None:
        missing.insert(0, "waiting for the network config in etcd")
    keeper = getattr(daemon, "keeper", None)
    lease = getattr(keeper, "lease", None)
    if lease is None:
        if "no subnet lease" not in missing:
            missing.insert(0, "no subnet lease")
    elif lease.expiration is not None and lease.expiration <= now:
        missing.insert(0, f"subnet lease {getattr(lease, 'name', lease.subnet)} expired "
                          f"{now - lease.expiration:.0f}s ago")
    sm = getattr(daemon, "subnet_manager", None)
    if lease is not None and sm is not None and getattr(sm, "in_sync", True) is False:
        # The peer view may be stale: the lease watch (etcd) or the Node watch (Kubernetes) is not live.
        missing.append(f"the {getattr(sm, 'name', 'lease')} lease watch is not in sync (reconnecting)")
    metrics = getattr(daemon, "metrics", None)
    synced = getattr(metrics, "synced_fingerprint", None)
    if daemon.ready.in_sync and getattr(daemon, "watcher", None) is not None and synced != lease_fingerprint(daemon):
        missing.append("leases changed since the last reconcile pass")
    return missing


def snapshot(daemon: Any, now: float | None = None) -> dict[str, Any]:
    """The daemon's state for the status file, as plain JSON types."""
    now = time.time() if now is None else now
    keeper = getattr(daemon, "keeper", None)
    lease = getattr(keeper, "lease", None)
    rec = getattr(daemon, "reconciler", None)
    stats = getattr(rec, "stats", None)
    watcher = getattr(daemon, "watcher", None)
    metrics = getattr(daemon, "metrics", None)
    problems = readiness_problems(daemon, now)
    backend = getattr(daemon, "backend", None)
    uplink = getattr(daemon, "uplink", None)
    return {
        "version": STATUS_VERSION,
        "pid": os.getpid(),
        "updated": round(now, 3),
        "lease": None if lease is None else {
            "subnet": None if lease.subnet is None else str(lease.subnet),  # None: an IPv6-only lease
            "subnet6": None if getattr(lease, "subnet6", None) is None else str(lease.subnet6),
            "public_ip": str(lease.attrs.public_ip),
            "public_ipv6": None if getattr(lease.attrs, "public_ipv6", None) is None else str(lease.attrs.public_ipv6),
            "lease_id": getattr(lease, "lease_id", 0),  # etcd mode only (adapters/registry.py EtcdLease)
            "expiration": lease.expiration,
            "reserved": lease.reserved,
        },
        "device": getattr(backend, "device", None),
        "backend_type": getattr(backend, "backend_type", None),
        "uplink": getattr(uplink, "name", None),
        "mtu": getattr(daemon, "mtu", None),
        "last_sync": getattr(stats, "last_sync", None),
        "last_sync_duration": getattr(stats, "last_duration", None),
        "passes": getattr(stats, "passes", 0),
        "in_sync": bool(getattr(stats, "in_sync", False)),
        "peers_desired": getattr(stats, "desired_peers", 0),
        "peers_installed": peers_installed(daemon),
        "entries_installed": getattr(stats, "installed_entries", 0),
        "netlink_errors": getattr(stats, "netlink_errors", 0),
        "last_pass_failures": getattr(metrics, "last_pass_failures", 0),
        "etcd_errors": etcd_errors(daemon),
        "watch_restarts": getattr(watcher, "watch_restarts", 0),
        "iptables_resyncs": getattr(getattr(daemon, "rules", None), "resyncs", 0),
        "lease_reacquisitions": getattr(keeper, "reacquisitions", 0),
        "resync_period": getattr(getattr(daemon, "opts", None), "resync_period", None),
        "ready": not problems,
        "not_ready": problems,
    }


def etcd_errors(daemon: Any) -> int:
    """Every failed etcd request and watch stream, read from the etcd client's ``errors`` counter.

    The client is looked for where the daemon keeps it: ``daemon.subnet_manager.client`` (the
    ports layout), ``daemon.subnet_manager.registry.client``, ``daemon.registry.client`` or
    ``daemon.client``. Without a client with that counter, the watcher's count of failed
    watches is the fallback (fewer errors, but never none).
    """
    sm = getattr(daemon, "subnet_manager", None)
    for holder in (sm, getattr(sm, "registry", None), getattr(daemon, "registry", None), daemon):
        n = getattr(getattr(holder, "client", None), "errors", None)
        if isinstance(n, int):
            return n
    return int(getattr(getattr(daemon, "watcher", None), "errors", 0) or 0)


def peers_installed(daemon: Any) -> int:
    """Peers whose kernel entries were all in place after the last pass.

    Each failed netlink operation touches one peer, so desired minus the last pass's failures
    is a lower bound, and exact when the pass succeeded.
    """
    stats = getattr(getattr(daemon, "reconciler", None), "stats", None)
    if stats is None or not getattr(stats, "passes", 0):
        return 0
    desired = int(getattr(stats, "desired_peers", 0))
    if getattr(stats, "in_sync", False):
        return desired
    failures = getattr(getattr(daemon, "metrics", None), "last_pass_failures", desired)
    return max(0, desired - int(failures))


class DaemonCollector:
    """A prometheus_client custom collector: reads the daemon when scraped."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon

    def collect(self) -> list[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        d = self.daemon
        snap = snapshot(d)
        out: list[Metric] = []

        def gauge(name: str, doc: str, value: float | None, labels: dict[str, str] | None = None) -> None:
            if value is None:
                return
            g = GaugeMetricFamily(name, doc, labels=list(labels) if labels else None)
            if labels:
                g.add_metric(list(labels.values()), value)
            else:
                g.add_metric([], value)
            out.append(g)

        def counter(name: str, doc: str, value: float) -> None:
            out.append(CounterMetricFamily(name, doc, value=value))

        gauge("flannel_build_info", "pyflannel build information; the value is always 1.", 1,
              {"version": __version__, "compat": COMPAT, "python": platform.python_version()})
        lease = snap["lease"]
        gauge("flannel_lease_held", "1 while this node holds a subnet lease.", 1 if lease else 0)
        if lease:
            # An IPv6-only lease is labelled by its IPv6 subnet and PublicIPv6 (its PublicIP is 0.0.0.0).
            v6_only = lease["subnet"] is None
            labels = {"subnet": lease["subnet6"] if v6_only else lease["subnet"],
                      "public_ip": lease["public_ipv6"] if v6_only else lease["public_ip"]}
            gauge("flannel_lease_reserved", "1 if the lease is a reservation (a key with no TTL).",
                  1 if lease["reserved"] else 0, labels)
            gauge("flannel_lease_expiry_timestamp_seconds", "Unix time at which the subnet lease expires "
                  "unless renewed (absent for a reservation).", lease["expiration"], labels)
        gauge("flannel_peers_desired", "Peers the leases in etcd call for.", snap["peers_desired"])
        gauge("flannel_peers_installed", "Peers whose kernel entries were all in place after the last pass.",
              snap["peers_installed"])
        gauge("flannel_kernel_entries_installed", "Routes, neighbours and FDB entries installed for peers.",
              snap["entries_installed"])
        gauge("flannel_in_sync", "1 if the last reconcile pass left the kernel matching the leases.",
              1 if snap["in_sync"] else 0)
        gauge("flannel_last_sync_timestamp_seconds", "Unix time of the end of the last reconcile pass.",
              snap["last_sync"] or None)
        metrics = getattr(d, "metrics", None)
        if metrics is not None:
            h = metrics.reconcile
            out.append(HistogramMetricFamily("flannel_reconcile_duration_seconds",
                                             "Duration of reconcile passes (observe, plan, apply).",
                                             buckets=h.cumulative(), sum_value=h.sum))
        counter("flannel_reconcile_passes", "Reconcile passes run.", snap["passes"])
        counter("flannel_netlink_errors", "Netlink operations that failed (retried by the next pass).",
                snap["netlink_errors"])
        counter("flannel_etcd_errors", "Failed etcd requests and watch streams (every endpoint tried counts).",
                snap["etcd_errors"])
        counter("flannel_etcd_watch_restarts", "Lease watch restarts (errors and compactions).",
                snap["watch_restarts"])
        counter("flannel_iptables_resyncs", "Times missing or changed iptables rules were re-created.",
                snap["iptables_resyncs"])
        counter("flannel_lease_reacquisitions", "Times the lease was lost and acquired again.",
                snap["lease_reacquisitions"])
        gauge("flannel_ready", "1 if /readyz answers 200.", 1 if snap["ready"] else 0)
        return out


def make_registry(daemon: Any) -> CollectorRegistry:
    """A private registry holding only the daemon's collector (imports prometheus_client)."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    return registry


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """(body, content type) of one scrape in the Prometheus text format."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(registry), CONTENT_TYPE_LATEST
