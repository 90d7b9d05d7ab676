"""The tiny recipe the reliability tests try to break, how they run it, and the hash of what a run must produce.

The recipe has a section for every stage of `pipeline.STAGES` (a test fails when a new stage is not covered), on
the tiny random Llama (as a GGUF, so the model stage converts it) with a few rows and two documents.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmkit import pipeline
from llmkit.config import load_recipe

ROWS = [{"prompt": f"Question {i}: my router R{i % 7} is slow, what now?",
         "completion": f"Restart router R{i % 7} and wait {i} seconds."} for i in range(40)]
DOCS = {"a.md": "# Router\n\nHold the reset button for 10 seconds.\n\n## Lights\n\nA red light means no signal.\n",
        "b.txt": "The warranty lasts two years from the date of purchase.\n"}
SECTIONS = {
    "data": "data: {train: t.jsonl, val_fraction: 0.2}",
    "train": "train: {epochs: 1, lr: 0.005, batch_size: 4, max_length: 96, eval_every: 100, save_every: 2, "
             "precision: fp32}",
    "compress": "compress: {quantize: q8_0, prompts: 1, gen_tokens: 4, eval_rows: 4}",
    "eval": "eval: {tasks: [perplexity], limit: 4}",
    # one registry: section brings both stages (MLflow's database in $LLMKIT_HOME)
    "register": "registry: {artifact: compress, promote: false}",
    "promote": "registry: {artifact: compress}",
    "rag": "rag: {sources: [docs], batch_size: 1}",
}
NAME = "rel"

# Files whose bytes hold wall-clock figures and so differ between any two runs, killed or not; their numbers
# that matter are in the manifest's metrics, which are compared below without the timing keys.
TIMED = {
    "compress/report.md": "the decode tok/s column",
    "eval/report.html": "the time the report was written",
    "eval/model_card.md": "the training run's seconds and tok/s",
}
# Manifest and JSON keys left out: timings and the clock (seconds, *_s, tok/s, *_at), library versions, and the
# fingerprint (it hashes the config, which holds the run's absolute paths; config and inputs are compared).
TIMING_KEY = re.compile(r"(seconds|_s|_per_s|_at|^versions|^fingerprint)$|tok_s")


def write_recipe(root: Path, model: Path, stages: list[str] | None = None) -> Path:
    """The recipe and its inputs under `root`; `stages` keeps only those sections (default: all)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (root / "docs").mkdir(exist_ok=True)
    for name, text in DOCS.items():
        (root / "docs" / name).write_text(text)
    keep = [s for s in SECTIONS if stages is None or s in stages]
    if "promote" in keep:
        keep.remove("register")
    (root / "r.yaml").write_text(f"name: {NAME}\nmodel: {model}\n" + "".join(SECTIONS[s] + "\n" for s in keep))
    return root / "r.yaml"


def env(root: Path, **extra: str) -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    return {**os.environ, "LLMKIT_HOME": str(root / "home"), "LLMKIT_TRACK": "0", "LLMKIT_THREADS": "2",
            "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([src, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]), **extra}


def cli_args(root: Path) -> list[str]:
    return [sys.executable, "-m", "llmkit.cli", "run", str(root / "r.yaml")]


def run_cli(root: Path, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(cli_args(root), cwd=root, env=env(root, **extra), capture_output=True, text=True,
                          timeout=timeout)


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not TIMING_KEY.search(k)}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _file_hash(path: Path, root: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".json":  # JSON payload: without timing keys (a cache's conversion seconds)
        data = json.dumps(_strip(json.loads(data)), sort_keys=True).encode()
    return hashlib.sha256(data.replace(str(root).encode(), b"ROOT")).hexdigest()


def _lance_rows(folder: Path) -> str:
    """Lance names its data and transaction files with random ids: compare the table's rows, not its files."""
    import lancedb

    db = lancedb.connect(str(folder))
    h = hashlib.sha256()
    for name in sorted(db.list_tables().tables):
        rows = sorted(db.open_table(name).to_arrow().to_pylist(), key=lambda r: r["id"])
        h.update(json.dumps(rows, sort_keys=True, default=str).encode())
    return h.hexdigest()


def payload(root: Path, stages: list[str]) -> dict[str, dict[str, str]]:
    """What a finished run must reproduce, per stage: every payload file's hash (the files in TIMED aside, the
    lance table by its rows), the manifest without timings, and a folder the manifest's outputs point to (the
    model stage's HF conversion in the cache). The root's own path is replaced, so two roots compare."""
    run = root / "runs" / NAME
    out: dict[str, dict[str, str]] = {}
    for stage in stages:
        folder = run / stage
        files: dict[str, str] = {}
        manifest = json.loads((folder / "manifest.json").read_text())
        for name, value in manifest.get("outputs", {}).items():
            if isinstance(value, str) and value.startswith(str(root / "home")) and Path(value).is_dir():
                for f in sorted(Path(value).rglob("*")):
                    if f.is_file():
                        files[f"outputs.{name}/{f.relative_to(value)}"] = _file_hash(f, root)
        for f in sorted(folder.rglob("*")):
            rel = f.relative_to(folder).as_posix()
            if not f.is_file() or rel == "manifest.json" or f"{stage}/{rel}" in TIMED or rel.startswith("lance/"):
                continue
            files[rel] = _file_hash(f, root)
        if (folder / "lance").is_dir():
            files["lance rows"] = _lance_rows(folder / "lance")
        files["manifest"] = hashlib.sha256(json.dumps(_strip(manifest), sort_keys=True).replace(
            str(root), "ROOT").encode()).hexdigest()
        out[stage] = files
    return out


def diff(a: dict, b: dict) -> list[str]:
    """The stage/file names whose hashes differ (or that only one side has)."""
    return [f"{s}/{f}" for s in sorted(set(a) | set(b)) for f in sorted(set(a.get(s, {})) | set(b.get(s, {})))
            if a.get(s, {}).get(f) != b.get(s, {}).get(f)]


def leftovers(root: Path) -> list[str]:
    """Temporary or set-aside siblings of an artifact left behind (a killed build's are swept by the next one)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*") if re.search(r"\.(tmp|old)-\d+$", p.name)
                  or p.name.startswith(".tmp-"))


@pytest.fixture(scope="session")
def reference(tiny_gguf, tmp_path_factory):
    """One uninterrupted run: its payload hashes, the points it passed per stage, and its wall time."""
    root = tmp_path_factory.mktemp("reference")
    write_recipe(root, tiny_gguf)
    stages = load_recipe(root / "r.yaml").stages()
    missing = [s for s in pipeline.STAGES if s not in stages]
    assert not missing, f"add a section for stage(s) {missing} to tests/reliability/reliab_helpers.SECTIONS"
    t0 = time.perf_counter()
    r = run_cli(root, LLMKIT_TEST_KILL_LOG=str(root / "points.log"))
    assert r.returncode == 0, r.stderr
    points: dict[str, list[str]] = {}
    for line in (root / "points.log").read_text().split():
        stage, point, n = line.split(":")
        if point != "begin":  # a kill before any work of the stage is the previous stage's "finished" case
            points.setdefault(stage, []).append(f"{stage}:{point}:{n}")
    assert list(points) == stages and all(points.values()), points
    return {"payload": payload(root, stages), "points": points, "stages": stages,
            "seconds": time.perf_counter() - t0}
