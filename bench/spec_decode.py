"""Batch-1 decode with speculative decoding: `llmkit serve` with and without prompt lookup beside llama-cpp-python's
own server, same GGUF, same threads, one script, requests round-robin.

    .venv/bin/python bench/spec_decode.py [--threads 2] [--rounds 5] [--max-tokens 128] [--model PATH]

Three servers start side by side on free 127.0.0.1 ports (logs in bench/results/spec_decode-*.log):
  peer       `python -m llama_cpp.server` (its Llama API, one request at a time)
  llmkit     `llmkit serve --speculative off`
  llmkit-pl  `llmkit serve --speculative prompt_lookup`
All get the same file: by default the Q8_0 that `llmkit serve` makes of the bundled SmolLM2-135M (its `weights:
auto`), given to llmkit with `--weights as-is` and to the peer as is; --model PATH gives another GGUF to all three;
`--llmkit-weights auto` lets llmkit serve it as its default does (a Q4_1 file as Q8_0) while the peer runs the file.
Two workloads, one streamed chat request (greedy, max_tokens) at a time, round-robin over servers and prompts so
that a noisy neighbour hits every server alike:
  rag   the serving path's RAG prompt (rag.answer.augment) over four sections of examples/support/docs/r2-router.md,
        questions whose answers copy their source
  chat  free-form prompts (a story, an explanation): little to copy
Per request: decode tok/s = (completion tokens - 1) / (end - first content chunk), as bench/serve_load.py. The table
gives each server's median per workload and its ratio to the peer's, and whether llmkit's replies with and without
drafts are identical (they must be: greedy). Check `uptime` (printed): a busy 2-core box distorts everything.
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import ROOT, free_port, log_tail, one_request, stop, uptime, wait_ready  # noqa: E402

RAG_QUESTIONS = ["How do I do a factory reset of the R2 router? Give the steps.",
                 "What do the lights on the R2 router mean? List them."]
CHAT_PROMPTS = ["Write a short story about a cat who learns to play the piano.",
                "Explain in a few sentences why the sky is blue."]


def rag_prompts() -> list[str]:
    """The user turn the server builds for a RAG chat (sources, question, instruction), as plain text."""
    from llmkit.rag.answer import augment

    doc = (ROOT / "examples/support/docs/r2-router.md").read_text()
    hits = [SimpleNamespace(text=s if i == 0 else "## " + s) for i, s in enumerate(doc.split("\n## ")[:4])]
    return [augment([{"role": "user", "content": q}], hits)[-1]["content"] for q in RAG_QUESTIONS]


def commands(model: str, threads: int, port: int, weights: str = "as-is") -> dict[str, list[str]]:
    peer = [sys.executable, "-m", "llama_cpp.server", "--model", model, "--n_threads", str(threads),
            "--n_threads_batch", str(threads), "--n_ctx", "2048", "--host", "127.0.0.1"]
    llmkit = [sys.executable, "-m", "llmkit.cli", "serve", "--model", model, "--engine", "llamacpp", "--threads",
              str(threads), "--host", "127.0.0.1", "--embedder", "none", "--no-ui", "--weights", weights]
    return {"peer": peer, "llmkit": [*llmkit, "--speculative", "off"],
            "llmkit-pl": [*llmkit, "--speculative", "prompt_lookup"]}


def served_file(path: str | None) -> str:
    if path:
        return str(Path(path).resolve())
    from llmkit.config import ServeConfig
    from llmkit.models import resolve_model
    from llmkit.serve import serving_weights

    return str(serving_weights(resolve_model("smollm2-135m-instruct"), ServeConfig()).path)


def lscpu_flags() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Flags")), "?")


async def measure(servers: dict, workloads: dict, args) -> list[dict]:
    recs = []
    params = SimpleNamespace(max_tokens=args.max_tokens, temperature=0.0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.request_timeout)) as client:
        for name, (base, model_id) in servers.items():  # warm-up: one request of each kind
            for prompts in workloads.values():
                await one_request(client, base, model_id, prompts[0], params, args.request_timeout)
        for r in range(args.rounds):
            for kind, prompts in workloads.items():
                for i, prompt in enumerate(prompts):
                    names = list(servers)
                    names = names[(r + i) % len(names):] + names[:(r + i) % len(names)]  # rotate who goes first
                    for name in names:
                        base, model_id = servers[name]
                        rec = await one_request(client, base, model_id, prompt, params, args.request_timeout)
                        rec.update(server=name, kind=kind, prompt=i, round=r)
                        if rec["ok"] and rec["ttft"] is not None and rec["tokens"] > 1:
                            rec["decode_tok_s"] = (rec["tokens"] - 1) / (rec["latency"] - rec["ttft"])
                        recs.append(rec)
            print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    return recs


async def replies(servers: dict, workloads: dict, args) -> dict:
    """Each llmkit server's full greedy reply per prompt (non-streamed), to compare with and without drafts."""
    out = {}
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.request_timeout)) as client:
        for name in ("llmkit", "llmkit-pl"):
            base, model_id = servers[name]
            for kind, prompts in workloads.items():
                for i, p in enumerate(prompts):
                    body = {"model": model_id, "messages": [{"role": "user", "content": p}],
                            "max_tokens": args.max_tokens, "temperature": 0.0}
                    r = await client.post(base + "/v1/chat/completions", json=body)
                    got = r.json()
                    out[(name, kind, i)] = (got["choices"][0]["message"]["content"] if r.status_code == 200
                                            else f"HTTP {r.status_code}: {got}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="GGUF file for all three servers (default: the Q8_0 llmkit serves of the bundled "
                                    "SmolLM2-135M-Instruct)")
    ap.add_argument("--llmkit-weights", choices=["as-is", "auto"], default="as-is",
                    help="auto: llmkit serves the file as its default does (a Q4_1 file as its Q8_0 requantization, "
                         "README), the peer the file itself: the two products as a user runs them on one file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--request-timeout", type=float, default=180.0)
    ap.add_argument("--start-timeout", type=float, default=180.0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "spec_decode.json"))
    args = ap.parse_args()
    model = served_file(args.model)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    up0, load0 = uptime()
    print("uptime:", up0)
    print("lscpu flags:", lscpu_flags())
    print(f"model: {model} (llmkit --weights {args.llmkit_weights})")
    print(f"threads: {args.threads}, max_tokens {args.max_tokens}, rounds {args.rounds}")
    workloads = {"rag": rag_prompts(), "chat": CHAT_PROMPTS}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    procs, servers = {}, {}
    try:
        for name, cmd in commands(model, args.threads, 0, args.llmkit_weights).items():
            port = free_port()
            cmd = [*cmd, "--port", str(port)]
            log = out.parent / f"spec_decode-{name}.log"
            print(f"{name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
            with open(log, "wb") as fh:
                procs[name] = (subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                env=env, cwd=ROOT, start_new_session=True), log)
            base = f"http://127.0.0.1:{port}"
            try:
                wait_ready(base, procs[name][0], time.monotonic() + args.start_timeout)
                # the id from /v1/models with room to answer (wait_ready falls back to "default" when only /health
                # answered within its 2 s, as happens on a busy box); the peer serves any id
                ids = httpx.get(base + "/v1/models", timeout=60).json()["data"]
                servers[name] = (base, ids[0]["id"])
            except Exception as e:
                print(f"!! {name} did not start: {e}\n{log_tail(log)}", file=sys.stderr)
                return 1
        recs = asyncio.run(measure(servers, workloads, args))
        texts = asyncio.run(replies(servers, workloads, args))
    finally:
        for proc, _ in procs.values():
            stop(proc)
    up1, load1 = uptime()
    print(f"\n{'workload':8} {'server':10} {'n':>3} {'decode tok/s (median)':>21} {'min-max':>13} {'x peer':>7} "
          f"{'TTFT s':>7} {'tokens':>6}")
    table = {}
    for kind in workloads:
        peer = None
        for name in servers:
            rs = [r for r in recs if r["kind"] == kind and r["server"] == name and r.get("decode_tok_s")]
            if not rs:
                print(f"{kind:8} {name:10} no successful requests")
                continue
            rates = [r["decode_tok_s"] for r in rs]
            med = statistics.median(rates)
            peer = med if name == "peer" else peer
            ratio = f"{med / peer:.2f}x" if peer else "-"
            table[(kind, name)] = med
            print(f"{kind:8} {name:10} {len(rs):>3} {med:>21.1f} {min(rates):>6.1f}-{max(rates):<6.1f} {ratio:>7} "
                  f"{statistics.median(r['ttft'] for r in rs):>7.3f} {statistics.median(r['tokens'] for r in rs):>6.0f}")
    same = all(texts[("llmkit", k, i)] == texts[("llmkit-pl", k, i)] for k, ps in workloads.items()
               for i in range(len(ps)))
    print(f"\nllmkit replies with and without prompt lookup identical (greedy, {sum(map(len, workloads.values()))} "
          f"prompts): {'yes' if same else 'NO'}")
    for kind in workloads:
        if (kind, "llmkit") in table and (kind, "llmkit-pl") in table:
            print(f"{kind}: prompt lookup / no drafts = {table[(kind, 'llmkit-pl')] / table[(kind, 'llmkit')]:.2f}x")
    print("uptime at end:", up1)
    if max(load0, load1) > 0.5:
        print(f"!!! load was {load0:.2f} at start, {load1:.2f} at end (2 cores): other work ran, treat as noise !!!")
    out.write_text(json.dumps({"model": model, "uptime_start": up0, "uptime_end": up1, "lscpu_flags": lscpu_flags(),
                               "settings": vars(args), "identical": same, "records": recs,
                               "replies": {"|".join(map(str, k)): v for k, v in texts.items()}}, indent=1))
    print(f"results: {out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
