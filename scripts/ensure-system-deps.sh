#!/usr/bin/env bash
# Installs the Debian packages the project needs, only when they are missing:
# PostgreSQL server binaries (initdb/pg_ctl, used by the local run and the test fixtures),
# git (the grader fetches course repositories), libseccomp2 (the sandbox's network filter),
# mariadb-server (the upstream-import tests run a throwaway MariaDB, like upstream XQueue's database) and
# chromium (the status page is tested in a real headless browser).
#
# As root, also what builds container images without Docker (buildah, mmdebstrap: scripts/build-images.sh)
# and runs the real test node (containerd, runc, containernetworking-plugins, iptables, conntrack, and
# ipset for kube-router's NetworkPolicy enforcement).
# Both need root, so a non-root developer's machine is left alone; each package is looked for by its
# binary, so Docker's own containerd/runc count as present (Debian's containerd conflicts with Docker's
# containerd.io). XQ_NODE_DEPS=0 skips them.
set -euo pipefail
need=()
pg_found=0
for d in /usr/lib/postgresql/*/bin; do
  [[ -x "$d/initdb" && -x "$d/pg_ctl" ]] && pg_found=1
done
command -v initdb >/dev/null 2>&1 && pg_found=1
[[ $pg_found == 1 ]] || need+=(postgresql)
command -v git >/dev/null 2>&1 || need+=(git)
ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2' || need+=(libseccomp2)
# MariaDB server: the upstream-import tests start one with upstream XQueue's schema (tests/importing).
PATH="$PATH:/usr/sbin:/sbin" command -v mariadbd >/dev/null 2>&1 || need+=(mariadb-server)
# Headless Chromium: the status page's browser tests (tests/status/test_status_browser.py).
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need+=(chromium)

if [[ $(id -u) == 0 && "${XQ_NODE_DEPS:-1}" != 0 && "$(uname -s)" == Linux ]]; then
  # package:file-it-provides (PATH is searched for bare names)
  for entry in buildah:buildah mmdebstrap:mmdebstrap containerd:containerd runc:runc \
    containernetworking-plugins:/usr/lib/cni/bridge iptables:iptables conntrack:conntrack ipset:ipset; do
    pkg="${entry%%:*}"
    file="${entry#*:}"
    if [[ "$file" == /* ]]; then
      [[ -e "$file" ]] || need+=("$pkg")
    else
      # sbin is not on every root PATH
      PATH="$PATH:/usr/sbin:/sbin" command -v "$file" >/dev/null 2>&1 || need+=("$pkg")
    fi
  done
fi

if ((${#need[@]})); then
  command -v apt-get >/dev/null 2>&1 ||
    { echo "missing system packages (install them with your package manager): ${need[*]}" >&2; exit 1; }
  echo "installing Debian packages: ${need[*]}"
  if [[ $(id -u) != 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
