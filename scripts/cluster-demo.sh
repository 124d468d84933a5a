#!/usr/bin/env bash
# `make cluster-demo`: the whole system in Kubernetes on this machine, without Docker or a registry.
#
# Builds (or reuses) what it needs, then runs `python -m tests.node.cluster_demo`:
#   the control plane   scripts/ensure-k8s-bins.sh   (etcd, kube-apiserver, controller-manager, scheduler, kubectl, helm)
#   the node            scripts/ensure-node-bins.sh  (kubelet, kube-proxy, crictl, CoreDNS) + Debian's containerd/runc/CNI
#   the images          scripts/build-images.sh --manifest (buildah: server, operator, grader, grader-demo,
#                       PostgreSQL, pause; loaded into the node's own containerd)
# and then: starts the control plane with one real node, `helm install`s charts/xqueue (two server
# replicas, in-chart PostgreSQL, the operator), applies the demo CourseGrader and an in-cluster LMS
# (examples/node/), submits a correct, an incorrect and a broken answer the way edx-platform does,
# prints the grades and `kubectl get coursegraders`, and keeps running (printing the KUBECONFIG to use
# and further grades) until Ctrl-C, which tears everything down again.
#
# Needs root (the node creates a bridge, iptables rules and mounts; all undone on exit) and the Debian
# packages `make setup` installs. Pods never reach beyond this machine (a firewall guard drops any
# forwarded traffic). Options: --once (exit after the grades).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '[cluster-demo %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

case "${1:-}" in
  -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  --once | "") ;;
  *) die "unknown option $1 (see --help)" ;;
esac

[[ "$(id -u)" == 0 ]] || die "the local node needs root (bridge, iptables, mounts; all undone on exit): run it as root"
PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || die "no $PY: run 'make setup' first (make cluster-demo does)"

log "control plane binaries (built once from the Go module proxy, then cached)"
K8S_TEST_BIN_DIR="$(bash "$ROOT/scripts/ensure-k8s-bins.sh" --print-dir)" || die "scripts/ensure-k8s-bins.sh failed"
log "node binaries (built once, then cached)"
K8S_NODE_BIN_DIR="$(bash "$ROOT/scripts/ensure-node-bins.sh" --print-dir)" || die "scripts/ensure-node-bins.sh failed"
log "images (buildah; only what changed is rebuilt)"
manifest="$(mktemp)"
trap 'rm -f "$manifest"' EXIT
bash "$ROOT/scripts/build-images.sh" --manifest >"$manifest" || die "scripts/build-images.sh failed"
export K8S_TEST_BIN_DIR K8S_NODE_BIN_DIR XQK8S_IMAGE_MANIFEST="$manifest"

cd "$ROOT"
# Not exec: the trap removes the manifest afterwards. Ctrl-C reaches Python (same process group), which
# tears the cluster down before it exits.
"$PY" -m tests.node.cluster_demo "$@"
