"""Helpers for the benchmarks: run pyflannel's flanneld under cProfile in every thread.

``python -m support.bench_helpers OUT.prof -- <flanneld flags>`` runs ``pyflannel.cli.flanneld:main`` with a
``cProfile.Profile`` in the main thread and in every thread started afterwards (the netlink thread does the
dumps and applies), and writes the merged statistics to OUT.prof when the daemon exits (SIGTERM exits 0).
Times are each thread's CPU time (``time.thread_time``), so waiting in epoll or on a queue does not count.
``python -m support.bench_helpers --show OUT.prof [N]`` prints the top N functions by own and cumulative time.
"""

from __future__ import annotations

import atexit
import cProfile
import pstats
import sys
import threading
import time
from types import FrameType
from typing import Any

_profiles: list[cProfile.Profile] = []
#: CPU time of the calling thread, not wall time: what a thread waits for (epoll, queues, I/O) costs nothing.
_TIMER = time.thread_time


def _thread_hook(frame: FrameType, event: str, arg: Any) -> None:
    sys.setprofile(None)
    p = cProfile.Profile(_TIMER)
    _profiles.append(p)
    p.enable()


def _dump(out: str) -> None:
    stats: pstats.Stats | None = None
    for p in _profiles:
        p.disable()
        try:
            p.create_stats()
        except Exception:  # a thread's profile can be mid-update at exit; skip it
            continue
        if stats is None:
            stats = pstats.Stats(p)
        else:
            stats.add(p)
    if stats is not None:
        stats.dump_stats(out)


def profile_flanneld(out: str, argv: list[str]) -> int:
    from pyflannel.cli.flanneld import main

    threading.setprofile(_thread_hook)
    atexit.register(_dump, out)
    p = cProfile.Profile(_TIMER)
    _profiles.append(p)
    sys.argv = ["flanneld", *argv]
    p.enable()
    try:
        rc = main()
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 0
    p.disable()
    return rc or 0


def show(path: str, n: int = 25) -> None:
    s = pstats.Stats(path)
    s.sort_stats("tottime").print_stats(n)
    s.sort_stats("cumulative").print_stats(n)


if __name__ == "__main__":
    if sys.argv[1] == "--show":
        show(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 25)
    else:
        args = sys.argv[2:]
        if args and args[0] == "--":
            args = args[1:]
        sys.exit(profile_flanneld(sys.argv[1], args))
