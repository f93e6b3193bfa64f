"""flanneld's /healthz, /readyz, /metrics and status file, against a stand-in daemon (no sockets, no kernel).

The stand-in carries the attributes the real Daemon has (ready, keeper.lease, reconciler.stats, watcher,
rules, metrics); the netns tests scrape a real flanneld.
"""

from __future__ import annotations

import json
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from pyflannel.adapters.registry import EtcdLease
from pyflannel.core.lease import LeaseAttrs, VxlanData
from pyflannel.daemon.app import Readiness
from pyflannel.daemon.health import route
from pyflannel.daemon.metrics import DaemonMetrics, DurationHistogram, make_registry, status_path
from pyflannel.daemon.reconciler import SyncStats

OWN = EtcdLease.make(IPv4Network("100.64.67.0/24"),
                     LeaseAttrs(IPv4Address("198.18.0.11"), backend_type="vxlan",
                                backend_data=VxlanData(1, "b6:3a:f4:a5:6f:94").to_json()),
                     None, 42, time.time() + 86400, 3)


def daemon(tmp_path: Path) -> SimpleNamespace:
    peers = {f"k{i}": EtcdLease.make(IPv4Network(f"100.64.{i}.0/24"), LeaseAttrs(IPv4Address(f"198.18.0.{i}")),
                                     None, 1, None, i) for i in (1, 2)}
    d = SimpleNamespace(
        ready=Readiness(lease=True, rules=True, subnet_file=True, in_sync=True),
        keeper=SimpleNamespace(lease=OWN, reacquisitions=0),
        reconciler=SimpleNamespace(stats=SyncStats()),
        backend=SimpleNamespace(device="flannel.1", backend_type="vxlan"),
        uplink=SimpleNamespace(name="eth0"),
        watcher=SimpleNamespace(leases=peers, errors=2, watch_restarts=3),
        rules=SimpleNamespace(resyncs=1),
        opts=SimpleNamespace(resync_period=10, subnet_file=str(tmp_path / "subnet.env")),
        mtu=1450,
        metrics=DaemonMetrics(status_path(tmp_path / "subnet.env")),
    )
    return d


def sync(d: SimpleNamespace, duration: float = 0.004, failed: int = 0) -> None:
    s = d.reconciler.stats
    s.passes += 1
    s.last_sync = time.time()
    s.last_duration = duration
    s.desired_peers = 2
    s.installed_entries = 6 - failed
    s.netlink_errors += failed
    s.in_sync = not failed
    d.ready.in_sync = s.in_sync
    d.metrics.after_pass(d)


def body(resp: bytes) -> tuple[str, str]:
    head, _, data = resp.partition(b"\r\n\r\n")
    return head.decode().split("\r\n")[0], data.decode()


def samples(d: SimpleNamespace) -> dict[str, float]:
    status, text = body(route(d, "/metrics", make_registry(d)))
    assert status == "HTTP/1.1 200 OK"
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else "")
            out[key] = s.value
    return out


def test_healthz_is_liveness_only(tmp_path: Path) -> None:
    d = daemon(tmp_path)
    d.ready = Readiness()
    assert body(route(d, "/healthz")) == ("HTTP/1.1 200 OK", "flanneld is running\n")
    assert body(route(d, "/nope"))[0] == "HTTP/1.1 404 Not Found"
    assert body(route(d, "/healthz", method="POST"))[0] == "HTTP/1.1 405 Method Not Allowed"
    assert route(d, "/healthz", method="HEAD").endswith(b"\r\n\r\n")


def test_readyz_says_what_is_missing(tmp_path: Path) -> None:
    d = daemon(tmp_path)
    sync(d)
    assert body(route(d, "/readyz")) == ("HTTP/1.1 200 OK", "flanneld is ready\n")
    d.ready.rules = False
    assert body(route(d, "/readyz")) == ("HTTP/1.1 503 Service Unavailable",
                                         "flanneld is not ready yet: firewall rules not installed\n")
    d.ready.rules = True
    d.watcher.leases["k3"] = EtcdLease.make(IPv4Network("100.64.3.0/24"), LeaseAttrs(IPv4Address("198.18.0.3")),
                                            None, 1, None, 9)
    assert body(route(d, "/readyz"))[1] == "flanneld is not ready yet: leases changed since the last reconcile pass\n"
    sync(d)
    assert body(route(d, "/readyz"))[0] == "HTTP/1.1 200 OK"
    d.keeper.lease = EtcdLease.make(OWN.subnet, OWN.attrs, None, 42, time.time() - 5, 3)
    assert "subnet lease 100.64.67.0/24 expired 5s ago" in body(route(d, "/readyz"))[1]
    d.keeper.lease = None
    d.ready.lease = False
    assert body(route(d, "/readyz"))[1].startswith("flanneld is not ready yet: no subnet lease")


def test_metrics_read_the_daemon_at_scrape_time(tmp_path: Path) -> None:
    d = daemon(tmp_path)
    sync(d, 0.004)
    sync(d, 0.3, failed=1)
    m = samples(d)
    lease_labels = "{public_ip=198.18.0.11,subnet=100.64.67.0/24}"
    assert m[f"flannel_lease_expiry_timestamp_seconds{lease_labels}"] == OWN.expiration
    assert m[f"flannel_lease_reserved{lease_labels}"] == 0
    assert m["flannel_peers_desired"] == 2 and m["flannel_peers_installed"] == 1
    assert m["flannel_in_sync"] == 0 and m["flannel_ready"] == 0
    assert m["flannel_reconcile_duration_seconds_count"] == 2
    assert m["flannel_reconcile_duration_seconds_bucket{le=0.005}"] == 1
    assert m["flannel_reconcile_duration_seconds_bucket{le=0.5}"] == 2
    assert abs(m["flannel_reconcile_duration_seconds_sum"] - 0.304) < 1e-9
    assert m["flannel_netlink_errors_total"] == 1 and m["flannel_reconcile_passes_total"] == 2
    assert m["flannel_etcd_errors_total"] == 2 and m["flannel_etcd_watch_restarts_total"] == 3
    assert m["flannel_iptables_resyncs_total"] == 1
    assert any(k.startswith("flannel_build_info{compat=v0.20.2") for k in m)
    # a later scrape sees later state, nothing is cached
    sync(d)
    assert samples(d)["flannel_peers_installed"] == 2
    # only our collector: no process_/python_gc_ metrics from the default registry
    assert all(k.startswith("flannel_") for k in samples(d))


def test_status_file_is_written_after_each_pass(tmp_path: Path) -> None:
    d = daemon(tmp_path)
    sync(d)
    st = json.loads((tmp_path / "pyflannel-status.json").read_text())
    assert st["lease"] == {"subnet": "100.64.67.0/24", "subnet6": None, "public_ip": "198.18.0.11",
                           "public_ipv6": None, "lease_id": 42,
                           "expiration": OWN.expiration, "reserved": False}
    assert st["device"] == "flannel.1" and st["uplink"] == "eth0" and st["mtu"] == 1450
    assert st["passes"] == 1 and st["ready"] is True and st["peers_installed"] == 2
    assert not list(tmp_path.glob(".*tmp*"))


def test_status_file_errors_do_not_break_the_pass(tmp_path: Path) -> None:
    d = daemon(tmp_path)
    d.metrics.status_file = tmp_path / "missing-dir" / "pyflannel-status.json"
    sync(d)  # logs a warning once, raises nothing
    assert d.metrics.reconcile.count == 1


def test_histogram_buckets_are_cumulative() -> None:
    h = DurationHistogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 7.0):
        h.observe(v)
    assert h.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]

