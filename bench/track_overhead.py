"""What MLflow tracking adds to `llmkit run`, stage by stage (issue 18's goal: <= 2% of a stage's wall time).

    .venv/bin/python bench/track_overhead.py [--rows 64] [--epochs 0.25] [--uri sqlite:///...] [--full]

Runs a recipe made from the example's data on the bundled model (model, data, a short LoRA, q8_0 compress with a
small report) with tracking on into a fresh sqlite MLflow, and times every call the pipeline makes into the
tracker (`Tracker.stage`: search by manifest hash, create the run, params, metrics, dataset inputs, artifacts)
against the stage's own wall time. The one-time costs (importing MLflow; creating the database, alembic's
migrations, only ever once per $LLMKIT_HOME) are reported apart from the per-stage cost, and so is the second,
all-skipped run (one search per stage). `--full` runs examples/recipe.yaml itself (~11 min).
Prints `uptime` and the CPU flags: on a busy 2-core box every number stretches.
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

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=64, help="training rows taken from examples/support/train.jsonl")
    ap.add_argument("--epochs", type=float, default=0.25)
    ap.add_argument("--uri", help="tracking URI (default: a fresh sqlite database in a temp folder)")
    ap.add_argument("--full", action="store_true", help="run examples/recipe.yaml itself")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["LLMKIT_TRACK"] = "1"

    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    print("cpu flags:", " ".join(f for f in flags.split() if f.startswith(("avx", "amx"))))

    work = Path(tempfile.mkdtemp(prefix="track-bench-"))
    uri = args.uri or f"sqlite:///{work / 'mlflow.db'}"
    if args.full:
        recipe_path = ROOT / "examples" / "recipe.yaml"
        text = recipe_path.read_text().replace("out_dir: ../runs/{name}", f"out_dir: {work}/runs/{{name}}")
        recipe_path = ROOT / "examples" / f".bench-track-{os.getpid()}.yaml"
        recipe_path.write_text(text + f"track: {{mlflow_uri: '{uri}'}}\n")
    else:
        rows = (ROOT / "examples" / "support" / "train.jsonl").read_text().splitlines()[: args.rows]
        (work / "train.jsonl").write_text("\n".join(rows) + "\n")
        recipe_path = work / "bench.yaml"
        recipe_path.write_text(
            "name: track-bench\n"
            "data: {train: train.jsonl, val_fraction: 0.2, max_tokens: 512}\n"
            f"train: {{epochs: {args.epochs}, batch_size: 4, max_length: 256, eval_every: 5, save_every: 100}}\n"
            "compress: {quantize: q8_0, eval_rows: 8, prompts: 2, gen_tokens: 16}\n"
            f"track: {{mlflow_uri: '{uri}'}}\n")

    from llmkit.config import load_recipe
    from llmkit.pipeline import run_recipe
    from llmkit.track import mirror

    calls: list[tuple[str, float]] = []
    opens: list[float] = []
    stage_, open_ = mirror.Tracker.stage, mirror.Tracker._open

    def timed_stage(self, folder):
        t0 = time.perf_counter()
        try:
            return stage_(self, folder)
        finally:
            calls.append((Path(folder).name, time.perf_counter() - t0))

    def timed_open(self):
        first = self._client is None
        t0 = time.perf_counter()
        try:
            return open_(self)
        finally:
            if first:
                opens.append(time.perf_counter() - t0)

    mirror.Tracker.stage, mirror.Tracker._open = timed_stage, timed_open
    recipe = load_recipe(recipe_path)
    try:
        results = run_recipe(recipe, echo=lambda s: None)
        first_calls = list(calls)
        calls.clear()
        t0 = time.perf_counter()
        again = run_recipe(recipe, echo=lambda s: None)
        skipped_total = time.perf_counter() - t0
    finally:
        if args.full:
            recipe_path.unlink()
    assert all(r.status == "skipped" for r in again)

    one_time = opens[0] if opens else 0.0
    print(f"\none-time: import MLflow + open/create the database + the experiment: {one_time:.2f} s "
          "(paid inside the first stage's tracking call)")
    print(f"{'stage':<10} {'stage s':>9} {'track s':>9} {'track s*':>9} {'% of stage':>11}")
    rows_out = []
    for r, (name, sec) in zip(results, first_calls):
        per = sec - (one_time if name == first_calls[0][0] else 0.0)
        pct = 100 * per / max(r.seconds, 1e-9)
        rows_out.append({"stage": name, "stage_s": round(r.seconds, 3), "track_s": round(sec, 3),
                         "track_s_without_one_time": round(per, 3), "pct": round(pct, 2)})
        print(f"{name:<10} {r.seconds:>9.2f} {sec:>9.3f} {per:>9.3f} {pct:>10.2f}%")
    total_stage = sum(r.seconds for r in results)
    total_track = sum(s for _, s in first_calls)
    print(f"{'all':<10} {total_stage:>9.2f} {total_track:>9.3f} {total_track - one_time:>9.3f} "
          f"{100 * total_track / total_stage:>10.2f}%  (with the one-time cost: "
          f"{100 * total_track / total_stage:.2f}%; without: {100 * (total_track - one_time) / total_stage:.2f}%)")
    print(f"second run (every stage skipped): {skipped_total:.3f} s in all, tracking "
          f"{sum(s for _, s in calls):.3f} s (one search per stage)")
    print("* per-stage cost without the one-time import/open")
    print(json.dumps({"one_time_s": round(one_time, 3), "stages": rows_out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
