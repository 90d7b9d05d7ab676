"""What MLflow tracking adds to `llmkit run`, stage by stage (issue 18's goal: <= 2% of a stage's wall time).

    .venv/bin/python bench/track_overhead.py [--rounds 3] [--rows 64] [--epochs 0.25] [--uri sqlite:///...]

Runs a recipe made from the example's data on the bundled model (model, data, a short LoRA, q8_0 compress with a
small report) `--rounds` times with tracking off and as often with it on, alternating, each time into a fresh run
folder so every stage really runs; the tracked rounds share one sqlite MLflow (the first one creates it). Two views:

- *wall*: each stage's wall time as the pipeline sees it — from its `[i/n]` line to the next stage's (the last one
  to run_recipe's return, the final wait for the tracker included) — median of the rounds, on against off. This
  is what a user waits, CPU contention from the tracking child included; on a 2-core box its noise is a few %.
- *blocking*: the time the pipeline's own process spends inside tracker calls (queueing a stage, the final close),
  which is the part tracking can put on a stage's critical path; the child's own work runs beside the next stage.

Prints `uptime` and the CPU flags: on a busy 2-core box every number stretches.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def recipe_text(rows_file: Path, out_dir: Path, epochs: float, uri: str) -> str:
    return ("name: track-bench\n"
            f"out_dir: {out_dir}\n"
            f"data: {{train: {rows_file}, val_fraction: 0.2, max_tokens: 512}}\n"
            f"train: {{epochs: {epochs}, batch_size: 4, max_length: 256, eval_every: 5, save_every: 100}}\n"
            "compress: {quantize: q8_0, eval_rows: 8, prompts: 2, gen_tokens: 16}\n"
            f"track: {{mlflow_uri: '{uri}'}}\n")


def one_round(recipe_path: Path, tracked: bool, blocking: dict[str, float]) -> tuple[dict[str, float], list]:
    """Run the recipe once; returns ({stage: wall seconds}, results)."""
    from llmkit.config import load_recipe
    from llmkit.pipeline import run_recipe

    os.environ["LLMKIT_TRACK"] = "1" if tracked else "0"
    marks: list[tuple[str, float]] = []

    def echo(line: str) -> None:
        if line.startswith("[") and "]" in line and "→" in line:
            marks.append((line.split("]")[1].split("→")[0].strip(), time.perf_counter()))

    blocking.clear()
    results = run_recipe(load_recipe(recipe_path), echo=echo)
    end = time.perf_counter()
    walls = {name: (marks[i + 1][1] if i + 1 < len(marks) else end) - t for i, (name, t) in enumerate(marks)}
    return walls, results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds with tracking off, and as many with it on")
    ap.add_argument("--rows", type=int, default=64, help="training rows taken from examples/support/train.jsonl")
    ap.add_argument("--epochs", type=float, default=0.25)
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip the untimed first round (imports and caches would count against round 1)")
    ap.add_argument("--uri", help="tracking URI (default: a fresh sqlite database in a temp folder)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    print("cpu flags:", " ".join(f for f in flags.split() if f.startswith(("avx", "amx"))))

    work = Path(tempfile.mkdtemp(prefix="track-bench-"))
    uri = args.uri or f"sqlite:///{work / 'mlflow.db'}"
    rows = (ROOT / "examples" / "support" / "train.jsonl").read_text().splitlines()[: args.rows]
    (work / "train.jsonl").write_text("\n".join(rows) + "\n")

    # time what the pipeline's own process spends inside tracker calls
    from llmkit.track import background

    blocking: dict[str, float] = {}
    current = {"stage": "?"}
    for name in ("stage", "flush", "close"):
        orig = getattr(background.BackgroundTracker, name)

        def timed(self, *a, _orig=orig, _name=name, **kw):
            key = Path(a[0]).name if _name == "stage" else current["stage"]
            if _name == "stage":
                current["stage"] = key
            t0 = time.perf_counter()
            try:
                return _orig(self, *a, **kw)
            finally:
                blocking[key] = blocking.get(key, 0.0) + time.perf_counter() - t0

        setattr(background.BackgroundTracker, name, timed)

    child: list[dict[str, float]] = []
    close = background.BackgroundTracker.close

    def close_and_keep(self, *a, **kw):
        close(self, *a, **kw)
        child.append(self.summary.get("seconds", {}))

    background.BackgroundTracker.close = close_and_keep
    if not args.no_warmup:  # one untimed round: the first imports of torch, transformers, llama.cpp land here
        recipe_path = work / "r-warmup.yaml"
        recipe_path.write_text(recipe_text(work / "train.jsonl", work / "runs-warmup", args.epochs, uri))
        one_round(recipe_path, False, blocking)
        print("warm-up round done", flush=True)

    walls: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    blocks: list[dict[str, float]] = []
    for i in range(args.rounds):
        for tracked in (False, True):
            out = work / f"runs-{'on' if tracked else 'off'}-{i}"
            recipe_path = work / f"r-{'on' if tracked else 'off'}-{i}.yaml"
            recipe_path.write_text(recipe_text(work / "train.jsonl", out, args.epochs, uri))
            w, results = one_round(recipe_path, tracked, blocking)
            assert all(r.status == "ran" for r in results), [(r.stage, r.status) for r in results]
            walls[tracked].append(w)
            if tracked:
                blocks.append(dict(blocking))
            print(f"round {i + 1} tracking {'on ' if tracked else 'off'}: "
                  + "  ".join(f"{k} {v:.2f}s" for k, v in w.items()), flush=True)

    stages = list(walls[False][0])
    print(f"\n{'stage':<10} {'off s':>8} {'on s':>8} {'on-off':>8} {'wall %':>8} {'blocking s':>11} {'blocking %':>11} "
          f"{'child s':>8}")
    out_rows = []
    for s in stages:
        off = statistics.median(w[s] for w in walls[False])
        on = statistics.median(w[s] for w in walls[True])
        blk = statistics.median(b.get(s, 0.0) for b in blocks[1:] or blocks)  # the first round creates the database
        kid = statistics.median(c.get(s, 0.0) for c in child[1:] or child)
        out_rows.append({"stage": s, "off_s": round(off, 3), "on_s": round(on, 3),
                         "wall_pct": round(100 * (on - off) / off, 2), "blocking_s": round(blk, 4),
                         "blocking_pct": round(100 * blk / off, 3), "child_s": kid})
        print(f"{s:<10} {off:>8.2f} {on:>8.2f} {on - off:>+8.2f} {100 * (on - off) / off:>+7.2f}% "
              f"{blk:>11.4f} {100 * blk / off:>10.3f}% {kid:>8.3f}")
    total_off = statistics.median(sum(w.values()) for w in walls[False])
    total_on = statistics.median(sum(w.values()) for w in walls[True])
    print(f"{'all':<10} {total_off:>8.2f} {total_on:>8.2f} {total_on - total_off:>+8.2f} "
          f"{100 * (total_on - total_off) / total_off:>+7.2f}%")
    print("spread of the off rounds (max-min)/median per stage: "
          + "  ".join(f"{s} {100 * (max(w[s] for w in walls[False]) - min(w[s] for w in walls[False])) / statistics.median(w[s] for w in walls[False]):.1f}%" for s in stages))
    print("first tracked round (creates the database): blocking "
          + "  ".join(f"{k} {v:.3f}s" for k, v in blocks[0].items())
          + "; child " + "  ".join(f"{k} {v:.3f}s" for k, v in child[0].items()))
    print("child s: the child's own mirroring of the stage (MLflow import and database creation in round 1 only), "
          "done beside the next stage")
    print(json.dumps({"rounds": args.rounds, "stages": out_rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
