#!/usr/bin/env bash
# A local MLflow tracking server for llmkit (and its tests): start | stop | status.
#
#   scripts/mlflow_server.sh start DIR [PORT]   # sqlite DB + artifacts in DIR; waits until /health answers
#   scripts/mlflow_server.sh stop DIR
#   PYTHON=/path/to/python scripts/mlflow_server.sh start DIR   # another environment's MLflow
#   MLFLOW_TRACKING_URI=http://127.0.0.1:PORT llmkit run recipe.yaml
#   BACKEND_STORE_URI=postgresql://llmkit@127.0.0.1:5432/mlflow PGPASSWORD=... scripts/mlflow_server.sh start DIR
#       # runs and the registry in PostgreSQL (scripts/postgres.sh), files in DIR/artifacts
#
# `mlflow server` takes ~40 s to answer on 2 cores and spawns uvicorn workers and a job runner that outlive a
# plain kill of the parent, so it runs in its own session (setsid) and stop kills the whole process group.
# Loopback only; telemetry off.
set -euo pipefail

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop|status DIR [PORT]" >&2; exit 2; }
port=${3:-5000}
pidfile="$dir/server.pid"
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}  # the Python whose MLflow serves (make setup's venv by default)

case "$cmd" in
start)
  mkdir -p "$dir/artifacts"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then echo "already running: $(cat "$pidfile")"; exit 0; fi
  MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true setsid "$python" -m mlflow server --host 127.0.0.1 --port "$port" \
      --workers 1 --backend-store-uri "${BACKEND_STORE_URI:-sqlite:///$dir/mlflow.db}" --artifacts-destination "$dir/artifacts" \
      > "$dir/server.log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  for _ in $(seq 1 240); do  # up to 120 s
    if curl -sf "http://127.0.0.1:$port/health" > /dev/null 2>&1; then echo "mlflow server on http://127.0.0.1:$port (pid $(cat "$pidfile"))"; exit 0; fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then echo "mlflow server died; see $dir/server.log" >&2; tail -20 "$dir/server.log" >&2; exit 1; fi
    sleep 0.5
  done
  echo "mlflow server did not answer in 120 s; see $dir/server.log" >&2; exit 1 ;;
stop)
  [ -f "$pidfile" ] || { echo "not running"; exit 0; }
  pid=$(cat "$pidfile")
  kill -TERM -- "-$pid" 2>/dev/null || true   # the whole session: server, uvicorn workers, job runner
  for _ in $(seq 1 40); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.25; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pidfile"; echo "stopped" ;;
status)
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && echo "running: $(cat "$pidfile")" || { echo "not running"; exit 1; } ;;
*) echo "usage: $0 start|stop|status DIR [PORT]" >&2; exit 2 ;;
esac
