"""A small asyncio Kubernetes API client on httpx: only what flannel's kube mode needs.

Why our own: flanneld reads Nodes (get, list, watch), one Pod (to learn its node name) and patches
its Node's status; flannelctl reads the same. httpx is already a dependency and imports in about
64 ms, against 122 ms (lightkube) to 583 ms (the official ``kubernetes`` package) for the general
clients, and a general client would still leave the list-then-watch loop, resourceVersions,
bookmarks and "410 Gone" to us. This module does the transport and the credentials (kubeconfig,
``--kube-api-url``, in-cluster service account) and reports every failure to its caller as a
:class:`KubeError`; :class:`KubeGone` is the one callers act on (relist).

Only imported in kube mode (the daemon with ``--kube-subnet-mgr``, flannelctl with the same flag);
the CNI plugin never imports it. PyYAML (kubeconfig files are YAML) is imported only when a
kubeconfig is read.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import ssl
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from pyflannel.core.errors import ConfigError, FlannelError, shorten

log = logging.getLogger(__name__)

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_REREAD_S = 60.0  # bound service-account tokens are rotated by the kubelet; re-read like client-go
KEEPALIVE_IDLE = 5
KEEPALIVE_INTERVAL = 3
KEEPALIVE_COUNT = 3
USER_TIMEOUT_MS = 15_000
LIST_PAGE = 500
USER_AGENT = "pyflannel/kube-subnet-mgr"


class KubeError(FlannelError):
    """A Kubernetes API request failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class KubeUnavailable(KubeError):
    """The API server did not answer (refused, reset, timed out, TLS failure)."""


class KubeGone(KubeError):
    """410 Gone: the resourceVersion asked for is older than the server keeps (relist)."""


class KubeConfigError(ConfigError):
    """The kubeconfig, the in-cluster credentials or --kube-api-url cannot be used."""


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KubeConfig:
    """Where the API server is and how to authenticate to it.

    ``source`` names where it came from, for messages ("kubeconfig /etc/…", "in-cluster config",
    "--kube-api-url").
    """

    server: str
    source: str
    ca_file: str | None = None
    ca_data: bytes | None = None
    cert_file: str | None = None
    key_file: str | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    token: str | None = None
    token_file: str | None = None
    insecure: bool = False

    def ssl_context(self) -> ssl.SSLContext:
        if self.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_data is not None:
            ctx = ssl.create_default_context(cadata=self.ca_data.decode("ascii", "replace"))
        elif self.ca_file:
            try:
                ctx = ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as e:
                raise KubeConfigError(
                    f"{self.source}: cannot load certificate-authority {self.ca_file!r}: {e}"
                ) from None
        else:
            ctx = ssl.create_default_context()
        if self.cert_file or self.cert_data:
            _load_client_cert(ctx, self)
        return ctx


def _load_client_cert(ctx: ssl.SSLContext, cfg: KubeConfig) -> None:
    if cfg.cert_file and cfg.key_file:
        try:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        except (OSError, ssl.SSLError) as e:
            raise KubeConfigError(
                f"{cfg.source}: cannot load client-certificate {cfg.cert_file!r} / client-key {cfg.key_file!r}: {e}"
            ) from None
        return
    if cfg.cert_data is None or cfg.key_data is None:
        raise KubeConfigError(f"{cfg.source}: client certificate given without its key (or the key without it)")
    # ssl can only load a chain from files: write both to a private file, load it, remove it at once.
    fd, name = tempfile.mkstemp(prefix="pyflannel-kube-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(cfg.cert_data.rstrip(b"\n") + b"\n" + cfg.key_data)
        ctx.load_cert_chain(name)
    except (OSError, ssl.SSLError) as e:
        raise KubeConfigError(f"{cfg.source}: cannot load client-certificate-data/client-key-data: {e}") from None
    finally:
        os.unlink(name)


def _b64field(d: Mapping[str, Any], key: str, source: str) -> bytes | None:
    v = d.get(key)
    if v is None or v == "":
        return None
    try:
        return base64.b64decode(str(v), validate=False)
    except ValueError:
        raise KubeConfigError(f"{source}: {key} is not base64: {shorten(v)}") from None


def _named(items: Any, name: str, kind: str, source: str) -> dict[str, Any]:
    for it in items if isinstance(items, list) else []:
        if isinstance(it, dict) and it.get("name") == name:
            body = it.get(kind)
            return body if isinstance(body, dict) else {}
    raise KubeConfigError(f"{source}: {kind} {name!r} not found")


def check_api_url(url: str, source: str = "--kube-api-url") -> str:
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise KubeConfigError(f"{source}: invalid API server URL {shorten(url)} (want https://host:port)")
    return url.rstrip("/")


def load_kubeconfig(path: str, api_url: str = "") -> KubeConfig:
    """The current context of a kubeconfig file; ``api_url`` replaces its server. Relative file names
    inside are relative to the kubeconfig's directory, as kubectl resolves them."""
    source = f"kubeconfig {path}"
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise KubeConfigError(f"{source}: cannot read: {e.strerror or e}") from None
    import yaml  # type: ignore[import-untyped,unused-ignore]  # only kube mode with a kubeconfig pays for it

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise KubeConfigError(f"{source}: not valid YAML: {' '.join(str(e).split())[:160]}") from None
    if not isinstance(doc, dict):
        raise KubeConfigError(f"{source}: not a kubeconfig (expected a mapping, got {type(doc).__name__})")
    ctx_name = doc.get("current-context")
    contexts = doc.get("contexts")
    if not ctx_name:
        if isinstance(contexts, list) and len(contexts) == 1 and isinstance(contexts[0], dict):
            ctx_name = contexts[0].get("name")
        else:
            raise KubeConfigError(f"{source}: no current-context")
    context = _named(contexts, str(ctx_name), "context", source)
    cluster = _named(doc.get("clusters"), str(context.get("cluster", "")), "cluster", source)
    user_name = context.get("user")
    user = _named(doc.get("users"), str(user_name), "user", source) if user_name else {}
    base = Path(path).parent

    def rel(v: Any) -> str | None:
        if not v:
            return None
        p = Path(str(v))
        return str(p if p.is_absolute() else base / p)

    server = api_url or str(cluster.get("server") or "")
    if not server:
        raise KubeConfigError(f"{source}: cluster {context.get('cluster')!r} has no server")
    check_api_url(server, source if not api_url else "--kube-api-url")
    for unsupported in ("exec", "auth-provider"):
        if user.get(unsupported):
            raise KubeConfigError(f"{source}: user {user_name!r} uses {unsupported}, which pyflannel does not support; "
                                  "use a token, tokenFile or a client certificate")
    return KubeConfig(
        server=server.rstrip("/"),
        source=source,
        ca_file=rel(cluster.get("certificate-authority")),
        ca_data=_b64field(cluster, "certificate-authority-data", source),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        cert_file=rel(user.get("client-certificate")),
        key_file=rel(user.get("client-key")),
        cert_data=_b64field(user, "client-certificate-data", source),
        key_data=_b64field(user, "client-key-data", source),
        token=str(user["token"]) if user.get("token") else None,
        token_file=rel(user.get("tokenFile")),
    )


def in_cluster_config(env: Mapping[str, str], sa_dir: str = SA_DIR) -> KubeConfig:
    """The pod's own credentials: KUBERNETES_SERVICE_HOST/PORT, the service-account token and CA."""
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise KubeConfigError(
            "unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be "
            "defined (or give --kubeconfig-file or --kube-api-url)"
        )
    token_file = os.path.join(sa_dir, "token")
    if not os.path.exists(token_file):
        raise KubeConfigError(f"in-cluster config: service-account token {token_file!r} does not exist")
    ca = os.path.join(sa_dir, "ca.crt")
    h = f"[{host}]" if ":" in host else host
    return KubeConfig(
        server=f"https://{h}:{port}", source="in-cluster config",
        ca_file=ca if os.path.exists(ca) else None, token_file=token_file,
    )  # fmt: skip


def resolve_config(api_url: str, kubeconfig: str, env: Mapping[str, str]) -> KubeConfig:
    """flannel's choice (client-go's BuildConfigFromFlags): kubeconfig (server replaced by the URL),
    else the URL alone without credentials, else the in-cluster config."""
    if kubeconfig:
        return load_kubeconfig(kubeconfig, api_url)
    if api_url:
        return KubeConfig(server=check_api_url(api_url), source="--kube-api-url")
    return in_cluster_config(env)


# --- the client ----------------------------------------------------------------------------------


def _socket_options() -> list[tuple[int, int, int]]:
    # A silent partition (no FIN, no RST) must end an idle watch stream instead of leaving it open for ever.
    opts = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, val in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                      ("TCP_KEEPCNT", KEEPALIVE_COUNT), ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS)):
        if hasattr(socket, name):
            opts.append((socket.IPPROTO_TCP, getattr(socket, name), val))
    return opts


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # ADDED | MODIFIED | DELETED | BOOKMARK
    object: dict[str, Any]


class KubeClient:
    """The few API calls flannel makes. Every method raises KubeError (KubeGone, KubeUnavailable) on failure."""

    def __init__(self, config: KubeConfig, *, timeout: float = 10.0) -> None:
        self.config = config
        verify: ssl.SSLContext | bool = config.ssl_context() if config.server.startswith("https") else False
        transport = httpx.AsyncHTTPTransport(verify=verify, socket_options=_socket_options(), retries=0)
        self._http = httpx.AsyncClient(
            base_url=config.server, transport=transport, trust_env=False,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        )  # fmt: skip
        watch_transport = httpx.AsyncHTTPTransport(verify=verify, socket_options=_socket_options(), retries=0)
        self._watch_http = httpx.AsyncClient(
            base_url=config.server, transport=watch_transport, trust_env=False,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0), read=None),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        )  # fmt: skip
        self._token: str | None = config.token
        self._token_read = 0.0

    async def close(self) -> None:
        await self._http.aclose()
        await self._watch_http.aclose()

    def _auth(self) -> dict[str, str]:
        cfg = self.config
        if cfg.token_file and (self._token is None or time.monotonic() - self._token_read > TOKEN_REREAD_S):
            try:
                self._token = Path(cfg.token_file).read_text().strip()
            except OSError as e:
                if self._token is None:
                    raise KubeConfigError(f"{cfg.source}: cannot read token file {cfg.token_file!r}: "
                                          f"{e.strerror or e}") from None
            self._token_read = time.monotonic()
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    async def request(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None, body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One request; the decoded JSON answer. Non-2xx answers raise KubeError with the server's message."""
        headers = self._auth()
        content = None
        if body is not None:
            content = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        try:
            r = await self._http.request(method, path, params=params, content=content, headers=headers)
        except httpx.HTTPError as e:
            raise KubeUnavailable(f"{method} {self.config.server}{path}: {_describe(e)}") from None
        except ssl.SSLError as e:
            raise KubeUnavailable(f"{method} {self.config.server}{path}: TLS: {e}") from None
        data = _json(r)
        if r.status_code >= 300:
            raise _status_error(method, path, r.status_code, data, r.text)
        return data

    async def get_node(self, name: str) -> dict[str, Any]:
        return await self.request("GET", f"/api/v1/nodes/{_seg(name)}")

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return await self.request("GET", f"/api/v1/namespaces/{_seg(namespace)}/pods/{_seg(name)}")

    async def patch_node_status(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A strategic-merge PATCH on ``nodes/<name>/status`` (metadata and status; spec is reset there)."""
        return await self.request("PATCH", f"/api/v1/nodes/{_seg(name)}/status", body=patch,
                                  content_type="application/strategic-merge-patch+json")

    async def list_nodes(self, page: int = LIST_PAGE) -> tuple[list[dict[str, Any]], str]:
        """Every Node and the list's resourceVersion (pages of ``page``; one consistent snapshot)."""
        items: list[dict[str, Any]] = []
        cont = ""
        while True:
            params = {"limit": str(page)}
            if cont:
                params["continue"] = cont
            data = await self.request("GET", "/api/v1/nodes", params=params)
            got = data.get("items")
            items.extend(i for i in (got if isinstance(got, list) else []) if isinstance(i, dict))
            meta = data.get("metadata")
            meta = meta if isinstance(meta, dict) else {}
            cont = str(meta.get("continue") or "")
            if not cont:
                return items, str(meta.get("resourceVersion") or "")

    async def watch_nodes(
        self, resource_version: str, *, timeout_seconds: int = 300, field_selector: str = "",
    ) -> AsyncIterator[WatchEvent]:
        """Node events after ``resource_version``, bookmarks included; ends when the server ends the watch.

        Raises KubeGone when that version is too old (an HTTP 410 or an ERROR event with code 410).
        """
        params = {"watch": "1", "allowWatchBookmarks": "true", "resourceVersion": resource_version,
                  "timeoutSeconds": str(timeout_seconds)}
        if field_selector:
            params["fieldSelector"] = field_selector
        path = "/api/v1/nodes"
        try:
            async with self._watch_http.stream("GET", path, params=params, headers=self._auth()) as r:
                if r.status_code >= 300:
                    text = (await r.aread()).decode("utf-8", "replace")
                    try:
                        data = json.loads(text)
                    except ValueError:
                        data = {}
                    raise _status_error("WATCH", path, r.status_code, data if isinstance(data, dict) else {}, text)
                async for line in r.aiter_lines():
                    if not line.strip():
                        continue
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        raise KubeError(f"WATCH {path}: undecodable event {shorten(line)}") from None
                    typ = ev.get("type") if isinstance(ev, dict) else None
                    obj = ev.get("object") if isinstance(ev, dict) else None
                    if not isinstance(obj, dict):
                        continue
                    if typ == "ERROR":
                        code = obj.get("code")
                        code = code if isinstance(code, int) else 0
                        raise _status_error("WATCH", path, code, obj, line)
                    if isinstance(typ, str):
                        yield WatchEvent(typ, obj)
        except httpx.HTTPError as e:
            raise KubeUnavailable(f"WATCH {self.config.server}{path}: {_describe(e)}") from None
        except ssl.SSLError as e:
            raise KubeUnavailable(f"WATCH {self.config.server}{path}: TLS: {e}") from None


def _seg(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _json(r: httpx.Response) -> dict[str, Any]:
    try:
        data = r.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _status_error(method: str, path: str, code: int, status: Mapping[str, Any], text: str) -> KubeError:
    msg = status.get("message")
    reason = str(status.get("reason") or "")
    detail = str(msg) if msg else f"HTTP {code}: {' '.join(text.split())[:200]}"
    text = f"{method} {path}: {detail}"
    if code == 410 or reason in ("Expired", "Gone"):
        return KubeGone(text, code or 410, reason)
    return KubeError(text, code, reason)


def _describe(e: httpx.HTTPError) -> str:
    cause = e.__cause__ or e.__context__
    if isinstance(e, httpx.ConnectError) and isinstance(cause, ssl.SSLError):
        return f"TLS handshake failed: {cause}"
    return str(e) or type(e).__name__
