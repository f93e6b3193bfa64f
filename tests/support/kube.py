"""A real kube-apiserver (with its own etcd 3.6) for the kube-mode tests, the bench and flannelctl tests.

Kubernetes mode can only be checked honestly against the real API server: RBAC decides whether the
manifest's ClusterRole is enough, the status subresource decides what a strategic-merge patch may
change, the watch cache decides when "410 Gone" happens. This module starts etcd 3.6 and
kube-apiserver v1.34 (built by ``make testdeps`` into build/testdeps/) on loopback or an address in a
network namespace, with RBAC, an admin token (``--token-auth-file``) and service-account signing keys
made with openssl; no controller-manager or kubelet runs, so the tests create the Node objects.

:func:`flannel_kubeconfig` applies the RBAC objects of deploy/kube-flannel.yml, asks the TokenRequest
API for a token of ServiceAccount ``kube-flannel/flannel`` and writes a kubeconfig holding it: the
code under test runs with exactly the manifest's permissions.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.etcd import free_port

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kube-flannel.yml"
SERVICE_CIDR = "198.19.255.0/24"  # never routed: the apiserver only needs a range to allocate from
_live: weakref.WeakSet[KubeApiServer] = weakref.WeakSet()


_PEER_KEYS = {"etcd": "etcd36", "kube-apiserver": "kube-apiserver", "flanneld": "flanneld"}


def binary(name: str) -> Path | None:
    """A test peer binary from support.peers (``make testdeps``; env overrides there); etcd means 3.6."""
    from support import peers

    return peers.find(_PEER_KEYS.get(name, name))


def missing_reason(*names: str) -> str | None:
    """Why the kube tests must skip (a binary is missing, naming `make testdeps`), or None."""
    from support import peers

    for n in names or ("kube-apiserver", "etcd"):
        why = peers.missing_reason(_PEER_KEYS.get(n, n))
        if why:
            return why
    return None


def _netns_argv(netns: str | None) -> list[str]:
    return [] if netns is None else ["ip", "netns", "exec", netns]


def _openssl(*args: str) -> None:
    r = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {r.stderr.strip()}")


@dataclass(eq=False)
class KubeApiServer:
    """etcd + kube-apiserver; ``admin()`` sends a request with the admin token."""

    workdir: Path
    host: str
    port: int
    etcd_port: int
    netns: str | None
    argv: list[str]
    etcd_argv: list[str]
    admin_token: str
    proc: subprocess.Popen[bytes] | None = None
    etcd_proc: subprocess.Popen[bytes] | None = None
    _ctx: ssl.SSLContext | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{h}:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "certs" / "apiserver.crt"

    @property
    def etcd_url(self) -> str:
        return f"http://{self.host}:{self.etcd_port}"

    def ssl_context(self) -> ssl.SSLContext:
        if self._ctx is None:
            self._ctx = ssl.create_default_context(cafile=str(self.ca_file))
        return self._ctx

    # --- processes ---

    def _spawn(self, argv: Sequence[str], log: str) -> subprocess.Popen[bytes]:
        with (self.workdir / log).open("ab") as f:
            f.write(f"\n=== {time.strftime('%H:%M:%S')} starting\n".encode())
            f.flush()
            return subprocess.Popen(
                [*_netns_argv(self.netns), *argv], stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip

    def start_etcd(self, timeout: float = 20.0) -> None:
        self.etcd_proc = self._spawn(self.etcd_argv, "etcd.log")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.etcd_call("/v3/kv/range", {"key": "AA=="})
                return
            except OSError:
                if self.etcd_proc.poll() is not None:
                    break
                time.sleep(0.1)
        raise RuntimeError(f"etcd did not start: {self.log_tail('etcd.log')}")

    def start(self, timeout: float = 90.0) -> None:
        """Start the apiserver (again, on the same etcd data) and wait for /readyz."""
        self.proc = self._spawn(self.argv, "apiserver.log")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kube-apiserver exited {self.proc.returncode}: {self.log_tail('apiserver.log')}")
            if self.ca_file.exists():
                try:
                    self._ctx = None
                    if self.raw("GET", "/readyz")[0] == 200:
                        return
                except (OSError, ssl.SSLError):
                    pass
            time.sleep(0.25)
        raise RuntimeError(f"kube-apiserver not ready in {timeout}s: {self.log_tail('apiserver.log')}")

    def stop(self) -> None:
        """Stop the apiserver only (etcd keeps the data)."""
        _terminate(self.proc)
        self.proc = None

    def close(self) -> None:
        _terminate(self.proc)
        _terminate(self.etcd_proc)
        self.proc = self.etcd_proc = None

    def log_tail(self, name: str, lines: int = 25) -> str:
        try:
            return "\n".join((self.workdir / name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # --- requests ---

    def raw(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
            token: str | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        if self.netns is not None:  # the address lives in the namespace: ask from inside it
            return self._raw_in_netns(method, path, data, content_type, token)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.admin_token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=30) as r:
                text = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            text, status = e.read(), e.code
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, text.decode(errors="replace")

    def _raw_in_netns(self, method: str, path: str, data: bytes | None, content_type: str,
                      token: str | None) -> tuple[int, Any]:
        argv = [*_netns_argv(self.netns), "curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-X", method,
                "--cacert", str(self.ca_file), "-H", f"Authorization: Bearer {token or self.admin_token}",
                "-H", "Accept: application/json"]
        if data is not None:
            argv += ["-H", f"Content-Type: {content_type}", "--data-binary", "@-"]
        r = subprocess.run([*argv, self.url + path], input=data, capture_output=True, check=False, timeout=30)
        if r.returncode != 0:
            raise OSError(f"curl {method} {path}: rc {r.returncode}: {r.stderr.decode(errors='replace')[:200]}")
        text, _, code = r.stdout.rpartition(b"\n")
        try:
            return int(code), json.loads(text) if text else None
        except ValueError:
            return int(code), text.decode(errors="replace")

    def admin(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        status, data = self.raw(method, path, body, content_type)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {data}")
        return data

    def etcd_call(self, path: str, body: dict[str, Any]) -> Any:
        if self.netns is not None:
            r = subprocess.run(
                [*_netns_argv(self.netns), "curl", "-sf", "-X", "POST", "-d", json.dumps(body), self.etcd_url + path],
                capture_output=True, check=False,
            )  # fmt: skip
            if r.returncode != 0:
                raise OSError(f"curl {path}: rc {r.returncode}")
            return json.loads(r.stdout)
        req = urllib.request.Request(self.etcd_url + path, data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def compact_etcd(self) -> int:
        """Compact etcd's history to its current revision (watches from older versions get 410)."""
        rev = int(self.etcd_call("/v3/kv/range", {"key": "AA=="})["header"]["revision"])
        self.etcd_call("/v3/kv/compaction", {"revision": str(rev), "physical": True})
        return rev

    # --- objects ---

    def create_node(self, name: str, pod_cidr: str | None = None, *, annotations: dict[str, str] | None = None,
                    pod_cidrs: Sequence[str] | None = None, internal_ip: str | None = None) -> dict[str, Any]:
        spec: dict[str, Any] = {}
        if pod_cidr:
            spec["podCIDR"] = pod_cidr
            spec["podCIDRs"] = list(pod_cidrs or [pod_cidr])
        node: dict[str, Any] = {"apiVersion": "v1", "kind": "Node",
                                # as a kubelet registers it: Go flannel panics on a Node without annotations
                                "metadata": {"name": name, "annotations": {
                                    "node.alpha.kubernetes.io/ttl": "0", **(annotations or {})}}, "spec": spec}
        created: dict[str, Any] = self.admin("POST", "/api/v1/nodes", node)
        if internal_ip:
            self.admin("PATCH", f"/api/v1/nodes/{name}/status",
                       {"status": {"addresses": [{"type": "InternalIP", "address": internal_ip}]}},
                       "application/strategic-merge-patch+json")
        return created

    def set_pod_cidr(self, name: str, cidr: str) -> None:
        self.admin("PATCH", f"/api/v1/nodes/{name}", {"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}},
                   "application/strategic-merge-patch+json")

    def annotate(self, name: str, annotations: dict[str, str | None]) -> None:
        self.admin("PATCH", f"/api/v1/nodes/{name}", {"metadata": {"annotations": annotations}},
                   "application/merge-patch+json")

    def delete_node(self, name: str) -> None:
        self.admin("DELETE", f"/api/v1/nodes/{name}")

    def get_node(self, name: str) -> dict[str, Any]:
        node: dict[str, Any] = self.admin("GET", f"/api/v1/nodes/{name}")
        return node

    def create_flannel_node(self, name: str, cidr: str, public_ip: str, mac: str, prefix: str =
                            "flannel.alpha.coreos.com/") -> None:
        """A Node as a running flannel leaves it (a peer that needs no daemon)."""
        self.create_node(name, cidr, annotations={
            prefix + "kube-subnet-manager": "true", prefix + "backend-type": "vxlan",
            prefix + "backend-data": json.dumps({"VNI": 1, "VtepMAC": mac}, separators=(",", ":")),
            prefix + "public-ip": public_ip,
        })


def _terminate(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def start_apiserver(workdir: Path, *, host: str = "127.0.0.1", netns: str | None = None,
                    watch_cache: bool = True, extra_args: Sequence[str] = ()) -> KubeApiServer:
    """etcd 3.6 and kube-apiserver with data in ``workdir``; returns once /readyz is 200."""
    reason = missing_reason()
    if reason:
        raise RuntimeError(reason)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "certs").mkdir(exist_ok=True)
    sa_key, sa_pub = workdir / "sa.key", workdir / "sa.pub"
    if not sa_key.exists():
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(sa_key))
        _openssl("pkey", "-in", str(sa_key), "-pubout", "-out", str(sa_pub))
    token = secrets.token_hex(16)
    (workdir / "tokens.csv").write_text(f'{token},admin,admin-uid,"system:masters"\n')
    port = free_port(host)
    etcd_port, etcd_peer = free_port(host), free_port(host)
    h = f"[{host}]" if ":" in host else host
    etcd_argv = [
        str(binary("etcd")), "--name", "kube", "--data-dir", str(workdir / "etcd-data"),
        "--listen-client-urls", f"http://{h}:{etcd_port}", "--advertise-client-urls", f"http://{h}:{etcd_port}",
        "--listen-peer-urls", f"http://{h}:{etcd_peer}", "--initial-advertise-peer-urls", f"http://{h}:{etcd_peer}",
        "--initial-cluster", f"kube=http://{h}:{etcd_peer}", "--heartbeat-interval", "50",
        "--election-timeout", "500", "--log-level", "warn", "--quota-backend-bytes", str(1 << 30),
    ]
    argv = [
        str(binary("kube-apiserver")),
        f"--etcd-servers=http://{h}:{etcd_port}",
        f"--secure-port={port}", f"--bind-address={host}", f"--advertise-address={host}",
        f"--cert-dir={workdir / 'certs'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={sa_pub}", f"--service-account-signing-key-file={sa_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--endpoint-reconciler-type=none",
        "--authorization-mode=RBAC",
        f"--token-auth-file={workdir / 'tokens.csv'}",
        "--disable-admission-plugins=ServiceAccount",
        "--etcd-compaction-interval=0",
        "--enable-priority-and-fairness=false",
        "--profiling=false",
        f"--watch-cache={'true' if watch_cache else 'false'}",
        *extra_args,
    ]
    server = KubeApiServer(workdir=workdir, host=host, port=port, etcd_port=etcd_port, netns=netns, argv=argv,
                           etcd_argv=etcd_argv, admin_token=token)
    _live.add(server)
    try:
        server.start_etcd()
        server.start()
    except BaseException:
        server.close()
        raise
    return server


def manifest_objects(path: Path = MANIFEST) -> list[dict[str, Any]]:
    import yaml

    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def api_path(obj: dict[str, Any], *, named: bool = False) -> str:
    """The collection (or, with ``named``, the object) path of a manifest object."""
    kinds = {"Namespace": ("namespaces", False), "ServiceAccount": ("serviceaccounts", True),
             "ConfigMap": ("configmaps", True), "DaemonSet": ("daemonsets", True),
             "ClusterRole": ("clusterroles", False), "ClusterRoleBinding": ("clusterrolebindings", False)}
    plural, namespaced = kinds[obj["kind"]]
    group = obj["apiVersion"]
    base = "/api/v1" if group == "v1" else f"/apis/{group}"
    if namespaced:
        base += f"/namespaces/{obj['metadata']['namespace']}"
    path = f"{base}/{plural}"
    return f"{path}/{obj['metadata']['name']}" if named else path


def apply_rbac(api: KubeApiServer) -> None:
    """The Namespace, ServiceAccount, ClusterRole and ClusterRoleBinding of the manifest (idempotent)."""
    for obj in manifest_objects():
        if obj["kind"] in ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"):
            status, data = api.raw("POST", api_path(obj), obj)
            if status >= 300 and status != 409:
                raise RuntimeError(f"create {obj['kind']} {obj['metadata']['name']}: HTTP {status}: {data}")


def flannel_token(api: KubeApiServer, seconds: int = 86400) -> str:
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": seconds}}
    data = api.admin("POST", "/api/v1/namespaces/kube-flannel/serviceaccounts/flannel/token", body)
    return str(data["status"]["token"])


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str) -> Path:
    """A kubeconfig in the usual YAML shape (clusters/users/contexts), CA as file."""
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {ca_file}\n"
        f"users:\n- name: flannel\n  user:\n    token: {token}\n"
        "contexts:\n- name: flannel@test\n  context:\n    cluster: test\n    user: flannel\n"
        "current-context: flannel@test\n"
    )
    path.chmod(0o600)
    return path


def flannel_kubeconfig(api: KubeApiServer, path: Path, server: str | None = None) -> Path:
    """RBAC from the manifest, a TokenRequest token for kube-flannel/flannel, and a kubeconfig holding it."""
    apply_rbac(api)
    return write_kubeconfig(path, server or api.url, api.ca_file, flannel_token(api))


# --- a TCP relay the tests can cut (a real network fault between client and server) ---------------


class Relay:
    """Forwards 127.0.0.1:<port> to the apiserver; ``cut()`` drops every connection and refuses new ones
    until ``resume()``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._open = True
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                c, _ = self._listener.accept()
            except OSError:
                return
            if not self._open:
                c.close()
                continue
            try:
                u = socket.create_connection(self.target, timeout=5)
            except OSError:
                c.close()
                continue
            with self._lock:
                self._conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._open = False
        with self._lock:
            for s in self._conns:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
            self._conns.clear()

    def resume(self) -> None:
        self._open = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()


@contextlib.contextmanager
def running_apiserver(workdir: Path, **kw: Any) -> Iterator[KubeApiServer]:
    api = start_apiserver(workdir, **kw)
    try:
        yield api
    finally:
        api.close()


def _cleanup_all() -> None:
    for s in list(_live):
        s.close()


atexit.register(_cleanup_all)
