"""The ``flannelctl`` console script: ``flannelctl [FLANNELD FLAGS] COMMAND [ARGS]``.

The global flags are flanneld's own table (``core.flags``): Go syntax, ``FLANNELD_*``
variables, the same defaults and checks. So the node's flanneld command line, or its
``/etc/default/flanneld``, configures flannelctl too: ``status`` and ``doctor`` need the same
``-subnet-file``, ``-etcd-*``, ``-iptables-forward-rules`` and ``-resync-period`` the daemon
runs with. ``-log-format`` and ``-v`` set up logging as for flanneld (warnings and errors go to
stderr through it); results go to stdout. Command arguments are GNU style (``--json``,
``--public-ip IP``), except ``docker-opts``, which takes mk-docker-opts.sh's getopts flags.

Exit status: 0 done; 1 the command failed (invalid config, a refused reservation, a failed
doctor check, etcd unreachable); 2 bad usage, with one line naming the flag or argument.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from pyflannel import __version__
from pyflannel.core.errors import FlagError, FlannelError
from pyflannel.core.flags import FLAGS, Options, parse_flags

log = logging.getLogger("pyflannel.flannelctl")

_KINDS = {f.name: f.kind for f in FLAGS} | {"h": bool}
# Flags that matter to flannelctl, for its usage text (every flanneld flag is accepted).
_SHOWN = ("etcd-endpoints", "etcd-prefix", "etcd-cafile", "etcd-certfile", "etcd-keyfile", "etcd-username",
          "etcd-password", "subnet-file", "subnet-lease-renew-margin", "iptables-forward-rules", "resync-period",
          "log-format", "v", "kube-subnet-mgr", "kubeconfig-file", "kube-api-url", "kube-annotation-prefix",
          "net-config-path")

COMMANDS = """commands:
  config get [--json]                 print the network config (--json: with flanneld's defaults filled in)
  config set (JSON | --from-file F)   validate, then write the network config (F may be - for stdin)
  config validate [JSON | --from-file F]
                                      check a config, or the one in etcd, as flanneld would
  leases [--json]                     every lease: subnet, PublicIP, backend, VtepMAC, expiry, reserved
  reserve SUBNET --public-ip IP       pin SUBNET to the node with PublicIP IP (a key with no TTL)
  unreserve SUBNET                    remove a reservation
  status [--json]                     this node: lease, peers in etcd vs kernel, MTUs, last sync, etcd health
  doctor [--json]                     check this node; one line per check with a fix hint; exit 1 on failure
  docker-opts [-f F] [-d D] [-i] [-c] [-m] [-k KEY]
                                      write Docker options from subnet.env, exactly as mk-docker-opts.sh
"""


class UsageError(FlannelError):
    """Bad command-line usage: exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def usage() -> str:
    by = {f.name: f for f in FLAGS}
    lines = ["Usage: flannelctl [FLANNELD FLAGS] COMMAND [ARGS]", "", COMMANDS.rstrip(), "",
             "flags (any flanneld flag is accepted, also as FLANNELD_<NAME>; the ones that matter here):"]
    for name in _SHOWN:
        f = by[name]
        d = "" if f.default in ("", [], False) else f" (default {f.default})"
        lines.append(f"  -{f.name}: {f.help}{d}")
    return "\n".join(lines) + "\n"


def split_global(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``argv`` into flanneld flags and ``COMMAND ARGS`` (Go's rule: flags end at the first non-flag)."""
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            return args[:i], args[i + 1:]
        if not a.startswith("-") or a == "-":
            break
        name, eq, _ = a.lstrip("-").partition("=")
        kind = _KINDS.get(name)
        i += 2 if (kind is not None and kind is not bool and not eq) else 1
    return args[:i], args[i:]


def _command_parser() -> _Parser:
    p = _Parser(prog="flannelctl", add_help=False)
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    cfg = sub.add_parser("config", prog="flannelctl config").add_subparsers(dest="action", parser_class=_Parser)
    get = cfg.add_parser("get", prog="flannelctl config get")
    get.add_argument("--json", action="store_true")
    for action in ("set", "validate"):
        a = cfg.add_parser(action, prog=f"flannelctl config {action}")
        a.add_argument("json_text", nargs="?", metavar="JSON")
        a.add_argument("--from-file", metavar="FILE")
        a.add_argument("--json", action="store_true")
    sub.add_parser("leases", prog="flannelctl leases").add_argument("--json", action="store_true")
    r = sub.add_parser("reserve", prog="flannelctl reserve")
    r.add_argument("subnet", metavar="SUBNET")
    r.add_argument("--public-ip", required=True, metavar="IP")
    sub.add_parser("unreserve", prog="flannelctl unreserve").add_argument("subnet", metavar="SUBNET")
    sub.add_parser("status", prog="flannelctl status").add_argument("--json", action="store_true")
    sub.add_parser("doctor", prog="flannelctl doctor").add_argument("--json", action="store_true")
    return p


def _config_input(ns: argparse.Namespace, required: bool) -> tuple[str, str] | None:
    """(text, source) of a config given inline or with --from-file; None if neither."""
    if ns.json_text is not None and ns.from_file:
        raise UsageError("give the config inline or with --from-file, not both")
    if ns.from_file:
        if ns.from_file == "-":
            return sys.stdin.read(), "stdin"
        try:
            return Path(ns.from_file).read_text(), ns.from_file
        except OSError as e:
            raise FlannelError(f"--from-file {ns.from_file}: {e.strerror or e}") from None
    if ns.json_text is not None:
        return ns.json_text, "the command line"
    if required:
        raise UsageError("config set needs the config: JSON text or --from-file FILE")
    return None


async def _config(opts: Options, ns: argparse.Namespace) -> int:
    from pyflannel.adapters.registry import SubnetRegistry
    from pyflannel.ctl import keyspace, output

    if ns.action == "validate":
        given = _config_input(ns, required=False)
        if given is not None:
            return _report_valid(keyspace.validate_text(*given), given[1], ns.json)
    async with keyspace.make_client(opts) as client:
        reg = SubnetRegistry(client, opts.etcd_prefix)
        if ns.action == "get":
            text, cfg, error = await keyspace.config_get(reg)
            if ns.json:
                output.emit_json({"key": reg.config_key, "raw": text, "valid": error is None, "error": error,
                                  "effective": keyspace.describe_config(cfg) if cfg else None})
            else:
                output.emit(text)
            if error:
                log.warning("%s", error)
            return 0
        if ns.action == "validate":
            _text, stored, error = await keyspace.config_get(reg)
            if error or stored is None:
                raise keyspace.CtlError(error or f"{reg.config_key}: invalid config")
            return _report_valid(stored, reg.config_key, ns.json)
        given = _config_input(ns, required=True)
        assert given is not None
        written, rev, warnings = await keyspace.config_set(reg, *given)
        for w in warnings:
            log.warning("%s", w)
        if ns.json:
            output.emit_json({"key": reg.config_key, "revision": rev, "warnings": warnings,
                              "effective": keyspace.describe_config(written)})
        else:
            output.emit(f"wrote {reg.config_key} (revision {rev}): {keyspace.summary_line(written)}")
        return 0


def _report_valid(cfg: Any, source: str, as_json: bool) -> int:
    from pyflannel.ctl import keyspace, output

    warnings = keyspace.support_warnings(cfg)
    for w in warnings:
        log.warning("%s", w)
    if as_json:
        output.emit_json({"source": source, "valid": True, "warnings": warnings,
                          "effective": keyspace.describe_config(cfg)})
    else:
        output.emit(f"{source}: valid: {keyspace.summary_line(cfg)}")
    return 0


async def _leases(opts: Options, ns: argparse.Namespace) -> int:
    import time

    from pyflannel.adapters.registry import SubnetRegistry
    from pyflannel.ctl import keyspace, output

    async with keyspace.make_client(opts) as client:
        rows, bad = await keyspace.lease_rows(SubnetRegistry(client, opts.etcd_prefix))
    for b in bad:
        log.warning("ignoring bad lease key %s: %s", b.key, b.reason)
    if ns.json:
        now = time.time()
        output.emit_json({"leases": [r.to_json(now) for r in rows],
                          "bad": [{"key": b.key, "reason": b.reason} for b in bad]})
    else:
        output.emit(output.table(keyspace.LEASE_HEADERS, keyspace.lease_table_rows(rows)))
    return 0


async def _reservation(opts: Options, ns: argparse.Namespace) -> int:
    from pyflannel.adapters.registry import SubnetRegistry
    from pyflannel.ctl import keyspace, output

    subnet = keyspace.parse_subnet(ns.subnet)
    async with keyspace.make_client(opts) as client:
        reg = SubnetRegistry(client, opts.etcd_prefix)
        if ns.command == "reserve":
            done, warnings = await keyspace.reserve(reg, subnet, keyspace.parse_public_ip(ns.public_ip))
            for w in warnings:
                log.warning("%s", w)
        else:
            done = await keyspace.unreserve(reg, subnet)
    output.emit(done)
    return 0


def _status(opts: Options, ns: argparse.Namespace) -> int:
    from pyflannel.ctl import node, output, status

    data = status.status_data(node.collect(opts))
    if ns.json:
        output.emit_json(data)
    else:
        output.emit(status.render(data))
    return 0 if data["lease"] is not None or data["own_subnet"] or data["own_subnet6"] else 1


def _doctor(opts: Options, ns: argparse.Namespace) -> int:
    from pyflannel.ctl import doctor, node, output

    checks = doctor.run_checks(node.collect(opts), opts)
    if ns.json:
        output.emit_json(doctor.to_json(checks))
    else:
        output.emit(doctor.render(checks))
    return 1 if any(c.level == "fail" for c in checks) else 0


def dispatch(opts: Options, rest: list[str], env: Mapping[str, str]) -> int:
    if rest and rest[0] == "docker-opts":
        from pyflannel.ctl import dockeropts

        return dockeropts.run(rest[1:], env)
    ns = _command_parser().parse_args(rest)
    if ns.command is None:
        raise UsageError("flannelctl: no command given (see flannelctl -h)")
    if opts.kube_subnet_mgr:  # Kubernetes mode: the leases are Node objects (pyflannel.ctl.kube_leases)
        if ns.command not in ("leases", "status", "doctor"):
            raise UsageError(f"flannelctl {ns.command}: not available with --kube-subnet-mgr "
                             "(the network config is net-conf.json and the subnets are the Nodes' podCIDRs)")
        from pyflannel.ctl import kube_leases

        return asyncio.run(kube_leases.run(ns.command, opts, env, ns.json))
    if ns.command == "config":
        if ns.action is None:
            raise UsageError("flannelctl config: say get, set or validate")
        return asyncio.run(_config(opts, ns))
    if ns.command == "leases":
        return asyncio.run(_leases(opts, ns))
    if ns.command in ("reserve", "unreserve"):
        return asyncio.run(_reservation(opts, ns))
    if ns.command == "status":
        return _status(opts, ns)
    return _doctor(opts, ns)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if env is None else env
    flags, rest = split_global(args)
    try:
        opts = parse_flags(flags, environ)
    except FlagError as e:
        print(f"flannelctl: {e}", file=sys.stderr)
        return 2
    if opts.help or (rest and rest[0] in ("help", "-h", "--help")):
        sys.stdout.write(usage())
        return 0
    if opts.version:
        print(f"flannelctl (pyflannel {__version__}, flanneld v0.20.2 compatible)")
        return 0
    from pyflannel import logsetup

    logsetup.setup(opts.log_format, opts.v)
    try:
        return dispatch(opts, rest, environ)
    except UsageError as e:
        print(str(e), file=sys.stderr)
        return 2
    except FlannelError as e:
        log.error("%s", e)
        return 1
    except OSError as e:  # e.g. a TLS alert that the etcd adapter does not wrap (ssl.SSLError after the handshake)
        log.error("%s: %s", type(e).__name__, e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
