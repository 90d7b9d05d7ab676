"""What the request log costs a request (issue 18: ≤ 1 ms p50 per request under the serve benchmark's load).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/request_log.py [--rounds 3] [--requests 48] [--clients 8]
                                                           [--max-tokens 16] [--threads 2]

Four real servers (uvicorn on free 127.0.0.1 ports, llama.cpp engine, the bundled SmolLM2-135M), identical but
for their records: `off` (no request log), `jsonl`, `sqlite`, and `sqlite+drift` (SQLite and the drift monitor,
reference examples/support/train.jsonl, a test every 5 s in its own thread). In each round every server gets
the same load in turn (round-robin, so a busy neighbour hurts all alike): --clients concurrent clients sending
--requests chat completions between them (streamed, as bench/serve_load.py does; short user prompts; temperature 0).

Two figures per server:
- on the request path: the time `finish` (serve/recording.py) takes inside a request (scrub the texts, queue the
  record and the prompt), measured around each call; p50/p95 in µs. This is all the request waits for.
- end to end: p50/p95 latency of the requests and their ratio to `off` (noise on a shared 2-core box is far
  larger than 1 ms; the ratio shows there is no hidden cost, e.g. GIL time taken by the writer thread).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["How do I reset my password?", "My order arrived damaged. What should I do?",
           "Why is my Nimbus R2 router slow?", "Call me at 555 0142 or mail jo@example.com about my invoice.",
           "What does HTTP status code 404 mean?", "How long does standard delivery usually take?",
           "Give me three tips for writing a good cover letter.", "I was charged twice for the same subscription."]


def machine() -> str:
    flags = next((ln for ln in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                  if ln.startswith("Flags")), "Flags: ?")
    keep = [f for f in flags.split() if f.startswith(("avx", "amx"))]
    up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return f"uptime: {up}\nlscpu flags: {' '.join(keep)}"


def start(state):
    import uvicorn

    from llmkit.serve.app import Server, build_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = Server(uvicorn.Config(build_app(state), log_level="warning"), state)
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return url, server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.05)


def timed_finish():
    """Wrap serve.recording.finish to time every call (µs), per server state."""
    from llmkit.serve import recording

    real, spent = recording.finish, {}

    def finish(state, *a, **kw):
        t = time.perf_counter()
        try:
            return real(state, *a, **kw)
        finally:
            spent.setdefault(id(state), []).append((time.perf_counter() - t) * 1e6)

    recording.finish = finish
    return spent


async def load(url: str, n: int, clients: int, max_tokens: int) -> list[float]:
    lat: list[float] = []
    todo = list(range(n))

    async def client(c: httpx.AsyncClient) -> None:
        while todo:
            i = todo.pop()
            body = {"model": "m", "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                    "max_tokens": max_tokens, "temperature": 0, "stream": True}
            t = time.perf_counter()
            async with c.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                assert r.status_code == 200, await r.aread()
                async for _ in r.aiter_lines():
                    pass
            lat.append(time.perf_counter() - t)

    async with httpx.AsyncClient(timeout=300) as c:
        await asyncio.gather(*(client(c) for _ in range(clients)))
    return lat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from llmkit.config import ServeConfig
    from llmkit.serve import load_state
    from llmkit.serve.auth import KeyStore

    print(machine())
    spent = timed_finish()
    tmp = Path(tempfile.mkdtemp(prefix="llmkit-bench-log-"))
    ref = str(ROOT / "examples/support/train.jsonl")
    variants = {"off": {}, "jsonl": {"request_log": str(tmp / "r.jsonl")}, "sqlite": {"request_log": str(tmp / "r.db")},
                "sqlite+drift": {"request_log": str(tmp / "d.db"), "drift_reference": ref, "drift_interval_s": 5.0}}
    servers = {}
    for name, extra in variants.items():
        cfg = ServeConfig(engine="llamacpp", threads=args.threads, n_ctx=512, max_inflight=args.clients,
                          embedder=None, **extra)
        state = load_state(cfg, ["m=smollm2-135m-instruct"], keys=KeyStore())
        url, server = start(state)
        asyncio.run(load(url, args.clients, args.clients, args.max_tokens))  # warm-up
        servers[name] = (url, server, state)
        spent.pop(id(state), None)
    lat: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, (url, _, _) in servers.items():
            t = time.perf_counter()
            lat[name] += asyncio.run(load(url, args.requests, args.clients, args.max_tokens))
            print(f"round {r + 1} {name:13} {time.perf_counter() - t:6.1f} s")
    base = statistics.median(lat["off"])
    print(f"\n{args.clients} clients, {args.requests} streamed chats x {args.rounds} rounds per server, max_tokens "
          f"{args.max_tokens}, llama.cpp {args.threads} threads, SmolLM2-135M (bundled)")
    print(f"{'server':13} {'finish() p50 µs':>16} {'p95 µs':>8} {'latency p50 s':>14} {'p95 s':>7} {'p50 / off':>10}")
    for name, (_, _, state) in servers.items():
        us = spent.get(id(state), [])
        q = statistics.quantiles(lat[name], n=20)
        cost = (f"{statistics.median(us):16.1f} {statistics.quantiles(us, n=20)[18]:8.1f}" if us
                else f"{'-':>16} {'-':>8}")
        print(f"{name:13} {cost} {statistics.median(lat[name]):14.3f} {q[18]:7.3f} "
              f"{statistics.median(lat[name]) / base:10.3f}")
    for _, server, state in servers.values():
        server.should_exit = True
    time.sleep(0.5)
    for _, _, state in servers.values():
        state.close()
    print(machine().splitlines()[0])


if __name__ == "__main__":
    main()
