"""The gateway's cost and the replicas' gain: `llmkit serve --engine openai` in front of `llmkit serve` upstreams,
same model, same machine, one script.

    .venv/bin/python bench/gateway.py [--model smollm2-135m-instruct] [--rounds 3] [--clients 8]
                                      [--requests-per-client 4] [--max-tokens 32]

Started here as subprocesses on free 127.0.0.1 ports (their logs under --out): two upstreams A and B (`llmkit
serve --engine llamacpp`, 1 thread each, batching up to 16), a gateway G1 in front of A alone (relaying: the
fast path of serve/relay.py), a gateway F1 in front of A with `--upstream-full-path` (every request parsed,
rendered and re-encoded: the gateway before the relay) and a gateway G2 in front of A and B as replicas of one
model. Clients are httpx streams from this process (serve_load.py's `one_request`: streamed chat, temperature 0,
include_usage). Three measurements, each alternating its targets round by round (--rounds) so that a load change
on the box hits all alike:

1. added latency, 1 client: --pairs rounds of one request each to A directly, through G1 and through F1 (max_tokens
   1, one short prompt whose prefix A caches), interleaved; a gateway's added latency is the p50 of its
   differences to the direct request of the same round (the goal is <= 2 ms), and its CPU time per request.
2. throughput, --clients clients x --requests-per-client requests of --max-tokens: A directly vs through G1 and
   F1; ratio = tokens/s through the gateway / tokens/s direct (the goal is >= 0.95), and the p50 latencies.
3. replicas: the same load through G1 (one replica) vs G2 (two): the tokens/s ratio (the goal is >= 1.6x where
   the cores allow: each upstream decodes on 1 thread, so two need 2 cores beside the gateway and the clients).

Check `uptime` first: a busy 2-core box lies; the script prints it and the lscpu flags beside the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from serve_load import free_port, llmkit_cmd, one_request, pct, stop, uptime, wait_ready

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["How do I reset my password?", "What does HTTP status code 404 mean?",
           "Explain in two sentences why the sky is blue.", "How long does standard delivery usually take?",
           "Give me three tips for writing a good cover letter.", "How can I export my data from your app?",
           "Suggest a name for a small coffee shop near a library.", "My order arrived damaged. What should I do?"]


def start(name: str, cmd: list[str], out: Path) -> tuple[subprocess.Popen, Path]:
    log = out / f"gateway-{name}.log"
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))  # a caller's extra paths
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "LLMKIT_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env,  # noqa: SIM115
                            start_new_session=True)
    return proc, log


def gateway_cmd(urls: list[str], port: int, full_path: bool = False) -> list[str]:
    return [sys.executable, "-m", "llmkit.cli", "serve", "--engine", "openai", "--model", "gw=" + ",".join(urls),
            "--host", "127.0.0.1", "--port", str(port), "--embedder", "none", "--no-ui", "--max-inflight", "64",
            "--log-level", "warning"] + (["--upstream-full-path"] if full_path else [])


async def load(base: str, model: str, clients: int, per_client: int, max_tokens: int) -> dict:
    """`clients` concurrent clients, each `per_client` streamed requests back to back."""
    args = argparse.Namespace(max_tokens=max_tokens, temperature=0.0)
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        async def one_client(c: int) -> list[dict]:
            return [await one_request(client, base, model, PROMPTS[(c + i) % len(PROMPTS)], args, 120)
                    for i in range(per_client)]

        t0 = time.perf_counter()
        recs = [r for rs in await asyncio.gather(*(one_client(c) for c in range(clients))) for r in rs]
        wall = time.perf_counter() - t0
    ok = [r for r in recs if r["ok"]]
    return {"wall": wall, "tokens": sum(r["tokens"] for r in ok), "errors": len(recs) - len(ok),
            "latencies": [r["latency"] for r in ok], "first_error": next((r["error"] for r in recs if not r["ok"]), None)}


async def paired(targets: list[tuple[str, str]], pairs: int) -> list[list[float]]:
    """Latencies in ms of `pairs` rounds of one request to each target, interleaved one by one (the order
    rotating each round) so that all see the same moment's load; the same short prompt each time (its prefix is
    cached upstream)."""
    args = argparse.Namespace(max_tokens=1, temperature=0.0)
    out: list[list[float]] = [[] for _ in targets]
    n = len(targets)
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(pairs):
            for k in [(i + j) % n for j in range(n)]:
                base, model = targets[k]
                r = await one_request(client, base, model, "Hi", args, 60)
                if not r["ok"]:
                    raise RuntimeError(r["error"])
                out[k].append(1000 * r["latency"])
    return out


def alternate(targets: dict[str, tuple[str, str]], rounds: int, **kw) -> dict[str, list[dict]]:
    """Each round runs every target once, in turn; returns the rounds' results per target."""
    out: dict[str, list[dict]] = {name: [] for name in targets}
    for r in range(rounds):
        for name, (base, model) in targets.items():
            res = asyncio.run(load(base, model, **kw))
            out[name].append(res)
            print(f"  round {r + 1} {name:>12}: {res['tokens'] / res['wall']:7.1f} tok/s, p50 "
                  f"{1000 * pct(res['latencies'], 0.5):7.1f} ms, errors {res['errors']}"
                  + (f" ({res['first_error']})" if res["errors"] else ""), flush=True)
    return out


def total(results: list[dict]) -> tuple[float, float, int]:
    """(tokens/s over all rounds, p50 latency in ms over all requests, errors)."""
    lat = [x for r in results for x in r["latencies"]]
    return (sum(r["tokens"] for r in results) / sum(r["wall"] for r in results), 1000 * pct(lat, 0.5),
            sum(r["errors"] for r in results))


def cpu_ms(pid: int) -> float:
    """User + system CPU time of a process so far, in ms (/proc/PID/stat fields 14 and 15, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def machine() -> None:
    print(uptime()[0])
    flags = next((line for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                  if line.startswith("Flags:")), "Flags: (lscpu has none)")
    print(flags)
    print(f"cores: {os.cpu_count()}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine()
    ports = {name: free_port() for name in ("A", "B", "G1", "F1", "G2")}
    urls = {n: f"http://127.0.0.1:{ports[n]}/v1" for n in ("A", "B")}
    procs = []
    try:
        for n in ("A", "B"):
            procs.append((n, *start(n, llmkit_cmd(args.model, 1, ports[n]), out)))
        deadline = time.monotonic() + 600
        for n, proc, log in procs:
            wait_ready(f"http://127.0.0.1:{ports[n]}", proc, deadline)
        procs.append(("G1", *start("G1", gateway_cmd([urls["A"]], ports["G1"]), out)))
        procs.append(("F1", *start("F1", gateway_cmd([urls["A"]], ports["F1"], full_path=True), out)))
        procs.append(("G2", *start("G2", gateway_cmd([urls["A"], urls["B"]], ports["G2"]), out)))
        for n, proc, log in procs[2:]:
            wait_ready(f"http://127.0.0.1:{ports[n]}", proc, deadline)
        direct = (f"http://127.0.0.1:{ports['A']}", "smollm2-135m-instruct")
        g1, f1, g2 = ((f"http://127.0.0.1:{ports[n]}", "gw") for n in ("G1", "F1", "G2"))
        for target in (direct, g1, f1, g2):  # warm: the prompt cache and the connections
            asyncio.run(load(*target, clients=2, per_client=2, max_tokens=4))

        print(f"\n1. added latency: 1 client, {args.pairs} rounds of one request each to A directly, through G1 "
              "(relay) and through F1 (full path) (max_tokens 1, one short prompt), in rotating order", flush=True)
        pids = {n: proc.pid for n, proc, _ in procs}
        cpu0 = {n: cpu_ms(pid) for n, pid in pids.items()}
        d, g, f = asyncio.run(paired([direct, g1, f1], args.pairs))
        cpu = {n: (cpu_ms(pid) - cpu0[n]) for n, pid in pids.items()}
        print(f"  p50 direct {pct(d, 0.5):.2f} ms, through G1 (relay) {pct(g, 0.5):.2f} ms, through F1 (full path) "
              f"{pct(f, 0.5):.2f} ms")
        for name, lat, gw in (("G1 relay", g, "G1"), ("F1 full path", f, "F1")):
            diff = [b - a for a, b in zip(d, lat)]
            print(f"  {name}: p50 of the differences to direct {pct(diff, 0.5):+.2f} ms (goal <= 2 ms; p25 "
                  f"{pct(diff, 0.25):+.2f}, p75 {pct(diff, 0.75):+.2f}); gateway CPU {cpu[gw] / args.pairs:.2f} ms "
                  "per request")
        # CPU time is what the gateway costs whatever the load: on a busy box the wall-clock difference is mostly
        # the gateway process waiting for a core (several wake-ups per request), not work
        print(f"  upstream A CPU per request: {cpu['A'] / (3 * args.pairs):.2f} ms (A served all three)")

        print(f"\n2. throughput: {args.clients} clients x {args.requests_per_client} requests of max_tokens "
              f"{args.max_tokens} per round", flush=True)
        kw = {"clients": args.clients, "per_client": args.requests_per_client, "max_tokens": args.max_tokens}
        thr = alternate({"direct A": direct, "G1 relay": g1, "F1 full path": f1}, args.rounds, **kw)
        dt, d50, de = total(thr["direct A"])
        for name in ("G1 relay", "F1 full path"):
            gt, g50, ge = total(thr[name])
            print(f"  {name}: {gt:.1f} tok/s (p50 {g50:.0f} ms) vs direct {dt:.1f} tok/s (p50 {d50:.0f} ms): ratio "
                  f"{gt / dt:.3f} (goal >= 0.95), added p50 {g50 - d50:+.1f} ms, errors {de}/{ge}")

        print("\n3. replicas: the same load through the gateway on one upstream (G1) vs two (G2)", flush=True)
        rep = alternate({"1 replica G1": g1, "2 replicas G2": g2}, args.rounds, **kw)
        (t1, p1, e1), (t2, p2, e2) = total(rep["1 replica G1"]), total(rep["2 replicas G2"])
        print(f"  one replica {t1:.1f} tok/s (p50 {p1:.0f} ms), two {t2:.1f} tok/s (p50 {p2:.0f} ms): "
              f"{t2 / t1:.2f}x (goal >= 1.6x where the cores allow), errors {e1}/{e2}")
        print()
        machine()
    finally:
        for _, proc, _ in procs:
            stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
