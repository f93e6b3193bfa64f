"""``flannelctl docker-opts``: flannel's ``dist/mk-docker-opts.sh``, byte for byte.

A systemd unit may call either tool (``ExecStartPost=... -k DOCKER_NETWORK_OPTIONS -d
/run/flannel/docker``), so the output file must not differ by a byte. The script's observable
behaviour, as ``/bin/sh`` (dash, or bash in POSIX mode) runs it from its shebang:

* options are parsed by ``getopts "f:d:icmk:?h"``: clustered flags (``-mic``), attached
  arguments (``-f/run/x``, ``-ki`` sets the key to ``i``), parsing stops at the first
  non-option; an unknown option, a missing argument, ``-h`` or ``-?`` print the usage and
  exit 1; neither ``-i`` nor ``-c`` means both;
* the env file is sourced only if it exists, on top of the process environment, so
  ``FLANNEL_*``, the combined key (``DOCKER_OPTS``) and any ``DOCKER_OPT_*`` variable may also
  come from the environment;
* ``DOCKER_OPT_BIP``/``_MTU`` are set when ``FLANNEL_SUBNET``/``_MTU`` are non-empty, and
  ``DOCKER_OPT_IPMASQ`` is the inverse of ``FLANNEL_IPMASQ`` unless ``-m``; any other
  ``FLANNEL_IPMASQ`` value exits 1 before the output file is touched;
* every variable whose name contains ``DOCKER_OPT_`` is written in the shell's sort order
  (byte order of the names), values with runs of blanks squeezed (an unquoted ``echo``);
  the combined line is the key's old value, a blank if it was non-empty, then `` <value>``
  per option;
* afterwards, if ``ip route show`` has a ``via`` route whose line contains the subnet (the
  FLANNEL_SUBNET address with one subtracted from the last octet, matched as a grep regex),
  it prints ``Your routing table already contains the subnet: <lines>`` and exits 1; the
  output file has been written by then.

Not reproduced: values with quotes or blanks inside a ``DOCKER_OPT_*`` variable (the script
word-splits ``set`` output and writes junk lines), and a missing output directory (the script
carries on after its redirections fail; flannelctl exits 1). Run as ``bash mk-docker-opts.sh``
(not POSIX mode) the script also lists its own usage function and writes junk; flannelctl
follows the shebang.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pyflannel.core.errors import FlannelError

DEFAULT_ENV_FILE = "/run/flannel/subnet.env"
DEFAULT_OUT_FILE = "/run/docker_opts.env"
DEFAULT_KEY = "DOCKER_OPTS"
OPT_MARK = "DOCKER_OPT_"

USAGE = f"""flannelctl docker-opts [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]

Generate Docker daemon options based on flannel env file (same output as flannel's mk-docker-opts.sh)
OPTIONS:
\t-f\tPath to flannel env file. Defaults to {DEFAULT_ENV_FILE}
\t-d\tPath to Docker env file to write to. Defaults to {DEFAULT_OUT_FILE}
\t-i\tOutput each Docker option as individual var. e.g. DOCKER_OPT_MTU=1500
\t-c\tOutput combined Docker options into DOCKER_OPTS var
\t-k\tSet the combined options key to this value (default DOCKER_OPTS=)
\t-m\tDo not output --ip-masq (useful for older Docker version)
"""

_GETOPTS = "f:d:icmk:?h"


class DockerOptsError(FlannelError):
    """mk-docker-opts.sh would exit 1; the message is what it prints on stderr."""


class UsageError(DockerOptsError):
    """A bad option, or -h / -?: print the message and the usage, exit 1."""


@dataclass(frozen=True)
class DockerOptsArgs:
    env_file: str = DEFAULT_ENV_FILE
    out_file: str = DEFAULT_OUT_FILE
    individual: bool = True
    combined: bool = True
    key: str = DEFAULT_KEY
    ipmasq: bool = True


def parse_args(argv: Sequence[str]) -> DockerOptsArgs:
    """Parse options as the script's ``getopts "f:d:icmk:?h"`` loop does."""
    values = {"f": DEFAULT_ENV_FILE, "d": DEFAULT_OUT_FILE, "k": DEFAULT_KEY}
    flags: set[str] = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            break
        if not arg.startswith("-") or arg == "-":
            break
        j = 1
        while j < len(arg):
            ch = arg[j]
            pos = _GETOPTS.find(ch)
            if ch == ":" or pos < 0:
                raise UsageError(f"illegal option -- {ch}")
            if ch in "?h":
                raise UsageError("")
            if pos + 1 < len(_GETOPTS) and _GETOPTS[pos + 1] == ":":
                if j + 1 < len(arg):
                    values[ch] = arg[j + 1 :]
                elif i + 1 < len(argv):
                    i += 1
                    values[ch] = argv[i]
                else:
                    raise UsageError(f"No arg for -{ch} option")
                break
            flags.add(ch)
            j += 1
        i += 1
    individual, combined = "i" in flags, "c" in flags
    if not individual and not combined:
        individual = combined = True
    return DockerOptsArgs(values["f"], values["d"], individual, combined, values["k"], "m" not in flags)


def _echo(value: str) -> str:
    """What ``$(eval echo "\\$NAME")`` yields: the value word-split and re-joined by one blank."""
    return " ".join(value.split())


def docker_options(variables: Mapping[str, str], ipmasq: bool = True) -> dict[str, str]:
    """The DOCKER_OPT_* variables the script defines or finds, by name.

    ``variables`` is the shell's view: the environment overlaid with the sourced env file.
    Raises DockerOptsError for a FLANNEL_IPMASQ other than true/false.
    """
    out = {k: v for k, v in variables.items() if OPT_MARK in k}
    if variables.get("FLANNEL_SUBNET"):
        out["DOCKER_OPT_BIP"] = f"--bip={variables['FLANNEL_SUBNET']}"
    if variables.get("FLANNEL_MTU"):
        out["DOCKER_OPT_MTU"] = f"--mtu={variables['FLANNEL_MTU']}"
    masq = variables.get("FLANNEL_IPMASQ", "")
    if masq and ipmasq:
        if masq == "true":
            out["DOCKER_OPT_IPMASQ"] = "--ip-masq=false"
        elif masq == "false":
            out["DOCKER_OPT_IPMASQ"] = "--ip-masq=true"
        else:
            raise DockerOptsError(f"Invalid value of FLANNEL_IPMASQ: {masq}")
    return out


def render(variables: Mapping[str, str], args: DockerOptsArgs) -> str:
    """The output file's content."""
    opts = docker_options(variables, args.ipmasq)
    combined = variables.get(args.key, "")
    if combined:
        combined += " "
    lines = []
    for name in sorted(opts, key=lambda n: n.encode()):
        value = _echo(opts[name])
        if args.individual:
            lines.append(f'{name}="{value}"')
        combined += f" {value}"
    if args.combined:
        lines.append(f'{args.key}="{combined}"')
    return "".join(line + "\n" for line in lines)


def _cut(text: str, delim: str, fields: Sequence[int]) -> str:
    """``cut -d<delim> -f<fields>`` on one line (a line without the delimiter passes whole)."""
    if delim not in text:
        return text
    parts = text.split(delim)
    return delim.join(parts[f - 1] for f in fields if f <= len(parts))


def route_subnet(flannel_subnet: str) -> str | None:
    """The pattern the script greps for: ``10.1.74.1/24`` -> ``10.1.74.0/24``; None if not computable."""
    four = _cut(_cut(flannel_subnet, ".", [4]), "/", [1])
    try:
        last = int(four) - 1 if four else -1
    except ValueError:
        return None
    return f"{_cut(flannel_subnet, '.', [1, 2, 3])}.{last}/{_cut(flannel_subnet, '/', [2])}"


def conflicting_routes(flannel_subnet: str, ip_route_show: str) -> str:
    """``ip route show | grep <subnet> | grep via``, joined by newlines; empty if none."""
    sub = route_subnet(flannel_subnet)
    if not sub:
        return ""
    # grep's basic regex: '.' matches any character; nothing else here is special.
    rx = re.compile("".join("." if c == "." else re.escape(c) for c in sub))
    hits = [line for line in ip_route_show.splitlines() if rx.search(line) and "via" in line]
    return "\n".join(hits)


def route_conflict_message(routes: str) -> str:
    return f"Your routing table already contains the subnet: {routes}"
