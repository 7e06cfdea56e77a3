# railnet: every target installs what it needs (virtualenv + Debian packages) on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEB_PACKAGES := containernetworking-plugins iproute2 sqlite3 gcc libc6-dev runc iptables conntrack mmdebstrap

CC ?= cc
NATIVE_SHIM := cni/native/railnet-shim

.PHONY: setup sysdeps protos test lint typecheck unit demo cluster-demo bench k8s-bin tools clean

$(VENV)/.installed: pyproject.toml setup.py
	@echo "==> creating virtualenv $(VENV)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $@

sysdeps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "==> installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# `pip install -e` (setup.py's build_py) compiles the shim too; this rebuilds it after edits.
$(NATIVE_SHIM): cni/native/shim.c
	@echo "==> building the native CNI shim"
	$(CC) -O2 -Wall -Wextra -Werror -o $@ $<

# The kubelet API stubs are generated from the pinned k8s.io/kubelet protos (needs `go`); a no-op when current.
protos: $(VENV)/.installed
	@$(PY) -m netmanager.kubelet.protos

setup: sysdeps $(VENV)/.installed $(NATIVE_SHIM) protos

lint: setup
	$(VENV)/bin/ruff check .

typecheck: setup
	$(VENV)/bin/mypy cni ipam
	$(VENV)/bin/mypy netmanager scheduler railnet jobs

k8s-bin: setup
	$(PY) -m railnet.dev.k8sbin build

tools: setup
	$(PY) -m railnet.dev.tools build

test: setup lint typecheck k8s-bin tools
	$(PY) -m pytest -q tests --ignore=tests/bench

demo: setup
	$(PY) -m railnet.dev.demo

# The whole system on the dev cluster (real node + kwok GPU nodes): chart install, jobs with rails, teardown.
cluster-demo: setup k8s-bin tools
	$(PY) -m railnet.dev.cluster_demo

bench: setup
	$(PY) -m railnet.dev.peers build
	@set -e; if [ -z "$$RAILNET_OPENB_DIR" ]; then echo "NOTE: RAILNET_OPENB_DIR is not set: the trace benchmarks replay a generated openb-format trace; the published comparison needs the real one (alibaba/clusterdata, cluster-trace-gpu-v2023/csv; see docs/benchmarks/scheduler.md)"; fi; \
	for b in tests/bench/bench_*.py; do echo "==> $$b"; $(PY) $$b; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build $(NATIVE_SHIM)
