"""``flannelctl status``: this node's lease, peers (etcd against kernel), MTUs, last sync, etcd.

A report, not a verdict: it prints what it found, including drift, and exits 0 whenever it
could find the node's lease; ``doctor`` is the command that fails. All values come from one
``NodeFacts``; this module only shapes them.

The peer table follows the backend in the network config: vxlan shows VtepMAC and the missing
route/neighbour/FDB entries; host-gw whether ``<subnet> via <PublicIP> dev <uplink>`` is in the
main table and whether the gateway is on the uplink's L2; wireguard the device's own report of
each peer (endpoint, AllowedIPs, last handshake, rx/tx bytes, read with the UAPI ``get=1`` or
genetlink of ``adapters.wireguard``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pyflannel.adapters.registry import etcd_lease_id
from pyflannel.core.model import Entry, Route
from pyflannel.core.plan import describe
from pyflannel.ctl.node import NodeFacts
from pyflannel.ctl.output import duration, table

VXLAN_OVERHEAD = 50
OVERHEAD = {"vxlan": VXLAN_OVERHEAD, "host-gw": 0, "wireguard": 80}


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
    """One row per peer in etcd, in the backend's terms."""
    if f.backend == "host-gw":
        return hostgw_rows(f)
    if f.backend == "wireguard":
        return wg_rows(f)
    return vxlan_rows(f)


def hostgw_rows(f: NodeFacts) -> list[dict[str, Any]]:
    """Per host-gw peer: its route(s) present in the main table, and its gateway on the uplink's L2."""
    up = f.uplink
    present = {(str(r.dst), str(r.gateway)) for r in (*f.routes, *f.routes6)
               if up is not None and r.oif == up.index and r.gateway is not None}
    rows = []
    for p in f.hostgw_peers:
        l2 = []
        for rt in p.routes:
            lk = f.lookups.get(str(rt.via))
            on = (up is not None and lk is not None and lk.oif == up.index and not lk.gateway
                  and any(x.version == rt.via.version and rt.via in x for x in f.uplink_prefixes))
            l2.append(on)
        rows.append({
            "subnet": str(p.lease.subnet) if p.lease.subnet else None,
            "subnet6": str(p.lease.subnet6) if p.lease.subnet6 else None,
            "public_ip": str(p.lease.attrs.public_ip),
            "public_ipv6": str(p.lease.attrs.public_ipv6) if p.lease.attrs.public_ipv6 else None,
            "route": None if p.rejected else all((str(rt.dst), str(rt.via)) in present for rt in p.routes),
            "on_l2": None if p.rejected else all(l2),
            "rejected": p.rejected or None,
        })
    return rows


def wg_rows(f: NodeFacts) -> list[dict[str, Any]]:
    """Per WireGuard peer the leases call for: what its device reports (None: not configured there)."""
    have = {(d.name, p.public_key): p for d in f.wg_devices if d.status is not None for p in d.status.peers}
    subnet_of = {}
    for le in f.leases:
        for sub in (le.subnet, le.subnet6):
            if sub is not None:
                subnet_of[str(sub)] = le
    rows = []
    for w in f.wg_desired:
        st = have.get((w.dev, w.public_key))
        le = subnet_of.get(w.allowed_ips[0]) if w.allowed_ips else None
        hs = st.last_handshake_sec if st else 0
        rows.append({
            "subnet": le.name if le else w.allowed_ips[0],
            "public_ip": str(le.owner_ip) if le else "",
            "device": w.dev,
            "public_key": w.public_key,
            "configured": st is not None,
            "endpoint": st.endpoint if st else None,
            "allowed_ips": list(st.allowed_ips) if st else [],
            "last_handshake": hs or None,
            "last_handshake_age": round(f.now - hs, 1) if hs else None,
            "rx_bytes": st.rx_bytes if st else None,
            "tx_bytes": st.tx_bytes if st else None,
        })
    return rows


def vxlan_rows(f: NodeFacts) -> list[dict[str, Any]]:
    """One row per vxlan peer in etcd, with what the kernel lacks for it."""
    from pyflannel.core.backends import vxlan

    desired_all, actual = entry_sets(f)
    held = {e.ident for e in actual & desired_all}  # shared VtepMAC: another lease's entry counts
    direct = bool(f.vopts and f.vopts.direct_routing)
    up = f.uplink.name if f.uplink else ""
    dev6 = f.device6.name if f.device6 is not None else ""
    actual6 = set(f.actual6.entries()) if f.actual6 else set()
    rows = []
    for p in f.peers:
        if p.lease.subnet is None:  # IPv6-only: the flannel-v6.<VNI> entries
            want = list(vxlan.peer_entries(p.lease, "", device6=f.device_name)[0]) if f.desired else []
        else:
            want = vxlan.desired_state(f.device_name, [p], direct, up, f.onlink).entries() if f.desired else []
        missing = sorted(describe(e).split(" ", 1)[0] for e in want if e not in actual and e.ident not in held)
        row: dict[str, Any] = {
            "subnet": p.lease.name,
            "public_ip": str(p.lease.owner_ip),
            "vtep_mac": p.vtep_mac,
            "kernel": "unknown" if f.desired is None else ("missing " + ", ".join(missing) if missing else "ok"),
        }
        if f.ipv6 and p.lease.subnet is not None:  # dual stack: the same for flannel-v6.<VNI>
            want6 = [e for e in vxlan.peer_entries(p.lease, f.device_name, device6=dev6)[0] if e.dev == dev6] \
                if dev6 else []
            missing6 = sorted(describe(e).split(" ", 1)[0] for e in want6 if e not in actual6)
            try:
                mac6: str | None = p.lease.attrs.vxlan_v6_data().vtep_mac
            except ValueError:
                mac6 = None
            row |= {"subnet6": str(p.lease.subnet6) if p.lease.subnet6 else None, "vtep_mac6": mac6,
                    "kernel6": "no device" if not dev6 else "no v6 lease" if not want6
                    else ("missing " + ", ".join(missing6) if missing6 else "ok")}
        rows.append(row)
    return rows


def drift(f: NodeFacts) -> list[str]:
    """Each kernel entry that differs from the leases: ``missing ...`` or ``stale ...``."""
    if f.backend == "host-gw":
        from pyflannel.ctl.doctor import hostgw_drift

        missing, stale = hostgw_drift(f)
        return [f"missing route {x}" for x in missing] + [f"stale route {x}" for x in stale]
    if f.backend == "wireguard":
        from pyflannel.ctl.doctor import wg_drift

        return wg_drift(f)
    if f.desired is None or f.actual is None:
        return []
    desired, actual = entry_sets(f)
    if f.desired6 is not None and f.actual6 is not None:  # flannel-v6.<VNI>
        desired |= set(f.desired6.entries())
        actual |= set(f.actual6.entries())
    # Two leases can want one object (an FDB entry for a shared VtepMAC): the kernel holds one of them, the
    # newest lease's, so the other is not missing.
    held = {e.ident for e in actual & desired}
    out = [f"missing {describe(e)}" for e in sorted(desired - actual, key=describe) if e.ident not in held]
    out += [f"stale {describe(e)}" for e in sorted(actual - desired, key=describe)]
    return out


def kernel_peer_count(f: NodeFacts) -> int:
    """Peers the kernel (or the WireGuard device) holds state for."""
    if f.backend == "host-gw":
        return sum(1 for r in hostgw_rows(f) if r["route"])
    if f.backend == "wireguard":
        return len({p.public_key for d in f.wg_devices if d.status is not None for p in d.status.peers})
    return len({e.dst for e in (f.actual.routes if f.actual else ()) if isinstance(e, Route)})


def mtu_report(f: NodeFacts) -> dict[str, Any]:
    up = f.uplink.mtu if f.uplink else None
    backend = f.backend if f.backend in OVERHEAD else "vxlan"
    overhead = OVERHEAD[backend]
    if backend == "vxlan" and f.config is not None and f.config.ipv6_only:
        overhead = 70  # flannel-v6.<VNI> only: the outer header is IPv6 (docs/backends.md, IPv6-only networks)
    if backend == "host-gw":
        dev_name, dev = None, None
        base = up
    elif backend == "wireguard":
        wgd = next((d for d in f.wg_devices if d.index is not None), None)
        dev_name = wgd.name if wgd else f.device_name
        dev = wgd.mtu if wgd else None
        base = f.wg_opts.mtu if f.wg_opts and f.wg_opts.mtu else up
    else:
        dev_name, dev = f.device_name, (f.device.mtu if f.device else None)
        base = (f.vopts.mtu if f.vopts and f.vopts.mtu else up)
    env_raw = (f.env or {}).get("FLANNEL_MTU")
    env = int(env_raw) if env_raw and env_raw.isdigit() else None
    expected = base - overhead if base else None
    header = {"vxlan": f"{overhead}-byte VXLAN header", "wireguard": f"{overhead}-byte WireGuard overhead",
              "host-gw": ""}[backend]
    problems = []
    if dev is not None and env is not None and dev != env:
        problems.append(f"{dev_name} MTU {dev} differs from FLANNEL_MTU {env} in {f.subnet_file}")
    if backend == "host-gw":
        if up is not None and env is not None and env != up:
            problems.append(f"FLANNEL_MTU {env} in {f.subnet_file} is not the uplink "
                            f"{f.uplink.name if f.uplink else ''} MTU {up} (host-gw adds no header)")
    elif up is not None and env is not None and env > up - overhead:
        problems.append(f"FLANNEL_MTU {env} leaves no room for the {header} on "
                        f"{f.uplink.name if f.uplink else 'the uplink'} (MTU {up})")
    if up is not None and dev is not None and dev > up - overhead:
        problems.append(f"{dev_name} MTU {dev} is larger than uplink MTU {up} minus {overhead}")
    return {"uplink": f.uplink.name if f.uplink else None, "uplink_mtu": up, "device": dev_name,
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
    return {"subnet": f.own.name, "public_ip": str(f.own.owner_ip), "reserved": f.own.reserved,
            "lease_id": etcd_lease_id(f.own), "ttl_seconds": f.own_ttl, "expires_at": exp}


def backend_report(f: NodeFacts) -> dict[str, Any]:
    out: dict[str, Any] = {"type": f.backend, "uplink": f.uplink.name if f.uplink else None}
    if f.backend == "wireguard":
        out["devices"] = [{"name": d.name, "exists": d.index is not None, "driver": d.kind or None,
                           "listen_port": d.status.listen_port if d.status else None,
                           "public_key": d.status.public_key if d.status else None,
                           "socket": d.socket or None, "error": d.error or None} for d in f.wg_devices]
        out["key_file"] = f.wg_key.path if f.wg_key else None
    return out


def status_data(f: NodeFacts) -> dict[str, Any]:
    return {
        "subnet_file": f.subnet_file,
        "backend": backend_report(f),
        "subnet_env": f.env,
        "errors": [e for e in (f.env_error, f.etcd_error, f.config_error, f.kernel_error) if e],
        "lease": lease_report(f),
        "own_subnet": str(f.own_subnet) if f.own_subnet else None,
        "own_subnet6": str(f.own_subnet6) if f.own_subnet6 else None,
        "daemon": daemon_report(f),
        "peers": {"etcd": _etcd_peers(f), "kernel": kernel_peer_count(f), "rows": peer_rows(f),
                  "rejected": _rejected(f), "drift": drift(f)},
        "mtu": mtu_report(f),
        "etcd": [e.__dict__ for e in f.endpoints],
    }


def _etcd_peers(f: NodeFacts) -> int:
    if f.backend == "host-gw":
        return sum(1 for p in f.hostgw_peers if not p.rejected)
    if f.backend == "wireguard":
        return len({p.public_key for p in f.wg_desired})
    return len(f.peers)


def _rejected(f: NodeFacts) -> list[dict[str, str]]:
    if f.backend == "host-gw":
        return [{"key": p.lease.name, "reason": p.rejected} for p in f.hostgw_peers if p.rejected]
    if f.backend == "wireguard":
        return [{"key": s, "reason": r} for s, r in f.wg_rejected]
    return [{"key": r.key, "reason": r.reason} for r in f.rejected]


def _lease_line(d: dict[str, Any]) -> str:
    lease = d["lease"]
    if lease is None:
        sub = d["own_subnet"] or d.get("own_subnet6")
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
    dev = f"{m['device']} {m['device_mtu'] or '?'}, " if m["device"] else ""
    text = f"uplink {m['uplink'] or '?'} {m['uplink_mtu'] or '?'}, {dev}subnet.env {m['subnet_env_mtu'] or '?'}"
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
    b = d.get("backend") or {"type": "vxlan"}
    if b["type"] != "vxlan":  # vxlan's report is unchanged
        lines.insert(2, f"backend:   {_backend_line(b)}")
    lines += [f"error:     {e}" for e in d["errors"]]
    out = "\n".join(lines) + "\n"
    if p["rows"]:
        out += "\n" + _peer_table(b["type"], p["rows"])
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


def _backend_line(b: dict[str, Any]) -> str:
    if b["type"] == "host-gw":
        return f"host-gw, routes via the peers' PublicIPs on {b['uplink'] or '?'}"
    if b["type"] == "wireguard":
        devs = []
        for x in b.get("devices", []):
            if not x["exists"]:
                devs.append(f"{x['name']} MISSING")
                continue
            drv = {"kernel": "kernel module", "wireguard-go": "wireguard-go"}.get(x["driver"] or "", x["driver"] or "?")
            port = f"UDP {x['listen_port']}" if x["listen_port"] else f"not answering ({x['error']})"
            devs.append(f"{x['name']} ({drv}) {port}, PublicKey {x['public_key'] or '?'}")
        return "wireguard, " + ("; ".join(devs) or "no device") + f"; key file {b.get('key_file') or '?'}"
    return str(b["type"])


def _peer_table(backend: str, rows: list[dict[str, Any]]) -> str:
    if backend == "host-gw":
        def yn(v: bool | None) -> str:
            return "-" if v is None else ("yes" if v else "NO")

        return table(("PEER-SUBNET", "PUBLIC-IP", "ROUTE", "ON-L2", "NOTE"),
                     [[r["subnet"] + (f" {r['subnet6']}" if r["subnet6"] else ""),
                       r["public_ip"] + (f" {r['public_ipv6']}" if r["public_ipv6"] else ""),
                       yn(r["route"]), yn(r["on_l2"]), r["rejected"] or ""] for r in rows])
    if backend == "wireguard":
        return table(("PEER-SUBNET", "DEVICE", "ENDPOINT", "ALLOWED-IPS", "HANDSHAKE", "RX", "TX", "PUBLIC-KEY"),
                     [[r["subnet"], r["device"], r["endpoint"] or "NOT CONFIGURED", ",".join(r["allowed_ips"]) or "-",
                       "never" if r["configured"] and r["last_handshake_age"] is None
                       else (duration(r["last_handshake_age"]) + " ago" if r["last_handshake_age"] is not None
                             else "-"),
                       _bytes(r["rx_bytes"]), _bytes(r["tx_bytes"]), r["public_key"]] for r in rows])
    if any("kernel6" in r for r in rows):  # dual stack
        return table(("PEER-SUBNET", "PUBLIC-IP", "VTEP-MAC", "KERNEL", "PEER-SUBNET-V6", "VTEP-MAC-V6", "KERNEL-V6"),
                     [[r["subnet"], r["public_ip"], r["vtep_mac"], r["kernel"], r["subnet6"] or "-",
                       r["vtep_mac6"] or "-", r["kernel6"]] for r in rows])
    return table(("PEER-SUBNET", "PUBLIC-IP", "VTEP-MAC", "KERNEL"),
                 [[r["subnet"], r["public_ip"], r["vtep_mac"], r["kernel"]] for r in rows])


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:.0f} kB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MB"
