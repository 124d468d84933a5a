#!/usr/bin/env bash
# Installs the Debian packages the project needs, only when they are missing:
# PostgreSQL server binaries (initdb/pg_ctl, used by the local run and the test fixtures),
# git (the grader fetches course repositories) and libseccomp2 (the sandbox's network filter).
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
if ((${#need[@]})); then
  echo "installing Debian packages: ${need[*]}"
  if [[ $(id -u) != 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
