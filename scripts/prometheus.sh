#!/usr/bin/env bash
# Run a real Prometheus (Debian's `prometheus` package) that scrapes an llmkit server, with llmkit's rules.
#
#   scripts/prometheus.sh start 127.0.0.1:8000     # scrape that server; Prometheus on 127.0.0.1:9090
#   scripts/prometheus.sh status                   # is it up, and what does it scrape
#   scripts/prometheus.sh stop
#
# Settings (environment): PROM_DIR (config, data, pid and log; default $LLMKIT_HOME/prometheus, else
# ~/.cache/llmkit/prometheus), PROM_PORT (9090), SCRAPE_INTERVAL (15s), PROM_RETENTION (7d).
# Prometheus listens on 127.0.0.1 only and keeps its data in PROM_DIR/data; the Debian service is never started.
# When `prometheus` is missing it is installed with apt-get (as root; otherwise the script says what to run).
# Then open http://127.0.0.1:9090 (or Grafana with deploy/grafana/llmkit.json).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${PROM_DIR:-${LLMKIT_HOME:-$HOME/.cache/llmkit}/prometheus}"
PORT="${PROM_PORT:-9090}"
INTERVAL="${SCRAPE_INTERVAL:-15s}"
RETENTION="${PROM_RETENTION:-7d}"
PIDFILE="$DIR/prometheus.pid"
URL="http://127.0.0.1:$PORT"

die() { echo "prometheus.sh: $*" >&2; exit 1; }

running() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

ensure_installed() {
    command -v prometheus >/dev/null && command -v promtool >/dev/null && return
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "installing Debian's prometheus package (apt-get install -y prometheus) ..." >&2
        # the package's postinst would start its service where systemd runs; here there is none, and we never use it
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null; }
    else
        die "prometheus is not installed: run 'sudo apt-get install -y prometheus' (Debian/Ubuntu) or put prometheus and promtool on PATH"
    fi
}

# wait (polling, at most $2 s) until the URL $1 answers
await() {
    local deadline=$((SECONDS + $2))
    until curl -fsS -o /dev/null "$1" 2>/dev/null; do
        ((SECONDS < deadline)) || return 1
        running || return 1
        sleep 0.2
    done
}

start() {
    local target="${1:-}"
    [[ -n "$target" ]] || die "usage: $0 start HOST:PORT (the llmkit server to scrape)"
    [[ "$target" == *:* ]] || die "start $target: expected HOST:PORT, e.g. 127.0.0.1:8000"
    running && die "already running (pid $(cat "$PIDFILE"), $URL); stop it first"
    ensure_installed
    mkdir -p "$DIR/data"
    sed -e "s|@TARGET@|$target|" -e "s|@INTERVAL@|$INTERVAL|g" -e "s|@RULES@|$HERE/deploy/prometheus/rules.yml|" \
        "$HERE/deploy/prometheus/prometheus.yml" > "$DIR/prometheus.yml"
    promtool check config "$DIR/prometheus.yml" >/dev/null || die "promtool rejects $DIR/prometheus.yml"
    nohup prometheus --config.file="$DIR/prometheus.yml" --storage.tsdb.path="$DIR/data" \
        --storage.tsdb.retention.time="$RETENTION" --web.listen-address="127.0.0.1:$PORT" \
        >"$DIR/prometheus.log" 2>&1 &
    echo $! > "$PIDFILE"
    if ! await "$URL/-/ready" 30; then
        tail -n 20 "$DIR/prometheus.log" >&2
        stop >/dev/null 2>&1 || true
        die "Prometheus did not become ready (log above: $DIR/prometheus.log)"
    fi
    echo "Prometheus $URL (pid $(cat "$PIDFILE")) scrapes http://$target/metrics every $INTERVAL; data in $DIR"
}

stop() {
    if ! running; then
        rm -f "$PIDFILE"
        echo "not running"
        return 0
    fi
    local pid
    pid="$(cat "$PIDFILE")"
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    rm -f "$PIDFILE"
    echo "stopped (pid $pid)"
}

status() {
    if running; then
        echo "running: $URL (pid $(cat "$PIDFILE"))"
        curl -fsS "$URL/api/v1/targets?state=active" | python3 -c 'import json,sys
for t in json.load(sys.stdin)["data"]["activeTargets"]:
    print(f"  {t[\"scrapeUrl\"]}: {t[\"health\"]} (last scrape {t[\"lastScrape\"]}) {t[\"lastError\"]}")'
    else
        echo "not running"
        return 3
    fi
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) stop ;;
    status) status ;;
    install) ensure_installed ;;
    *) die "usage: $0 start HOST:PORT | stop | status | install" ;;
esac
