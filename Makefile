# nim-agent: the two commands a newcomer needs are `make demo` and `make test`.
# Everything is installed by this file from package registries (PyPI, the Go module proxy).

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/uv/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest

.PHONY: help setup objectstore-build test lint typecheck unit integration e2e faults soak cluster-build cluster-up cluster-down propeller-build image demo bench clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(TOOLS)/uv
	$(TOOLS)/uv/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --quiet
	touch $@

setup: $(VENV)/.synced ## create .venv from the lock file (idempotent)

lint: setup ## ruff lint + format check, import layering (.importlinter)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-logo

typecheck: setup ## mypy on the package
	$(VENV)/bin/mypy

unit: setup objectstore-build ## fast tests, no cluster (what a bare `pytest` runs)
	NIM_AGENT_REQUIRE_OBJECTSTORE=1 $(PYTEST) tests/unit

objectstore-build: ## build or reuse the S3-compatible object store (MinIO, from Go modules; cached)
	devcluster/objectstore.sh build >/dev/null

.PHONY: proto
proto: setup ## regenerate nim_agent/_proto from proto/ (committed; a unit test checks it is fresh)
	$(PY) proto/generate.py

# REAL_NODE=0: the control plane with kwok nodes only (no root, no images, no real node).
REAL_NODE ?= 1
export REAL_NODE

cluster-build: ## build or reuse the control-plane binaries and the real node's images (cached in ~/.cache/nim-agent)
	DEVCLUSTER_BIN="$(CURDIR)/.devcluster/bin" devcluster/build.sh
	if [ "$(REAL_NODE)" != 0 ]; then devcluster/images.sh build; fi

cluster-up: cluster-build ## start the control plane and the real node unless running (kubeconfig: .devcluster/kubeconfig)
	devcluster/cluster.sh up

cluster-down: ## stop the control plane and the real node, remove all they made (nothing running: no-op)
	devcluster/cluster.sh down

image: ## build the connector image from the Dockerfile with buildah (cached by its inputs), push it to the local registry, NIM_AGENT_IMAGE in .devcluster/images.env
	devcluster/images.sh connector

integration: setup cluster-up ## tests against the local control plane
	$(PYTEST) --with-cluster tests/integration

e2e: setup cluster-up propeller-build image ## end-to-end tests: Helm chart, the connector image on the real node, connector, propeller
	$(PYTEST) --with-cluster tests/e2e

faults: setup cluster-up ## fault, abuse, load and security suite (restarts the apiserver; leak audit at the end)
	$(PYTEST) --with-cluster tests/faults

soak: setup cluster-up ## the fault suite with its long variants: minutes of load, more generated inputs
	NIM_AGENT_SOAK=1 NIM_AGENT_FUZZ_EXAMPLES=1000 NIM_AGENT_FUZZ_GRPC_EXAMPLES=300 $(PYTEST) --with-cluster tests/faults

test: lint typecheck unit integration e2e faults ## every test suite (what CI runs)
	@echo "make test: all suites passed"

demo: setup cluster-up image ## the main job end to end on the local control plane (connector, NIM with LoRA, pyflyte run)
	devcluster/demo.sh

BENCH_ARGS ?=
bench: setup ## benchmarks vs the naive connector on a control plane of their own (6-10 min), then warm servers vs a server per execution on the real node (13 min; JSON in benchmarks/results/)
	benchmarks/run.sh $(BENCH_ARGS)

propeller-build: ## build flytepropeller + kubectl-flyte from the Go module proxy (cached)
	devcluster/propeller/build.sh
	mkdir -p .devcluster/bin
	ln -sfn "$$(devcluster/propeller/build.sh --print-bin-dir)"/flytepropeller .devcluster/bin/flytepropeller
	ln -sfn "$$(devcluster/propeller/build.sh --print-bin-dir)"/kubectl-flyte .devcluster/bin/kubectl-flyte
