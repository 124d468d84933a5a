#!/usr/bin/env bash
# Entrypoint of images/postgresql: the subset of the official postgres image's behaviour the chart
# relies on. `docker-entrypoint.sh postgres [ARGS...]` (the default command):
#   - started as root: makes PGDATA and the socket directory the postgres user's, then re-executes
#     itself as uid/gid 999 (the chart starts it as 999 directly);
#   - PGDATA without PG_VERSION: initdb with POSTGRES_USER (default postgres) as superuser and
#     POSTGRES_PASSWORD as its password, password (scram-sha-256) authentication for TCP clients
#     other than the pod itself, listen_addresses '*'; then creates POSTGRES_DB (default: the user's
#     name) and runs /docker-entrypoint-initdb.d/*.sql and *.sh on a server that listens on no TCP port;
#   - then execs postgres (PID 1: it handles SIGINT/SIGTERM itself).
# Any other command is executed as it is. The password never reaches a file or the process list.
set -Eeuo pipefail

PG_UID=999
PG_GID=999
export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
SOCKET_DIR=/var/run/postgresql

log() { printf '[entrypoint] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [[ "${1:-}" == -* ]]; then
  set -- postgres "$@"
fi
if [[ "${1:-}" != postgres ]]; then
  exec "$@"
fi

if [[ "$(id -u)" == 0 ]]; then
  mkdir -p "$PGDATA" "$SOCKET_DIR"
  chown "$PG_UID:$PG_GID" "$PGDATA" "$SOCKET_DIR"
  chmod 0700 "$PGDATA"
  exec setpriv --reuid="$PG_UID" --regid="$PG_GID" --clear-groups -- "${BASH_SOURCE[0]}" "$@"
fi

init_cluster() {
  local user="${POSTGRES_USER:-postgres}"
  local db="${POSTGRES_DB:-$user}"
  local auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
  if [[ -z "${POSTGRES_PASSWORD:-}" && "$auth" != trust ]]; then
    die "the data directory $PGDATA is empty and POSTGRES_PASSWORD is not set: set it (or POSTGRES_HOST_AUTH_METHOD=trust, for throwaway databases only)"
  fi
  log "initialising a database cluster in $PGDATA (superuser $user, database $db)"
  # initdb refuses a data directory other users may read.
  mkdir -p "$PGDATA"
  chmod 0700 "$PGDATA"
  # The password through a pipe, never a file or an argument. initdb's default pg_hba.conf trusts
  # the socket and the loopback addresses (the pod itself: the probes' pg_isready); every other
  # client authenticates.
  # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of words, as in the official image
  initdb --username="$user" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD:-}") \
    --encoding=UTF8 ${POSTGRES_INITDB_ARGS:-} >&2
  printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"
  printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"

  # A server for the set-up steps, reachable through the socket only.
  pg_ctl --pgdata="$PGDATA" --wait --timeout=60 --silent \
    --options="-c listen_addresses='' -c unix_socket_directories=$SOCKET_DIR" start >&2
  local psql=(psql --no-psqlrc --quiet --set=ON_ERROR_STOP=1 --host="$SOCKET_DIR" --username="$user" --no-password)
  if [[ "$db" != postgres ]]; then
    "${psql[@]}" --dbname=postgres --set=db="$db" <<<'CREATE DATABASE :"db";'
  fi
  local f
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sql) log "running $f"; "${psql[@]}" --dbname="$db" --file="$f" ;;
      *.sh) log "running $f"; bash "$f" ;;
      */\*) ;;  # the directory is empty
      *) log "ignoring $f" ;;
    esac
  done
  pg_ctl --pgdata="$PGDATA" --wait --timeout=60 --silent --mode=fast stop >&2
  log "initialised; starting PostgreSQL"
}

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  init_cluster
fi
exec "$@"
