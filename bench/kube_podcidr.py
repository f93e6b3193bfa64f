"""Kubernetes mode: podCIDR missing at start -> ready, the time from the assignment to /readyz 200.

Issue 12: flannel exits 1 when its Node has no podCIDR yet and crash-loops; pyflannel waits and
watches its Node, and should be ready within 2 s of the podCIDR being assigned. A rep: Node n1 is
(re)created without a podCIDR (spec.podCIDR cannot be changed once set), the node is made fresh, the
daemon starts with -healthz-port; once it has logged the missing podCIDR and /readyz answers 503, a
probe inside the node's namespace sends the PATCH that assigns the podCIDR (as kube-controller-manager
would, admin token) and polls /readyz every 5 ms. The figure is PATCH sent -> first /readyz 200.
``--peers`` flannel Nodes exist as well, so the first pass has routes to install (results go to
bench/results/kube_podcidr.json for the default 10, kube_podcidr_p<N>.json otherwise).

    python -m bench.kube_podcidr --reps 10 --peers 10
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

from bench.common import log_size, report, reset_node, summary, wait_log
from bench.kube_join import KubeBed, create_peers, uptime

HEALTHZ_PORT = 8081
CIDR = "100.64.1.0/24"

# Runs in the node's namespace: wait for /readyz 503, PATCH the podCIDR, poll /readyz until 200.
PROBE_SCRIPT = r"""
import http.client, json, ssl, sys, time
import httpx
url, token, ca, name, cidr, port = sys.argv[1:7]
def readyz():
    try:
        c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=2)
        c.request("GET", "/readyz")
        r = c.getresponse()
        r.read()
        c.close()
        return r.status
    except OSError:
        return 0
deadline = time.monotonic() + 30
while readyz() != 503:
    if time.monotonic() > deadline:
        raise SystemExit("/readyz never answered 503 before the assignment")
    time.sleep(0.01)
with httpx.Client(base_url=url, verify=ca, headers={"Authorization": "Bearer " + token}, timeout=30) as c:
    c.get("/version")  # connection and TLS set up before the clock starts
    t0 = time.monotonic()
    r = c.patch(f"/api/v1/nodes/{name}", content=json.dumps({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}}),
                headers={"Content-Type": "application/strategic-merge-patch+json"})
    t_patched = time.monotonic()
    if r.status_code != 200:
        raise SystemExit(f"PATCH node {name}: HTTP {r.status_code}: {r.text[:200]}")
polls = 0
deadline = time.monotonic() + 30
while True:
    polls += 1
    s = readyz()
    if s == 200:
        t1 = time.monotonic()
        break
    if time.monotonic() > deadline:
        raise SystemExit(f"/readyz still {s} 30 s after the podCIDR was assigned")
    time.sleep(0.005)
print(json.dumps({"ready_s": t1 - t0, "patch_s": t_patched - t0, "polls": polls}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--peers", type=int, default=10)
    ap.add_argument("--keep", action="store_true", help="keep the daemon's and apiserver's logs")
    args = ap.parse_args()
    bed = KubeBed(1, "p", keep=args.keep)
    figures: dict[str, Any] = {"peers": args.peers}
    try:
        assert bed.api is not None
        node = bed.c.nodes[0]
        if args.peers:
            create_peers(bed.c, bed.api, args.peers)
        times, patches, loads = [], [], []
        for i in range(args.reps):
            if i:
                bed.api.delete_node(node.name)
            bed.api.create_node(node.name, internal_ip=node.lan_ip)  # no podCIDR
            reset_node(bed.c, node)
            since = log_size(node.flanneld_log)
            bed.start(node, go=False, healthz_port=HEALTHZ_PORT)
            try:
                wait_log(node.flanneld_log, "pod cidr not assigned", since, timeout=30)
                out = bed.c.exec(node.ns, [sys.executable, "-c", PROBE_SCRIPT, bed.api.url, bed.api.admin_token,
                                           str(bed.api.ca_file), node.name, CIDR, str(HEALTHZ_PORT)],
                                 timeout=120).stdout
                r = json.loads(out.strip().splitlines()[-1])
                text = node.flanneld_log.read_bytes()[since:].decode(errors="replace")
                if text.count("pod cidr not assigned") != 1:
                    raise RuntimeError(f"rep {i + 1}: the missing podCIDR was logged "
                                       f"{text.count('pod cidr not assigned')} times, not once")
            finally:
                bed.c.stop_flanneld(node, signal.SIGTERM)
            times.append(r["ready_s"])
            patches.append(r["patch_s"])
            loads.append(uptime())
            print(f"  rep {i + 1}: PATCH -> /readyz 200 in {r['ready_s']:.3f}s (PATCH itself {r['patch_s'] * 1000:.1f}"
                  f" ms; load {loads[-1]})")
        s = summary(times)
        figures["assign_to_ready_s"] = s
        figures["patch_s"] = summary(patches)
        figures["ready_s_each"] = times
        figures["loadavg"] = loads
        print(f"podCIDR assigned -> /readyz 200: median {s['median']:.3f} s, max {s['max']:.3f} s (n={s['n']}, "
              f"target <= 2 s)")
    finally:
        bed.down()
    report("kube_podcidr" if args.peers == 10 else f"kube_podcidr_p{args.peers}", figures)


if __name__ == "__main__":
    main()
