# pyflannel: the newcomer's commands are `make demo` and `make test` (run as root on Debian 12).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the daemon, its tests and the demo need.
APT_PKGS := etcd-server etcd-client iproute2 iptables iputils-ping iperf3 \
            containernetworking-plugins python3 python3-venv procps kmod openssl tcpdump

.PHONY: setup apt venv test test-unit test-integration test-netns test-faults lint demo demo-down bench clean

setup: apt venv

apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip >/dev/null
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

lint: venv
	$(VENV)/bin/ruff check pyflannel tests bench
	$(VENV)/bin/mypy

# The fault tier appends one row per scenario to $(FAULT_REPORT); pytest prints them as a table at the end.
FAULT_REPORT := $(CURDIR)/.fault-report.jsonl

test: setup lint
	rm -f $(FAULT_REPORT)
	PYFLANNEL_FAULT_REPORT=$(FAULT_REPORT) $(VENV)/bin/pytest -ra tests

test-unit: venv
	$(VENV)/bin/pytest -q tests/unit

test-integration: setup
	$(VENV)/bin/pytest -q tests/integration

test-netns: setup
	$(VENV)/bin/pytest -q tests/netns

test-faults: setup
	rm -f $(FAULT_REPORT)
	PYFLANNEL_FAULT_REPORT=$(FAULT_REPORT) $(VENV)/bin/pytest -q tests/faults

demo: setup
	PYTHONPATH=tests $(PY) -m support.demo up

demo-down: venv
	PYTHONPATH=tests $(PY) -m support.demo down

bench: setup
	PYTHONPATH=tests $(PY) -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
