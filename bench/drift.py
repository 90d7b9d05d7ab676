"""Which two-sample test flags prompt drift best, and at what cost (issue 18: drift over 10,000 prompts ≤ 5 s).

    HF_HUB_OFFLINE=1 python bench/drift.py [--repeats 5] [--sizes 50,100,200] [--evidently-path DIR]

Reference: examples/support/train.jsonl's prompts (what the example model was trained on). In-distribution:
examples/drift/in_distribution.jsonl (support questions in phrasings the training set never uses);
out-of-distribution: examples/drift/out_of_distribution.jsonl (cooking, code, support questions in German).
Each method runs on `repeats` seeded samples of each size; a method is good when it flags every OOD sample
and no in-distribution one. Then the cost at 10,000 prompts: embedding them (int8 MiniLM, 1 thread) and the test
on 10,000 cached embeddings (the server tests its last `drift_window` prompts, default 1000: both are timed).

Evidently (its embedding drift, `EmbeddingsDriftMetric` with its `model` and `mmd` methods) runs when importable;
pass `--evidently-path` for a folder it was installed into with `pip install --target` (it installs uvloop and
httptools into a venv, which uvicorn then picks up by itself, so llmkit does not depend on it).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    flags = next((ln for ln in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                  if ln.startswith("Flags")), "Flags: ?")
    keep = [f for f in flags.split() if f.startswith(("avx", "amx"))]
    return (f"{platform.processor() or platform.machine()}; uptime: "
            f"{subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}\nlscpu flags: {' '.join(keep)}")


def prompts(path: Path) -> tuple[list[str], list[str]]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r["prompt"] for r in rows], [r["kind"] for r in rows]


def evidently_test(method: str):
    """Evidently 0.7's legacy embedding drift (the preset API has no embeddings in 0.7's new API)."""
    import pandas as pd
    from evidently.legacy.metrics import EmbeddingsDriftMetric
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import mmd, model
    from evidently.legacy.pipeline.column_mapping import ColumnMapping
    from evidently.legacy.report import Report

    def run(ref: np.ndarray, cur: np.ndarray) -> tuple[float, bool]:
        cols = [f"e{i}" for i in range(ref.shape[1])]
        mapping = ColumnMapping(embeddings={"prompt": cols})
        drift = model() if method == "model" else mmd()
        rep = Report(metrics=[EmbeddingsDriftMetric("prompt", drift_method=drift)])
        rep.run(reference_data=pd.DataFrame(ref, columns=cols), current_data=pd.DataFrame(cur, columns=cols),
                column_mapping=mapping)
        res = rep.as_dict()["metrics"][0]["result"]
        return float(res["drift_score"]), bool(res["drift_detected"])

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", default="50,100,200")
    ap.add_argument("--evidently-path")
    ap.add_argument("--skip-10k", action="store_true")
    args = ap.parse_args()
    from llmkit.monitor import drift

    print(machine())
    ref_texts = drift.reference_prompts(ROOT / "examples/support/train.jsonl")
    ind, _ = prompts(ROOT / "examples/drift/in_distribution.jsonl")
    ood, kinds = prompts(ROOT / "examples/drift/out_of_distribution.jsonl")
    t0 = time.perf_counter()
    ref, e_in, e_out = drift.embed(ref_texts), drift.embed(ind), drift.embed(ood)
    n_emb = len(ref_texts) + len(ind) + len(ood)
    print(f"embedded {n_emb} prompts in {time.perf_counter() - t0:.1f} s (int8 MiniLM, 1 thread)")

    methods = {m: (lambda m: lambda a, b: (lambda r: (r.score, r.drifted))(drift.two_sample(m, a, b)))(m)
               for m in drift.METHODS}
    if args.evidently_path:
        sys.path.insert(0, args.evidently_path)
    try:
        methods["evidently-model"] = evidently_test("model")
        methods["evidently-mmd"] = evidently_test("mmd")
    except ImportError as e:
        print(f"evidently not importable ({e}); skipped")
    kinds_arr = np.array(kinds)
    sets = {"in-dist": e_in, "ood-all": e_out, **{f"ood-{k}": e_out[kinds_arr == k] for k in sorted(set(kinds))},
            "mix-25%": None}
    # partial drift: a quarter of the traffic out of distribution (the rest in-distribution)
    mixed = np.concatenate([e_in, e_out[np.random.default_rng(0).choice(len(e_out), len(e_in) // 3, replace=False)]])
    print(f"\nreference {len(ref)} prompts; in-dist {len(e_in)}; ood {len(e_out)} "
          f"({', '.join(f'{k} {int((kinds_arr == k).sum())}' for k in sorted(set(kinds)))})")
    print(f"{'method':16} {'n':>4} " + " ".join(f"{s:>17}" for s in sets) + f" {'s/test':>8}")
    for name, fn in methods.items():
        for n in [int(x) for x in args.sizes.split(",")]:
            cells, secs = [], []
            for s, pool in sets.items():
                if s == "mix-25%":
                    pool = mixed
                scores, flags = [], []
                for r in range(args.repeats):
                    idx = np.random.default_rng(r).choice(len(pool), min(n, len(pool)), replace=False)
                    t = time.perf_counter()
                    score, flagged = fn(ref, pool[idx])
                    secs.append(time.perf_counter() - t)
                    scores.append(score)
                    flags.append(flagged)
                cells.append(f"{np.mean(scores):8.3f} {sum(flags)}/{len(flags)} flag")
            print(f"{name:16} {n:>4} " + " ".join(f"{c:>17}" for c in cells) + f" {np.median(secs):8.3f}")
    if args.skip_10k:
        return
    print("\n10,000 prompts (the in- and out-of-distribution prompts repeated):")
    pool = (ind + ood) * (10_000 // (len(ind) + len(ood)) + 1)
    texts = pool[:10_000]
    t = time.perf_counter()
    vecs = drift.embed(texts)
    t_embed = time.perf_counter() - t
    print(f"  embed 10,000 prompts: {t_embed:.1f} s ({10_000 / t_embed:.0f} prompts/s, 1 thread)")
    # `llmkit monitor` over a 10,000-request log whose prompt embeddings the server's drift monitor stored
    import tempfile

    from llmkit.monitor import report
    from llmkit.monitor.store import SqliteLog

    path = Path(tempfile.mkdtemp()) / "requests.db"
    log, t_start = SqliteLog(path), time.time() - 10_000
    for i, text in enumerate(texts):
        log.write({"request_id": f"r{i}", "time": t_start + i, "status": 200, "latency_s": 1.0, "input": [text]})
    log.embeddings([f"r{i}" for i in range(len(texts))], vecs)
    log.close()
    for sample in (500, 1000):
        t = time.perf_counter()
        s = report.summarize(path, window=1000, reference=ROOT / "examples/support/train.jsonl", drift_sample=sample)
        print(f"  llmkit monitor, 10,000 logged prompts, {len(s.windows)} windows + the whole log, "
              f"--drift-sample {sample}, embeddings cached in the log: {time.perf_counter() - t:.2f} s")
    for m in drift.METHODS:
        for window in (1000, 10_000):
            if m == "mmd" and window > 2000:  # (n+m)² kernel: 10k+1k → 121M entries, ~1 GB and a minute
                print(f"  {m:10} on {window:>6} cached embeddings: skipped ((n+m)² kernel matrix)")
                continue
            t = time.perf_counter()
            r = drift.two_sample(m, ref, vecs[-window:])
            print(f"  {m:10} on {window:>6} cached embeddings: {time.perf_counter() - t:.2f} s "
                  f"(score {r.score:.3f}, drifted {r.drifted})")


if __name__ == "__main__":
    main()
