# pyflannel: the newcomer's commands are `make demo` and `make test` (run as root on Debian 12).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the daemon, its tests and the demo need.
# nftables: EnableNFTables mode; wireguard-go + wireguard-tools: the wireguard backend where the kernel has
# no module; systemd: systemd-analyze verify of the units; util-linux: unshare/nsenter for test wrappers.
APT_PKGS := etcd-server etcd-client iproute2 iptables nftables iputils-ping iperf3 \
            containernetworking-plugins python3 python3-venv procps kmod openssl tcpdump curl \
            wireguard-go wireguard-tools systemd util-linux

.PHONY: setup apt venv testdeps test test-unit test-integration test-netns test-faults test-interop lint demo demo-down bench clean

setup: apt venv

apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip >/dev/null
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

# ---- Real peers built from the Go module proxy (tests/support/peers.py finds them) ---------------------
# Go flanneld, etcd 3.6 and kube-apiserver, each from a pinned build module under testdeps/ (go.mod + go.sum
# committed). `go build` runs every time: with Go's build cache warm it only checks and exits in about a
# second, so no stamp file can go stale. -buildvcs=false: otherwise Go stamps the git state of this repo
# into the binaries and every commit would force a relink.
GO ?= $(firstword $(shell command -v go 2>/dev/null) /usr/local/go/bin/go)
TESTDEPS_OUT := $(CURDIR)/build/testdeps
GO_BUILD := $(GO) build -buildvcs=false
FLANNEL_VERSION := $(shell sed -n 's|^require github.com/flannel-io/flannel \(v[^ ]*\)$$|\1|p' testdeps/flanneld/go.mod)
KUBE_VERSION := $(shell sed -n 's|^require k8s.io/kubernetes \(v[^ ]*\)$$|\1|p' testdeps/kube-apiserver/go.mod)
ETCD_VERSION := $(shell sed -n 's|^require go.etcd.io/etcd/server/v3 \(v[^ ]*\)$$|\1|p' testdeps/etcd/go.mod)
KUBE_MINOR := $(word 2,$(subst ., ,$(KUBE_VERSION)))
# Version strings the upstream release builds stamp in (plain `go build` leaves "dev" / "v0.0.0-master").
FLANNEL_LDFLAGS := -X github.com/flannel-io/flannel/pkg/version.Version=$(FLANNEL_VERSION)
KUBE_LDFLAGS := -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) \
  -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(KUBE_MINOR)

testdeps:
	@test -x "$(GO)" || { echo "make testdeps: Go >= 1.26 not found (looked on PATH and at /usr/local/go/bin/go; set GO=/path/to/go)" >&2; exit 1; }
	@mkdir -p $(TESTDEPS_OUT); start=$$(date +%s); \
	echo "testdeps: flanneld $(FLANNEL_VERSION), etcd $(ETCD_VERSION), kube-apiserver $(KUBE_VERSION) -> build/testdeps/ ($$($(GO) env GOVERSION))"; \
	( cd testdeps/flanneld && $(GO_BUILD) -ldflags '$(FLANNEL_LDFLAGS)' \
	    -o $(TESTDEPS_OUT)/flanneld github.com/flannel-io/flannel ) && \
	( cd testdeps/etcd && $(GO_BUILD) -o $(TESTDEPS_OUT)/etcd . ) && \
	( cd testdeps/kube-apiserver && $(GO_BUILD) -ldflags '$(KUBE_LDFLAGS)' \
	    -o $(TESTDEPS_OUT)/kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver ) && \
	echo "testdeps: done in $$(( $$(date +%s) - start )) s"

lint: venv
	$(VENV)/bin/ruff check pyflannel tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The fault tier appends one row per scenario to $(FAULT_REPORT); pytest prints them as a table at the end.
FAULT_REPORT := $(CURDIR)/.fault-report.jsonl

test: setup testdeps lint
	rm -f $(FAULT_REPORT)
	PYFLANNEL_FAULT_REPORT=$(FAULT_REPORT) $(VENV)/bin/pytest -ra tests

test-unit: venv
	$(VENV)/bin/pytest -q tests/unit

test-integration: setup testdeps
	$(VENV)/bin/pytest -q tests/integration

test-interop: setup testdeps
	$(VENV)/bin/pytest -q tests/interop

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
