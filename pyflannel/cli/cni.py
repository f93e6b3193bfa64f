"""The ``flannel`` CNI plugin executable: CNI_* environment and network config in, result JSON out.

The container runtime (containerd, CRI-O, the kubelet's dockershim) runs this once per pod and command, as
``/opt/cni/bin/flannel``.  It does only the effects: read stdin, read ``subnet.env``, save and replay the
per-container delegate config in ``dataDir``, execute the delegate (``bridge``) found on CNI_PATH, write
the result or a CNI error JSON to stdout.  Every decision is in :mod:`pyflannel.core.cni_conf`.

:func:`run` takes its I/O as arguments (``run(env, stdin, stdout)``, as kuryr's ``CNIRunner.run``) so the
unit tests drive it with ``StringIO``; ``exec_plugin`` can be swapped for a fake delegate.

Start-up time is most of the cost of a pod ADD (Debian's bridge plugin alone takes ~13 ms), so this module
and everything it imports stay stdlib-only and small: no ``subprocess`` (the delegate is started with
``os.posix_spawn``), no ``logging``, no ``pathlib``, no ``typing`` at run time, nothing from pyflannel that
pulls in httpx or pyroute2.  ``tests/netns/test_cni.py`` checks the import list.

Exit status: 0 on success, 1 with the error JSON on stdout otherwise (libcni's ``PluginMain``).
"""

from __future__ import annotations

import json
import os
import sys

from pyflannel import __version__
from pyflannel.core import cni_conf as cc
from pyflannel.core.cni_conf import CNIError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import IO, Any

    #: ``exec_plugin(path, stdin_bytes, env) -> stdout bytes``; raises CNIError if the plugin fails.
    ExecPlugin = Callable[[str, bytes, Mapping[str, str]], bytes]

ABOUT = f"CNI Plugin flannel version {__version__} (pyflannel; flannel-io/cni-plugin compatible)"
_SCRATCH_DIR_MODE = 0o700
_SCRATCH_FILE_MODE = 0o600  # the delegate config may carry runtimeConfig from the runtime; Go uses 0600 too


def main() -> int:
    """Console-script entry point (``flannel = "pyflannel.cli.cni:main"``)."""
    rc = run(os.environ, sys.stdin.buffer, sys.stdout)
    sys.stdout.flush()
    return rc


def run(
    env: Mapping[str, str],
    stdin: IO[bytes] | IO[str] | bytes,
    stdout: IO[str],
    stderr: IO[str] | None = None,
    *,
    exec_plugin: ExecPlugin | None = None,
) -> int:
    """Run one CNI command; return the exit status.  Errors go to ``stdout`` as CNI error JSON."""
    err = sys.stderr if stderr is None else stderr
    command = env.get("CNI_COMMAND", "")
    if not command:  # a human ran us: say what we are (libcni's skel does the same)
        err.write(f"{ABOUT}\nCNI protocol versions supported: {', '.join(cc.SUPPORTED_VERSIONS)}\n")
        return 0
    execute = _posix_spawn_plugin if exec_plugin is None else exec_plugin
    netconf: dict[str, Any] | None = None
    try:
        req = cc.request_from_env(env)
        if req.command == "VERSION":
            _write_json(stdout, cc.version_info())
            return 0
        netconf = cc.parse_netconf(_read_stdin(stdin))
        cc.check_version(netconf, req.command)
        if req.command == "ADD":
            stdout.write(_cmd_add(req, netconf, env, execute))
        elif req.command == "DEL":
            _cmd_del(req, netconf, env, execute, err)
        else:
            _cmd_check(req, netconf)
        return 0
    except CNIError as e:
        return _fail(e, netconf, stdout, err, command, env)
    except Exception as e:  # a bug: still answer in CNI's format, so the runtime logs something useful
        bug = CNIError(cc.ERR_INTERNAL, f"internal error in the flannel plugin: {type(e).__name__}: {e}")
        return _fail(bug, netconf, stdout, err, command, env)


# --------------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------------


def _cmd_add(req: cc.CNIRequest, netconf: dict[str, Any], env: Mapping[str, str], execute: ExecPlugin) -> str:
    cc.check_delegate_section(netconf)  # a config error is reported before a missing subnet.env
    subnet_file = netconf["subnetFile"]
    fenv = cc.parse_subnet_env(_read_subnet_file(subnet_file), subnet_file)
    delegate = cc.delegate_config(netconf, fenv)
    conf = _dumps(delegate).encode()
    # Look the plugin up before saving: a config saved for a delegate that cannot run would make every
    # later DEL of this container fail too.
    plugin = find_plugin(delegate["type"], req.path_list)
    scratch = _scratch_path(netconf["dataDir"], req.container_id)
    try:
        save_scratch(scratch, conf)
    except OSError as e:
        raise CNIError(cc.ERR_IO, f"failed to save the delegate config to {scratch}: {_strerror(e)}") from None
    # The saved config stays when the delegate fails: the runtime then calls DEL, which replays it and frees
    # whatever the delegate had already set up (an IP, a veth).
    out = execute(plugin, conf, _with_command(env, "ADD"))
    result = cc.decode_json(out, f"the result of {delegate['type']}")
    if not isinstance(result, dict):
        raise CNIError(cc.ERR_DECODE, f"{delegate['type']} returned a result that is not a JSON object",
                       out[:200].decode(errors="replace"))
    text = out.decode(errors="replace")
    return text if text.endswith("\n") else text + "\n"


def _cmd_del(
    req: cc.CNIRequest, netconf: dict[str, Any], env: Mapping[str, str], execute: ExecPlugin, err: IO[str]
) -> None:
    scratch = _scratch_path(netconf["dataDir"], req.container_id)
    try:
        with open(scratch, "rb") as f:
            conf = f.read()
    except FileNotFoundError:
        return  # never added, or already deleted: DEL must be idempotent
    except OSError as e:
        raise CNIError(cc.ERR_IO, f"failed to read the saved delegate config {scratch}: {_strerror(e)}") from None
    try:
        saved = cc.decode_json(conf, f"saved delegate config {scratch}")
        kind = saved.get("type") if isinstance(saved, dict) else None
        if not isinstance(kind, str) or kind in ("", ".", "..") or "/" in kind:
            raise CNIError(cc.ERR_DECODE, f"saved delegate config {scratch} has no usable 'type'")
    except CNIError as e:
        # Nothing can ever be replayed from it (Go's plugin also gives up here); keeping it would only leak.
        err.write(f"flannel: DEL {req.container_id}: {e}; removing it\n")
        _unlink(scratch)
        return
    plugin = find_plugin(kind, req.path_list)
    execute(plugin, conf, _with_command(env, "DEL"))
    _unlink(scratch)


def _cmd_check(req: cc.CNIRequest, netconf: dict[str, Any]) -> None:
    """CHECK: the config is valid, subnet.env is readable and the container's saved config still fits it.

    The delegate's own CHECK is not called: Debian's bridge 1.1.1 fails it for every flannel pod ("Expected
    Route {Dst:<network> GW:<nil>} not found", because it installs the route with a gateway), and Go's
    flannel plugin does not call it either (its CHECK is a no-op).
    """
    subnet_file = netconf["subnetFile"]
    fenv = cc.parse_subnet_env(_read_subnet_file(subnet_file), subnet_file)
    current = cc.delegate_config(netconf, fenv)
    scratch = _scratch_path(netconf["dataDir"], req.container_id)
    try:
        with open(scratch, "rb") as f:
            saved = cc.decode_json(f.read(), f"saved delegate config {scratch}")
    except FileNotFoundError:
        raise CNIError(cc.ERR_UNKNOWN_CONTAINER, f"no saved delegate config for container {req.container_id}",
                       f"{scratch} does not exist: was ADD run for it with this dataDir?") from None
    except OSError as e:
        raise CNIError(cc.ERR_IO, f"failed to read the saved delegate config {scratch}: {_strerror(e)}") from None
    reason = cc.stale_reason(saved if isinstance(saved, dict) else {}, current)
    if reason:
        raise CNIError(cc.ERR_INVALID_NETCONF, f"container {req.container_id}: {reason}")


# --------------------------------------------------------------------------------------------------------
# Effects
# --------------------------------------------------------------------------------------------------------


def find_plugin(kind: str, paths: list[str]) -> str:
    """The first executable ``<dir>/<kind>`` on CNI_PATH (libcni's ``FindInPath``)."""
    for d in paths:
        p = os.path.join(d, kind)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    raise CNIError(cc.ERR_INVALID_ENV, f'failed to find plugin "{kind}" in path [{" ".join(paths)}]',
                   "install the CNI reference plugins (Debian: containernetworking-plugins) into a CNI_PATH "
                   "directory, e.g. /opt/cni/bin")


def save_scratch(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename): DEL must never read half a config.

    Not :func:`pyflannel.adapters.files.atomic_write`: that one imports pathlib (start-up cost on every pod),
    creates the directory 0755 and writes 0644, while the scratch files are private (0700/0600, like Go's).
    """
    d = os.path.dirname(path)
    os.makedirs(d, mode=_SCRATCH_DIR_MODE, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, _SCRATCH_FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _posix_spawn_plugin(path: str, conf: bytes, env: Mapping[str, str]) -> bytes:
    """Execute a CNI plugin: ``conf`` on its stdin, its stdout returned, its stderr shared with ours.

    Stdin comes from a memfd rather than a pipe, so no write can block on a plugin that is busy writing its
    own output.  A plugin that fails must print CNI error JSON; it is re-raised as a CNIError with its code.
    """
    name = os.path.basename(path)
    stdin_fd = os.memfd_create("cni-netconf")  # close-on-exec in the parent; dup2 makes the child's copy
    r = w = -1
    try:
        os.write(stdin_fd, conf)
        os.lseek(stdin_fd, 0, os.SEEK_SET)
        r, w = os.pipe()
        try:
            pid = os.posix_spawn(
                path,
                [path],
                dict(env),
                file_actions=[(os.POSIX_SPAWN_DUP2, stdin_fd, 0), (os.POSIX_SPAWN_DUP2, w, 1)],
            )
        except OSError as e:
            raise CNIError(cc.ERR_IO, f"failed to execute {path}: {_strerror(e)}") from None
        os.close(w)
        w = -1
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
        out = b"".join(chunks)
        _, status = os.waitpid(pid, 0)
    finally:
        for fd in (stdin_fd, r, w):
            if fd >= 0:
                os.close(fd)
    rc = os.waitstatus_to_exitcode(status)
    if rc == 0:
        return out
    command = env.get("CNI_COMMAND", "")
    try:
        reply = cc.decode_json(out, f"the error of {name}")
    except CNIError:
        reply = None
    if isinstance(reply, dict) and isinstance(reply.get("code"), int) and isinstance(reply.get("msg"), str):
        details = reply.get("details")
        raise CNIError(reply["code"], f"{name} {command} failed: {reply['msg']}",
                       details if isinstance(details, str) else "")
    how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
    raise CNIError(cc.ERR_IO, f"{name} {command} {how} without a CNI error",
                   out[:400].decode(errors="replace").strip())


def _read_stdin(stdin: IO[bytes] | IO[str] | bytes) -> bytes:
    if isinstance(stdin, (bytes, bytearray)):
        return bytes(stdin)
    try:
        data = stdin.read()
    except OSError as e:
        raise CNIError(cc.ERR_IO, f"error reading from stdin: {_strerror(e)}") from None
    return data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data


def _read_subnet_file(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        # Flannel's wording; code 11 because it clears up by itself once flanneld holds a lease.
        raise CNIError(cc.ERR_TRY_AGAIN_LATER,
                       f"loadFlannelSubnetEnv failed: open {path}: no such file or directory",
                       "flanneld writes this file once it holds a subnet lease: is flanneld running on this node "
                       "with the same -subnet-file?") from None
    except OSError as e:
        raise CNIError(cc.ERR_IO, f"loadFlannelSubnetEnv failed: open {path}: {_strerror(e)}") from None
    return raw.decode("utf-8", "replace")


def _scratch_path(data_dir: str, container_id: str) -> str:
    return os.path.join(data_dir, container_id)  # the ID was validated: no "/", no leading "."


def _with_command(env: Mapping[str, str], command: str) -> dict[str, str]:
    out = dict(env)
    out["CNI_COMMAND"] = command
    return out


def _unlink(path: str) -> None:
    try:  # noqa: SIM105 (contextlib is an import we do not otherwise need)
        os.unlink(path)
    except OSError:
        pass  # per spec a DEL carries on when cleanup of its own files fails


def _strerror(e: OSError) -> str:
    return (e.strerror or str(e)).lower()


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))  # sorted like Go's json.Marshal of a map


def _write_json(stdout: IO[str], obj: Any) -> None:
    stdout.write(_dumps(obj) + "\n")


def _fail(
    e: CNIError, netconf: dict[str, Any] | None, stdout: IO[str], err: IO[str], command: str, env: Mapping[str, str]
) -> int:
    _write_json(stdout, e.to_dict(cc.reply_version(netconf)))
    who = " ".join(x for x in (command, env.get("CNI_CONTAINERID", "")) if x)
    err.write(f"flannel: {who}: {e}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
