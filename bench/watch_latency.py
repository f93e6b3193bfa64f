"""What part of put -> route is etcd's JSON gateway: a gRPC watch and a gateway watch on the same puts.

pyflannel's watch read etcd through the JSON gateway (HTTP/1.1, chunked JSON) until it moved to gRPC
(pyflannel/adapters/grpc_watch.py), which Go flanneld uses; its unary calls still go through the gateway.
This measures what that move was worth: in ``bench.scale``'s per-event figures both daemons start from one
etcd put, so a head start of the gRPC watch was inside Go flanneld's figure and not pyflannel's.
``bench/watchlat`` (a Go program, pinned by its go.mod) holds one watch of each kind and times both from
the same put; run in a one-node cluster's namespace against the same etcd the other benchmarks use.

    python -m bench.watch_latency [--reps 40] [--runs 3]

The program is built into build/bench/watchlat on first use (Go from PATH or /usr/local/go/bin/go).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
from pathlib import Path

from bench.common import new_cluster, report

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "bench" / "watchlat"
BINARY = REPO / "build" / "bench" / "watchlat"


def build() -> Path:
    if BINARY.exists():
        return BINARY
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(go).exists():
        raise SystemExit("bench.watch_latency: Go not found (PATH, /usr/local/go/bin/go)")
    BINARY.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([go, "build", "-trimpath", "-o", str(BINARY), "."], cwd=SRC, check=True,
                   env={**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly"})
    return BINARY


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    binary = build()
    c = new_cluster(1, "wl")
    runs = []
    try:
        for _ in range(args.runs):
            out = c.exec(c.nodes[0].ns, [str(binary), f"-endpoint={c.etcd_endpoint}", f"-reps={args.reps}"],
                         timeout=120).stdout
            r = json.loads(out)
            g, w = statistics.median(r["grpc_ms"]), statistics.median(r["gateway_ms"])
            d = statistics.median(b - a for a, b in zip(r["grpc_ms"], r["gateway_ms"], strict=True))
            print(f"put -> watch event, median of {args.reps}: gRPC {g:.3f} ms, gateway {w:.3f} ms; "
                  f"gateway later by {d * 1000:.0f} us (median of the per-put differences)", flush=True)
            runs.append({"grpc_median_ms": g, "gateway_median_ms": w, "gateway_later_us": d * 1000, **r})
    finally:
        c.down()
    report("watch_latency", {"args": vars(args), "runs": runs})


if __name__ == "__main__":
    main()
