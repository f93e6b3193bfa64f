"""systemd readiness (``Type=notify``): send READY=1 to $NOTIFY_SOCKET.

Ten lines instead of a dependency: the ``sdnotify`` package swallows every error. Abstract
sockets are written ``@name`` in the variable and need a leading NUL.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str = "READY=1") -> bool:
    """Send ``state`` to systemd; False (and a warning) if it could not be delivered."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError as e:
        log.warning("could not notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), e)
        return False
    return True
