"""``/healthz`` (liveness), ``/readyz`` (readiness) and ``/metrics`` on -healthz-ip:-healthz-port.

flanneld's /healthz always answers 200, and so does ours: it says the process serves
requests, nothing more, so a liveness probe never restarts a node that is merely waiting for
etcd. /readyz answers 200 only while the lease is held, the rules are installed, subnet.env
is written and the kernel matches the latest lease snapshot; otherwise 503 and what is
missing (``metrics.readiness_problems``). /metrics is the Prometheus text format from a
private registry (``metrics.make_registry``).

A tiny asyncio responder, one request per connection, no framework: the probes and a scrape
every few seconds are all the traffic it sees. prometheus_client is imported when the server
starts, not when the daemon does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pyflannel.daemon import metrics

log = logging.getLogger(__name__)

TEXT = "text/plain; charset=utf-8"


def _response(status: str, body: str | bytes, ctype: str = TEXT, head_only: bool = False) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    return head.encode() + (b"" if head_only else data)


def route(daemon: Any, path: str, registry: Any = None, method: str = "GET") -> bytes:
    head = method == "HEAD"
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", "only GET and HEAD\n", head_only=head)
    if path == "/healthz":
        return _response("200 OK", "flanneld is running\n", head_only=head)
    if path == "/readyz":
        missing = metrics.readiness_problems(daemon)
        if missing:
            return _response("503 Service Unavailable", "flanneld is not ready yet: " + "; ".join(missing) + "\n",
                             head_only=head)
        return _response("200 OK", "flanneld is ready\n", head_only=head)
    if path == "/metrics" and registry is not None:
        body, ctype = metrics.render(registry)
        return _response("200 OK", body, ctype, head_only=head)
    return _response("404 Not Found", "not found\n", head_only=head)


async def serve_health(daemon: Any) -> None:
    registry = metrics.make_registry(daemon)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            parts = line.decode(errors="replace").split()
            method = parts[0] if parts else "GET"
            path = parts[1].split("?")[0] if len(parts) >= 2 else "/"
            # Drain headers; the body of a GET is ignored.
            while (h := await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                _ = h
            writer.write(route(daemon, path, registry, method))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        except Exception:  # a scrape must never take the server down
            log.exception("healthz: error answering %r", locals().get("path"))
        finally:
            writer.close()

    server = await asyncio.start_server(handle, daemon.opts.healthz_ip, daemon.opts.healthz_port)
    log.info("Start healthz server on %s:%d (/healthz, /readyz, /metrics)", daemon.opts.healthz_ip,
             daemon.opts.healthz_port)
    async with server:
        await server.serve_forever()
