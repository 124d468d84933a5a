#!/usr/bin/env bash
# The whole system on a local kind cluster: XQueue server + in-chart PostgreSQL + operator (Helm chart),
# a demo CourseGrader whose graders clone the example course baked into the demo grader image, and a
# Job that submits the `make run` solutions the way the LMS does and checks the three grades.
#
# Needs Docker (or podman) and internet access (kind node image, PostgreSQL image, Python base
# images); CI machines have neither, so CI does not run this. Everything else is found or built:
#   kind     from PATH, else `go install sigs.k8s.io/kind@$KIND_VERSION` into ~/.cache/xqueue-k8s/kind-bin
#   helm, kubectl  from PATH, else scripts/ensure-k8s-bins.sh (built from the Go module proxy, cached)
#
# Usage: scripts/kind-demo.sh COMMAND      (or the make targets kind-up, kind-images, ... and kind)
#   up       create the kind cluster "xqueue" (reused when it exists)
#   images   build the four images (make images) and load them into the cluster
#   install  create the demo accounts Secret, then helm upgrade --install the chart (namespace xqueue)
#   demo     apply examples/kind/coursegrader-demo.yaml, wait for it, run examples/kind/demo-job.yaml
#   down     delete the cluster
#   all      up, images, install, demo
#   tools    print the kind, helm, kubectl and container tool this script would use
# Every wait is bounded; every command that changes something is printed before it runs.
# Environment: CONTAINER_TOOL (docker|podman; default: docker if present, else podman),
#              KIND_CLUSTER_NAME (default xqueue).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="${KIND_CLUSTER_NAME:-xqueue}"
CONTEXT="kind-$CLUSTER"
KIND_VERSION="v0.33.0"
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/xqueue-k8s"

NAMESPACE="xqueue"            # the chart's release namespace; the demo Job runs here too
COURSE_NAMESPACE="courses"    # the demo CourseGrader and its grader pods
RELEASE="xqueue"              # release name containing the chart name: the Service is xqueue-server
USERS_SECRET="xqueue-demo-users"
DEMO_JOB="xqueue-demo"
DEMO_COURSEGRADER="demo-course"

# Local image names (pullPolicy Never): built by `make images`, loaded with `kind load`.
# examples/kind/demo-job.yaml names the server image the same way.
IMAGE_REGISTRY="localhost/xqueue-k8s"
IMAGE_TAG="kind"
SERVER_REPO="$IMAGE_REGISTRY/xqueue-server"
OPERATOR_REPO="$IMAGE_REGISTRY/xqueue-operator"
GRADER_REPO="$IMAGE_REGISTRY/xqueue-grader"
GRADER_DEMO_REPO="$IMAGE_REGISTRY/xqueue-grader-demo"
SERVER_IMAGE="$SERVER_REPO:$IMAGE_TAG"

# Bounds of the waits (seconds).
CLUSTER_WAIT=300
HELM_TIMEOUT="10m"
COURSEGRADER_WAIT=300
JOB_WAIT=660                  # the Job's own activeDeadlineSeconds is 600

log() { printf '[kind-demo %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
run() { log "+ $*"; "$@"; }   # print a command, then run it
# bounded SECONDS COMMAND...: the command, killed after SECONDS where `timeout` exists (not on macOS).
bounded() {
  local seconds="$1"
  shift
  if command -v timeout >/dev/null 2>&1; then timeout "$seconds" "$@"; else "$@"; fi
}

# ---------------------------------------------------------------------------------------------- tools

TOOL=""
find_container_tool() {
  [[ -n "$TOOL" ]] && return 0
  TOOL="${CONTAINER_TOOL:-}"
  if [[ -z "$TOOL" ]]; then
    if command -v docker >/dev/null 2>&1; then TOOL=docker
    elif command -v podman >/dev/null 2>&1; then TOOL=podman
    else die "neither docker nor podman is on PATH: kind runs its nodes as containers, so install one of them"
    fi
  fi
  command -v "$TOOL" >/dev/null 2>&1 || die "CONTAINER_TOOL=$TOOL is not on PATH"
  if ! bounded 60 "$TOOL" info >/dev/null 2>&1; then
    die "'$TOOL info' failed: is the $TOOL daemon/service running and may this user use it?"
  fi
  if [[ "$TOOL" == podman ]]; then
    export KIND_EXPERIMENTAL_PROVIDER=podman
  fi
}

KIND=""
find_kind() {
  [[ -n "$KIND" ]] && return 0
  if command -v kind >/dev/null 2>&1; then
    KIND="$(command -v kind)"
    return 0
  fi
  local dir="$CACHE_DIR/kind-bin/$KIND_VERSION"
  if [[ -x "$dir/kind" ]]; then
    KIND="$dir/kind"
    return 0
  fi
  command -v go >/dev/null 2>&1 ||
    die "kind is not on PATH and there is no Go to build it: install kind $KIND_VERSION (https://kind.sigs.k8s.io/docs/user/quick-start/#installation) or Go"
  log "kind is not on PATH: building sigs.k8s.io/kind@$KIND_VERSION from the Go module proxy into $dir"
  mkdir -p "$dir"
  local staging
  staging="$(mktemp -d "$dir/.build.XXXXXX")"
  if ! run env GOBIN="$staging" CGO_ENABLED=0 GOFLAGS=-modcacherw go install "sigs.k8s.io/kind@$KIND_VERSION"; then
    rm -rf "$staging"
    die "could not build kind with Go; install kind $KIND_VERSION yourself and put it on PATH"
  fi
  mv -f "$staging/kind" "$dir/kind"
  rm -rf "$staging"
  KIND="$dir/kind"
}

HELM=""
KUBECTL=""
find_k8s_tools() {
  [[ -n "$KUBECTL" && -n "$HELM" ]] && return 0
  HELM="$(command -v helm 2>/dev/null || true)"
  KUBECTL="$(command -v kubectl 2>/dev/null || true)"
  if [[ -z "$HELM" || -z "$KUBECTL" ]]; then
    log "helm or kubectl is not on PATH: taking them from scripts/ensure-k8s-bins.sh (builds them from the Go module proxy once, cached; the first build takes a while)"
    local bin_dir
    bin_dir="$(bash "$ROOT/scripts/ensure-k8s-bins.sh" --print-dir)" || die "scripts/ensure-k8s-bins.sh failed"
    [[ -n "$HELM" ]] || HELM="$bin_dir/helm"
    [[ -n "$KUBECTL" ]] || KUBECTL="$bin_dir/kubectl"
  fi
  [[ -x "$HELM" ]] || die "no helm at $HELM"
  [[ -x "$KUBECTL" ]] || die "no kubectl at $KUBECTL"
}

# kubectl against the kind cluster only (never the user's current context); each request bounded.
k() { "$KUBECTL" --context "$CONTEXT" --request-timeout=60s "$@"; }
# Same, printed first (for commands that change something).
krun() { log "+ kubectl --context $CONTEXT $*"; k "$@"; }

cluster_exists() {
  local clusters
  clusters="$(bounded 60 "$KIND" get clusters 2>/dev/null)" || return 1
  grep -qx "$CLUSTER" <<<"$clusters"
}

require_cluster() {
  find_container_tool
  find_kind
  cluster_exists || die "there is no kind cluster '$CLUSTER': run 'make kind-up' (or scripts/kind-demo.sh up) first"
}

ensure_namespace() {  # ensure_namespace NAME [LABEL=VALUE...]
  local ns="$1"
  shift
  if ! k get namespace "$ns" >/dev/null 2>&1; then
    krun create namespace "$ns"
  fi
  if [[ $# -gt 0 ]]; then
    krun label namespace "$ns" --overwrite "$@"
  fi
}

# ------------------------------------------------------------------------------------------- commands

cmd_up() {
  find_container_tool
  find_kind
  if cluster_exists; then
    log "kind cluster '$CLUSTER' exists; reusing it"
  else
    run "$KIND" create cluster --name "$CLUSTER" --wait "${CLUSTER_WAIT}s"
  fi
  find_k8s_tools
  log "waiting (at most ${CLUSTER_WAIT}s) for the node to be Ready"
  run "$KUBECTL" --context "$CONTEXT" wait --for=condition=Ready node --all --timeout="${CLUSTER_WAIT}s"
}

cmd_images() {
  require_cluster
  run make -C "$ROOT" images CONTAINER_TOOL="$TOOL" IMAGE_REGISTRY="$IMAGE_REGISTRY" IMAGE_TAG="$IMAGE_TAG"
  local repo image archive_dir
  archive_dir="$(mktemp -d)"
  # shellcheck disable=SC2064  # expand now: the directory is local to this function
  trap "rm -rf '$archive_dir'" EXIT
  for repo in "$SERVER_REPO" "$OPERATOR_REPO" "$GRADER_REPO" "$GRADER_DEMO_REPO"; do
    image="$repo:$IMAGE_TAG"
    if [[ "$TOOL" == docker ]]; then
      run "$KIND" load docker-image --name "$CLUSTER" "$image"
    else
      # kind's podman provider does not find podman's images by name reliably: go through an archive.
      run podman save -o "$archive_dir/image.tar" "$image"
      run "$KIND" load image-archive --name "$CLUSTER" "$archive_dir/image.tar"
      rm -f "$archive_dir/image.tar"
    fi
  done
  rm -rf "$archive_dir"
  trap - EXIT
}

ensure_users_secret() {
  if k -n "$NAMESPACE" get secret "$USERS_SECRET" >/dev/null 2>&1; then
    log "Secret $NAMESPACE/$USERS_SECRET exists; keeping its LMS password (the server imports it at start-up)"
    return 0
  fi
  local dir password
  dir="$(mktemp -d)"
  password="$(LC_ALL=C od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
  [[ ${#password} -eq 48 ]] || die "could not make a random password"
  printf 'lms: "%s"\n' "$password" >"$dir/users.yaml"
  printf '%s' "$password" >"$dir/lms-password"
  # users.yaml for the server (server.usersSecret), lms-password for the demo Job (--password-file).
  krun -n "$NAMESPACE" create secret generic "$USERS_SECRET" \
    --from-file=users.yaml="$dir/users.yaml" --from-file=lms-password="$dir/lms-password"
  rm -rf "$dir"
}

cmd_install() {
  require_cluster
  find_k8s_tools
  ensure_namespace "$NAMESPACE" pod-security.kubernetes.io/warn=restricted
  ensure_users_secret
  log "installing the chart; helm waits (at most $HELM_TIMEOUT) until everything is ready"
  run "$HELM" upgrade --install "$RELEASE" "$ROOT/charts/xqueue" \
    --kube-context "$CONTEXT" -n "$NAMESPACE" --create-namespace \
    --set postgresql.enabled=true \
    --set server.image.repository="$SERVER_REPO" --set server.image.tag="$IMAGE_TAG" \
    --set server.image.pullPolicy=Never \
    --set operator.image.repository="$OPERATOR_REPO" --set operator.image.tag="$IMAGE_TAG" \
    --set operator.image.pullPolicy=Never \
    --set grader.image.repository="$GRADER_DEMO_REPO" --set grader.image.tag="$IMAGE_TAG" \
    --set server.usersSecret="$USERS_SECRET" \
    --wait --timeout "$HELM_TIMEOUT"
  run "$KUBECTL" --context "$CONTEXT" -n "$NAMESPACE" get pods,services
}

show_coursegrader_state() {
  k -n "$COURSE_NAMESPACE" get coursegrader "$DEMO_COURSEGRADER" -o wide || true
  k -n "$COURSE_NAMESPACE" describe coursegrader "$DEMO_COURSEGRADER" || true
  k -n "$COURSE_NAMESPACE" get pods -o wide || true
  k -n "$NAMESPACE" logs deployment/"$RELEASE"-operator --tail=50 || true
}

job_pod_waiting_reason() {
  k -n "$NAMESPACE" get pods -l job-name="$DEMO_JOB" \
    -o jsonpath='{range .items[*]}{.status.containerStatuses[*].state.waiting.reason}{" "}{end}' 2>/dev/null || true
}

cmd_demo() {
  require_cluster
  find_k8s_tools
  # Grader pods are Pod Security "restricted": enforce it where they run.
  ensure_namespace "$COURSE_NAMESPACE" pod-security.kubernetes.io/enforce=restricted
  krun apply -f "$ROOT/examples/kind/coursegrader-demo.yaml"
  log "waiting (at most ${COURSEGRADER_WAIT}s) for CourseGrader $COURSE_NAMESPACE/$DEMO_COURSEGRADER to be Ready" \
    "(the operator provisions the queue and a grader account; the graders clone the demo course)"
  if ! run "$KUBECTL" --context "$CONTEXT" -n "$COURSE_NAMESPACE" wait --for=condition=Ready \
      coursegrader/"$DEMO_COURSEGRADER" --timeout="${COURSEGRADER_WAIT}s"; then
    show_coursegrader_state
    die "the CourseGrader did not become Ready in ${COURSEGRADER_WAIT}s (state above)"
  fi
  k -n "$COURSE_NAMESPACE" get coursegrader "$DEMO_COURSEGRADER"

  krun -n "$NAMESPACE" delete job "$DEMO_JOB" --ignore-not-found --cascade=foreground --wait=true --timeout=60s
  log "+ kubectl --context $CONTEXT apply -f examples/kind/demo-job.yaml (image $SERVER_IMAGE)"
  sed "s|image: localhost/xqueue-k8s/xqueue-server:kind|image: $SERVER_IMAGE|" "$ROOT/examples/kind/demo-job.yaml" |
    k apply -f -
  log "waiting (at most ${JOB_WAIT}s) for Job $NAMESPACE/$DEMO_JOB to finish"
  local deadline=$((SECONDS + JOB_WAIT)) state="" reason
  while ((SECONDS < deadline)); do
    state="$(k -n "$NAMESPACE" get job "$DEMO_JOB" -o jsonpath='{.status.succeeded}/{.status.failed}' 2>/dev/null || true)"
    case "$state" in
      1/*) break ;;
      */[1-9]*) break ;;
    esac
    reason="$(job_pod_waiting_reason)"
    case "$reason" in
      *ErrImageNeverPull* | *ImagePullBackOff* | *ErrImagePull* | *InvalidImageName* | *CreateContainerConfigError*)
        k -n "$NAMESPACE" describe pods -l job-name="$DEMO_JOB" || true
        die "the demo Job's pod cannot start ($reason); did 'make kind-images' run?"
        ;;
    esac
    sleep 3
  done
  log "logs of Job $NAMESPACE/$DEMO_JOB:"
  k -n "$NAMESPACE" logs job/"$DEMO_JOB" --tail=-1 || true
  case "$state" in
    1/*) log "the demo Job succeeded: the cluster graded the three solutions as expected" ;;
    */[1-9]*)
      show_coursegrader_state
      die "the demo Job failed (logs and grader state above)"
      ;;
    *) die "the demo Job did not finish in ${JOB_WAIT}s" ;;
  esac
}

cmd_down() {
  find_container_tool
  find_kind
  if cluster_exists; then
    run "$KIND" delete cluster --name "$CLUSTER"
  else
    log "there is no kind cluster '$CLUSTER'; nothing to delete"
  fi
}

cmd_tools() {
  find_container_tool
  find_kind
  find_k8s_tools
  printf 'container tool: %s\nkind:           %s\nhelm:           %s\nkubectl:        %s\ncontext:        %s\n' \
    "$(command -v "$TOOL")" "$KIND" "$HELM" "$KUBECTL" "$CONTEXT"
}

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }

case "${1:-}" in
  up) cmd_up ;;
  images) cmd_images ;;
  install) cmd_install ;;
  demo) cmd_demo ;;
  down) cmd_down ;;
  all)  # one after the other, not with &&: errexit is off inside the left side of an && list
    cmd_up
    cmd_images
    cmd_install
    cmd_demo
    ;;
  tools) cmd_tools ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
