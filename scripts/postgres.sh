#!/usr/bin/env bash
# A throwaway PostgreSQL (Debian's `postgresql` package) on 127.0.0.1, for MLflow's backend store (and its tests).
#
#   scripts/postgres.sh start DIR [PORT]   # a new cluster in DIR/data (initdb once), database `mlflow`; prints its URI
#   scripts/postgres.sh uri DIR            # postgresql://llmkit@127.0.0.1:PORT/mlflow (no password in it)
#   eval "$(scripts/postgres.sh env DIR)"  # export PGPASSWORD=... (libpq, so psycopg2 and MLflow, read it)
#   scripts/postgres.sh stop DIR           # pg_ctl stop; DIR stays (start again reuses it); rm -rf DIR to drop it
#   scripts/postgres.sh status DIR | install
#
#   llmkit run recipe.yaml   with   track: {mlflow_uri: "postgresql://llmkit@127.0.0.1:PORT/mlflow"} and PGPASSWORD set;
#   run files go to $LLMKIT_MLFLOW_ARTIFACTS (a folder or s3://...), default $LLMKIT_HOME/mlflow-artifacts
#   scripts/mlflow_server.sh start SRV 5000 with BACKEND_STORE_URI="$(scripts/postgres.sh uri DIR)": the tracking
#   server on PostgreSQL, its artifacts in SRV/artifacts
#
# Only loopback: listen_addresses=127.0.0.1, the unix socket inside DIR, password (scram-sha-256) auth for the one
# role `llmkit`, whose random password is kept in DIR/password (mode 600), never in the URI. The Debian service (pg_ctlcluster,
# /etc/postgresql) is never used. PostgreSQL refuses to run as root: as root the cluster runs as the `postgres`
# user (which the package creates), so DIR must be reachable by it (a fresh `mktemp -d` with mode 711 is).
# When the binaries are missing they are installed with apt-get (as root; otherwise the script says what to run).
set -euo pipefail

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] || { echo "usage: $0 start|stop|status|uri|env DIR [PORT] | install" >&2; exit 2; }

die() { echo "postgres.sh: $*" >&2; exit 1; }

bindir() {  # the folder of initdb/pg_ctl: on PATH, else Debian's versioned folder (newest first)
  if command -v pg_ctl >/dev/null && command -v initdb >/dev/null; then dirname "$(readlink -f "$(command -v pg_ctl)")"; return; fi
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$d" ] && [ -x "$d/pg_ctl" ] && echo "$d"
}

ensure_installed() {
  [ -n "$(bindir)" ] && return
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's postgresql package (apt-get install -y postgresql) ..." >&2
    # its postinst would start the Debian cluster where systemd runs; here there is none, and we never use it
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; }
    [ -n "$(bindir)" ] || die "apt-get installed postgresql but no pg_ctl was found under /usr/lib/postgresql"
  else
    die "PostgreSQL is not installed: run 'sudo apt-get install -y postgresql' (Debian/Ubuntu) or put initdb and pg_ctl on PATH"
  fi
}

# run a PostgreSQL binary as the cluster's owner: `postgres` when we are root, else ourselves
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

[ "$cmd" = install ] && { ensure_installed; echo "PostgreSQL binaries: $(bindir)"; exit 0; }
[ -n "$dir" ] || { echo "usage: $0 $cmd DIR [PORT]" >&2; exit 2; }
dir=$(mkdir -p "$dir" && cd "$dir" && pwd)
data="$dir/data"

uri() {  # no password in it: URIs end up in logs and recipes; libpq reads it from $PGPASSWORD (see `env`)
  [ -f "$dir/password" ] && [ -f "$dir/port" ] || die "no cluster in $dir (start it first)"
  echo "postgresql://llmkit@127.0.0.1:$(cat "$dir/port")/mlflow"
}

running() { [ -f "$data/postmaster.pid" ] && as_owner "$(bindir)/pg_ctl" -D "$data" status >/dev/null 2>&1; }

case "$cmd" in
start)
  ensure_installed
  bin=$(bindir)
  port=${3:-$(cat "$dir/port" 2>/dev/null || echo 5432)}
  if running; then echo "already running: $(uri)"; exit 0; fi
  if [ ! -f "$data/PG_VERSION" ]; then
    umask 077
    [ -f "$dir/password" ] || python3 -c 'import secrets; print(secrets.token_hex(16))' > "$dir/password"
    mkdir -p "$data"
    pw=$(mktemp "$dir/pw.XXXXXX"); cp "$dir/password" "$pw"
    if [ "$(id -u)" -eq 0 ]; then
      runuser -u postgres -- test -x "$dir" || die "$dir is not reachable by the postgres user (as root the cluster runs as postgres): use a folder it can reach, e.g. \$(mktemp -d) with chmod 711"
      chown postgres: "$data" "$pw"
    fi
    as_owner "$bin/initdb" -D "$data" -U llmkit --pwfile="$pw" --auth-local=scram-sha-256 --auth-host=scram-sha-256 \
      -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || { rm -f "$pw"; tail -20 "$dir/initdb.log" >&2; die "initdb failed (log: $dir/initdb.log)"; }
    rm -f "$pw"
  fi
  echo "$port" > "$dir/port"
  # the server's own log and socket go inside the data folder (the owner can write there whoever we are)
  as_owner "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$data" start >/dev/null \
    || { tail -20 "$data/server.log" >&2 || true; die "PostgreSQL did not start (log: $data/server.log)"; }
  export PGPASSWORD; PGPASSWORD=$(cat "$dir/password")
  if ! "$bin/psql" -h 127.0.0.1 -p "$port" -U llmkit -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='mlflow'" | grep -q 1; then
    "$bin/createdb" -h 127.0.0.1 -p "$port" -U llmkit mlflow
  fi
  echo "PostgreSQL on 127.0.0.1:$port (data $data): $(uri)  (password: $0 env $dir)" ;;
stop)
  if ! running; then echo "not running"; exit 0; fi
  as_owner "$(bindir)/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null
  echo "stopped" ;;
status)
  if running; then echo "running: $(uri)"; else echo "not running"; exit 3; fi ;;
uri) uri ;;
env) [ -f "$dir/password" ] || die "no cluster in $dir"; echo "export PGPASSWORD=$(cat "$dir/password")" ;;
*) echo "usage: $0 start|stop|status|uri|env DIR [PORT] | install" >&2; exit 2 ;;
esac
