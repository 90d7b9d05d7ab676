"""Tracking from a child process (track/background.py): the pipeline's own process never imports MLflow, a child that
dies is one warning and not a failed run, and a pipeline killed with -9 leaves its MLflow run marked KILLED once the
child has mirrored what it was sent. Tiny random model, model + data stages, a sqlite MLflow per test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from llmkit.pipeline import run_recipe  # noqa: E402


def _recipe(folder: Path, model: Path, uri: str) -> Path:
    rows = [{"prompt": f"question {i} about thing {i * 5}", "completion": f"answer {i}"} for i in range(30)]
    (folder / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "t.yaml").write_text(f"name: bg\nmodel: {model}\ndata: {{train: t.jsonl}}\n"
                                   f"track: {{mlflow_uri: '{uri}'}}\n")
    return folder / "t.yaml"


def _runs(uri: str) -> dict:
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("bg")
    return {r.info.run_name: r for r in c.search_runs([exp.experiment_id])} if exp else {}


def _env(tmp_path: Path, **extra: str) -> dict:
    return {**os.environ, "LLMKIT_HOME": str(tmp_path / "home"), "LLMKIT_TRACK": "1", "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(sys.path), **extra}


def _children_of(folder: Path) -> list[int]:
    """Tracking children still running for a run under `folder` (their argument names its run folder)."""
    pids = []
    for p in Path("/proc").iterdir():
        try:
            cmd = (p / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "llmkit.track.worker" in cmd and str(folder) in cmd:
            pids.append(int(p.name))
    return pids


def test_the_pipeline_process_never_imports_mlflow(tiny_gguf, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = _recipe(tmp_path, tiny_gguf, uri)
    code = ("import sys; from llmkit.config import load_recipe; from llmkit.pipeline import run_recipe; "
            f"r = run_recipe(load_recipe({str(recipe)!r}), echo=print); "
            "print('STATUS', [x.status for x in r]); print('MLFLOW' if 'mlflow' in sys.modules else 'NO-MLFLOW')")
    r = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "STATUS ['ran', 'ran']" in r.stdout and "NO-MLFLOW" in r.stdout
    assert "warning" not in r.stdout
    runs = _runs(uri)  # ... and yet both stages are in MLflow when run_recipe returns, nested under the pipeline
    assert set(runs) == {"bg pipeline", "model", "data"}
    parent = runs["bg pipeline"]
    assert parent.info.status == "FINISHED"
    assert {runs[s].data.tags["mlflow.parentRunId"] for s in ("model", "data")} == {parent.info.run_id}


def test_a_dead_tracking_child_is_one_warning_not_a_failed_run(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LLMKIT_TRACK", "1")
    from llmkit.config import load_recipe
    from llmkit.track import background

    recipe = load_recipe(_recipe(tmp_path, tiny_gguf, f"sqlite:///{tmp_path / 'mlflow.db'}"))
    children: list[subprocess.Popen] = []
    start = background.BackgroundTracker._start

    def start_and_keep(self):
        start(self)
        children.append(self._proc)

    monkeypatch.setattr(background.BackgroundTracker, "_start", start_and_keep)
    lines: list[str] = []

    def echo(line: str) -> None:
        lines.append(line)
        if line.startswith("[2/2]"):  # the model stage was sent to the child: kill it before it can answer
            children[0].send_signal(signal.SIGKILL)
            children[0].wait()

    results = run_recipe(recipe, echo=echo)
    assert [r.status for r in results] == ["ran", "ran"]
    warnings = [x for x in lines if x.startswith("warning")]
    assert len(warnings) == 1, lines
    assert "tracking process stopped" in warnings[0] and f"llmkit track sync {recipe.run_dir}" in warnings[0]


def test_a_killed_pipeline_leaves_its_mlflow_run_killed(tiny_gguf, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = _recipe(tmp_path, tiny_gguf, uri)
    # SIGKILL as the data stage begins: the model stage is finished and was handed to the child
    r = subprocess.run([sys.executable, "-m", "llmkit.cli", "run", str(recipe)],
                       env=_env(tmp_path, LLMKIT_TEST_KILL_AT="data:begin"), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    # the orphaned child finishes on its own; wait for it to exit before opening the database (a client opening a
    # sqlite MLflow while the child creates it would race it for the schema)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and _children_of(recipe.parent):
        time.sleep(0.5)
    assert not _children_of(recipe.parent), "the tracking child did not exit"
    runs = _runs(uri)
    assert set(runs) == {"bg pipeline", "model"}
    assert runs["bg pipeline"].info.status == "KILLED"
    assert runs["model"].info.status == "FINISHED"
