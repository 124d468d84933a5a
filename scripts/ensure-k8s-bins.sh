#!/usr/bin/env bash
# Build (or reuse from the cache) the binaries of the Kubernetes test control plane:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok, helm
# plus kwok-stages.yaml (kwok refuses to start without Stage objects).
#
# Everything comes from the Go module proxy; nothing built is written inside the repo.
# Binaries land in  ${XDG_CACHE_HOME:-$HOME/.cache}/xqueue-k8s/k8s-bin/<key>/  where <key> hashes
# every input that changes the output (go.mod/go.sum of tools/k8s and tools/etcd, kwok/helm versions,
# ldflags/tags, `go version`, the layout version below). A STAMP file written last marks a complete
# build, so a warm run costs one `go env`, one hash and one stat (~0.05 s; no network, no compiler).
#
# Usage:
#   scripts/ensure-k8s-bins.sh              build if needed, then print a one-line summary
#   scripts/ensure-k8s-bins.sh --print-dir  build if needed, then print ONLY the bin dir on stdout
# Build progress always goes to stderr so `--print-dir` can be used in $(...).
#
# Measured on a shared 2-core machine (docs/k8s-test-infra.md): cold ~18-25 min, relink with a warm
# Go build cache ~40 s, cache hit ~0.05 s.
set -euo pipefail

print_dir=0
case "${1:-}" in
  --print-dir) print_dir=1 ;;
  "") ;;
  -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--print-dir]" >&2; exit 2 ;;
esac

log() { printf '[ensure-k8s-bins %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
K8S_MOD="$ROOT/tools/k8s"
ETCD_MOD="$ROOT/tools/etcd"

# Versions that are not pinned by a go.mod of ours (installed with `go install pkg@version`).
KWOK_VERSION="v0.8.0"
HELM_VERSION="v4.2.4"
# Bump when the layout/contents of the bin dir change without any other input changing.
LAYOUT_VERSION="1"

command -v go >/dev/null 2>&1 || die "go is not on PATH (Go >= 1.26 is required; Debian's golang-go is too old)"
# Fail fast instead of silently downloading another toolchain if a bump ever needs a newer Go.
export GOTOOLCHAIN=local
export CGO_ENABLED=0
# -buildvcs=false: the wrapper modules sit inside our git checkout; VCS stamping would embed the
# project's state (changing the binaries on every commit) or fail on odd git ownership.
# -modcacherw: lets anyone `rm -rf` the module cache (Go makes it read-only otherwise).
export GOFLAGS="-buildvcs=false -modcacherw"

GO_VERSION="$(go env GOVERSION)"
case "$GO_VERSION" in
  go1.2[6-9]*|go1.[3-9][0-9]*) ;;
  *) die "need Go >= 1.26 (Kubernetes 1.36 and kwok v0.8.0 declare go 1.26.0), found $GO_VERSION" ;;
esac

# Read the pinned versions back from our go.mod files so they are stated in exactly one place.
# (Parsed as text: the warm path must not need the module cache or the network.)
modversion() { awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$1/go.mod"; }
K8S_VERSION="$(modversion "$K8S_MOD" k8s.io/kubernetes)"
ETCD_VERSION="$(modversion "$ETCD_MOD" go.etcd.io/etcd/server/v3)"
[[ "$K8S_VERSION" =~ ^v1\.([0-9]+)\.[0-9]+$ ]] || die "unexpected k8s.io/kubernetes version '$K8S_VERSION' in tools/k8s/go.mod"
K8S_MINOR="${BASH_REMATCH[1]}"
[[ -n "$ETCD_VERSION" ]] || die "no go.etcd.io/etcd/server/v3 version in tools/etcd/go.mod"

# Version stamp: without it /version says v0.0.0-master+$Format:%H$, which makes helm reject charts with
# a kubeVersion constraint and kubectl print skew warnings. Stamped into both packages upstream stamps
# (hack/lib/version.sh). buildDate is the release tag's date (filled in only when building, see
# k8s_ldflags), fixed, so link inputs stay reproducible; it is a function of K8S_VERSION, which the
# cache key already covers.
k8s_ldflags() {  # k8s_ldflags BUILD_DATE
  local pkg flags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$K8S_MINOR"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit=unknown -X $pkg.buildDate=$1"
  done
  printf '%s' "$flags"
}
# Upstream's tags for static server binaries (hack/lib/golang.sh).
K8S_TAGS="selinux,notest,grpcnotrace"
# Helm keeps only "v4.2" in source and stamps the full version in its Makefile; do the same so
# `helm version` reports the exact release.
HELM_LDFLAGS="-X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean"

CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/xqueue-k8s"
key="$(
  {
    for f in "$K8S_MOD/go.mod" "$K8S_MOD/go.sum" "$ETCD_MOD/go.mod" "$ETCD_MOD/go.sum"; do
      printf '%s\n' "${f#"$ROOT"/}"; cat "$f"
    done
    printf 'kwok=%s\nhelm=%s\nldflags=%s\nhelm_ldflags=%s\ntags=%s\ngo=%s\nlayout=%s\n' \
      "$KWOK_VERSION" "$HELM_VERSION" "$(k8s_ldflags BUILD_DATE)" "$HELM_LDFLAGS" "$K8S_TAGS" "$GO_VERSION" \
      "$LAYOUT_VERSION"
  } | sha256sum | cut -c1-16
)"
BIN="$CACHE_ROOT/k8s-bin/$key"

finish() {
  if [[ $print_dir == 1 ]]; then
    printf '%s\n' "$BIN"
  else
    echo "k8s test binaries ready: $BIN"
    echo "  (kubernetes $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION, helm $HELM_VERSION)"
  fi
  exit 0
}

# Warm path: a complete build exists. No lock needed: STAMP is written before the atomic rename.
# LAST_USED lets a later build prune key dirs nobody has used for a while.
if [[ -f "$BIN/STAMP" ]]; then
  touch "$BIN/LAST_USED" 2>/dev/null || true
  finish
fi

mkdir -p "$CACHE_ROOT/k8s-bin"
# Serialise concurrent callers (parallel shells, pytest-xdist workers, make -j). The wait is bounded by a
# generous cold-build time; a waiter that gets the lock re-checks the STAMP and usually just returns.
exec 9>"$CACHE_ROOT/k8s-bin.lock"
log "waiting for the build lock $CACHE_ROOT/k8s-bin.lock"
flock -w 5400 9 || die "timed out after 90 min waiting for another build holding $CACHE_ROOT/k8s-bin.lock"
[[ -f "$BIN/STAMP" ]] && finish

BUILD_DATE="$(cd "$K8S_MOD" && go list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kubernetes)"
K8S_LDFLAGS="$(k8s_ldflags "${BUILD_DATE:-1970-01-01T00:00:00Z}")"

TMP="$BIN.tmp"
rm -rf "$TMP"          # leftovers of an interrupted build (we hold the lock, so nobody else uses it)
mkdir -p "$TMP"
log "building into $TMP (kubernetes $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION, helm $HELM_VERSION, $GO_VERSION)"
log "a cold build takes ~18-25 min on 2 cores; later runs reuse $BIN"

# The machine is shared (2 cores): every compile runs at the lowest CPU priority.
build_etcd() {
  (cd "$ETCD_MOD" && nice -n 19 go build -trimpath -ldflags='-s -w' -o "$TMP/etcd" go.etcd.io/etcd/server/v3)
}
build_kube() {  # build_kube CMD...: Kubernetes commands from the wrapper module, version-stamped
  local pkgs=()
  for c in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  (cd "$K8S_MOD" && nice -n 19 go build -trimpath -tags="$K8S_TAGS" -ldflags="$K8S_LDFLAGS" -o "$TMP/" "${pkgs[@]}")
}
# kwok and helm declare no replace directives, so the documented `go install pkg@version` works and
# keeps their dependency graphs separate from Kubernetes' (MVS would otherwise unify them).
go_install() {  # go_install PKG@VERSION [extra ldflags]
  (cd "$TMP" && GOBIN="$TMP" nice -n 19 go install -trimpath -ldflags="-s -w${2:+ $2}" "$1")
}

timings=()
step() {  # step NAME CMD...: run one build step, stdout to stderr, and record its wall time
  local name="$1"; shift
  local t0=$SECONDS
  log "-> $name"
  "$@" >&2
  timings+=("$name=$((SECONDS - t0))s")
  log "<- $name done in $((SECONDS - t0)) s"
}
t_start=$SECONDS

# etcd first (small) and kube-apiserver on its own: together they are tier A, usable early.
step etcd build_etcd
step kube-apiserver build_kube kube-apiserver
step kube-controller-manager+kube-scheduler+kubectl build_kube kube-controller-manager kube-scheduler kubectl
step kwok go_install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
step helm go_install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" "$HELM_LDFLAGS"

# kwok's default stage set (what kwokctl and kustomize/stage/fast use), taken from the module cache that
# `go install` just filled, so no upstream YAML has to be committed here.
KWOK_DIR="$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"
{
  echo "# kwok $KWOK_VERSION default stages (node/fast + node/heartbeat-with-lease + pod/fast), generated by scripts/ensure-k8s-bins.sh"
  first=1
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    [[ -f "$KWOK_DIR/$f" ]] || die "kwok stage file missing: $KWOK_DIR/$f"
    [[ $first == 1 ]] || echo "---"
    first=0
    # Drop document separators inside the file; we add our own between files.
    grep -v '^---[[:space:]]*$' "$KWOK_DIR/$f"
  done
} >"$TMP/kwok-stages.yaml"

# Sanity-check every binary before publishing the directory.
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm; do
  [[ -x "$TMP/$b" ]] || die "missing binary $TMP/$b"
done
versions="$(
  "$TMP/etcd" --version | head -1
  "$TMP/kube-apiserver" --version
  "$TMP/kube-controller-manager" --version
  "$TMP/kube-scheduler" --version
  "$TMP/kubectl" version --client | head -1
  "$TMP/kwok" --version
  "$TMP/helm" version --short
)"
grep -q "Kubernetes $K8S_VERSION" <<<"$versions" || die "kube-apiserver does not report $K8S_VERSION: $versions"

{
  echo "key=$key"
  echo "kubernetes=$K8S_VERSION etcd=$ETCD_VERSION kwok=$KWOK_VERSION helm=$HELM_VERSION go=$GO_VERSION"
  echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ) total=$((SECONDS - t_start))s ${timings[*]}"
  echo "$versions"
} >"$TMP/STAMP"

touch "$TMP/LAST_USED"
rm -rf "$BIN"          # an incomplete dir without STAMP (cannot normally happen; mv would nest into it)
mv "$TMP" "$BIN"

# Each key dir holds ~0.45 GB: drop the ones (other versions/toolchains) unused for 14 days.
for old in "$CACHE_ROOT"/k8s-bin/*/; do
  old="${old%/}"
  [[ "$old" == "$BIN" || "$old" == *.tmp || ! -f "$old/STAMP" ]] && continue
  if [[ -z "$(find "$old/STAMP" "$old/LAST_USED" -newermt '-14 days' 2>/dev/null)" ]]; then
    log "pruning cache dir unused for 14 days: $old"
    rm -rf "$old"
  fi
done
log "done in $((SECONDS - t_start)) s: $BIN"
log "timings: ${timings[*]}"
finish
