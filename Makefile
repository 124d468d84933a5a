# Two commands set everything up on a fresh machine:
#   make run    - the whole job on this machine (throwaway PostgreSQL, XQueue server, grader, demo)
#   make test   - every test tier (unit, integration on real PostgreSQL/HTTP, cluster on a real kube-apiserver)
# and an optional third, as root: make cluster-demo - the system in real pods on a local node (Helm chart, operator)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Container images (`make images`, scripts/build-images.sh): CONTAINER_TOOL if set, else docker or podman when
# usable (IMAGE_REGISTRY/IMAGE_TAG name their images), else buildah (content-keyed localhost/xqueue-k8s/...
# images and docker-archives, cached).
CONTAINER_TOOL ?=
IMAGE_REGISTRY ?= ghcr.io/xqueue-k8s
IMAGE_TAG ?= dev

.PHONY: help setup system-deps k8s-bins node-bins run test test-fast lint bench bench-server bench-grader bench-operator clean \
	images kind kind-up kind-images kind-install kind-demo kind-down

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

system-deps: ## install Debian packages the project needs when they are missing (PostgreSQL, git, libseccomp)
	@bash scripts/ensure-system-deps.sh

$(STAMP): pyproject.toml tutor_plugin/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,seccomp]' -e ./tutor_plugin
	@touch $(STAMP)

setup: system-deps $(STAMP) ## create .venv and install the project with its test dependencies

k8s-bins: ## build (or reuse from cache) etcd, kube-apiserver, controller-manager, scheduler, kubectl, kwok, helm
	@bash scripts/ensure-k8s-bins.sh

node-bins: ## build (or reuse from cache) the real test node's kubelet, kube-proxy, crictl, coredns
	@bash scripts/ensure-node-bins.sh

run: setup ## run the whole job locally: PostgreSQL, XQueue server, grader daemon, demo submissions
	$(PY) -m xqueue_server.demo

# Optional, as root: the whole system in Kubernetes here (local control plane + one real kubelet node).
.PHONY: cluster-demo bench-cluster
cluster-demo: setup ## optional (root): chart + course + LMS in real pods on a local node, grades, kubectl until Ctrl-C
	bash scripts/cluster-demo.sh

test: setup k8s-bins node-bins ## run every test (the command .ci/run uses)
	K8S_TEST_BIN_DIR="$$(bash scripts/ensure-k8s-bins.sh --print-dir)" \
	K8S_NODE_BIN_DIR="$$(bash scripts/ensure-node-bins.sh --print-dir)" \
	K8S_TEST_CRD_DIR="$$(bash scripts/ensure-test-crds.sh --print-dir)" $(PY) -m pytest -q -ra

test-fast: setup ## unit and integration tests only (no Kubernetes control plane)
	$(PY) -m pytest -q -ra -m "not cluster and not node"

lint: setup ## ruff, then mypy (packages, tests and bench; configured in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: bench-server bench-grader bench-operator ## all benchmarks, printing figures

bench-server: setup ## XQueue server, durable and fast PostgreSQL, 1 and 2 processes: cycles/s, latency, CPU and statements per cycle
	$(PY) bench/server_load.py

bench-grader: setup ## sandbox overhead and graded submissions/s
	$(PY) bench/grader_bench.py

bench-operator: setup k8s-bins ## operator: create->status latency, scale reaction, memory at 1000 CourseGraders
	K8S_TEST_BIN_DIR="$$(bash scripts/ensure-k8s-bins.sh --print-dir)" $(PY) bench/operator_bench.py

bench-cluster: setup k8s-bins node-bins ## (root) real pods: helm install -> first grade, 200-burst fixed vs autoscaled
	K8S_TEST_BIN_DIR="$$(bash scripts/ensure-k8s-bins.sh --print-dir)" \
	K8S_NODE_BIN_DIR="$$(bash scripts/ensure-node-bins.sh --print-dir)" $(PY) bench/cluster_bench.py

images: ## build the images: docker or podman (IMAGE_REGISTRY, IMAGE_TAG), else buildah (cached, no daemon)
	@CONTAINER_TOOL="$(CONTAINER_TOOL)" IMAGE_REGISTRY="$(IMAGE_REGISTRY)" IMAGE_TAG="$(IMAGE_TAG)" \
	  bash scripts/build-images.sh

# The whole system on a local kind cluster (scripts/kind-demo.sh). Needs Docker (or podman) and internet
# access for the kind node image and the PostgreSQL image, so CI does not run these.
kind: ## kind-up, kind-images, kind-install and kind-demo in one go (needs Docker or podman + internet)
	bash scripts/kind-demo.sh all

kind-up: ## create the kind cluster "xqueue" (reused if it exists; kind is built from the Go proxy if missing)
	bash scripts/kind-demo.sh up

kind-images: ## build the images and load them into the kind cluster
	bash scripts/kind-demo.sh images

kind-install: ## helm upgrade --install the chart (in-chart PostgreSQL, the local images) into namespace xqueue
	bash scripts/kind-demo.sh install

kind-demo: ## apply the demo CourseGrader, run the demo submitter Job and print its results
	bash scripts/kind-demo.sh demo

kind-down: ## delete the kind cluster
	bash scripts/kind-demo.sh down

clean: ## remove local state (.local holds the throwaway database and files)
	rm -rf .local
