#!/usr/bin/env bash
# Fetch (or reuse from the cache) third-party CRDs the chart tests apply to the test control plane:
# the Prometheus Operator's ServiceMonitor and PodMonitor, so the chart's optional monitoring objects
# are validated against their real schemas. They come from the Go module proxy (the module zip holds
# the project's example CRDs); nothing is written inside the repo.
#
# Usage: scripts/ensure-test-crds.sh [--print-dir]   (prints the directory holding the YAML files)
set -euo pipefail

PROM_OPERATOR_VERSION="v0.85.0"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/xqueue-k8s"
OUT="$CACHE_ROOT/test-crds/prometheus-operator-$PROM_OPERATOR_VERSION"
FILES=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_podmonitors.yaml)

log() { printf '[ensure-test-crds] %s\n' "$*" >&2; }

if [[ ! -f "$OUT/STAMP" ]]; then
  command -v go >/dev/null 2>&1 || { log "ERROR: go is not on PATH"; exit 1; }
  log "downloading github.com/prometheus-operator/prometheus-operator@$PROM_OPERATOR_VERSION from the Go module proxy"
  # Outside any module: `go mod download` of an explicit version needs no go.mod.
  dir="$(cd "${TMPDIR:-/tmp}" && GOFLAGS=-modcacherw timeout 600 go mod download -json \
           "github.com/prometheus-operator/prometheus-operator@$PROM_OPERATOR_VERSION" \
         | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -n "$dir" && -d "$dir/example/prometheus-operator-crd" ]] || { log "ERROR: no CRDs in the module ($dir)"; exit 1; }
  rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp"
  for f in "${FILES[@]}"; do cp "$dir/example/prometheus-operator-crd/$f" "$OUT.tmp/$f"; done
  echo "prometheus-operator=$PROM_OPERATOR_VERSION" >"$OUT.tmp/STAMP"
  rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
fi

if [[ "${1:-}" == "--print-dir" ]]; then
  printf '%s\n' "$OUT"
else
  echo "test CRDs ready: $OUT"
fi
