"""Serving under load: `llmkit serve` beside llama-cpp-python's own server, same model, same machine, one script.

    .venv/bin/python bench/serve_load.py [--servers peer,llmkit] [--threads 1,2] [--clients 1,4,8,16]
                                         [--requests-per-client 4] [--model PATH] [--vllm-url URL] [--quick]

Each server is started here as a subprocess on a free 127.0.0.1 port (loopback only), polled on /v1/models or
/health until ready, warmed up with 2 requests, then driven by N concurrent clients (N in --clients), each
sending --requests-per-client streamed chat completions back to back (max_tokens 64, temperature 0, a fixed
list of 16 short user prompts); afterwards its whole process group is killed. Its output goes to
<out dir>/serve_load-<server>-t<threads>.log. --vllm-url adds an already running OpenAI-compatible server.

Peer: `python -m llama_cpp.server` (one request at a time), with --interrupt_requests False: its default
(True) ends a streaming reply early as soon as another request waits, which would make it look fast under load.
Per request: time to first content token (TTFT), end-to-end latency, completion tokens (from `usage` in the last
chunk, asked for with stream_options.include_usage; where a server sends none, the count of content chunks,
≈ tokens, and the table says so). Per level: aggregate completion tok/s (all tokens / wall time of the level),
p50/p95 latency, p50 TTFT, mean per-request decode tok/s ((tokens - 1) / (latency - TTFT)), errors, and
replies cut short (no finish_reason). Batch-1 decode tok/s = that per-request rate at 1 client.
Everything is bounded: --request-timeout per request, --deadline for the whole run.
Check `uptime` first: a busy 2-core box lies (2 ggml threads collapse there while 1 stays steady).
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]

PROMPTS = [
    "How do I reset my password?",
    "My order arrived damaged. What should I do?",
    "Can I change the shipping address after I have paid?",
    "What is the difference between a list and a tuple in Python?",
    "Explain in two sentences why the sky is blue.",
    "Write a short polite reply to a customer asking for a refund.",
    "How long does standard delivery usually take?",
    "Give me three tips for writing a good cover letter.",
    "What does HTTP status code 404 mean?",
    "I was charged twice for the same subscription. Help!",
    "Summarize the plot of Romeo and Juliet in one paragraph.",
    "How can I export my data from your app?",
    "What are the health benefits of drinking water?",
    "Translate 'Where is the train station?' into French.",
    "Why is my laptop running slowly, and what can I check?",
    "Suggest a name for a small coffee shop near a library.",
]


def peer_cmd(model: str, threads: int, port: int) -> list[str]:
    return [sys.executable, "-m", "llama_cpp.server", "--model", model, "--n_threads", str(threads),
            "--n_threads_batch", str(threads), "--n_ctx", "2048", "--interrupt_requests", "False",
            "--host", "127.0.0.1", "--port", str(port)]


def llmkit_cmd(model: str, threads: int, port: int) -> list[str]:
    """`llmkit serve` with its defaults, but no embedder (nothing here asks for embeddings) and room for every
    client of the largest level in one batch (--max-inflight, default 8)."""
    return [sys.executable, "-m", "llmkit.cli", "serve", "--model", model, "--engine", "llamacpp",
            "--threads", str(threads), "--host", "127.0.0.1", "--port", str(port), "--embedder", "none",
            "--max-inflight", str(MAX_INFLIGHT)]


MAX_INFLIGHT = 16


COMMANDS = {"peer": peer_cmd, "llmkit": llmkit_cmd}


def uptime() -> tuple[str, float]:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip(), os.getloadavg()[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def wait_ready(base: str, proc: subprocess.Popen | None, deadline: float) -> str:
    """Poll until the server answers; return the model id it reports (or "default"). Raises on exit or timeout."""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode} before it was ready")
        for path in ("/v1/models", "/health"):
            try:
                r = httpx.get(base + path, timeout=2)
            except httpx.HTTPError:
                continue
            if r.status_code == 200:
                try:
                    return r.json()["data"][0]["id"]
                except (ValueError, KeyError, IndexError, TypeError):
                    return "default"
        time.sleep(0.5)
    raise TimeoutError("not ready before the start deadline")


def stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            pass


async def one_request(client: httpx.AsyncClient, base: str, model_id: str, prompt: str, args, timeout: float) -> dict:
    body = {"model": model_id, "messages": [{"role": "user", "content": prompt}], "max_tokens": args.max_tokens,
            "temperature": args.temperature, "stream": True, "stream_options": {"include_usage": True}}
    rec = {"ok": False, "ttft": None, "latency": None, "tokens": 0, "source": "chunks", "finish": None, "error": None}
    t0 = time.perf_counter()
    chunks = 0

    async def go():
        nonlocal chunks
        async with client.stream("POST", base + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                ev = json.loads(data)
                if ev.get("usage") and ev["usage"].get("completion_tokens") is not None:
                    rec["tokens"], rec["source"] = ev["usage"]["completion_tokens"], "usage"
                for ch in ev.get("choices") or []:
                    if (ch.get("delta") or {}).get("content"):
                        chunks += 1
                        if rec["ttft"] is None:
                            rec["ttft"] = time.perf_counter() - t0
                    if ch.get("finish_reason"):
                        rec["finish"] = ch["finish_reason"]

    try:
        await asyncio.wait_for(go(), timeout)
        rec["ok"] = True
    except TimeoutError:
        rec["error"] = f"timeout after {timeout:.0f} s"
    except Exception as e:  # noqa: BLE001 - a bench records every failure and goes on
        rec["error"] = f"{type(e).__name__}: {e}"[:300]
    rec["latency"] = time.perf_counter() - t0
    rec["chunks"] = chunks
    if rec["source"] == "chunks":
        rec["tokens"] = chunks
    return rec


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo = int(k)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (k - lo)


def summarize(recs: list[dict], wall: float, clients: int) -> dict:
    ok = [r for r in recs if r["ok"]]
    dec = [(r["tokens"] - 1) / (r["latency"] - r["ttft"]) for r in ok
           if r["ttft"] is not None and r["tokens"] > 1 and r["latency"] > r["ttft"]]
    sources = sorted({r["source"] for r in ok})
    return {"clients": clients, "requests": len(recs), "ok": len(ok), "errors": len(recs) - len(ok),
            "cut": sum(1 for r in ok if not r["finish"]), "wall_s": wall,
            "completion_tokens": sum(r["tokens"] for r in ok),
            "tok_s": sum(r["tokens"] for r in ok) / wall if wall > 0 else None,
            "p50_latency": pct([r["latency"] for r in ok], 0.5), "p95_latency": pct([r["latency"] for r in ok], 0.95),
            "p50_ttft": pct([r["ttft"] for r in ok if r["ttft"] is not None], 0.5),
            "decode_tok_s": statistics.fmean(dec) if dec else None,
            "token_source": "+".join(sources) or "-", "records": recs}


async def drive(base: str, model_id: str, args, deadline: float) -> dict:
    """Warm up, then every concurrency level in turn; levels past the deadline are marked skipped."""
    limits = httpx.Limits(max_connections=max(args.clients) + 4, max_keepalive_connections=max(args.clients) + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.request_timeout), limits=limits) as client:
        warm = [await one_request(client, base, model_id, PROMPTS[i], args,
                                  min(args.request_timeout, max(1.0, deadline - time.monotonic())))
                for i in range(2)]
        out = {"warmup": warm, "levels": []}
        if not any(r["ok"] for r in warm):
            out["error"] = f"warm-up failed: {warm[-1]['error']}"
            return out
        for n in args.clients:
            left = deadline - time.monotonic()
            if left < 5:
                out["levels"].append({"clients": n, "skipped": "deadline"})
                continue

            async def client_loop(c: int) -> list[dict]:
                recs = []
                for j in range(args.requests_per_client):
                    left = deadline - time.monotonic()
                    if left < 1:
                        recs.append({"ok": False, "error": "deadline", "tokens": 0, "source": "-"})
                        continue
                    p = PROMPTS[(c * args.requests_per_client + j) % len(PROMPTS)]
                    recs.append(await one_request(client, base, model_id, p, args, min(args.request_timeout, left)))
                return recs

            t0 = time.perf_counter()
            per_client = await asyncio.gather(*(client_loop(c) for c in range(n)))
            lv = summarize([r for rs in per_client for r in rs], time.perf_counter() - t0, n)
            out["levels"].append(lv)
            print(f"  {n:>2} clients: {lv['ok']}/{lv['requests']} ok, {lv['tok_s']:.1f} tok/s, "
                  f"p50 {lv['p50_latency'] or 0:.2f} s ({lv['token_source']})", file=sys.stderr, flush=True)
        return out


def run_server(name: str, threads: int, args, model: str, out_dir: Path, deadline: float) -> dict:
    res = {"server": name, "threads": threads}
    if name == "vllm":
        base, proc, log = args.vllm_url.rstrip("/"), None, None
        res["command"] = f"(already running at {base})"
    else:
        port = free_port()
        cmd = COMMANDS[name](model, threads, port)
        base, log = f"http://127.0.0.1:{port}", out_dir / f"serve_load-{name}-t{threads}.log"
        res["command"], res["log"] = " ".join(cmd), str(log)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                        os.environ.get("PYTHONPATH")])))
        print(f"{name} (threads {threads}): {res['command']}", file=sys.stderr, flush=True)
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    cwd=ROOT, start_new_session=True)
    try:
        t0 = time.monotonic()
        model_id = wait_ready(base, proc, min(deadline, t0 + args.start_timeout))
        res["ready_s"], res["model_id"] = time.monotonic() - t0, model_id
        res.update(asyncio.run(drive(base, model_id, args, deadline)))
    except Exception as e:  # noqa: BLE001 - one server failing must not stop the others
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        if proc is not None:
            stop(proc)
    if res.get("error"):
        print(f"!! {name} (threads {threads}) failed: {res['error']}", file=sys.stderr)
        if log is not None:
            print(f"-- last lines of {log}:\n{log_tail(log)}", file=sys.stderr)
    return res


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def report(runs: list[dict], clients: list[int]) -> None:
    ok_runs = [r for r in runs if not r.get("error")]
    for t in sorted({r["threads"] for r in ok_runs if r["threads"] is not None}):
        group = [r for r in ok_runs if r["threads"] in (t, None)]
        print(f"\nthreads {t}")
        print(f"{'clients':>7} {'server':7} {'ok/req':>6} {'cut':>3} {'tok/s':>7} {'p50 lat':>7} {'p95 lat':>7} "
              f"{'p50 TTFT':>8} {'dec tok/s/req':>13} tokens from")
        for n in clients:
            rows = {r["server"]: next((lv for lv in r["levels"] if lv["clients"] == n), None) for r in group}
            for name, lv in rows.items():
                if lv is None or lv.get("skipped"):
                    print(f"{n:>7} {name:7} skipped ({(lv or {}).get('skipped', 'not run')})")
                    continue
                print(f"{n:>7} {name:7} {lv['ok']:>2}/{lv['requests']:<3} {lv['cut']:>3} {fmt(lv['tok_s'], '.1f'):>7} "
                      f"{fmt(lv['p50_latency'], '.2f'):>7} {fmt(lv['p95_latency'], '.2f'):>7} "
                      f"{fmt(lv['p50_ttft'], '.3f'):>8} {fmt(lv['decode_tok_s'], '.1f'):>13} {lv['token_source']}")
            a = rows.get("llmkit")
            for other in (k for k in rows if k != "llmkit"):
                b = rows[other]
                if a and b and not a.get("skipped") and not b.get("skipped") and a["tok_s"] and b["tok_s"] \
                        and a["p50_latency"] and b["p50_latency"]:
                    print(f"{'':>7} llmkit/{other}: throughput {a['tok_s'] / b['tok_s']:.2f}x, "
                          f"p50 latency {b['p50_latency'] / a['p50_latency']:.2f}x faster")
    print("\nbatch-1 decode tok/s (per request, 1 client):")
    for r in ok_runs:
        lv = next((lv for lv in r["levels"] if lv["clients"] == 1 and not lv.get("skipped")), None)
        print(f"  {r['server']:7} threads {r['threads'] if r['threads'] is not None else '-'}: "
              f"{fmt(lv and lv['decode_tok_s'], '.1f')}")
    for r in runs:
        if r.get("error"):
            print(f"  {r['server']} threads {r['threads']}: FAILED ({r['error']})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="peer,llmkit", help="comma list of: peer, llmkit")
    ap.add_argument("--vllm-url", help="also measure an already running OpenAI-compatible server at this base URL")
    ap.add_argument("--model", help="GGUF file (default: the bundled SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--threads", default="1", help="comma list of ggml thread counts, each a separate run (e.g. 1,2)")
    ap.add_argument("--clients", default="1,4,8,16", help="comma list of concurrency levels")
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--quick", action="store_true", help="smoke test: clients 1,4 with 2 requests each")
    ap.add_argument("--request-timeout", type=float, default=180.0, help="seconds per request")
    ap.add_argument("--start-timeout", type=float, default=180.0, help="seconds for a server to become ready")
    ap.add_argument("--deadline", type=float, default=3600.0, help="seconds for the whole run")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve_load.json"))
    args = ap.parse_args()
    if args.quick:
        args.clients, args.requests_per_client = "1,4", 2
    args.clients = [int(x) for x in args.clients.split(",")]
    threads = [int(x) for x in args.threads.split(",")]
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if bad := [s for s in servers if s not in COMMANDS]:
        ap.error(f"unknown servers {bad}; known: {', '.join(COMMANDS)}")
    if args.model:
        model = str(Path(args.model).resolve())
    else:
        from llmkit.models import resolve_model
        model = str(resolve_model("smollm2-135m-instruct").path)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    up0, load0 = uptime()
    print("uptime:", up0)
    if load0 > 0.5:
        print(f"\n!!! WARNING: 1-minute load is {load0:.2f} (> 0.5): other work is running, these numbers will lie "
              f"(expect 2-thread runs to collapse). Rerun on a quiet box for real figures. !!!\n")
    deadline = time.monotonic() + args.deadline
    runs = []
    for t in threads:
        for name in servers:
            runs.append(run_server(name, t, args, model, out.parent, deadline))
    if args.vllm_url:
        runs.append(run_server("vllm", None, args, model, out.parent, deadline))
    up1, load1 = uptime()
    report(runs, args.clients)
    print("\nuptime at end:", up1)
    if load0 > 0.5 or load1 > 0.5:
        print(f"!!! load was {load0:.2f} at start, {load1:.2f} at end: treat these figures as noise !!!")
    out.write_text(json.dumps({"model": model, "uptime_start": up0, "uptime_end": up1, "load_start": load0,
                               "load_end": load1, "settings": {k: v for k, v in vars(args).items()},
                               "prompts": PROMPTS, "runs": runs}, indent=1))
    print(f"results: {out}")
    return 0 if runs and all(not r.get("error") for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
