#!/usr/bin/env bash
# Build (or reuse from the cache) the binaries of the real test node (test tier C):
#   kubelet, kube-proxy (Kubernetes, same version/tags/ldflags as the control plane), crictl, coredns,
#   and kube-router (its NetworkPolicy controller enforces policies next to the node: iptables + ipset,
#   which these kernels have; tests/node/test_network_policy.py).
# containerd, runc and the CNI plugins come from Debian (scripts/ensure-system-deps.sh), not from here.
# Not built: sigs.k8s.io/kube-network-policies (v0.8.0 builds with CGO_ENABLED=0 in ~5 min, but cannot
# run on these machines: their kernel lacks CONFIG_NFT_QUEUE, and its nftables rules need the `queue`
# statement; see docs/k8s-test-infra.md).
#
# Everything comes from the Go module proxy; nothing built is written inside the repo.
# Binaries land in  ${XDG_CACHE_HOME:-$HOME/.cache}/xqueue-k8s/node-bin/<key>/  where <key> hashes every
# input that changes the output (tools/k8s-node/go.{mod,sum}, the go-install versions, ldflags/tags,
# `go version`, the layout version below). A STAMP file written last marks a complete build, so a warm
# run costs one `go env`, one hash and one stat (no network, no compiler).
#
# kubelet/kube-proxy come from their own wrapper module (tools/k8s-node) with the same staging
# `replace` lines as tools/k8s: keeping them out of tools/k8s leaves the control-plane cache key (and
# the binaries every other tier uses) untouched, while the shared Go build cache still reuses every
# package the two builds have in common.
#
# Usage:
#   scripts/ensure-node-bins.sh              build if needed, then print a one-line summary
#   scripts/ensure-node-bins.sh --print-dir  build if needed, then print ONLY the bin dir on stdout
# Build progress always goes to stderr so `--print-dir` can be used in $(...).
set -euo pipefail

print_dir=0
case "${1:-}" in
  --print-dir) print_dir=1 ;;
  "") ;;
  -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--print-dir]" >&2; exit 2 ;;
esac

log() { printf '[ensure-node-bins %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NODE_MOD="$ROOT/tools/k8s-node"

# Versions not pinned by a go.mod of ours (`go install pkg@version`; none has replace directives).
CRICTL_VERSION="v1.34.0"       # cri-tools: v1.35.0 is not served; v1.34 speaks CRI v1 to containerd 1.6
COREDNS_VERSION="v1.12.4"      # has the kubernetes plugin; measured in the tier-C spike
KUBE_ROUTER_VERSION="v2.1.0"   # github.com/cloudnativelabs/kube-router/v2, newest served; no replace lines
# Bump when the layout/contents of the bin dir change without any other input changing.
LAYOUT_VERSION="1"

command -v go >/dev/null 2>&1 || die "go is not on PATH (Go >= 1.26 is required; Debian's golang-go is too old)"
export GOTOOLCHAIN=local
export CGO_ENABLED=0
export GOFLAGS="-buildvcs=false -modcacherw"

GO_VERSION="$(go env GOVERSION)"
case "$GO_VERSION" in
  go1.2[6-9]*|go1.[3-9][0-9]*) ;;
  *) die "need Go >= 1.26 (Kubernetes 1.36 declares go 1.26.0), found $GO_VERSION" ;;
esac

modversion() { awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$1/go.mod"; }
K8S_VERSION="$(modversion "$NODE_MOD" k8s.io/kubernetes)"
[[ "$K8S_VERSION" =~ ^v1\.([0-9]+)\.[0-9]+$ ]] || die "unexpected k8s.io/kubernetes version '$K8S_VERSION' in tools/k8s-node/go.mod"
K8S_MINOR="${BASH_REMATCH[1]}"
# The node must match the control plane (tools/k8s): a skewed kubelet is a different test.
CP_VERSION="$(modversion "$ROOT/tools/k8s" k8s.io/kubernetes)"
[[ "$CP_VERSION" == "$K8S_VERSION" ]] || die "tools/k8s-node pins $K8S_VERSION but tools/k8s pins $CP_VERSION; bump both"

# Same stamp and tags as scripts/ensure-k8s-bins.sh (see there for why).
k8s_ldflags() {  # k8s_ldflags BUILD_DATE
  local pkg flags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$K8S_MINOR"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit=unknown -X $pkg.buildDate=$1"
  done
  printf '%s' "$flags"
}
K8S_TAGS="selinux,notest,grpcnotrace"
# cri-tools stamps its version in its Makefile (without the leading v).
CRICTL_LDFLAGS="-X sigs.k8s.io/cri-tools/pkg/version.Version=${CRICTL_VERSION#v}"

CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/xqueue-k8s"
key="$(
  {
    for f in "$NODE_MOD/go.mod" "$NODE_MOD/go.sum"; do
      printf '%s\n' "${f#"$ROOT"/}"; cat "$f"
    done
    printf 'crictl=%s\ncoredns=%s\nkube-router=%s\nldflags=%s\ncrictl_ldflags=%s\ntags=%s\ngo=%s\nlayout=%s\n' \
      "$CRICTL_VERSION" "$COREDNS_VERSION" "$KUBE_ROUTER_VERSION" "$(k8s_ldflags BUILD_DATE)" "$CRICTL_LDFLAGS" \
      "$K8S_TAGS" "$GO_VERSION" "$LAYOUT_VERSION"
  } | sha256sum | cut -c1-16
)"
BIN="$CACHE_ROOT/node-bin/$key"

finish() {
  if [[ $print_dir == 1 ]]; then
    printf '%s\n' "$BIN"
  else
    echo "k8s node binaries ready: $BIN"
    echo "  (kubelet/kube-proxy $K8S_VERSION, crictl $CRICTL_VERSION, coredns $COREDNS_VERSION)"
  fi
  exit 0
}

if [[ -f "$BIN/STAMP" ]]; then
  touch "$BIN/LAST_USED" 2>/dev/null || true
  finish
fi

mkdir -p "$CACHE_ROOT/node-bin"
exec 9>"$CACHE_ROOT/node-bin.lock"
log "waiting for the build lock $CACHE_ROOT/node-bin.lock"
flock -w 5400 9 || die "timed out after 90 min waiting for another build holding $CACHE_ROOT/node-bin.lock"
[[ -f "$BIN/STAMP" ]] && finish

BUILD_DATE="$(cd "$NODE_MOD" && go list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kubernetes)"
K8S_LDFLAGS="$(k8s_ldflags "${BUILD_DATE:-1970-01-01T00:00:00Z}")"

TMP="$BIN.tmp"
rm -rf "$TMP"
mkdir -p "$TMP"
log "building into $TMP (kubelet/kube-proxy $K8S_VERSION, crictl $CRICTL_VERSION, coredns $COREDNS_VERSION, $GO_VERSION)"
log "with the control plane's Go build cache warm this takes ~5-10 min on 2 cores; later runs reuse $BIN"

build_kube() {  # build_kube CMD...
  local pkgs=()
  for c in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  (cd "$NODE_MOD" && nice -n 19 go build -trimpath -tags="$K8S_TAGS" -ldflags="$K8S_LDFLAGS" -o "$TMP/" "${pkgs[@]}")
}
go_install() {  # go_install PKG@VERSION [extra ldflags]
  (cd "$TMP" && GOBIN="$TMP" nice -n 19 go install -trimpath -ldflags="-s -w${2:+ $2}" "$1")
}

timings=()
step() {  # step NAME CMD...
  local name="$1"; shift
  local t0=$SECONDS
  log "-> $name"
  "$@" >&2
  timings+=("$name=$((SECONDS - t0))s")
  log "<- $name done in $((SECONDS - t0)) s"
}
t_start=$SECONDS

step crictl go_install "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION" "$CRICTL_LDFLAGS"
step coredns go_install "github.com/coredns/coredns@$COREDNS_VERSION"
step kube-router go_install "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION"
# Last: by then the control plane's build (usually run just before) has filled the Go build cache with
# the packages kubelet shares with kube-apiserver.
step kubelet+kube-proxy build_kube kubelet kube-proxy

for b in kubelet kube-proxy crictl coredns kube-router; do
  [[ -x "$TMP/$b" ]] || die "missing binary $TMP/$b"
done
versions="$(
  "$TMP/kubelet" --version
  "$TMP/kube-proxy" --version
  "$TMP/crictl" --version
  # sed, not head: head would exit early and SIGPIPE + pipefail would abort the script.
  "$TMP/coredns" -version | sed -n 1p
)"
grep -q "Kubernetes $K8S_VERSION" <<<"$versions" || die "kubelet does not report $K8S_VERSION: $versions"

{
  echo "key=$key"
  echo "kubernetes=$K8S_VERSION crictl=$CRICTL_VERSION coredns=$COREDNS_VERSION go=$GO_VERSION"
  echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ) total=$((SECONDS - t_start))s ${timings[*]}"
  echo "$versions"
} >"$TMP/STAMP"

touch "$TMP/LAST_USED"
rm -rf "$BIN"
mv "$TMP" "$BIN"

for old in "$CACHE_ROOT"/node-bin/*/; do
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
