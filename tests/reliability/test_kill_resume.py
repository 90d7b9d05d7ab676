"""kill -9 of `llmkit run` at seeded points of every stage, and at seeded random times; the next `llmkit run`
completes, and what it produced hashes the same as an uninterrupted run's (reliab_helpers.payload says what is
compared and why the few timed report files are left out).

Points: `artifacts.kill_point` marks them (the start of each stage, an artifact's temp folder made, its payload
written, its publish; each train step and checkpoint, each GGUF tensor, each embedded batch). An uninterrupted
run logs every point it passes (`LLMKIT_TEST_KILL_LOG`), so the stages and points come from the pipeline itself
and a new stage is covered without a change here.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
from pathlib import Path

from reliab_helpers import NAME, cli_args, diff, env, leftovers, payload, reference, run_cli, write_recipe

__all__ = ["reference"]  # the shared fixture


def _fresh(tmp_path: Path, tiny_gguf) -> Path:
    root = tmp_path / "w"
    write_recipe(root, tiny_gguf)
    return root


def test_kill_9_at_seeded_points_of_every_stage_then_rerun_is_exact(reference, tiny_gguf, tmp_path):
    """One chain: each run is killed at a seeded point of the next stage, the one before it resumed or finished."""
    root = _fresh(tmp_path, tiny_gguf)
    rng = random.Random(20)
    run = root / "runs" / NAME
    for k, stage in enumerate(reference["stages"]):
        point = rng.choice(reference["points"][stage])
        r = run_cli(root, LLMKIT_TEST_KILL_AT=point)
        assert r.returncode == -signal.SIGKILL, f"{point}: not killed (rc {r.returncode})\n{r.stderr[-2000:]}"
        assert "Traceback" not in r.stderr
        for done in reference["stages"][:k]:
            assert (run / done / "manifest.json").is_file(), f"killed at {point}: stage {done} is not finished"
        assert not (run / stage / "manifest.json").exists(), f"killed at {point}: {stage} was published"
    final = run_cli(root)
    assert final.returncode == 0, final.stderr
    assert diff(payload(root, reference["stages"]), reference["payload"]) == []
    assert leftovers(root) == []


def test_kill_9_at_seeded_random_times_then_rerun_is_exact(reference, tiny_gguf, tmp_path):
    """SIGKILL from outside at a seeded random moment of each run (wherever that falls), three times, then a run
    that is left to finish."""
    root = _fresh(tmp_path, tiny_gguf)
    rng = random.Random(7)
    killed_in = []
    for _ in range(3):
        p = subprocess.Popen(cli_args(root), cwd=root, env=env(root), stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
        try:
            out, _ = p.communicate(timeout=rng.uniform(0.5, reference["seconds"]))
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            out, _ = p.communicate()
        stages = [line.split()[1] for line in out.splitlines() if line.startswith("[")]
        killed_in.append(stages[-1] if p.returncode == -signal.SIGKILL and stages else f"rc {p.returncode}")
    final = run_cli(root)
    assert final.returncode == 0, final.stderr
    assert diff(payload(root, reference["stages"]), reference["payload"]) == [], killed_in
    assert leftovers(root) == []


def test_a_killed_run_then_force_keeps_the_finished_artifact_until_the_new_one_is_complete(reference, tiny_gguf,
                                                                                          tmp_path):
    """`llmkit run --force` rebuilds every stage; killed while publishing the data stage's new artifact (the old
    one set aside), the next run finds the name empty or whole, never half."""
    root = _fresh(tmp_path, tiny_gguf)
    assert run_cli(root).returncode == 0
    before = payload(root, reference["stages"])
    r = subprocess.run([*cli_args(root), "--force"], cwd=root, env=env(root, LLMKIT_TEST_KILL_AT="data:publish:1"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not (root / "runs" / NAME / "data").exists()  # the old one is set aside, the new one not yet in
    final = run_cli(root)
    assert final.returncode == 0, final.stderr
    assert diff(payload(root, reference["stages"]), before) == []
    assert leftovers(root) == []
    shutil.rmtree(root)
