"""``flannelctl docker-opts`` against flannel's real mk-docker-opts.sh, byte for byte.

The script is embedded below (Apache-2.0, header kept) and run the way a systemd unit runs it: through its
``#!/bin/sh`` shebang, i.e. dash here, and also ``bash --posix`` (what /bin/sh is on bash-based distros). Both
tools get the same env file, environment and flags; their output files, exit codes and (for the script's own
messages) stderr must match. The route check reads the host's routing table read-only; the pod subnets used
here (100.64.0.0/10) are not routed on a test machine, and the netns tests cover the conflicting-route case.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FLANNELCTL = Path(sys.executable).parent / "flannelctl"
SHELLS = [s for s in (["sh"], ["bash", "--posix"]) if shutil.which(s[0])]

MK_DOCKER_OPTS = """#!/bin/sh
# mk-docker-opts.sh from flannel (https://github.com/flannel-io/flannel), dist/mk-docker-opts.sh at commit
# 74b5e5061db72edb2e6911e11e60ff5bd0871d63 (the v0.20.2-era script with the route check).
# Copyright flannel authors. Licensed under the Apache License, Version 2.0 (the "License"); you may not use
# this file except in compliance with the License. You may obtain a copy of the License at
# http://www.apache.org/licenses/LICENSE-2.0. Unless required by applicable law or agreed to in writing,
# software distributed under the License is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR
# CONDITIONS OF ANY KIND, either express or implied. See the License for the specific language governing
# permissions and limitations under the License.
# Modification: this comment block was added; the script below the first line is unchanged.

usage() {
	echo "$0 [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]

Generate Docker daemon options based on flannel env file
OPTIONS:
	-f	Path to flannel env file. Defaults to /run/flannel/subnet.env
	-d	Path to Docker env file to write to. Defaults to /run/docker_opts.env
	-i	Output each Docker option as individual var. e.g. DOCKER_OPT_MTU=1500
	-c	Output combined Docker options into DOCKER_OPTS var
	-k	Set the combined options key to this value (default DOCKER_OPTS=)
	-m	Do not output --ip-masq (useful for older Docker version)
" >&2

	exit 1
}

flannel_env="/run/flannel/subnet.env"
docker_env="/run/docker_opts.env"
combined_opts_key="DOCKER_OPTS"
indiv_opts=false
combined_opts=false
ipmasq=true

while getopts "f:d:icmk:?h" opt; do
	case $opt in
		f)
			flannel_env=$OPTARG
			;;
		d)
			docker_env=$OPTARG
			;;
		i)
			indiv_opts=true
			;;
		c)
			combined_opts=true
			;;
		m)
			ipmasq=false
			;;
		k)
			combined_opts_key=$OPTARG
			;;
		[\\?h])
			usage
			;;
	esac
done

if [ $indiv_opts = false ] && [ $combined_opts = false ]; then
	indiv_opts=true
	combined_opts=true
fi

if [ -f "$flannel_env" ]; then
	. $flannel_env
fi

if [ -n "$FLANNEL_SUBNET" ]; then
	DOCKER_OPT_BIP="--bip=$FLANNEL_SUBNET"
fi

if [ -n "$FLANNEL_MTU" ]; then
	DOCKER_OPT_MTU="--mtu=$FLANNEL_MTU"
fi

if [ -n "$FLANNEL_IPMASQ" ] && [ $ipmasq = true ] ; then
	if [ "$FLANNEL_IPMASQ" = true ] ; then
		DOCKER_OPT_IPMASQ="--ip-masq=false"
	elif [ "$FLANNEL_IPMASQ" = false ] ; then
		DOCKER_OPT_IPMASQ="--ip-masq=true"
	else
		echo "Invalid value of FLANNEL_IPMASQ: $FLANNEL_IPMASQ" >&2
		exit 1
	fi
fi

eval docker_opts="\\$${combined_opts_key}"

if [ "$docker_opts" ]; then
	docker_opts="$docker_opts ";
fi

echo -n "" >$docker_env

for opt in $(set | grep "DOCKER_OPT_"); do

	OPT_NAME=$(echo $opt | awk -F "=" '{print $1;}');
	OPT_VALUE=$(eval echo "\\$$OPT_NAME");

	if [ "$indiv_opts" = true ]; then
		echo "$OPT_NAME=\\"$OPT_VALUE\\"" >>$docker_env;
	fi

	docker_opts="$docker_opts $OPT_VALUE";

done

if [ "$combined_opts" = true ]; then
	echo "${combined_opts_key}=\\"${docker_opts}\\"" >>$docker_env
fi

if [ -n "${FLANNEL_SUBNET}" ];then
    dot_four=`echo ${FLANNEL_SUBNET}|cut -d. -f4|cut -d/ -f1`
    dot_four=$((${dot_four}-1))
    subnets_pre=`echo ${FLANNEL_SUBNET}|cut -d. -f 1,2,3`
    subnets_lat=`echo ${FLANNEL_SUBNET}|cut -d/ -f2`
    subnets=${subnets_pre}.${dot_four}/${subnets_lat}
    route_invalid=`ip route show|grep ${subnets}|grep via`
    if [ -n "${route_invalid}" ];then
        echo "Your routing table already contains the subnet: ${route_invalid}" >&2
	exit 1
    fi
fi
"""

SUBNET_ENV = "FLANNEL_NETWORK=100.64.0.0/16\nFLANNEL_SUBNET=100.64.74.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"

CASES = [
    ("default", [], {}, SUBNET_ENV),
    ("individual", ["-i"], {}, SUBNET_ENV),
    ("combined", ["-c"], {}, SUBNET_ENV),
    ("custom-key", ["-k", "DOCKER_NETWORK_OPTIONS"], {}, SUBNET_ENV),
    ("no-ipmasq-clustered", ["-mic"], {}, SUBNET_ENV),
    ("attached-key", ["-ki"], {}, SUBNET_ENV),
    ("ipmasq-false", [], {}, SUBNET_ENV.replace("IPMASQ=true", "IPMASQ=false")),
    ("existing-opts", ["-c"], {"DOCKER_OPTS": "--foo --bar"}, SUBNET_ENV),
    ("existing-custom-key", ["-k", "EXTRA"], {"EXTRA": "--debug"}, SUBNET_ENV),
    ("extra-docker-opt-vars", [], {"DOCKER_OPT_ZZ": "x", "DOCKER_OPT_AA": "y"}, SUBNET_ENV),
    ("env-file-overrides-env", [], {"FLANNEL_MTU": "9000"}, SUBNET_ENV),
    ("no-env-file-uses-env", [], {"FLANNEL_MTU": "9000", "FLANNEL_SUBNET": "100.64.9.1/24"}, None),
    ("nothing-at-all", [], {}, None),
    ("only-mtu-in-file", ["-c"], {}, "FLANNEL_MTU=1400\n"),
    ("reference-flanneld-file", [], {}, "FLANNEL_NETWORK=100.64.0.0/16\nFLANNEL_SUBNET=100.64.67.1/24\n"
                                        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"),
    ("invalid-ipmasq", [], {}, SUBNET_ENV.replace("IPMASQ=true", "IPMASQ=yes")),
    ("stops-at-operand", ["-i", "operand", "-c"], {}, SUBNET_ENV),
]


def run_tool(argv: list[str], out: Path, extra_env: dict[str, str]) -> tuple[int, str, str | None]:
    """(exit code, stderr, output file or None) of one tool, with a minimal environment plus ``extra_env``."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", **extra_env}
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30, check=False)
    return p.returncode, p.stderr, out.read_text() if out.exists() else None


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "mk-docker-opts.sh"
    path.write_text(MK_DOCKER_OPTS)
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: "-".join(s))
@pytest.mark.parametrize(("name", "flags", "env", "file_text"), CASES, ids=[c[0] for c in CASES])
def test_same_bytes_as_the_script(script: Path, tmp_path: Path, shell: list[str], name: str, flags: list[str],
                                  env: dict[str, str], file_text: str | None) -> None:
    env_file = tmp_path / "subnet.env"
    if file_text is not None:
        env_file.write_text(file_text)
    results = []
    for tool in ([*shell, str(script)], [str(FLANNELCTL), "docker-opts"]):
        out = tmp_path / f"out-{len(results)}.env"
        results.append(run_tool([*tool, "-f", str(env_file), "-d", str(out), *flags], out, env))
    (rc_sh, err_sh, out_sh), (rc_py, err_py, out_py) = results
    assert out_py == out_sh, f"{name}: flannelctl wrote {out_py!r}, the script {out_sh!r}"
    assert rc_py == rc_sh
    if name == "invalid-ipmasq":
        assert rc_py == 1 and out_py is None
        assert err_py == err_sh == "Invalid value of FLANNEL_IPMASQ: yes\n"


def test_usage_errors_exit_1_like_the_script(script: Path, tmp_path: Path) -> None:
    for flags in (["-x"], ["-h"], ["-f"]):
        rc_sh = subprocess.run(["sh", str(script), *flags], capture_output=True, timeout=30, check=False).returncode
        p = subprocess.run([str(FLANNELCTL), "docker-opts", *flags], capture_output=True, text=True, timeout=30,
                           check=False)
        assert p.returncode == rc_sh == 1
        assert "Usage" not in p.stdout and "-k\tSet the combined options key" in p.stderr


def test_default_paths(tmp_path: Path) -> None:
    """Without -f/-d it reads /run/flannel/subnet.env and writes /run/docker_opts.env; check only the usage says so."""
    p = subprocess.run([str(FLANNELCTL), "docker-opts", "-h"], capture_output=True, text=True, timeout=30, check=False)
    assert "Defaults to /run/flannel/subnet.env" in p.stderr and "Defaults to /run/docker_opts.env" in p.stderr
