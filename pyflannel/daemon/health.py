"""``/healthz`` (liveness) and ``/readyz`` (readiness) on -healthz-ip:-healthz-port.

flanneld's /healthz always answers 200. Here /readyz answers 200 only while the lease is
held, the rules are installed, subnet.env is written and the last reconcile pass left the
kernel matching the leases; otherwise 503 and the list of what is missing. A tiny asyncio
responder: one request per connection, no framework.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


def _response(status: str, body: str, ctype: str = "text/plain; charset=utf-8") -> bytes:
    data = body.encode()
    head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    return head.encode() + data


def route(daemon: Any, path: str) -> bytes:
    if path == "/healthz":
        return _response("200 OK", "flanneld is running\n")
    if path == "/readyz":
        missing = daemon.ready.missing()
        if missing:
            return _response("503 Service Unavailable", "flanneld is not ready yet: " + "; ".join(missing) + "\n")
        return _response("200 OK", "flanneld is ready\n")
    return _response("404 Not Found", "not found\n")


async def serve_health(daemon: Any) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            parts = line.decode(errors="replace").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else "/"
            # Drain headers; the body of a GET is ignored.
            while (h := await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                _ = h
            writer.write(route(daemon, path))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, daemon.opts.healthz_ip, daemon.opts.healthz_port)
    log.info("Start healthz server on %s:%d", daemon.opts.healthz_ip, daemon.opts.healthz_port)
    async with server:
        await server.serve_forever()
