"""In-process vs Ray on this machine, for the two Ray batch jobs: `llmkit generate` (the bundled SmolLM2-135M
GGUF, llama.cpp) and the rag stage's embedding (the bundled all-MiniLM-L6-v2).

    .venv/bin/python bench/ray_scale.py [--prompts 32] [--max-tokens 32] [--chunks 800] [--rounds 2]

Configurations, each run --rounds times round-robin (the box is shared; the best round is the least disturbed):
    generate   local-1: one engine, 1 thread         embed   local: embed.encode, torch on 2 threads
               local-2: two engines, 1 thread each           ray-1: one actor, 2 CPUs / 2 threads
               ray-1:   one actor, 1 CPU, 1 thread            ray-2: two actors, 1 CPU / 1 thread each
               ray-2:   two actors, 1 CPU / 1 thread each
all greedy, 4 prompts decoded together per engine. Engines run 1 thread each: on a busy 2-core box two ggml
threads spin-wait on each other and collapse (FACTS.md; a first run here: one engine on 2 threads took 256 s
where two 1-thread engines took 32 s), which would measure the contention, not Ray. Ray is a local Ray in this process (llmkit's own
`connect()`), joined once; its start-up is printed on its own. For every run: startup (engines or actors
loaded, the Ray join excluded) and work seconds, and the work rate. "Where Ray pays" is the job size at which
a Ray configuration's startup + N / rate drops below the fastest local one's, if its rate is higher at all.
Prints `uptime` and the lscpu flags line (another process on the same cores changes everything).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from llmkit.engines import GenParams  # noqa: E402
from llmkit.engines.batch import BatchSpec, generate  # noqa: E402
from llmkit.engines.ray_cluster import connect  # noqa: E402
from llmkit.rag import embed  # noqa: E402
from llmkit.rag.ray_embed import encode_on_ray  # noqa: E402
from llmkit.rag.samples import pydoc_windows  # noqa: E402

MODEL = "smollm2-135m-instruct"
EMBEDDER = "all-minilm-l6-v2"


def machine() -> None:
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    flags = next((ln for ln in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                  if ln.startswith("Flags:")), "Flags: ?").split()
    print("lscpu flags (avx*, amx*):", " ".join(f for f in flags if f.startswith(("avx", "amx"))),
          f"| cores: {os.cpu_count()}")


GEN = {"local-1": dict(backend="local", workers=1, threads=1), "local-2": dict(backend="local", workers=2, threads=1),
       "ray-1": dict(backend="ray", workers=1, threads=1, cpus_per_worker=1.0),
       "ray-2": dict(backend="ray", workers=2, threads=1, cpus_per_worker=1.0)}
EMB = {"local": None, "ray-1": (1, 2.0), "ray-2": (2, 1.0)}


def gen_run(name: str, prompts: Path, max_tokens: int, tmp: Path) -> dict:
    out = tmp / f"{name}-{time.monotonic_ns()}.jsonl"
    spec = BatchSpec(model=MODEL, parallel=4, n_ctx=512, params=GenParams(max_tokens=max_tokens), **GEN[name])
    s = generate(prompts, out, spec, progress=False, echo=lambda _: None)
    toks = sum(json.loads(x)["completion_tokens"] for x in out.read_text().splitlines())
    work = s["seconds"] - s["startup_s"]
    return {"startup_s": s["startup_s"], "work_s": work, "items": s["answered"], "rate": s["answered"] / work,
            "tok_s": toks / work, "answers": [json.loads(x)["answer"] for x in out.read_text().splitlines()]}


def emb_run(name: str, texts: list[str]) -> dict:
    t0 = time.perf_counter()
    if EMB[name] is None:
        model = embed.open_embedder(EMBEDDER)
        import torch

        torch.set_num_threads(2)
        startup = time.perf_counter() - t0
        t1 = time.perf_counter()
        vec = embed.encode(model, texts, 32, progress=False)
        work = time.perf_counter() - t1
    else:
        workers, cpus = EMB[name]
        st: dict = {}
        vec = encode_on_ray(EMBEDDER, texts, 32, workers=workers, cpus_per_worker=cpus, progress=False, stats=st)
        startup, work = st["startup_s"], time.perf_counter() - t0 - st["startup_s"]
    return {"startup_s": startup, "work_s": work, "items": len(texts), "rate": len(texts) / work, "vec": vec}


def report(title: str, unit: str, best: dict[str, dict]) -> None:
    print(f"\n{title}")
    print(f"{'config':<9} {'startup s':>9} {'work s':>8} {unit + '/s':>12}  {'vs fastest local':>16}")
    local = max((k for k in best if k.startswith("local")), key=lambda k: best[k]["rate"])
    for k, r in best.items():
        extra = f"  {r['tok_s']:.1f} tok/s" if "tok_s" in r else ""
        print(f"{k:<9} {r['startup_s']:>9.2f} {r['work_s']:>8.2f} {r['rate']:>12.2f}  "
              f"{r['rate'] / best[local]['rate']:>15.2f}x{extra}")
    lo = best[local]
    for k, r in best.items():
        if not k.startswith("ray"):
            continue
        if r["rate"] <= lo["rate"]:
            print(f"  {k}: slower per {unit} than {local} ({r['rate']:.2f} vs {lo['rate']:.2f}/s): Ray does not pay "
                  "on this machine at any size")
        else:
            n = (r["startup_s"] - lo["startup_s"]) / (1 / lo["rate"] - 1 / r["rate"])
            print(f"  {k}: pays beyond ~{max(n, 0):.0f} {unit}s (its start-up {r['startup_s']:.1f} s is repaid by "
                  f"{r['rate'] / lo['rate']:.2f}x the rate)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--chunks", type=int, default=800)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    machine()
    tmp = Path(tempfile.mkdtemp(prefix="ray-scale-"))
    prompts = tmp / "prompts.jsonl"
    topics = pydoc_windows(args.prompts, 8, 20, seed=1)
    prompts.write_text("".join(json.dumps({"prompt": f"Explain briefly: {t}"}) + "\n" for t in topics))
    texts = pydoc_windows(args.chunks, 40, 80, seed=0)

    t = time.perf_counter()
    connect(None)  # a local Ray on 127.0.0.1, as `backend: ray` starts one when no address is given
    print(f"ray.init (a local Ray, {os.cpu_count()} CPUs): {time.perf_counter() - t:.1f} s, once")

    gen: dict[str, list] = {k: [] for k in GEN}
    emb: dict[str, list] = {k: [] for k in EMB}
    for rnd in range(args.rounds):
        for k in GEN:
            gen[k].append(gen_run(k, prompts, args.max_tokens, tmp))
            print(f"round {rnd + 1} generate {k}: {gen[k][-1]['work_s']:.1f} s", flush=True)
        for k in EMB:
            emb[k].append(emb_run(k, texts))
            print(f"round {rnd + 1} embed {k}: {emb[k][-1]['work_s']:.1f} s", flush=True)
    best_gen = {k: max(v, key=lambda r: r["rate"]) for k, v in gen.items()}
    best_emb = {k: max(v, key=lambda r: r["rate"]) for k, v in emb.items()}
    same = all(r["answers"] == best_gen["local-1"]["answers"] for r in best_gen.values())
    import numpy as np

    gap = max(float(np.abs(r["vec"] - best_emb["local"]["vec"]).max()) for r in best_emb.values())
    report(f"generate: {args.prompts} prompts x {args.max_tokens} tokens, {MODEL} (best of {args.rounds}); "
           f"answers identical across configs: {same}", "prompt", best_gen)
    report(f"embed: {args.chunks} chunks of 40-80 words, {EMBEDDER}, batch 32 (best of {args.rounds}); "
           f"max |vector difference| vs local: {gap:.2e}", "chunk", best_emb)
    machine()


if __name__ == "__main__":
    main()
