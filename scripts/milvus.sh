#!/usr/bin/env bash
# A Milvus server for rag's `store: milvus` (and its tests): milvus-lite's gRPC server on 127.0.0.1.
#
#   scripts/milvus.sh start DIR [PORT]   # data in DIR/data, log DIR/server.log, pid DIR/server.pid; waits until it
#                                        # answers, then prints its URI (PORT default 19530, kept in DIR/port)
#   scripts/milvus.sh uri DIR            # http://127.0.0.1:PORT
#   scripts/milvus.sh status DIR         # exit 3 when not running
#   scripts/milvus.sh stop DIR           # DIR stays (start again reuses its data); rm -rf DIR to drop it
#
#   LLMKIT_MILVUS_URI=$(scripts/milvus.sh uri DIR) llmkit run recipe.yaml     # recipe: rag: {store: milvus, ...}
#
# milvus-lite (PyPI, `pip install 'llmkit[milvus]'`) is a pure-Python Milvus (storage, WAL, faiss-cpu search)
# speaking Milvus's gRPC protocol, so pymilvus talks to it as to a Milvus server; nothing in it downloads at run
# time. A production Milvus (a container or a cluster) is used the same way: only LLMKIT_MILVUS_URI changes.
# Loopback only.
set -euo pipefail

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop|status|uri DIR [PORT]" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}  # the Python whose milvus-lite serves (make setup's venv by default)
dir=$(mkdir -p "$dir" && cd "$dir" && pwd)
pidfile="$dir/server.pid"

die() { echo "milvus.sh: $*" >&2; exit 1; }

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

uri() { [ -f "$dir/port" ] || die "no server in $dir (start it first)"; echo "http://127.0.0.1:$(cat "$dir/port")"; }

answers() {  # the server lists its collections: it is up and speaks Milvus's protocol
  "$python" - "$1" <<'EOF' >/dev/null 2>&1
import sys
from pymilvus import MilvusClient
MilvusClient(uri=sys.argv[1], timeout=2).list_collections()
EOF
}

case "$cmd" in
start)
  port=${3:-$(cat "$dir/port" 2>/dev/null || echo 19530)}
  if running; then echo "already running: $(uri) (pid $(cat "$pidfile"))"; exit 0; fi
  "$python" -c 'import milvus_lite, pymilvus' 2>/dev/null \
    || die "milvus-lite and pymilvus are not installed in $python: pip install 'llmkit[milvus]' (or set PYTHON=)"
  echo "$port" > "$dir/port"
  # its own session, so that stop can signal the whole group
  setsid "$python" -m milvus_lite server --data-dir "$dir/data" --host 127.0.0.1 --port "$port" \
    > "$dir/server.log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  for _ in $(seq 1 120); do  # up to 60 s (it answers in ~1-2 s)
    if answers "$(uri)"; then echo "milvus-lite on $(uri) (pid $(cat "$pidfile"), data $dir/data)"; exit 0; fi
    running || { tail -20 "$dir/server.log" >&2; rm -f "$pidfile"; die "the server died (log above: $dir/server.log)"; }
    sleep 0.5
  done
  "$0" stop "$dir" >/dev/null
  die "the server did not answer on $(uri) in 60 s; see $dir/server.log" ;;
stop)
  if ! running; then rm -f "$pidfile"; echo "not running"; exit 0; fi
  pid=$(cat "$pidfile")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null
  rm -f "$pidfile"
  echo "stopped (pid $pid)" ;;
status)
  if running; then echo "running: $(uri) (pid $(cat "$pidfile"))"; else echo "not running"; exit 3; fi ;;
uri) uri ;;
*) echo "usage: $0 start|stop|status|uri DIR [PORT]" >&2; exit 2 ;;
esac
