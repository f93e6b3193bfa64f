"""The ``flanneld`` console script: flags and environment in, exit status out.

Exit status: 0 after SIGTERM/SIGINT, -h or --version; 1 on a fatal runtime error (the
supervisor restarts us); 2 on a bad flag, with one line naming it.

Every start-up error an operator can cause or fix is one line naming the thing and the value,
never a traceback: no such interface, no address on it, a health port already taken, the
kernel refusing a netlink request (no CAP_NET_ADMIN, a read-only /proc/sys), an OSError from a
file. ``main`` catches them around the daemon (``describe_startup_error``) and exits 1; only a
bug (any other exception) still shows its traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Mapping, Sequence

from pyflannel import __version__
from pyflannel.core.errors import FlagError
from pyflannel.core.flags import Options, parse_flags, usage


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        opts = parse_flags(args, os.environ if env is None else env)
    except FlagError as e:
        print(f"flanneld: {e}", file=sys.stderr)
        return 2
    if opts.help:
        sys.stderr.write(usage())
        return 0
    if opts.version:
        print(f"pyflannel {__version__} (flanneld v0.20.2 compatible)", file=sys.stderr)
        return 0
    problem = check_tls_files(opts)
    if problem:
        print(f"flanneld: {problem}", file=sys.stderr)
        return 2
    from pyflannel import logsetup
    from pyflannel.daemon import app

    logsetup.setup(opts.log_format, opts.v)
    import logging

    log = logging.getLogger("pyflannel.flanneld")
    log.info("CLI flags config: %s", opts.redacted())
    if opts.subnet_dir:
        log.warning("-subnet-dir is a flanneld v0.7 flag; ignored")
    if opts.healthz_port:
        # The daemon binds its health port first thing (health.start_health); this pre-flight makes a
        # port already in use one line at once even while the daemon still binds it later.
        from pyflannel.daemon.health import check_bind

        if problem := check_bind(opts.healthz_ip, opts.healthz_port):
            log.error("%s", problem)
            return 1
    try:
        return app.run(opts)
    except Exception as e:  # noqa: BLE001 -- only known kinds are turned into one line; the rest re-raise
        line = describe_startup_error(e)
        if line is None:
            raise
        log.error("%s", line)
        return 1


def describe_startup_error(e: BaseException) -> str | None:
    """One line for an error an operator can fix, or None for a bug (which keeps its traceback)."""
    from pyflannel.core.errors import FlannelError

    if _is_netlink_error(e):
        code = int(getattr(e, "code", 0) or 0)
        where = _innermost_pyflannel_call(e)
        text = os.strerror(code).lower() if code > 0 else str(e)
        hint = "; flanneld needs root or CAP_NET_ADMIN" if code in (errno.EPERM, errno.EACCES) else ""
        return f"netlink request {where} refused by the kernel: {text} (errno {code}){hint}"
    if isinstance(e, FlannelError):  # InterfaceError, DataplaneError, EtcdError, IptablesError, ...
        line = str(e).splitlines()[0] if str(e) else type(e).__name__
        if type(e).__name__ == "DataplaneError" and os.strerror(errno.EPERM) in line:
            line += " (flanneld needs root or CAP_NET_ADMIN)"
        return line
    if isinstance(e, OSError):
        if type(e).__name__ == "HealthBindError":
            return str(e)
        text = (e.strerror or str(e)).lower() if e.errno else str(e)
        hint = "; flanneld needs root or CAP_NET_ADMIN" if e.errno in (errno.EPERM, errno.EACCES) and \
            not e.filename else ""
        target = f" {e.filename!r}" if e.filename else f" in {_innermost_pyflannel_call(e)}"
        return f"start-up failed:{target}: {text}{hint}"
    return None


def _is_netlink_error(e: BaseException) -> bool:
    return any(c.__name__ == "NetlinkError" and c.__module__.startswith("pyroute2") for c in type(e).__mro__)


def _innermost_pyflannel_call(e: BaseException) -> str:
    """``Netlink.ensure_vxlan``-like name of the deepest pyflannel function the error passed through."""
    tb = e.__traceback__
    name = "?"
    while tb is not None:
        code = tb.tb_frame.f_code
        if "/pyflannel/" in code.co_filename.replace("\\", "/"):
            name = getattr(code, "co_qualname", code.co_name)
        tb = tb.tb_next
    return name


def check_tls_files(opts: Options) -> str | None:
    """One line if a TLS file given by flag cannot be used, else None.

    Without this the daemon would die in its constructor with a traceback; a wrong path is a bad
    flag value, so it gets exit status 2 like the others.
    """
    for name in ("etcd-cafile", "etcd-certfile", "etcd-keyfile"):
        path = getattr(opts, name.replace("-", "_"))
        if not path:
            continue
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as e:
            return f"-{name}: cannot read {path!r}: {e.strerror or e}"
    if opts.etcd_cafile or opts.etcd_certfile:
        import ssl

        from pyflannel.adapters.etcd import TLSConfig

        try:
            TLSConfig(opts.etcd_cafile or None, opts.etcd_certfile or None, opts.etcd_keyfile or None).context()
        except (ssl.SSLError, ValueError, OSError) as e:
            return f"-etcd-cafile/-etcd-certfile/-etcd-keyfile: not usable TLS material: {e}"
    return None


if __name__ == "__main__":
    sys.exit(main())
