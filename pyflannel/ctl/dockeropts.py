"""The I/O around ``core.docker_opts``: the environment, the env file, ``ip route show``, the output file.

Kept apart from the pure renderer so that the byte-for-byte comparison with flannel's
mk-docker-opts.sh tests the same code path a systemd unit runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from pyflannel.adapters.files import atomic_write
from pyflannel.core import docker_opts
from pyflannel.core.errors import SubnetEnvError
from pyflannel.core.subnet_env import parse_env_text


def ip_route_show() -> str:
    """``ip route show`` as text (the script greps it); empty if ip is missing or fails."""
    try:
        p = subprocess.run(["ip", "route", "show"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return p.stdout if p.returncode == 0 else ""


def run(argv: Sequence[str], env: Mapping[str, str] | None = None, stderr: TextIO | None = None) -> int:
    """``flannelctl docker-opts ARGS``: exit status 0 or 1, like the script."""
    err = stderr or sys.stderr
    try:
        args = docker_opts.parse_args(argv)
    except docker_opts.UsageError as e:
        if str(e):
            err.write(f"flannelctl docker-opts: {e}\n")
        err.write(docker_opts.USAGE)
        return 1
    variables = dict(os.environ if env is None else env)
    path = Path(args.env_file)
    if path.is_file():
        try:
            variables.update(parse_env_text(path.read_text(), args.env_file))
        except (OSError, SubnetEnvError) as e:
            err.write(f"flannelctl docker-opts: {e}\n")
            return 1
    try:
        text = docker_opts.render(variables, args)
    except docker_opts.DockerOptsError as e:
        err.write(f"{e}\n")
        return 1
    try:
        atomic_write(args.out_file, text, 0o644)
    except OSError as e:
        err.write(f"flannelctl docker-opts: cannot write {args.out_file}: {e.strerror or e}\n")
        return 1
    subnet = variables.get("FLANNEL_SUBNET", "")
    if subnet:
        routes = docker_opts.conflicting_routes(subnet, ip_route_show())
        if routes:
            err.write(docker_opts.route_conflict_message(routes) + "\n")
            return 1
    return 0
