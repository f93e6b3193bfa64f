"""Start and stop real etcd servers for the integration tests and the demo.

pyflannel talks to etcd, and the behaviours that matter (TLS with client certificates, a wrong CA being
refused, auth with a role limited to a key prefix, simple-token expiry, member failure in a cluster,
configuration that exists only in the v2 store) can only be checked honestly against a real server.
This module is the one place that knows how to run one: the pytest fixtures in
``tests/integration/conftest.py`` and the demo both use it, so they exercise the same setup.

Servers listen on loopback (or on any address inside a network namespace, run through
``ip netns exec``), keep their data and log under a caller-supplied directory (usually a temp dir), and
use short raft timers so that start-up and leader election take well under a second or two.
Everything is done with argument lists, never through a shell; TLS material is made with the
``openssl`` command line tool and administration uses ``etcdctl``.

Two server versions: Debian's etcd 3.4 (``etcd`` on PATH) and etcd 3.6 built by ``make testdeps``
(found through ``support.peers``).  ``PYFLANNEL_ETCD_VERSION=3.6`` or :func:`use_etcd_version` picks the
one every server started here runs; the default is 3.4.  etcd 3.6 has no v2 store (its ``--enable-v2``
flag is gone), so a server asked for ``enable_v2=True`` always runs 3.4: the tests that need v2 check
what pyflannel says about configuration that exists only in the v2 store of an old cluster.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "EtcdCluster",
    "EtcdServer",
    "EtcdctlError",
    "TLSFiles",
    "enable_auth",
    "etcdctl",
    "free_port",
    "get_v2",
    "make_other_ca",
    "make_tls",
    "put_v2",
    "start_cluster",
    "start_etcd",
    "etcd_version",
    "use_etcd_version",
]

HEARTBEAT_MS = 50
ELECTION_MS = 500
STOP_GRACE_S = 5.0
LOG_TAIL_LINES = 30

# Ports handed out by free_port() in this process, so that back-to-back calls (a cluster needs six
# ports before any server binds them) never return the same port twice.
_handed_out: set[tuple[str, int]] = set()
# Every server started here, so that a crashing demo or test run does not leave etcd running.
_live: weakref.WeakSet[EtcdServer] = weakref.WeakSet()


ETCD_VERSIONS = ("3.4", "3.6")
_version_override: str | None = None


def etcd_version() -> str:
    """The etcd version new servers run: :func:`use_etcd_version`, else ``PYFLANNEL_ETCD_VERSION``, else 3.4."""
    version = _version_override or os.environ.get("PYFLANNEL_ETCD_VERSION") or "3.4"
    if version not in ETCD_VERSIONS:
        raise ValueError(f"PYFLANNEL_ETCD_VERSION={version!r} is not supported; use one of {', '.join(ETCD_VERSIONS)}")
    return version


@contextlib.contextmanager
def use_etcd_version(version: str) -> Iterator[None]:
    """Run every server started inside the ``with`` block on etcd ``version`` ("3.4" or "3.6")."""
    global _version_override
    if version not in ETCD_VERSIONS:
        raise ValueError(f"etcd version {version!r} is not supported; use one of {', '.join(ETCD_VERSIONS)}")
    previous, _version_override = _version_override, version
    try:
        yield
    finally:
        _version_override = previous


def _etcd_executable(version: str) -> str:
    if version == "3.4":
        return os.environ.get("PYFLANNEL_ETCD34") or _which("etcd")
    from support.peers import etcd_binary, missing_reason  # only the 3.6 path needs the built peers

    path = etcd_binary(version)
    if path is None:
        raise RuntimeError(missing_reason("etcd36"))
    return str(path)


class EtcdctlError(RuntimeError):
    """An ``etcdctl`` invocation run with ``check=True`` failed."""


def _which(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise RuntimeError(f"{program!r} not found on PATH (on Debian: apt-get install etcd-server etcd-client)")
    return path


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment minus ETCD_*/ETCDCTL_* (etcd refuses env vars that shadow flags)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
    if extra:
        env.update(extra)
    return env


def _netns_prefix(netns: str | None) -> list[str]:
    return [] if netns is None else [_which("ip"), "netns", "exec", netns]


def _url_host(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (and that this process has not handed out).

    The check is done in the caller's network namespace; inside a fresh namespace every port is free anyway.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    bind_host = host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        bind_host = "127.0.0.1"
    for _ in range(100):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((bind_host, 0))
            except OSError:
                # The address lives in another namespace: any ephemeral port from loopback will do.
                s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if (host, port) not in _handed_out:
            _handed_out.add((host, port))
            return port
    raise RuntimeError(f"could not find a free port on {host}")


# --------------------------------------------------------------------------------------------------------
# TLS material


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for a TLS-enabled etcd: one CA, a server pair and a client pair signed by it."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str | Path) -> None:
    cmd = [_which("openssl"), *(str(a) for a in args)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"openssl failed ({' '.join(cmd)}): {res.stderr.strip()}")


def _ec_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
    path.chmod(0o600)


def _make_ca(directory: Path, stem: str, common_name: str) -> tuple[Path, Path]:
    """A self-signed P-256 CA: returns (cert, key). A private config keeps the system openssl.cnf out."""
    key = directory / f"{stem}-key.pem"
    cert = directory / f"{stem}.pem"
    cfg = directory / f"{stem}.cnf"
    cfg.write_text(
        "[req]\nprompt = no\ndistinguished_name = dn\nx509_extensions = v3_ca\n"
        f"[dn]\nCN = {common_name}\n"
        "[v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier = hash\n"
    )
    _ec_key(key)
    _openssl("req", "-x509", "-new", "-config", cfg, "-key", key, "-sha256", "-days", "3650", "-out", cert)
    return cert, key


def _make_leaf(
    directory: Path, stem: str, common_name: str, ca: tuple[Path, Path], extensions: str
) -> tuple[Path, Path]:
    """A P-256 key and a certificate for it signed by ``ca``: returns (cert, key)."""
    key = directory / f"{stem}-key.pem"
    cert = directory / f"{stem}.pem"
    csr = directory / f"{stem}.csr"
    cfg = directory / f"{stem}.cnf"
    cfg.write_text(f"[req]\nprompt = no\ndistinguished_name = dn\n[dn]\nCN = {common_name}\n[ext]\n{extensions}")
    _ec_key(key)
    _openssl("req", "-new", "-config", cfg, "-key", key, "-out", csr)
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-set_serial", f"0x{secrets.token_hex(16)}",
        "-days", "825", "-sha256", "-extfile", cfg, "-extensions", "ext", "-out", cert,
    )  # fmt: skip
    csr.unlink()
    return cert, key


def make_tls(dir: Path, host: str = "127.0.0.1") -> TLSFiles:
    """Create a CA plus server and client certificates under ``dir`` with the ``openssl`` CLI.

    The server certificate is valid for ``host`` and ``localhost`` and carries both serverAuth and
    clientAuth (etcd's own gRPC gateway connects back to the server with it); the client certificate
    carries clientAuth only.
    """
    dir.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(dir, "ca", "pyflannel test CA")
    try:
        san = f"IP:{ipaddress.ip_address(host)}"
    except ValueError:
        san = f"DNS:{host}"
    if san != "DNS:localhost":
        san += ",DNS:localhost"
    leaf_common = "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n"
    server_cert, server_key = _make_leaf(
        dir, "server", "etcd server", ca,
        leaf_common + f"extendedKeyUsage = serverAuth,clientAuth\nsubjectAltName = {san}\n",
    )  # fmt: skip
    client_cert, client_key = _make_leaf(
        dir, "client", "pyflannel client", ca, leaf_common + "extendedKeyUsage = clientAuth\n"
    )
    return TLSFiles(
        ca=ca[0], server_cert=server_cert, server_key=server_key, client_cert=client_cert, client_key=client_key
    )


def make_other_ca(dir: Path) -> Path:
    """Create an unrelated CA under ``dir`` and return its certificate (for wrong-CA tests)."""
    dir.mkdir(parents=True, exist_ok=True)
    cert, _key = _make_ca(dir, "other-ca", f"unrelated test CA {secrets.token_hex(4)}")
    return cert


# --------------------------------------------------------------------------------------------------------
# HTTP to a server (directly, or from inside its network namespace)

# Run with ``ip netns exec <ns> python -c`` when the server is only reachable inside a namespace.
# argv: method url timeout [ca cert key]; request body on stdin; prints the status line then the body.
_HTTP_SCRIPT = """
import ssl, sys, urllib.error, urllib.request
method, url, timeout, *tls = sys.argv[1:]
ctx = None
if tls:
    ctx = ssl.create_default_context(cafile=tls[0])
    ctx.load_cert_chain(tls[1], tls[2])
body = sys.stdin.buffer.read() if method in ("PUT", "POST") else None
req = urllib.request.Request(url, data=body, method=method)
if body is not None:
    req.add_header("Content-Type", "application/x-www-form-urlencoded")
try:
    with urllib.request.urlopen(req, timeout=float(timeout), context=ctx) as resp:
        status, data = resp.status, resp.read()
except urllib.error.HTTPError as e:
    status, data = e.code, e.read()
sys.stdout.buffer.write(b"%d\\n" % status + data)
"""


def _ssl_context(tls: TLSFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(tls.ca))
    ctx.load_cert_chain(str(tls.client_cert), str(tls.client_key))
    return ctx


def _http(
    url: str, *, method: str = "GET", body: bytes | None = None, tls: TLSFiles | None = None,
    netns: str | None = None, timeout: float = 2.0,
) -> tuple[int, bytes]:  # fmt: skip
    """One HTTP request; returns (status, body). Connection errors raise OSError."""
    if netns is None:
        req = urllib.request.Request(url, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", "application/x-www-form-urlencoded")
        ctx = _ssl_context(tls) if tls is not None else None
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read()
    tls_args = [] if tls is None else [str(tls.ca), str(tls.client_cert), str(tls.client_key)]
    cmd = [*_netns_prefix(netns), sys.executable, "-c", _HTTP_SCRIPT, method, url, str(timeout), *tls_args]
    try:
        res = subprocess.run(cmd, input=body or b"", capture_output=True, timeout=timeout + 5, check=False)
    except subprocess.TimeoutExpired as e:
        raise OSError(f"HTTP {method} {url} in netns {netns} timed out") from e
    if res.returncode != 0:
        err = res.stderr.decode(errors="replace").strip().splitlines()
        raise OSError(f"HTTP {method} {url} in netns {netns} failed: {err[-1] if err else res.returncode}")
    status, _, data = res.stdout.partition(b"\n")
    return int(status), data


# --------------------------------------------------------------------------------------------------------
# Servers


@dataclass(eq=False)
class EtcdServer:
    """A running (or stopped) etcd process. ``restart()`` reuses the same data dir and arguments."""

    name: str
    data_dir: Path
    client_url: str
    peer_url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    argv: tuple[str, ...] = ()
    tls: TLSFiles | None = None
    netns: str | None = None
    version: str = "3.4"

    @property
    def endpoints(self) -> list[str]:
        return [self.client_url]

    @property
    def is_running(self) -> bool:
        return self.proc.poll() is None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def healthy(self) -> bool:
        """One probe of ``<client_url>/health``: True when etcd reports itself healthy."""
        try:
            status, body = _http(f"{self.client_url}/health", tls=self.tls, netns=self.netns, timeout=1.0)
        except OSError:
            return False
        if status != 200:
            return False
        try:
            health = json.loads(body).get("health")
        except (ValueError, AttributeError):
            return False
        return health is True or health == "true"

    def is_leader(self) -> bool:
        """True if this member reports itself as the raft leader (``/v3/maintenance/status``)."""
        try:
            status, body = _http(
                f"{self.client_url}/v3/maintenance/status", method="POST", body=b"{}", tls=self.tls,
                netns=self.netns, timeout=1.0,
            )  # fmt: skip
            info = json.loads(body)
        except (OSError, ValueError):
            return False
        if status != 200 or not isinstance(info, dict):
            return False
        leader = info.get("leader")
        return leader is not None and leader == info.get("header", {}).get("member_id")

    def wait_healthy(self, timeout: float = 15.0) -> None:
        """Poll ``/health`` until healthy; raise RuntimeError (with the log's tail) if it exits or times out."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running:
                raise RuntimeError(
                    f"etcd {self.name!r} exited with status {self.proc.returncode}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if self.healthy():
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"etcd {self.name!r} not healthy at {self.client_url}/health after {timeout:.1f}s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(cannot read log: {e})"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if still running after 5 s; always reaps the process."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
        self.proc.wait()
        _live.discard(self)

    def kill(self) -> None:
        """SIGKILL (simulates a crash) and reap."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        self.proc.wait()
        _live.discard(self)

    def start(self) -> None:
        """Start the process again (same data dir and arguments) without waiting for it to be healthy."""
        if self.is_running:
            raise RuntimeError(f"etcd {self.name!r} is already running (pid {self.proc.pid})")
        self.proc = _spawn(self.argv, self.log_path)
        _live.add(self)

    def restart(self, timeout: float = 15.0) -> None:
        """Stop (if running), start again with the same data dir and arguments, wait until healthy."""
        self.stop()
        self.start()
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.kill()
            raise


@dataclass(eq=False)
class EtcdCluster:
    """Several etcd members forming one cluster."""

    members: list[EtcdServer] = field(default_factory=list)

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def tls(self) -> TLSFiles | None:
        return self.members[0].tls if self.members else None

    @property
    def netns(self) -> str | None:
        return self.members[0].netns if self.members else None

    def leader(self) -> EtcdServer | None:
        """The running member that reports itself as leader, if any."""
        return next((m for m in self.members if m.is_running and m.is_leader()), None)

    def stop(self) -> None:
        """Stop all members: followers together first, the leader last.

        A leader that gets SIGTERM hands leadership to a connected peer and waits for it (up to ~6 s);
        if that peer is shutting down at the same moment the wait runs into its timeout. Once the
        followers are gone the leader has no one to hand over to and exits at once.
        """
        running = [m for m in self.members if m.is_running]
        leader = next((m for m in running if m.is_leader()), None)
        followers = [m for m in running if m is not leader]
        for m in followers:
            with contextlib.suppress(ProcessLookupError):
                m.proc.send_signal(signal.SIGTERM)
        for m in followers:
            m.stop()
        for m in self.members:
            m.stop()


def _spawn(argv: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        # Own session: a Ctrl-C meant for the demo/pytest must not kill etcd before the cleanup runs.
        return subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=_clean_env(), start_new_session=True,
        )  # fmt: skip


def _prepare(
    workdir: Path, *, name: str, host: str, client_port: int | None, peer_port: int | None,
    tls: TLSFiles | None, netns: str | None, initial_cluster: str | None, cluster_token: str,
    extra_args: Sequence[str], auth_token_ttl: int | None, enable_v2: bool, version: str,
) -> tuple[str, str, Path, Path, tuple[str, ...]]:  # fmt: skip
    """Work out URLs, paths and the full command line of one member."""
    workdir.mkdir(parents=True, exist_ok=True)
    client_port = client_port or free_port(host)
    peer_port = peer_port or free_port(host)
    scheme = "https" if tls is not None else "http"
    client_url = f"{scheme}://{_url_host(host)}:{client_port}"
    peer_url = f"http://{_url_host(host)}:{peer_port}"
    data_dir = workdir / f"{name}.etcd"
    log_path = workdir / f"{name}.log"
    args = [
        *_netns_prefix(netns), _etcd_executable(version),
        "--name", name,
        "--data-dir", str(data_dir),
        "--listen-client-urls", client_url,
        "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url,
        "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", initial_cluster or f"{name}={peer_url}",
        "--initial-cluster-token", cluster_token,
        "--initial-cluster-state", "new",
        "--heartbeat-interval", str(HEARTBEAT_MS),
        "--election-timeout", str(ELECTION_MS),
        "--auth-token", "simple",
        "--logger", "zap",
        "--log-outputs", "stderr",
    ]  # fmt: skip
    if version == "3.4":  # 3.6 has no v2 store and refuses the flag
        args.append(f"--enable-v2={'true' if enable_v2 else 'false'}")
    if auth_token_ttl is not None:
        args += ["--auth-token-ttl", str(auth_token_ttl)]
    if tls is not None:
        args += [
            "--cert-file", str(tls.server_cert),
            "--key-file", str(tls.server_key),
            "--client-cert-auth",
            "--trusted-ca-file", str(tls.ca),
        ]  # fmt: skip
    args += list(extra_args)
    return client_url, peer_url, data_dir, log_path, tuple(args)


def _pick_version(version: str | None, enable_v2: bool) -> str:
    if enable_v2:
        return "3.4"
    if version is None:
        return etcd_version()
    if version not in ETCD_VERSIONS:
        raise ValueError(f"etcd version {version!r} is not supported; use one of {', '.join(ETCD_VERSIONS)}")
    return version


def start_etcd(
    workdir: Path,
    *,
    name: str = "default",
    host: str = "127.0.0.1",
    client_port: int | None = None,
    peer_port: int | None = None,
    tls: TLSFiles | None = None,
    netns: str | None = None,
    initial_cluster: str | None = None,
    extra_args: Sequence[str] = (),
    auth_token_ttl: int | None = None,
    enable_v2: bool = False,
    timeout: float = 15.0,
    version: str | None = None,
) -> EtcdServer:
    """Start one etcd server with its data in ``workdir/<name>.etcd`` and its log in ``workdir/<name>.log``.

    Returns once ``<client_url>/health`` reports healthy; on failure the process is killed and a
    RuntimeError names the log file and shows its last lines. With ``tls`` the client URL is https and
    clients must present a certificate signed by ``tls.ca``; peer traffic stays plain http. ``version``
    ("3.4"/"3.6") defaults to :func:`etcd_version`; ``enable_v2`` always means 3.4 (see the module doc).
    """
    version = _pick_version(version, enable_v2)
    client_url, peer_url, data_dir, log_path, argv = _prepare(
        workdir, name=name, host=host, client_port=client_port, peer_port=peer_port, tls=tls, netns=netns,
        initial_cluster=initial_cluster, cluster_token=f"pyflannel-{name}-{secrets.token_hex(4)}",
        extra_args=extra_args, auth_token_ttl=auth_token_ttl, enable_v2=enable_v2, version=version,
    )  # fmt: skip
    server = EtcdServer(
        name=name, data_dir=data_dir, client_url=client_url, peer_url=peer_url,
        proc=_spawn(argv, log_path), log_path=log_path, argv=argv, tls=tls, netns=netns,
        version=version,
    )  # fmt: skip
    _live.add(server)
    try:
        server.wait_healthy(timeout)
    except BaseException:
        server.kill()
        raise
    return server


def start_cluster(
    workdir: Path,
    size: int = 3,
    host: str = "127.0.0.1",
    *,
    tls: TLSFiles | None = None,
    netns: str | None = None,
    extra_args: Sequence[str] = (),
    auth_token_ttl: int | None = None,
    enable_v2: bool = False,
    timeout: float = 15.0,
    version: str | None = None,
) -> EtcdCluster:
    """Start ``size`` members named ``etcd0``.. concurrently (all spawned, then each waited for)."""
    if size < 1:
        raise ValueError("size must be >= 1")
    version = _pick_version(version, enable_v2)
    names = [f"etcd{i}" for i in range(size)]
    peer_ports = [free_port(host) for _ in names]
    initial_cluster = ",".join(f"{n}=http://{_url_host(host)}:{p}" for n, p in zip(names, peer_ports, strict=True))
    token = f"pyflannel-cluster-{secrets.token_hex(4)}"
    cluster = EtcdCluster()
    try:
        for n, peer_port in zip(names, peer_ports, strict=True):
            client_url, peer_url, data_dir, log_path, argv = _prepare(
                workdir, name=n, host=host, client_port=None, peer_port=peer_port, tls=tls, netns=netns,
                initial_cluster=initial_cluster, cluster_token=token, extra_args=extra_args,
                auth_token_ttl=auth_token_ttl, enable_v2=enable_v2, version=version,
            )  # fmt: skip
            member = EtcdServer(
                name=n, data_dir=data_dir, client_url=client_url, peer_url=peer_url,
                proc=_spawn(argv, log_path), log_path=log_path, argv=argv, tls=tls, netns=netns,
                version=version,
            )  # fmt: skip
            _live.add(member)
            cluster.members.append(member)
        deadline = time.monotonic() + timeout
        for member in cluster.members:
            member.wait_healthy(max(0.1, deadline - time.monotonic()))
    except BaseException:
        for member in cluster.members:
            member.kill()
        raise
    return cluster


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_live):
        server.kill()


# --------------------------------------------------------------------------------------------------------
# etcdctl, auth and the v2 store

Target = EtcdServer | EtcdCluster | Sequence[str] | str


def _resolve(target: Target) -> tuple[list[str], TLSFiles | None, str | None]:
    if isinstance(target, EtcdServer | EtcdCluster):
        return target.endpoints, target.tls, target.netns
    if isinstance(target, str):
        return [target], None, None
    return list(target), None, None


def _redact(args: Sequence[str]) -> str:
    secret = ("--new-user-password=", "--user=", "--password=")
    return " ".join(a.split("=", 1)[0] + "=***" if a.startswith(secret) else a for a in args)


def etcdctl(
    target: Target,
    *args: str,
    env_extra: Mapping[str, str] | None = None,
    user: str | None = None,
    tls: TLSFiles | None = None,
    check: bool = False,
    timeout: float = 15.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``ETCDCTL_API=3 etcdctl --endpoints=... <args>`` against a server, a cluster or endpoint URLs.

    ``user`` is ``"name:password"``. TLS files come from ``tls`` or else from the server/cluster, and the
    command runs inside the server's network namespace if it has one. Output is captured as text; with
    ``check=True`` a non-zero exit raises EtcdctlError (passwords redacted); running past ``timeout`` always
    raises EtcdctlError.
    """
    endpoints, target_tls, netns = _resolve(target)
    tls = tls or target_tls
    cmd = [*_netns_prefix(netns), _which("etcdctl"), f"--endpoints={','.join(endpoints)}"]
    if tls is not None:
        cmd += [f"--cacert={tls.ca}", f"--cert={tls.client_cert}", f"--key={tls.client_key}"]
    if user is not None:
        cmd.append(f"--user={user}")
    cmd += list(args)
    env = _clean_env({"ETCDCTL_API": "3", **(env_extra or {})})
    shown = _redact(cmd[len(_netns_prefix(netns)) + 1 :])
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        # Some etcdctl 3.4 commands (user/role/auth) retry a dead endpoint forever.
        raise EtcdctlError(f"etcdctl {shown} did not finish within {timeout:.0f}s") from None
    if check and res.returncode != 0:
        raise EtcdctlError(f"etcdctl {shown} exited {res.returncode}: {(res.stderr or res.stdout).strip()}")
    return res


def enable_auth(
    server: EtcdServer | EtcdCluster,
    *,
    root_password: str,
    user: str,
    password: str,
    prefix: str,
    tls: TLSFiles | None = None,
) -> None:
    """Create root, a role ``flannel`` with readwrite on ``prefix`` (as a key prefix), ``user`` holding that
    role, then turn auth on. From then on etcdctl needs ``user="root:<pw>"`` or ``user="<user>:<pw>"``."""
    steps: list[list[str]] = [
        ["user", "add", "root", f"--new-user-password={root_password}", "--interactive=false"],
        ["role", "add", "root"],
        ["user", "grant-role", "root", "root"],
        ["role", "add", "flannel"],
        ["role", "grant-permission", "flannel", "--prefix=true", "readwrite", prefix],
        ["user", "add", user, f"--new-user-password={password}", "--interactive=false"],
        ["user", "grant-role", user, "flannel"],
        ["auth", "enable"],
    ]
    for step in steps:
        etcdctl(server, *step, tls=tls, check=True)


def _v2_url(server: EtcdServer, key: str) -> str:
    return f"{server.client_url}/v2/keys/{urllib.parse.quote(key.lstrip('/'), safe='/')}"


def put_v2(server: EtcdServer, key: str, value: str) -> None:
    """Write ``key`` in the v2 store (``PUT /v2/keys/<key>``); the server needs ``enable_v2=True``.

    v2 and v3 keyspaces are separate, so this produces configuration that exists only in v2.
    """
    body = urllib.parse.urlencode({"value": value}).encode()
    try:
        status, data = _http(_v2_url(server, key), method="PUT", body=body, tls=server.tls, netns=server.netns)
    except OSError as e:
        raise RuntimeError(f"v2 PUT {key} to {server.client_url} failed: {e}") from e
    if status not in (200, 201):
        hint = " (was the server started with enable_v2=True?)" if status == 404 else ""
        raise RuntimeError(f"v2 PUT {key} to {server.client_url}: HTTP {status}{hint}: {data[:200]!r}")


def get_v2(server: EtcdServer, key: str) -> str | None:
    """Read ``key`` from the v2 store; None if it does not exist."""
    try:
        status, data = _http(_v2_url(server, key), tls=server.tls, netns=server.netns)
    except OSError as e:
        raise RuntimeError(f"v2 GET {key} from {server.client_url} failed: {e}") from e
    if status == 404:
        try:
            if json.loads(data).get("errorCode") == 100:  # key not found (vs. v2 API disabled)
                return None
        except (ValueError, AttributeError):
            pass
        raise RuntimeError(f"v2 GET {key} from {server.client_url}: HTTP 404 (v2 API disabled?)")
    if status != 200:
        raise RuntimeError(f"v2 GET {key} from {server.client_url}: HTTP {status}: {data[:200]!r}")
    value = json.loads(data)["node"].get("value")
    return None if value is None else str(value)
