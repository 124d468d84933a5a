#!/usr/bin/env bash
# Build the project's container images (`make images`).
#
#   scripts/build-images.sh              build what is missing, then print a summary
#   scripts/build-images.sh --manifest   build what is missing, then print ONLY this JSON object on stdout:
#       {"xqueue-server": {"ref": "localhost/xqueue-k8s/xqueue-server:<tag>", "archive": "/abs/path.tar"},
#        "xqueue-operator": {...}, "xqueue-grader": {...}, "xqueue-grader-demo": {...},
#        "postgresql": {...}, "pause": {...}}
#     <tag> is the image's input key (a short hash), so changed inputs give a new ref; each archive is a
#     docker-archive (`ctr -n k8s.io images import FILE`) holding that ref. Progress goes to stderr.
#
# Tools: CONTAINER_TOOL if set, else docker or podman if its `info` works, else buildah. With docker or
# podman the four project images are built as `$IMAGE_REGISTRY/NAME:$IMAGE_TAG` (default
# ghcr.io/xqueue-k8s/NAME:dev; the kind demo uses those). --manifest always uses buildah (root, no
# daemon); it builds six images
#   xqueue-server, xqueue-operator, xqueue-grader, xqueue-grader-demo  the project's Dockerfiles
#   postgresql  images/postgresql (Debian's PostgreSQL with an entrypoint like the official image's)
#   pause       images/pause, containerd's sandbox image (tools/pause, static Go)
# on one base: the Dockerfiles' python:3.11.13-slim-bookworm when a registry serves it, else a local
# base made from Debian packages with mmdebstrap (Debian bookworm's Python is 3.11 too).
# XQ_IMAGE_BASE=auto|registry|debian picks the base (auto: the registry image if it is in local
# storage, else the Debian base if built before, else try pulling, else build the Debian base).
#
# Cache (outside the repo): ${XDG_CACHE_HOME:-$HOME/.cache}/xqueue-k8s/images/
#   base-<key>.tar          the Debian base's root file system; key: mmdebstrap's arguments + mirror list
#   <image>-<tag>.tar       each image as a docker-archive; tag: hash of its Dockerfile, the files its
#                           COPY lines name (xqueue_common/ for the three Python images), .dockerignore,
#                           target, build args and base
#   logs/<image>-<tag>.log  the build's output
# An image whose archive exists is not built again (a warm run takes about a second); a changed input
# rebuilds with `buildah bud --layers`, so only the layers from the first changed step on run again
# (a change in xqueue_server/ re-copies the package, pip does not run). Other archives of an image
# unused for XQ_IMAGE_KEEP_MINUTES (default 60) are removed, with their images: only the current
# one is kept for good (each is 2-400 MB). One build at a time (flock).
# XQ_IMAGES_VERBOSE=1 streams the builds' output to stderr.
set -euo pipefail
shopt -s inherit_errexit

# The whole script is one brace group, read completely before it runs: editing or checking out this
# file while a build runs cannot change what the running build does.
{
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/xqueue-k8s/images"
LOCAL_REPO="localhost/xqueue-k8s"
# Bump when the way images are built changes without any hashed input changing.
LAYOUT_VERSION="1"
KEEP_MINUTES="${XQ_IMAGE_KEEP_MINUTES:-60}"
VERBOSE="${XQ_IMAGES_VERBOSE:-0}"

log() { printf '[build-images %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

manifest=0
case "${1:-}" in
  --manifest) manifest=1 ;;
  "") ;;
  -h | --help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac

# ------------------------------------------------------------------------------ docker / podman path

# The four project images, as `make images` always built them (the kind demo loads these).
build_with_daemon_tool() {
  local tool="$1" registry="${IMAGE_REGISTRY:-ghcr.io/xqueue-k8s}" tag="${IMAGE_TAG:-dev}"
  command -v "$tool" >/dev/null 2>&1 || die "CONTAINER_TOOL=$tool is not on PATH"
  cd "$ROOT"
  set -x
  "$tool" build -f images/server/Dockerfile -t "$registry/xqueue-server:$tag" .
  "$tool" build -f images/operator/Dockerfile -t "$registry/xqueue-operator:$tag" .
  "$tool" build -f grader_image/Dockerfile --target grader -t "$registry/xqueue-grader:$tag" .
  "$tool" build -f grader_image/Dockerfile --target demo -t "$registry/xqueue-grader-demo:$tag" .
}

if ((!manifest)); then
  tool="${CONTAINER_TOOL:-}"
  if [[ -z "$tool" ]]; then
    # A docker CLI without a reachable daemon does not count.
    for candidate in docker podman; do
      if command -v "$candidate" >/dev/null 2>&1 && timeout 30 "$candidate" info >/dev/null 2>&1; then
        tool="$candidate"
        break
      fi
    done
    if [[ -z "$tool" ]]; then
      command -v buildah >/dev/null 2>&1 ||
        die "no usable docker or podman and no buildah: install one (as root, make system-deps installs buildah)"
      tool=buildah
    fi
  fi
  if [[ "$tool" != buildah ]]; then
    build_with_daemon_tool "$tool"
    exit 0
  fi
fi

# ------------------------------------------------------------------------------------- buildah path

command -v buildah >/dev/null 2>&1 || die "buildah is not on PATH (make system-deps installs it on Debian)"
[[ "$(id -u)" == 0 ]] || die "the buildah build runs as root (chroot isolation, mmdebstrap); run it with sudo"

mkdir -p "$CACHE/logs" "$CACHE/tmp"
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
  log "waiting for another build holding $CACHE/.lock"
  flock -w 3600 9 || die "timed out after 60 min waiting for $CACHE/.lock"
fi

sha() { sha256sum | cut -c1-64; }
short() { cut -c1-12; }
image_present() { buildah inspect --type image "$1" >/dev/null 2>&1; }

# The registry base: the Dockerfiles' default PYTHON_IMAGE, fully qualified (buildah resolves no
# short names without a registries.conf search list).
registry_base="$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$ROOT/images/server/Dockerfile" | head -n1)"
[[ -n "$registry_base" ]] || die "no 'ARG PYTHON_IMAGE=' default in images/server/Dockerfile"
case "$registry_base" in
  */*/*) ;;
  */*) registry_base="docker.io/$registry_base" ;;
  *) registry_base="docker.io/library/$registry_base" ;;
esac

# The Debian base. The mirror list is the host's when the host runs the same release (same mirror,
# proxy-friendly), else mmdebstrap's default (deb.debian.org with updates and security).
DEBIAN_SUITE="bookworm"
DEBIAN_MIRRORS=()
if grep -qs "^VERSION_CODENAME=$DEBIAN_SUITE\$" /etc/os-release; then
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    # Only Debian's own archives: third-party repositories of the host stay out of the images.
    [[ -s "$f" ]] && grep -qE '^[^#]*(deb\.debian\.org|/debian(-security)?([/ ]|$))' "$f" && DEBIAN_MIRRORS+=("$f")
  done
fi
MMDEBSTRAP_ARGS=(
  --variant=minbase
  --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates,passwd
  # merged /usr like the official images, without the usrmerge package (and the perl it needs)
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  # no documentation, like Debian's "slim" images (copyright files stay)
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  # apt in later build steps (the grader's git, PostgreSQL) keeps no .deb files and no binary caches
  # in the image, like the official Debian images' docker-clean (a file written at the end: mmdebstrap
  # itself needs the downloaded packages; its clean-up no longer finds the caches this file disables)
  --customize-hook='printf "%s\n" "APT::Keep-Downloaded-Packages \"false\";" "Binary::apt::APT::Keep-Downloaded-Packages \"false\";" "Dir::Cache::pkgcache \"\";" "Dir::Cache::srcpkgcache \"\";" >"$1/etc/apt/apt.conf.d/docker-clean" \
    && rm -f "$1"/var/cache/apt/*.bin'
  # /dev comes from the runtime
  --skip=output/dev
)
BASE_CONFIG=(--env LANG=C.UTF-8 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  --cmd '["python3"]')
debian_base_key="$({
  printf 'layout %s\nsuite %s\nargs %s\nconfig %s\n' "$LAYOUT_VERSION" "$DEBIAN_SUITE" "${MMDEBSTRAP_ARGS[*]}" "${BASE_CONFIG[*]}"
  for f in "${DEBIAN_MIRRORS[@]}"; do printf 'mirror %s\n' "$f"; cat "$f"; done
} | sha | short)"
debian_base_ref="$LOCAL_REPO/python-base:$debian_base_key"
debian_base_tar="$CACHE/base-$debian_base_key.tar"

build_debian_base() {
  if image_present "$debian_base_ref"; then
    return 0
  fi
  command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap is not on PATH (make system-deps installs it on Debian)"
  local start=$SECONDS
  if [[ ! -s "$debian_base_tar" ]]; then
    log "building the Debian $DEBIAN_SUITE base with mmdebstrap (about 1-2 min; mirrors: ${DEBIAN_MIRRORS[*]:-mmdebstrap default})"
    local tmp="$CACHE/tmp/base-$debian_base_key.tar"
    rm -f "$tmp"
    if ! mmdebstrap "${MMDEBSTRAP_ARGS[@]}" "$DEBIAN_SUITE" "$tmp" "${DEBIAN_MIRRORS[@]}" \
        >"$CACHE/logs/base-$debian_base_key.log" 2>&1; then
      tail -n 30 "$CACHE/logs/base-$debian_base_key.log" >&2
      rm -f "$tmp"
      die "mmdebstrap failed (log: $CACHE/logs/base-$debian_base_key.log)"
    fi
    mv -f "$tmp" "$debian_base_tar"
  fi
  log "importing the Debian base as $debian_base_ref"
  local ctr
  ctr="$(buildah from scratch)"
  buildah add --quiet "$ctr" "$debian_base_tar" / >/dev/null
  buildah config "${BASE_CONFIG[@]}" "$ctr"
  buildah commit --quiet --rm "$ctr" "$debian_base_ref" >/dev/null
  log "Debian base ready in $((SECONDS - start)) s"
}

base_mode="${XQ_IMAGE_BASE:-auto}"
case "$base_mode" in
  registry | debian) ;;
  auto)
    if image_present "$registry_base"; then
      base_mode=registry
    elif image_present "$debian_base_ref" || [[ -s "$debian_base_tar" ]]; then
      base_mode=debian
    else
      log "trying to pull $registry_base (at most 120 s)"
      if timeout 120 buildah pull --quiet "$registry_base" >/dev/null 2>"$CACHE/logs/pull.log"; then
        base_mode=registry
      else
        log "cannot pull $registry_base ($(tail -n1 "$CACHE/logs/pull.log")); using a Debian base instead"
        base_mode=debian
      fi
    fi
    ;;
  *) die "XQ_IMAGE_BASE must be auto, registry or debian, not '$base_mode'" ;;
esac
if [[ "$base_mode" == registry ]]; then
  image_present "$registry_base" || timeout 600 buildah pull --quiet "$registry_base" >/dev/null ||
    die "cannot pull $registry_base (XQ_IMAGE_BASE=registry)"
  base_ref="$registry_base"
  base_id="$(buildah inspect --type image --format '{{.FromImageID}}' "$base_ref")"
else
  build_debian_base
  base_ref="$debian_base_ref"
  # The base's own key, not its image ID: a re-import of the same root file system is the same base.
  base_id="debian:$debian_base_key"
fi

# buildah bud's options for every build. pip and apt inside the build reach their registries the way
# the host does: the host's CA bundle (proxies that intercept TLS) and pip configuration, read-only.
# --pull=never: the base is in local storage by now; nothing else is pulled (no registry needed).
BUD=(buildah bud --layers --pull=never --isolation chroot --network host)
for f in /etc/ssl/certs/ca-certificates.crt /etc/pip.conf; do
  [[ -f "$f" ]] && BUD+=(-v "$f:$f:ro")
done

# --------------------------------------------------------------------------------------- input keys

# Source paths of a Dockerfile's COPY/ADD lines from the build context (not those --from a stage).
copy_sources() {
  awk 'toupper($1) == "COPY" || toupper($1) == "ADD" {
         n = 0; staged = 0
         for (i = 2; i <= NF; i++) {
           if ($i ~ /^--from=/) staged = 1
           else if ($i !~ /^--/) words[++n] = $i
         }
         if (!staged) for (i = 1; i < n; i++) print words[i]
       }' "$1"
}

# Content, mode and name of every file under the given paths (relative to the current directory),
# skipping what .dockerignore keeps out of the context anyway (byte code).
tree_digest() {
  local p
  for p in "$@"; do
    [[ -e "$p" ]] || die "$(pwd)/$p does not exist (named by a COPY line)"
  done
  find "$@" \( -name __pycache__ -o -name '*.pyc' \) -prune -o \( -type f -o -type l \) -printf '%m %p %l\n' |
    LC_ALL=C sort
  find "$@" \( -name __pycache__ -o -name '*.pyc' \) -prune -o -type f -print0 | LC_ALL=C sort -z |
    xargs -0 -r sha256sum
}

# image_key NAME DOCKERFILE TARGET CONTEXT BUILD_ARG...
image_key() {
  local name="$1" dockerfile="$2" target="$3" context="$4"
  shift 4
  {
    printf 'layout %s\nimage %s\ntarget %s\nbase %s\nargs %s\n' "$LAYOUT_VERSION" "$name" "$target" "$base_id" "$*"
    sha256sum <"$dockerfile"
    if [[ "$context" == "$PAUSE_CONTEXT" ]]; then
      pause_inputs   # the context does not exist yet: it is built from these
    else
      (
        cd "$context"
        [[ -f .dockerignore ]] && sha256sum .dockerignore
        mapfile -t sources < <(copy_sources "$dockerfile")
        ((${#sources[@]} == 0)) || tree_digest "${sources[@]}"
      )
    fi
  } | sha | short
}

# --------------------------------------------------------------------------------------------- build

NAMES=()
declare -A REF=() ARCHIVE=() STATUS=()

# build_image NAME DOCKERFILE TARGET CONTEXT BUILD_ARG...
build_image() {
  local name="$1" dockerfile="$2" target="$3" context="$4"
  shift 4
  local tag ref archive logfile start=$SECONDS
  tag="$(image_key "$name" "$dockerfile" "$target" "$context" "$@")"
  ref="$LOCAL_REPO/$name:$tag"
  archive="$CACHE/$name-$tag.tar"
  NAMES+=("$name")
  REF[$name]="$ref"
  ARCHIVE[$name]="$archive"
  if [[ -s "$archive" ]]; then
    touch "$archive"   # in use: keeps it from being pruned
    if ! image_present "$ref"; then
      log "$name: restoring $ref from its archive"
      buildah pull --quiet "docker-archive:$archive" >/dev/null
    fi
    STATUS[$name]="cached"
    return 0
  fi
  if [[ "$context" == "$PAUSE_CONTEXT" ]]; then
    build_pause_binary "$context"
  fi
  logfile="$CACHE/logs/$name-$tag.log"
  local cmd=("${BUD[@]}" -f "$dockerfile" -t "$ref")
  [[ -n "$target" ]] && cmd+=(--target "$target")
  local arg
  for arg in "$@"; do cmd+=(--build-arg "$arg"); done
  cmd+=("$context")
  log "$name: building $ref (log: $logfile)"
  local rc=0
  if [[ "$VERBOSE" == 1 ]]; then
    "${cmd[@]}" 2>&1 | tee "$logfile" >&2 || rc=$?
  else
    "${cmd[@]}" >"$logfile" 2>&1 || rc=$?
  fi
  if ((rc != 0)); then
    [[ "$VERBOSE" == 1 ]] || tail -n 40 "$logfile" >&2
    die "$name: buildah bud failed (log: $logfile)"
  fi
  local tmp="$CACHE/tmp/$name-$tag.tar"
  rm -f "$tmp"
  buildah push --quiet "$ref" "docker-archive:$tmp:$ref" >/dev/null 2>>"$logfile" ||
    die "$name: buildah push to a docker-archive failed (log: $logfile)"
  mv -f "$tmp" "$archive"
  STATUS[$name]="built in $((SECONDS - start)) s"
  log "$name: ${STATUS[$name]}"
}

# The pause image's build context: only the static binary (tools/pause, standard library only).
PAUSE_CONTEXT="$CACHE/tmp/pause-context"
build_pause_binary() {
  command -v go >/dev/null 2>&1 || die "go is not on PATH: the pause image's program (tools/pause) is Go"
  rm -rf "$1"
  mkdir -p "$1"
  (cd "$ROOT/tools/pause" &&
    GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-buildvcs=false -modcacherw" \
      nice -n 19 go build -trimpath -ldflags="-s -w" -o "$1/pause" .) ||
    die "go build of tools/pause failed"
}
# The pause image's key: the program's sources, the Go version and the build flags (its context is
# only the binary built from them).
pause_inputs() {
  (cd "$ROOT/tools/pause" && tree_digest go.mod main.go)
  printf 'go %s\nflags CGO_ENABLED=0 -trimpath -ldflags=-s -w\n' "$(go env GOVERSION 2>/dev/null || echo none)"
}

cd "$ROOT"
build_image xqueue-server "$ROOT/images/server/Dockerfile" "" "$ROOT" "PYTHON_IMAGE=$base_ref"
build_image xqueue-operator "$ROOT/images/operator/Dockerfile" "" "$ROOT" "PYTHON_IMAGE=$base_ref"
build_image xqueue-grader "$ROOT/grader_image/Dockerfile" grader "$ROOT" "PYTHON_IMAGE=$base_ref"
build_image xqueue-grader-demo "$ROOT/grader_image/Dockerfile" demo "$ROOT" "PYTHON_IMAGE=$base_ref"
build_image postgresql "$ROOT/images/postgresql/Dockerfile" "" "$ROOT" "BASE_IMAGE=$base_ref"
build_image pause "$ROOT/images/pause/Dockerfile" "" "$PAUSE_CONTEXT"

# ------------------------------------------------------------------------------------------- pruning

# Archives (and their images) of earlier inputs that nothing used for KEEP_MINUTES: a caller that got
# an earlier manifest has that long to import its archives.
prune() {
  local name old tag
  for name in "${NAMES[@]}"; do
    while IFS= read -r old; do
      [[ "$old" == "${ARCHIVE[$name]}" ]] && continue
      tag="${old##*/"$name"-}"
      tag="${tag%.tar}"
      [[ "$tag" =~ ^[0-9a-f]{12}$ ]] || continue
      log "pruning $name:$tag (unused for $KEEP_MINUTES min)"
      rm -f "$old" "$CACHE/logs/$name-$tag.log"
      buildah rmi "$LOCAL_REPO/$name:$tag" >/dev/null 2>&1 || true
    done < <(find "$CACHE" -maxdepth 1 -name "$name-*.tar" -mmin "+$KEEP_MINUTES" -print)
  done
  while IFS= read -r old; do
    tag="${old##*/base-}"
    tag="${tag%.tar}"
    rm -f "$old"
    # Refused (harmlessly) while images built on it remain in storage.
    buildah rmi "$LOCAL_REPO/python-base:$tag" >/dev/null 2>&1 || true
  done < <(find "$CACHE" -maxdepth 1 -name 'base-*.tar' ! -name "base-$debian_base_key.tar" -mmin "+$KEEP_MINUTES" -print)
}
[[ "$base_mode" == debian ]] && touch "$debian_base_tar"
prune
rm -rf "$PAUSE_CONTEXT"

# -------------------------------------------------------------------------------------------- output

json_string() {
  local s="${1//\\/\\\\}"
  printf '"%s"' "${s//\"/\\\"}"
}

if ((manifest)); then
  out="{"
  sep=""
  for name in "${NAMES[@]}"; do
    out+="$sep$(json_string "$name"): {\"ref\": $(json_string "${REF[$name]}"), \"archive\": $(json_string "${ARCHIVE[$name]}")}"
    sep=", "
  done
  printf '%s}\n' "$out"
else
  printf 'base: %s (%s)\n' "$base_ref" "$base_mode"
  printf '%-20s %-58s %9s  %s\n' IMAGE REF ARCHIVE STATUS
  for name in "${NAMES[@]}"; do
    size="$(du -m "${ARCHIVE[$name]}" | cut -f1) MiB"
    printf '%-20s %-58s %9s  %s\n' "$name" "${REF[$name]}" "$size" "${STATUS[$name]}"
  done
  printf 'archives (docker-archive, for `ctr -n k8s.io images import`): %s\n' "$CACHE"
fi
exit 0
}
