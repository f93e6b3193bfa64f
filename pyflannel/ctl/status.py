"""``flannelctl status``: this node's lease, peers (etcd against kernel), MTUs, last sync, etcd.

A report, not a verdict: it prints what it found, including drift, and exits 0 whenever it
could find the node's lease; ``doctor`` is the command that fails. All values come from one
``NodeFacts``; this module only shapes them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pyflannel.core.model import Entry, Route
from pyflannel.core.plan import describe
from pyflannel.ctl.node import NodeFacts
from pyflannel.ctl.output import duration, table

VXLAN_OVERHEAD = 50


def daemon_alive(pid: int | None) -> bool | None:
    """True if ``pid`` runs a flanneld; None if unknown."""
    if not pid:
        return None
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"flanneld" in cmd


def entry_sets(f: NodeFacts) -> tuple[set[Entry], set[Entry]]:
    desired = set(f.desired.entries()) if f.desired else set()
    actual = set(f.actual.entries()) if f.actual else set()
    return desired, actual


def peer_rows(f: NodeFacts) -> list[dict[str, Any]]:
    """One row per vxlan peer in etcd, with what the kernel lacks for it."""
    from pyflannel.core.backends import vxlan

    _, actual = entry_sets(f)
    direct = bool(f.vopts and f.vopts.direct_routing)
    up = f.uplink.name if f.uplink else ""
    rows = []
    for p in f.peers:
        want = vxlan.desired_state(f.device_name, [p], direct, up, f.onlink).entries() if f.desired else []
        missing = sorted(describe(e).split(" ", 1)[0] for e in want if e not in actual)
        rows.append({
            "subnet": str(p.lease.subnet),
            "public_ip": str(p.lease.attrs.public_ip),
            "vtep_mac": p.vtep_mac,
            "kernel": "unknown" if f.desired is None else ("missing " + ", ".join(missing) if missing else "ok"),
        })
    return rows


def drift(f: NodeFacts) -> list[str]:
    """Each kernel entry that differs from the leases: ``missing ...`` or ``stale ...``."""
    if f.desired is None or f.actual is None:
        return []
    desired, actual = entry_sets(f)
    out = [f"missing {describe(e)}" for e in sorted(desired - actual, key=describe)]
    out += [f"stale {describe(e)}" for e in sorted(actual - desired, key=describe)]
    return out


def kernel_peer_count(f: NodeFacts) -> int:
    return len({e.dst for e in (f.actual.routes if f.actual else ()) if isinstance(e, Route)})


def mtu_report(f: NodeFacts) -> dict[str, Any]:
    up = f.uplink.mtu if f.uplink else None
    dev = f.device.mtu if f.device else None
    env_raw = (f.env or {}).get("FLANNEL_MTU")
    env = int(env_raw) if env_raw and env_raw.isdigit() else None
    base = (f.vopts.mtu if f.vopts and f.vopts.mtu else up)
    expected = base - VXLAN_OVERHEAD if base else None
    problems = []
    if dev is not None and env is not None and dev != env:
        problems.append(f"{f.device_name} MTU {dev} differs from FLANNEL_MTU {env} in {f.subnet_file}")
    if up is not None and env is not None and env > up - VXLAN_OVERHEAD:
        problems.append(f"FLANNEL_MTU {env} leaves no room for the {VXLAN_OVERHEAD}-byte VXLAN header on "
                        f"{f.uplink.name if f.uplink else 'the uplink'} (MTU {up})")
    if up is not None and dev is not None and dev > up - VXLAN_OVERHEAD:
        problems.append(f"{f.device_name} MTU {dev} is larger than uplink MTU {up} minus {VXLAN_OVERHEAD}")
    return {"uplink": f.uplink.name if f.uplink else None, "uplink_mtu": up, "device": f.device_name,
            "device_mtu": dev, "subnet_env_mtu": env, "expected": expected, "consistent": not problems,
            "problems": problems}


def daemon_report(f: NodeFacts) -> dict[str, Any]:
    st = f.status or {}
    last = st.get("last_sync")
    return {
        "status_file": f.status_file,
        "status_error": f.status_error,
        "pid": st.get("pid"),
        "running": daemon_alive(st.get("pid")),
        "last_sync": last,
        "last_sync_age": round(f.now - last, 3) if last else None,
        "last_sync_duration": st.get("last_sync_duration"),
        "passes": st.get("passes"),
        "in_sync": st.get("in_sync"),
        "ready": st.get("ready"),
        "not_ready": st.get("not_ready", []),
        "counters": {k: st.get(k) for k in ("netlink_errors", "etcd_errors", "watch_restarts", "iptables_resyncs",
                                            "lease_reacquisitions") if k in st},
    }


def lease_report(f: NodeFacts) -> dict[str, Any] | None:
    if f.own is None:
        return None
    exp = f.now + f.own_ttl if f.own_ttl is not None and f.own_ttl >= 0 else None
    return {"subnet": str(f.own.subnet), "public_ip": str(f.own.attrs.public_ip), "reserved": f.own.reserved,
            "lease_id": f.own.lease_id, "ttl_seconds": f.own_ttl, "expires_at": exp}


def status_data(f: NodeFacts) -> dict[str, Any]:
    return {
        "subnet_file": f.subnet_file,
        "subnet_env": f.env,
        "errors": [e for e in (f.env_error, f.etcd_error, f.config_error, f.kernel_error) if e],
        "lease": lease_report(f),
        "own_subnet": str(f.own_subnet) if f.own_subnet else None,
        "daemon": daemon_report(f),
        "peers": {"etcd": len(f.peers), "kernel": kernel_peer_count(f), "rows": peer_rows(f),
                  "rejected": [{"key": r.key, "reason": r.reason} for r in f.rejected], "drift": drift(f)},
        "mtu": mtu_report(f),
        "etcd": [e.__dict__ for e in f.endpoints],
    }


def _lease_line(d: dict[str, Any]) -> str:
    lease = d["lease"]
    if lease is None:
        sub = d["own_subnet"]
        return f"none in etcd for {sub} (from {d['subnet_file']})" if sub else "unknown (no subnet file)"
    head = f"{lease['subnet']}, PublicIP {lease['public_ip']}, "
    if lease["reserved"]:
        return head + "reserved (no TTL)"
    ttl = lease["ttl_seconds"]
    if ttl is None or ttl < 0:
        return head + f"etcd lease {lease['lease_id']:x} is gone (the key expires or was revoked)"
    at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(lease["expires_at"]))
    return head + f"expires in {duration(ttl)} ({at})"


def _daemon_line(d: dict[str, Any]) -> str:
    dm = d["daemon"]
    if dm["status_error"]:
        return f"no status ({dm['status_error']}; written by pyflannel's flanneld after each sync)"
    run = {True: "running", False: "NOT RUNNING", None: "unknown"}[dm["running"]]
    parts = [f"pid {dm['pid']} {run}"]
    if dm["last_sync"]:
        took = dm["last_sync_duration"] or 0.0
        parts.append(f"last sync {duration(dm['last_sync_age'])} ago (pass {dm['passes']}, {took * 1000:.1f}ms)")
    parts.append("in sync" if dm["in_sync"] else "NOT in sync")
    parts.append("ready" if dm["ready"] else "NOT ready: " + "; ".join(dm["not_ready"]))
    return ", ".join(parts)


def _mtu_line(m: dict[str, Any]) -> str:
    text = (f"uplink {m['uplink'] or '?'} {m['uplink_mtu'] or '?'}, {m['device']} {m['device_mtu'] or '?'}, "
            f"subnet.env {m['subnet_env_mtu'] or '?'}")
    return text + (": consistent" if m["consistent"] else ": " + "; ".join(m["problems"]))


def render(d: dict[str, Any]) -> str:
    p = d["peers"]
    n = len(p["drift"])
    drift_text = "none" if not n else f"{n} {'entry' if n == 1 else 'entries'}"
    lines = [
        f"lease:     {_lease_line(d)}",
        f"flanneld:  {_daemon_line(d)}",
        f"peers:     etcd {p['etcd']}, kernel {p['kernel']}, drift {drift_text}",
        f"mtu:       {_mtu_line(d['mtu'])}",
    ]
    lines += [f"error:     {e}" for e in d["errors"]]
    out = "\n".join(lines) + "\n"
    if p["rows"]:
        out += "\n" + table(("PEER-SUBNET", "PUBLIC-IP", "VTEP-MAC", "KERNEL"),
                            [[r["subnet"], r["public_ip"], r["vtep_mac"], r["kernel"]] for r in p["rows"]])
    if p["drift"]:
        out += "\ndrift:\n" + "".join(f"  {x}\n" for x in p["drift"])
    for r in p["rejected"]:
        out += f"ignored lease {r['key']}: {r['reason']}\n"
    if d["etcd"]:
        rows = [[e["endpoint"], "ok" if e["ok"] else "DOWN", e["version"] or "-",
                 "-" if e["leader"] is None else ("yes" if e["leader"] else "no"),
                 _size(e["db_size"]), e["error"] or ""] for e in d["etcd"]]
        out += "\n" + table(("ETCD-ENDPOINT", "HEALTH", "VERSION", "LEADER", "DB-SIZE", "ERROR"), rows)
    return out


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:.0f} kB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MB"
