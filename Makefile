# Two commands set everything up on a fresh machine:
#   make run    - the whole job on this machine (throwaway PostgreSQL, XQueue server, grader, demo)
#   make test   - every test tier (unit, integration on real PostgreSQL/HTTP, cluster on a real kube-apiserver)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help setup system-deps k8s-bins run test test-fast lint bench bench-server bench-grader bench-operator clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

system-deps: ## install Debian packages the project needs when they are missing (PostgreSQL, git, libseccomp)
	@bash scripts/ensure-system-deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,seccomp]'
	@touch $(STAMP)

setup: system-deps $(STAMP) ## create .venv and install the project with its test dependencies

k8s-bins: ## build (or reuse from cache) etcd, kube-apiserver, controller-manager, scheduler, kubectl, kwok, helm
	@bash scripts/ensure-k8s-bins.sh

run: setup ## run the whole job locally: PostgreSQL, XQueue server, grader daemon, demo submissions
	$(PY) -m xqueue_server.demo

test: setup k8s-bins ## run every test (the command .ci/run uses)
	K8S_TEST_BIN_DIR="$$(bash scripts/ensure-k8s-bins.sh --print-dir)" $(PY) -m pytest -q -ra

test-fast: setup ## unit and integration tests only (no Kubernetes control plane)
	$(PY) -m pytest -q -ra -m "not cluster"

lint: setup ## ruff
	$(VENV)/bin/ruff check .

bench: bench-server bench-grader bench-operator ## all benchmarks, printing figures

bench-server: setup ## XQueue server: full cycles/s and submit->callback latency
	$(PY) bench/server_load.py

bench-grader: setup ## sandbox overhead and graded submissions/s
	$(PY) bench/grader_bench.py

bench-operator: setup k8s-bins ## operator: create->status latency, scale reaction, memory at 1000 CourseGraders
	K8S_TEST_BIN_DIR="$$(bash scripts/ensure-k8s-bins.sh --print-dir)" $(PY) bench/operator_bench.py

clean: ## remove local state (.local holds the throwaway database and files)
	rm -rf .local
