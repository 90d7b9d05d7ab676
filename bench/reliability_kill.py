"""kill -9 of `llmkit run` at many seeded points and random times; how often the next run completes with the same
payload as an uninterrupted run (tests/reliability does a few of these on every `make test`).

    PYTHONPATH=src:tests/reliability python bench/reliability_kill.py --seeds 20 --random 10 [--recipe R.yaml]

Without --recipe it runs the tests' tiny recipe (tiny random Llama GGUF, every stage of pipeline.STAGES). Each
trial: a fresh folder, one run killed (at a point chosen by the seed among all points an uninterrupted run
passed, or at a random moment of its wall time), then a run to the end; the payload (tests/reliability/
reliab_helpers.payload: every file's hash, timed reports aside, manifests without timings) must equal the
reference's. Prints one line per trial and the totals.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))

from reliab_helpers import cli_args, diff, env, leftovers, payload, run_cli, write_recipe  # noqa: E402

from llmkit.config import load_recipe  # noqa: E402


def _prepare(root: Path, model: Path, recipe: Path | None) -> None:
    if recipe is None:
        write_recipe(root, model)
    else:  # the user's recipe, with its inputs beside it (copied whole, so relative paths hold)
        shutil.copytree(recipe.parent, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("runs"))
        (root / "r.yaml").write_text((root / recipe.name).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20, help="trials killed at a seeded point")
    ap.add_argument("--random", type=int, default=10, help="trials killed at a seeded random moment")
    ap.add_argument("--recipe", type=Path, help="a recipe to use instead of the tiny one")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="llmkit-reliab-"))
    model = None
    if args.recipe is None:
        from conftest import build_tiny_llama, write_gguf

        model = write_gguf(build_tiny_llama(base / "tiny"), base / "tiny.gguf")
    ref = base / "w"  # every trial runs in the same folder, so absolute paths agree
    _prepare(ref, model, args.recipe)
    stages = load_recipe(ref / "r.yaml").stages()
    t0 = time.perf_counter()
    r = run_cli(ref, timeout=3600, LLMKIT_TEST_KILL_LOG=str(base / "points.log"))
    assert r.returncode == 0, r.stderr
    seconds = time.perf_counter() - t0
    want = payload(ref, stages)
    points = [p for p in (base / "points.log").read_text().split() if ":begin:" not in p]
    print(f"reference: {len(stages)} stages {stages}, {len(points)} kill points, {seconds:.1f} s")
    ok = total = 0
    trials = [("point", i) for i in range(args.seeds)] + [("random", i) for i in range(args.random)]
    for kind, seed in trials:
        shutil.rmtree(ref)
        _prepare(ref, model, args.recipe)
        rng = random.Random(seed)
        if kind == "point":
            where = rng.choice(points)
            k = run_cli(ref, timeout=3600, LLMKIT_TEST_KILL_AT=where)
            killed = k.returncode == -signal.SIGKILL
        else:
            delay = rng.uniform(0.5, seconds)
            p = subprocess.Popen(cli_args(ref), cwd=ref, env=env(ref), stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
            try:
                out, _ = p.communicate(timeout=delay)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                out, _ = p.communicate()
            killed = p.returncode == -signal.SIGKILL
            last = [line.split()[1] for line in out.splitlines() if line.startswith("[")]
            where = f"{delay:.1f} s ({last[-1] if last else 'start'})"
        final = run_cli(ref, timeout=3600)
        bad = diff(payload(ref, stages), want) if final.returncode == 0 else ["final run failed"]
        bad += [f"leftover {x}" for x in leftovers(ref)]
        total += 1
        ok += not bad
        print(f"{kind:6} seed {seed:3}: killed at {where:40} {'(not killed) ' if not killed else ''}"
              f"{'same payload' if not bad else 'DIFFERS: ' + ', '.join(bad[:5])}", flush=True)
    print(f"{ok}/{total} killed runs resumed to the same payload as the uninterrupted run")
    shutil.rmtree(base)


if __name__ == "__main__":
    main()
