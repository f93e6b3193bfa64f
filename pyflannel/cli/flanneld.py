"""The ``flanneld`` console script: flags and environment in, exit status out.

Exit status: 0 after SIGTERM/SIGINT, -h or --version; 1 on a fatal runtime error (the
supervisor restarts us); 2 on a bad flag, with one line naming it.
"""

from __future__ import annotations

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

    logging.getLogger("pyflannel.flanneld").info("CLI flags config: %s", opts.redacted())
    if opts.subnet_dir:
        logging.getLogger("pyflannel.flanneld").warning("-subnet-dir is a flanneld v0.7 flag; ignored")
    return app.run(opts)


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
