# gptoss-operator developer entry points. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CLUSTER_DIR ?= .cluster

.PHONY: requirements docs bench demo kubectl-path help setup system-packages prerequisites binaries node-binaries engine images cluster cluster-down test test-node test-faults test-unit lint format typecheck crds check-crds demo clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

setup: $(BIN)/python ## Install the project and its dev tools into .venv
	$(BIN)/pip install --quiet -e '.[dev]'

binaries: setup ## Build (once) and cache etcd, Kubernetes and kwok from Go modules
	$(BIN)/python -m gptoss_sandbox.binaries

node-binaries: binaries ## Build (once) the real node's: containerd, CNI plugins, crictl, CoreDNS, fake GPU plugin
	$(BIN)/python -m gptoss_sandbox.binaries --node

engine: setup ## Install (once) vLLM's CPU build, the real engine of the tests and demo
	$(BIN)/python -m gptoss_sandbox.engine_venv

images: engine ## Build the product and vLLM images here (buildah, no registry), cached by their inputs
	$(BIN)/python -m gptoss_sandbox.images all

cluster: binaries ## Start the local control plane with fake GPU nodes (.cluster/kubeconfig)
	$(BIN)/python -m gptoss_sandbox.cluster up --dir $(CLUSTER_DIR)

cluster-down: ## Stop the local control plane
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m gptoss_sandbox.cluster down --dir $(CLUSTER_DIR); fi

# The real node's parts that come from Debian: runc (containerd's runtime), iptables and
# conntrack (kube-proxy), buildah and mmdebstrap (images built here), curl (health checks).
SYSTEM_PACKAGES := runc iptables conntrack buildah mmdebstrap curl

system-packages: ## Install the real node's Debian packages when missing (root, apt-get)
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The Go builds (CPU) and the engine venv then the images (network, disk) run side by side.
prerequisites: setup system-packages
	$(MAKE) -j2 node-binaries images

demo: prerequisites ## Run the product locally as pods: the chart, a model, jobs and a batch on a real node
	$(BIN)/python -m gptoss_sandbox.demo $(DEMO_ARGS)

test: prerequisites ## Run every test (unit, real control plane, real vLLM, then the real node tier)
	$(BIN)/python -m pytest -m "not node"
	$(BIN)/python -m pytest -m node

test-node: prerequisites ## Run the real node tier alone (chart, operator, model and jobs as pods)
	$(BIN)/python -m pytest -m node

test-faults: binaries engine ## Run the fault suite alone (it is part of make test too)
	$(BIN)/python -m pytest -m faults

test-unit: setup ## Run the tests that need no control plane
	$(BIN)/python -m pytest tests/unit

lint: setup ## ruff lint + format check, mypy, the import layers
	$(BIN)/ruff check operator tests images
	$(BIN)/ruff format --check operator tests images
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit/test_layers.py

format: setup ## Apply ruff's formatting and fixes
	$(BIN)/ruff format operator tests
	$(BIN)/ruff check --fix operator tests

typecheck: setup
	$(BIN)/mypy

requirements: setup ## Re-hash images/requirements.txt from the package index (after changing a pin)
	$(BIN)/python images/hash_requirements.py

crds: setup ## Regenerate crds/ and the chart's CRDs from the pydantic models
	$(BIN)/python -m gptoss_operator.api.crdgen

docs: setup ## Regenerate the README's API reference from the models
	$(BIN)/python -m gptoss_operator.api.docs

bench: binaries engine ## Run the benchmarks: benchmarks/results.json, BENCHMARKS.md, plots
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

check-crds: setup ## Fail when the committed CRDs differ from the models
	$(BIN)/python -m gptoss_operator.api.crdgen --check

clean: cluster-down ## Remove local state (keeps the binary cache)
	rm -rf $(CLUSTER_DIR) .pytest_cache .mypy_cache .ruff_cache

kubectl-path: ## Print the path of the kubectl built with the local control plane
	@$(BIN)/python -c "from gptoss_sandbox.binaries import cached_binaries as c; b = c(); print(b.kubectl if b else 'run make binaries first')"
