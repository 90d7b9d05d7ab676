"""Monitoring end to end: a real server with a SQLite request log and the drift monitor, support traffic, then
cooking/code/German traffic, a few ratings, and `llmkit monitor` on the log (table, PNG and HTML).

    HF_HUB_OFFLINE=1 python examples/monitor_demo.py [--model smollm2-135m-instruct] [--out runs/monitor_demo]
                                                     [--per-phase 60] [--max-tokens 16] [--threads 1]

The server (`llmkit serve`, a subprocess on a free 127.0.0.1 port) tests its last 60 prompts against
examples/support/train.jsonl every 2 s; the demo prints llmkit_drift_score from /metrics after each phase.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def prompts(name: str) -> list[str]:
    return [json.loads(x)["prompt"] for x in (ROOT / "examples/drift" / name).read_text().splitlines()]


def metric(url: str, name: str) -> float | None:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--out", default=str(ROOT / "runs" / "monitor_demo"))
    ap.add_argument("--per-phase", type=int, default=60)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (1 stays steady on a busy box)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "requests.db"
    log.unlink(missing_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "llmkit.cli", "serve", "--model", f"demo={args.model}", "--port", str(port),
           "--threads", str(args.threads),
           "--embedder", "none", "--request-log", str(log), "--drift-reference", str(ROOT / "examples/support"),
           "--drift-window", str(args.per_phase), "--drift-interval-s", "2", "--log-level", "warning"]
    server = subprocess.Popen(cmd, start_new_session=True, stdout=open(out / "server.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the server did not start; see {out / 'server.log'}")
            time.sleep(0.2)
        sent = 0
        with httpx.Client(base_url=url, timeout=300) as c:
            for phase, texts in [("support questions", prompts("in_distribution.jsonl")),
                                 ("cooking, code, German", prompts("out_of_distribution.jsonl"))]:
                ids = []
                for t in texts[:args.per_phase]:
                    r = c.post("/v1/chat/completions", json={"model": "demo", "max_tokens": args.max_tokens,
                                                             "messages": [{"role": "user", "content": t}]})
                    ids.append(r.json()["id"])
                for i, rid in enumerate(ids[:10]):
                    c.post("/v1/feedback", json={"request_id": rid, "rating": "up" if i % 3 else "down"})
                # the monitor's thread tests every 2 s; poll until a test saw every prompt sent so far
                sent += len(ids)
                deadline = time.monotonic() + 120
                while metric(url, "llmkit_drift_prompts") != sent and time.monotonic() < deadline:
                    time.sleep(0.2)
                print(f"after {args.per_phase} {phase}: llmkit_drift_score {metric(url, 'llmkit_drift_score'):.4f}, "
                      f"llmkit_drift_alert {metric(url, 'llmkit_drift_alert'):.0f}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
    subprocess.run([sys.executable, "-m", "llmkit.cli", "monitor", str(log), "--window", "1m",
                    "--reference", str(ROOT / "examples/support"), "--plot", str(out / "monitor.png"),
                    "--html", str(out / "monitor.html")], check=False)


if __name__ == "__main__":
    main()
