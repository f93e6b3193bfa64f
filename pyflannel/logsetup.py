"""Log formats: klog-like text (flanneld's look) or one JSON object per line.

``-v`` keeps flanneld's meaning: 0 logs what changed at INFO; 2 adds per-peer detail (the
loggers in ``PER_PEER_LOGGERS`` go to DEBUG: every lease added or removed, every kernel op of
a large batch that INFO only sums up); 4 and above put everything at DEBUG (netlink calls,
plans, start-up step timings).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time


class KlogFormatter(logging.Formatter):
    # Every lease event logs a line: the date part is formatted once a second, not once a record, and the
    # pid comes from the record (logging reads it once per record anyway) instead of another getpid().
    _second = -1
    _stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        sec = int(record.created)
        if sec != self._second:
            self._second, self._stamp = sec, time.strftime("%m%d %H:%M:%S", time.localtime(sec))
        us = int((record.created % 1) * 1_000_000)
        pid = record.process if record.process is not None else os.getpid()
        head = f"{record.levelname[0]}{self._stamp}.{us:06d} {pid:7d} {record.filename}:{record.lineno}]"
        msg = f"{head} {record.getMessage()}"
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        return msg


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        d = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "caller": f"{record.filename}:{record.lineno}",
        }
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d)


# Loggers whose DEBUG lines are per-peer detail; -v=2 turns them on (their names are kept stable).
PER_PEER_LOGGERS = ("pyflannel.daemon.reconciler", "pyflannel.adapters.etcd_watcher")
PER_PEER_VERBOSITY = 2
DEBUG_VERBOSITY = 4


def setup(fmt: str = "text", verbosity: int = 0) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KlogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity >= DEBUG_VERBOSITY else logging.INFO)
    for name in PER_PEER_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity >= PER_PEER_VERBOSITY else logging.NOTSET)
    # pyroute2 and httpx are chatty at INFO/DEBUG and say nothing an operator needs.
    for name in ("pyroute2", "httpx", "httpcore", "asyncio"):
        logging.getLogger(name).setLevel(logging.WARNING)
