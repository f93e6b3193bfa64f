"""A small asyncio client for etcd's v3 API: unary calls through the JSON gateway (``/v3/...``), the watch
over gRPC (adapters/grpc_watch.py, where the gateway's extra hop cost every event 240-320 us).

Why not a gRPC library (docs/design-notes.md, "etcd"): the gateway client
reports every failure to its caller (so flannel's own list-then-watch loop decides what to
do), resumes watches from a revision we choose, has no grpcio fork hazard next to
pyroute2's netns forks, and is the smallest in memory.

Gateway quirks handled here: int64 fields (revisions, lease IDs, TTLs) arrive as strings;
keys and values are base64; zero-valued fields are omitted (``kvs`` missing when empty,
``succeeded`` missing on a failed txn, ``type`` missing for PUT events).

Dead connections: every socket gets TCP keepalive (3 s idle, 2 s interval, 3 probes) and
TCP_USER_TIMEOUT, so a silent partition (no FIN, no RST) surfaces as an error in about
9-10 s even on an idle watch stream, inside the 15 s an operator expects.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import socket
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyflannel.adapters import http1
from pyflannel.core.backoff import jittered
from pyflannel.core.errors import FlannelError

log = logging.getLogger(__name__)

KEEPALIVE_IDLE = 3
KEEPALIVE_INTERVAL = 2
KEEPALIVE_COUNT = 3
USER_TIMEOUT_MS = 10_000
ROUND_PAUSE = 1.0  # between two rounds over the endpoints, jittered by +-50% so nodes do not retry together


class EtcdError(FlannelError):
    """An etcd request failed; the message names the endpoint and the reason."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered."""


class EtcdAuthError(EtcdError):
    """Authentication failed (bad credentials, or no permission)."""


class Compacted(EtcdError):
    """A watch asked for history older than the compaction revision."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"required revision has been compacted (compact revision {revision})")
        self.revision = revision


def _b64(s: str | bytes) -> str:
    if isinstance(s, str):
        s = s.encode()
    return base64.b64encode(s).decode()


def _unb64(s: str | None) -> bytes:
    return base64.b64decode(s) if s else b""


def prefix_end(prefix: str) -> bytes:
    """The range end that selects every key starting with ``prefix`` (etcd's WithPrefix), as raw bytes."""
    b = bytearray(prefix.encode())
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\x00"


def prefix_range_end(prefix: str) -> str:
    """``prefix_end`` as the gateway wants it (base64)."""
    return _b64(prefix_end(prefix))


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KeyValue:
        return cls(
            key=_unb64(d.get("key")).decode(errors="replace"),
            value=_unb64(d.get("value")),
            create_revision=int(d.get("create_revision", 0)),
            mod_revision=int(d.get("mod_revision", 0)),
            version=int(d.get("version", 0)),
            lease=int(d.get("lease", 0)),
        )


@dataclass(frozen=True)
class WatchEvent:
    type: str  # "PUT" or "DELETE"
    kv: KeyValue
    prev_kv: KeyValue | None = None


@dataclass(frozen=True)
class WatchBatch:
    events: tuple[WatchEvent, ...]
    header_revision: int


@dataclass(frozen=True)
class RangeResult:
    kvs: tuple[KeyValue, ...]
    revision: int


@dataclass
class TLSConfig:
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    def context(self) -> ssl.SSLContext:
        # An explicit context: REQUESTS_CA_BUNDLE / SSL_CERT_FILE in the environment must not
        # silently replace the operator's CA (docs/design-notes.md, "TLS").
        ctx = ssl.create_default_context(cafile=self.cafile) if self.cafile else ssl.create_default_context()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.certfile and self.keyfile:
            ctx.load_cert_chain(self.certfile, self.keyfile)
        return ctx


def transport_warning(endpoints: Sequence[str], tls: TLSConfig | None = None) -> str:
    """The start-up warning for etcd traffic that is not protected by TLS, or "" when all of it is.

    Only ``http://`` endpoints are unprotected. An ``https://`` endpoint without -etcd-cafile
    is verified against the system CA bundle (``ssl.create_default_context``), which is TLS
    all the same; without -etcd-certfile the client is simply not authenticated by a
    certificate (etcd may still ask for a password). ``tls`` is accepted for symmetry and
    may say more in the future.
    """
    _ = tls
    plain = [e.strip() for e in endpoints if e.strip().startswith("http://")]
    if not plain:
        return ""
    return f"etcd connection is not secured with TLS: {', '.join(plain)} (use https:// endpoints)"


def uses_system_ca(endpoints: Sequence[str], tls: TLSConfig | None = None) -> bool:
    """Whether an https:// endpoint will be verified against the system CA bundle (no -etcd-cafile)."""
    return any(e.strip().startswith("https://") for e in endpoints) and not (tls is not None and tls.cafile)


@dataclass
class _Auth:
    username: str
    password: str = field(repr=False)
    token: str | None = field(default=None, repr=False)


def _socket_options() -> list[tuple[int, int, int]]:
    opts = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, val in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS),
    ):
        if hasattr(socket, name):
            opts.append((socket.IPPROTO_TCP, getattr(socket, name), val))
    return opts


class EtcdClient:
    """etcd v3 over HTTP(S) with endpoint failover, TLS and token auth."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        tls: TLSConfig | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
        rng: random.Random | None = None,
        grpc_watch: bool = True,
    ) -> None:
        eps = [e.strip().rstrip("/") for e in endpoints if e.strip()]
        if not eps:
            raise EtcdError("no etcd endpoints given")
        for e in eps:
            if not (e.startswith("http://") or e.startswith("https://")):
                raise EtcdError(f"etcd endpoint {e!r}: must start with http:// or https://")
        self.endpoints = eps
        self._current = 0
        # Every failed request attempt and watch stream (flannel_etcd_errors); read, never reset.
        self.errors = 0
        self._rng = rng or random.Random()
        self._timeout = timeout
        self._auth = _Auth(username, password or "") if username else None
        self._auth_lock = asyncio.Lock()
        # Building a default SSL context loads the CA bundle (~25 ms); only do it when an https
        # endpoint may need it.
        verify: ssl.SSLContext | bool = False
        if tls is not None:
            verify = tls.context()
        elif any(e.startswith("https://") for e in eps):
            verify = ssl.create_default_context()
        # Requests and watches share one client; a watch gets a connection of its own (never pooled) whose
        # stream has no read timeout, only the keepalive.
        self._socket_options = _socket_options()
        self._client = http1.HttpClient(verify=verify, timeout=timeout, connect_timeout=min(timeout, 3.0),
                                        socket_options=self._socket_options)
        # Watches go over gRPC (adapters/grpc_watch.py) unless an endpoint turns out not to speak HTTP/2;
        # those endpoints are remembered and watched through the gateway.
        self._grpc_watch = grpc_watch
        self._tls = tls
        self._h2_tls: ssl.SSLContext | None = None
        self._gateway_only: set[str] = set()

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._current]

    async def close(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- transport -----------------------------------------------------------------------

    def _rotate(self, failed: int) -> None:
        if self._current == failed and len(self.endpoints) > 1:
            self._current = (failed + 1) % len(self.endpoints)
            log.warning("etcd endpoint %s failed; switching to %s", self.endpoints[failed], self.endpoint)

    async def _authenticate(self, endpoint: str) -> None:
        assert self._auth is not None
        url = f"{endpoint}/v3/auth/authenticate"
        body = {"name": self._auth.username, "password": self._auth.password}
        try:
            r = await self._client.post(url, json=body)
        except http1.HTTPError as e:
            raise EtcdError(f"etcd {endpoint}: authenticate: {_describe(e)}") from None
        except ssl.SSLError as e:
            raise EtcdError(f"etcd {endpoint}: authenticate: TLS error: {e}") from None
        data = _json(r)
        if r.status_code != 200 or "token" not in data:
            raise EtcdAuthError(f"etcd {endpoint}: authentication as {self._auth.username!r} failed: {_err(data, r)}")
        self._auth.token = data["token"]

    async def _headers(self, endpoint: str) -> dict[str, str]:
        if self._auth is None:
            return {}
        async with self._auth_lock:
            if self._auth.token is None:
                await self._authenticate(endpoint)
        assert self._auth.token is not None
        return {"Authorization": self._auth.token}

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one unary request, failing over across endpoints and re-authenticating once."""
        last: Exception | None = None
        # Two rounds over the endpoints: right after a member dies the others may answer
        # "no leader" until the election (about a second) is over.
        for attempt in range(2 * len(self.endpoints)):
            if attempt == len(self.endpoints):
                await asyncio.sleep(jittered(ROUND_PAUSE, self._rng))
            idx = self._current
            endpoint = self.endpoints[idx]
            reauthed = False
            while True:
                try:
                    headers = await self._headers(endpoint)
                    r = await self._client.post(f"{endpoint}{path}", json=body, headers=headers)
                except http1.HTTPError as e:
                    last = EtcdError(f"etcd {endpoint}: {path}: {_describe(e)}")
                    self.errors += 1
                    break
                except ssl.SSLError as e:  # not expected (http1 wraps TLS errors), kept as a guard
                    last = EtcdError(f"etcd {endpoint}: {path}: TLS error: {e}")
                    self.errors += 1
                    break
                except EtcdAuthError:
                    self.errors += 1
                    raise
                except EtcdError as e:
                    last = e
                    self.errors += 1
                    break
                data = _json(r)
                if r.status_code == 200:
                    return data
                self.errors += 1
                msg = _err(data, r)
                if self._auth is not None and "invalid auth token" in msg and not reauthed:
                    # simple tokens expire after --auth-token-ttl of idleness; get a new one
                    log.info("etcd auth token expired; re-authenticating to %s", endpoint)
                    self._auth.token = None
                    reauthed = True
                    continue
                if "permission denied" in msg or "authentication failed" in msg or "user name is empty" in msg:
                    raise EtcdAuthError(f"etcd {endpoint}: {path}: {msg}")
                # Transient during an election or a member's loss: try the next endpoint (and a second round).
                transient = ("no leader", "timed out", "stopped", "leader changed", "too many requests")
                if r.status_code >= 500 and any(t in msg for t in transient):
                    last = EtcdError(f"etcd {endpoint}: {path}: {msg}")
                    break
                raise EtcdError(f"etcd {endpoint}: {path}: {msg}")
            self._rotate(idx)
        raise EtcdUnavailable(str(last) if last else "etcd: no endpoint answered")

    # --- KV ------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        data = await self.call("/v3/kv/range", {"key": _b64(key)})
        kvs = data.get("kvs") or []
        return KeyValue.from_json(kvs[0]) if kvs else None

    async def get_prefix(self, prefix: str, page: int = 2000) -> RangeResult:
        """Every key under ``prefix`` at one revision, fetched in pages."""
        out: list[KeyValue] = []
        revision = 0
        async for kvs, rev in self.prefix_pages(prefix, page):
            out.extend(kvs)
            revision = rev
        return RangeResult(tuple(out), revision)

    async def prefix_pages(self, prefix: str, page: int = 2000) -> AsyncIterator[tuple[list[KeyValue], int]]:
        """The keys under ``prefix`` at one revision, a page at a time, with that revision.

        The next page is asked for before this one is handed over: etcd encodes it while the caller decodes
        this one (a node's first listing of 5000 leases is three pages, each about as long to encode in etcd
        as to decode here).
        """
        end = prefix_range_end(prefix)
        revision = 0
        nxt: asyncio.Future[dict[str, Any]] | None = asyncio.ensure_future(
            self.call("/v3/kv/range", {"key": _b64(prefix), "range_end": end, "limit": page}))
        try:
            while nxt is not None:
                data = await nxt
                nxt = None
                if not revision:
                    revision = int(data["header"]["revision"])
                raw = data.get("kvs") or []
                if data.get("more") and raw:
                    start = _b64(_unb64(raw[-1].get("key")) + b"\x00")
                    nxt = asyncio.ensure_future(self.call(
                        "/v3/kv/range", {"key": start, "range_end": end, "limit": page, "revision": revision}))
                yield [KeyValue.from_json(k) for k in raw], revision
        finally:
            if nxt is not None:
                nxt.cancel()
                await asyncio.gather(nxt, return_exceptions=True)

    async def put(self, key: str, value: str | bytes, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        data = await self.call("/v3/kv/put", body)
        return int(data["header"]["revision"])

    async def delete(self, key: str, prefix: bool = False) -> int:
        body: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            body["range_end"] = prefix_range_end(key)
        data = await self.call("/v3/kv/deleterange", body)
        return int(data.get("deleted", 0))

    async def create(self, key: str, value: str | bytes, lease: int = 0) -> tuple[bool, int]:
        """Put ``key`` only if it does not exist (version == 0). Returns (created, revision)."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        body = {
            "compare": [{"target": "VERSION", "key": _b64(key), "result": "EQUAL", "version": "0"}],
            "success": [{"request_put": put}],
            "failure": [],
        }
        data = await self.call("/v3/kv/txn", body)
        return bool(data.get("succeeded", False)), int(data["header"]["revision"])

    async def txn(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.call("/v3/kv/txn", body)

    async def compact(self, revision: int, physical: bool = True) -> None:
        await self.call("/v3/kv/compaction", {"revision": str(revision), "physical": physical})

    # --- leases --------------------------------------------------------------------------

    async def lease_grant(self, ttl: int) -> tuple[int, int]:
        data = await self.call("/v3/lease/grant", {"TTL": str(ttl), "ID": "0"})
        if data.get("error"):
            raise EtcdError(f"etcd {self.endpoint}: lease grant: {data['error']}")
        return int(data["ID"]), int(data["TTL"])

    async def lease_keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; returns the new TTL (0 or less: the lease is gone)."""
        data = await self.call("/v3/lease/keepalive", {"ID": str(lease_id)})
        res = data.get("result", data)
        return int(res.get("TTL", 0))

    async def lease_revoke(self, lease_id: int) -> None:
        try:
            await self.call("/v3/lease/revoke", {"ID": str(lease_id)})
        except EtcdError as e:
            if "requested lease not found" not in str(e):
                raise

    async def lease_ttl(self, lease_id: int) -> tuple[int, int]:
        """(remaining TTL, granted TTL); remaining is -1 if the lease does not exist."""
        data = await self.call("/v3/lease/timetolive", {"ID": str(lease_id)})
        return int(data.get("TTL", -1)), int(data.get("grantedTTL", 0))

    async def status(self, endpoint: str) -> dict[str, Any]:
        """Maintenance status of one endpoint (no failover): version, leader, db size."""
        try:
            headers = await self._headers(endpoint) if self._auth else {}
            try:
                r = await self._client.post(f"{endpoint}/v3/maintenance/status", json={}, headers=headers)
            except http1.HTTPError as e:
                raise EtcdError(f"etcd {endpoint}: status: {_describe(e)}") from None
            except ssl.SSLError as e:
                raise EtcdError(f"etcd {endpoint}: status: TLS error: {e}") from None
            data = _json(r)
            if r.status_code != 200:
                raise EtcdError(f"etcd {endpoint}: status: {_err(data, r)}")
        except EtcdError:
            self.errors += 1
            raise
        return data

    async def v2_get(self, key: str) -> str | None:
        """Read a key from the v2 keyspace (only served when etcd runs with --enable-v2)."""
        for endpoint in self.endpoints:
            try:
                r = await self._client.get(f"{endpoint}/v2/keys{key}")
            except http1.HTTPError:
                continue
            if r.status_code == 200:
                node = _json(r).get("node") or {}
                value = node.get("value")
                return value if isinstance(value, str) else None
            return None
        return None

    # --- watch ---------------------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchBatch]:
        """Watch every key under ``prefix`` from ``start_revision``.

        Yields batches as etcd sends them. Ends only by raising: Compacted when the start
        revision is gone, EtcdError when the stream breaks. The caller resumes from the last
        event's mod_revision + 1 (never from the header revision, which during catch-up is
        the store's current revision).
        """
        idx = self._current
        endpoint = self.endpoints[idx]
        if self._grpc_watch and endpoint not in self._gateway_only:
            inner = self._watch_grpc(idx, endpoint, prefix, start_revision)
        else:
            inner = self._watch_gateway(idx, endpoint, prefix, start_revision)
        try:
            async with contextlib.aclosing(inner):  # the stream closes when our consumer stops
                async for batch in inner:
                    yield batch
        except Compacted:
            raise
        except EtcdError:
            self.errors += 1
            raise

    def _forget_expired_token(self, error_text: str) -> None:
        """A watch refused for an expired token: drop it, so the watcher's retry authenticates again."""
        if self._auth is not None and "invalid auth token" in error_text:
            self._auth.token = None

    def _watch_result(self, endpoint: str, compact_revision: int, canceled: bool, reason: str) -> None:
        """What both transports do with a response's compaction and cancel fields."""
        if compact_revision > 0:
            raise Compacted(compact_revision)
        if canceled:
            self._forget_expired_token(reason)
            raise EtcdError(f"etcd {endpoint}: watch canceled: {reason}")

    async def _watch_grpc(self, idx: int, endpoint: str, prefix: str,
                          start_revision: int) -> AsyncGenerator[WatchBatch, None]:
        from pyflannel.adapters import grpc_watch as gw  # hpack is only needed once a watch starts

        if endpoint.startswith("https://") and self._h2_tls is None:
            # A context of its own: ALPN "h2" on the gateway client's context would make its requests HTTP/2.
            self._h2_tls = gw.h2_context(self._tls.context() if self._tls is not None
                                         else ssl.create_default_context())
        message = gw.create_request(prefix.encode(), prefix_end(prefix), start_revision)
        stream: gw.GrpcWatchStream | None = None
        responses: AsyncGenerator[gw.WatchResponse, None] | None = None
        try:
            token = (await self._headers(endpoint)).get("Authorization")
            async with asyncio.timeout(self._timeout):
                stream = await gw.open_watch(endpoint, tls=self._h2_tls, connect_timeout=min(self._timeout, 3.0),
                                             socket_options=self._socket_options, message=message, token=token)
                responses = stream.responses()
                res = await anext(responses)  # etcd answers a create at once; bounded like the gateway's head
            while True:
                self._watch_result(endpoint, res.compact_revision, res.canceled, res.cancel_reason)
                if res.events or res.created:
                    yield WatchBatch(res.events, res.header_revision)
                res = await anext(responses)
        except gw.NotHTTP2 as e:
            log.info("etcd %s: %s; watching it through the JSON gateway instead", endpoint, e)
            self._gateway_only.add(endpoint)
            if stream is not None:
                stream.close()
                stream = None
            responses = None
            async for batch in self._watch_gateway(idx, endpoint, prefix, start_revision):
                yield batch
        except gw.GrpcWatchError as e:
            self._forget_expired_token(str(e))
            self._rotate(idx)
            # A connection failure reads as it does for the gateway's requests (a TLS handshake said as such).
            text = _describe(e.__cause__) if isinstance(e.__cause__, http1.HTTPError) else str(e)
            raise EtcdError(f"etcd {endpoint}: watch: {text}") from None
        except TimeoutError:
            self._rotate(idx)
            raise EtcdError(f"etcd {endpoint}: watch: no response within {self._timeout:g}s") from None
        except StopAsyncIteration:
            self._rotate(idx)
            raise EtcdError(f"etcd {endpoint}: watch stream closed") from None
        finally:
            if responses is not None:
                await responses.aclose()
            if stream is not None:
                stream.close()

    async def _watch_gateway(self, idx: int, endpoint: str, prefix: str,
                             start_revision: int) -> AsyncGenerator[WatchBatch, None]:
        body = {
            "create_request": {
                "key": _b64(prefix),
                "range_end": prefix_range_end(prefix),
                "start_revision": str(start_revision),
            }
        }
        try:
            headers = await self._headers(endpoint)
            async with self._client.stream("POST", f"{endpoint}/v3/watch", json=body, headers=headers) as r:
                if r.status_code != 200:
                    text = (await r.aread()).decode(errors="replace")
                    self._forget_expired_token(text)
                    raise EtcdError(f"etcd {endpoint}: watch: HTTP {r.status_code}: {text.strip()[:200]}")
                async for line in r.aiter_lines():
                    if not line.strip():
                        continue
                    msg = json.loads(line)
                    if "error" in msg:
                        err = msg["error"]
                        text = err.get("message", err) if isinstance(err, dict) else err
                        self._forget_expired_token(str(text))
                        raise EtcdError(f"etcd {endpoint}: watch: {text}")
                    res = msg.get("result", {})
                    self._watch_result(endpoint, int(res.get("compact_revision", 0) or 0), bool(res.get("canceled")),
                                       str(res.get("cancel_reason", "")))
                    events = tuple(
                        WatchEvent(
                            type=ev.get("type", "PUT"),
                            kv=KeyValue.from_json(ev.get("kv", {})),
                            prev_kv=KeyValue.from_json(ev["prev_kv"]) if ev.get("prev_kv") else None,
                        )
                        for ev in res.get("events") or []
                    )
                    header_rev = int(res.get("header", {}).get("revision", 0))
                    if events or res.get("created"):
                        yield WatchBatch(events, header_rev)
        except http1.HTTPError as e:
            self._rotate(idx)
            raise EtcdError(f"etcd {endpoint}: watch: {_describe(e)}") from None
        except ssl.SSLError as e:
            self._rotate(idx)
            raise EtcdError(f"etcd {endpoint}: watch: TLS error: {e}") from None
        except (EtcdError, Compacted):
            raise
        except ValueError as e:
            self._rotate(idx)
            raise EtcdError(f"etcd {endpoint}: watch: bad response: {e}") from None
        self._rotate(idx)
        raise EtcdError(f"etcd {endpoint}: watch stream closed")


def _json(r: http1.Response) -> dict[str, Any]:
    try:
        data = r.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _err(data: dict[str, Any], r: http1.Response) -> str:
    msg = data.get("message") or data.get("error")
    if isinstance(msg, dict):
        msg = msg.get("message")
    return str(msg) if msg else f"HTTP {r.status_code}: {r.text.strip()[:200]}"


def _describe(e: http1.HTTPError) -> str:
    cause = e.__cause__ or e.__context__
    if isinstance(e, http1.ConnectError) and isinstance(cause, ssl.SSLError | ssl.SSLCertVerificationError):
        return f"TLS handshake failed: {cause}"
    text = str(e) or type(e).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return f"TLS handshake failed: {text}"
    return text
