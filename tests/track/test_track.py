"""MLflow tracking and the registry on a tiny recipe (tiny random model: data + a 3-step LoRA), queried back
through MlflowClient: runs and their nesting, params, step metrics, dataset inputs, lineage tags, artifacts; no
duplicate run for a skipped stage; an unreachable server warns once and `track sync` mirrors later; register,
the registry: spec, and promotion refused by a failing gate, accepted by a passing one, rolled back."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from llmkit.artifacts import read_manifest, sha256_file  # noqa: E402
from llmkit.cli import main  # noqa: E402
from llmkit.config import parse_recipe  # noqa: E402
from llmkit.pipeline import run_recipe  # noqa: E402

TRAIN = "train: {epochs: 1, batch_size: 8, max_length: 64, eval_every: 1, save_every: 100, precision: fp32}"


def _rows(folder: Path) -> Path:
    rows = [{"prompt": f"question {i} about thing {i * 5}", "completion": f"answer {i}"} for i in range(30)]
    (folder / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "t.jsonl"


@pytest.fixture(scope="module")
def tracked(tiny_gguf, tmp_path_factory):
    """One pipeline run (model, data, train) mirrored into its own sqlite MLflow; returns (recipe, uri, lines)."""
    d = tmp_path_factory.mktemp("tracked")
    _rows(d)
    (d / "task.jsonl").write_text(json.dumps({"type": "generate", "prompt": "Hi", "max_tokens": 4,
                                              "checks": {"contains": "answer"}}) + "\n")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    (d / "t.yaml").write_text(f"name: t\nmodel: {tiny_gguf}\ndata: {{train: t.jsonl, val_fraction: 0.2}}\n{TRAIN}\n"
                              "eval: {tasks: [q=task.jsonl], baseline: base, max_tokens: 4}\n"
                              f"track: {{mlflow_uri: '{uri}'}}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMKIT_HOME", str(d / "home"))
        mp.setenv("LLMKIT_TRACK", "1")
        from llmkit.config import load_recipe

        recipe = load_recipe(d / "t.yaml")
        lines: list[str] = []
        run_recipe(recipe, echo=lines.append)
    return recipe, uri, lines


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(uri, registry_uri=uri)


def _runs(uri, name="t"):
    c = _client(uri)
    exp = c.get_experiment_by_name(name)
    return {r.info.run_name: r for r in c.search_runs([exp.experiment_id])}


def test_a_pipeline_run_is_mirrored_stage_by_stage(tracked):
    recipe, uri, lines = tracked
    c = _client(uri)
    runs = _runs(uri)
    assert set(runs) == {"t pipeline", "model", "data", "train", "eval"}
    parent = runs["t pipeline"]
    assert not any(x.startswith("warning") for x in lines)
    run_dir = recipe.run_dir
    for stage in ("model", "data", "train", "eval"):
        r = runs[stage]
        m = read_manifest(run_dir / stage)
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.data.tags["llmkit.fingerprint"] == m["fingerprint"]
        assert parent.data.tags[f"llmkit.stage.{stage}.run_id"] == r.info.run_id
        assert r.info.status == "FINISHED"
    # params: the flattened config
    train = runs["train"]
    assert train.data.params["train.lr"] == "0.0002" and train.data.params["train.lora.r"] == "16"
    assert train.data.params["train.max_length"] == "64"
    # metrics: the loss curve as step metrics, equal to the manifest's
    m = read_manifest(run_dir / "train")
    hist = c.get_metric_history(train.info.run_id, "train_loss")
    assert [(h.step, round(h.value, 6)) for h in hist] == [(s, round(v, 6)) for s, v in m["metrics"]["losses"]]
    assert len(hist) == m["metrics"]["steps"] >= 2
    assert len(c.get_metric_history(train.info.run_id, "val_loss")) == len(m["metrics"]["val_losses"])
    assert runs["data"].data.metrics["rows_out.train"] == read_manifest(run_dir / "data")["metrics"]["rows_out"]["train"]
    # datasets: the raw file into data, the prepared splits into train, digests from the content hashes
    raw = runs["data"].inputs.dataset_inputs
    assert [(d.dataset.name, d.dataset.digest) for d in raw] == [("t.jsonl", sha256_file(recipe.base_dir / "t.jsonl")[:32])]
    card = read_manifest(run_dir / "data")["metrics"]
    got = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset for d in train.inputs.dataset_inputs}
    assert got["training"].digest == card["outputs"]["train.jsonl"][:32]
    assert got["validation"].digest == card["outputs"]["val.jsonl"][:32]
    # lineage: each input's hash, and the run of an input that is an artifact
    data_fp = read_manifest(run_dir / "data")["fingerprint"]
    assert train.data.tags["llmkit.input.data.sha256"] == data_fp
    assert train.data.tags["llmkit.input.data.run_id"] == runs["data"].info.run_id
    assert runs["data"].data.tags["llmkit.input.model.run_id"] == runs["model"].info.run_id
    # artifacts: the small files a person looks at
    assert {a.path for a in c.list_artifacts(train.info.run_id)} >= {"loss.png", "manifest.json"}
    assert {a.path for a in c.list_artifacts(runs["data"].info.run_id)} >= {"data_card.md", "data_card.json"}
    # eval: its metrics (model and baseline), metrics.json, the task file as an eval dataset with its hash
    ev = runs["eval"]
    em = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert ev.data.metrics["q.items"] == 1 and ev.data.metrics["baseline.q.contains"] == em["baseline"]["q.contains"]
    assert ev.data.params["eval.max_tokens"] == "4"
    assert "metrics.json" in {a.path for a in c.list_artifacts(ev.info.run_id)}
    task_sha = sha256_file(recipe.base_dir / "task.jsonl")
    assert ev.data.tags["llmkit.input.task_q.sha256"] == task_sha  # `task:q` made a valid MLflow key
    assert [(d.dataset.name, d.dataset.digest) for d in ev.inputs.dataset_inputs] == [("task.jsonl", task_sha[:32])]


def test_a_skipped_stage_makes_no_duplicate_run(tracked):
    recipe, uri, _ = tracked
    before = len(_runs(uri))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMKIT_TRACK", "1")
        mp.setenv("LLMKIT_HOME", str(recipe.base_dir / "home"))
        assert [r.status for r in run_recipe(recipe, echo=lambda s: None)] == ["skipped"] * 4
        assert len(_runs(uri)) == before
        # without the local note of what was mirrored, MLflow is asked by manifest hash: still no duplicate
        import shutil

        shutil.rmtree(recipe.base_dir / "home" / "track")
        assert [r.status for r in run_recipe(recipe, echo=lambda s: None)] == ["skipped"] * 4
        assert len(_runs(uri)) == before
        assert (recipe.base_dir / "home" / "track").is_dir()  # and the note is back


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_mlflow_warns_once_and_sync_mirrors_later(tiny_gguf, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMKIT_TRACK", "1")
    _rows(tmp_path)
    down = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    recipe = parse_recipe(f"name: u\nmodel: {tiny_gguf}\ndata: {{train: t.jsonl}}\ntrack: {{mlflow_uri: '{down}'}}\n",
                          base_dir=tmp_path, source="u.yaml")
    lines: list[str] = []
    results = run_recipe(recipe, echo=lines.append)
    assert [r.status for r in results] == ["ran", "ran"]  # both stages finished and published
    assert read_manifest(recipe.run_dir / "data")["status"] == "finished"
    warnings = [x for x in lines if x.startswith("warning")]
    assert len(warnings) == 1 and down in warnings[0] and f"llmkit track sync {recipe.run_dir}" in warnings[0]

    uri = f"sqlite:///{tmp_path / 'later.db'}"
    assert main(["track", "sync", str(recipe.run_dir), "--uri", uri]) == 0
    assert "2 stage(s) mirrored (model, data), 0 already there" in capsys.readouterr().out
    runs = _runs(uri, "u")
    assert set(runs) == {"u sync", "model", "data"}
    assert main(["track", "sync", str(recipe.run_dir), "--uri", uri]) == 0
    assert "0 stage(s) mirrored, 2 already there" in capsys.readouterr().out
    assert len(_runs(uri, "u")) == 3


def test_register_resolve_promote_and_roll_back(tracked, tiny_gguf, tmp_path, monkeypatch, capsys):
    from llmkit.errors import ConfigError, ModelNotFound
    from llmkit.track.registry import resolve

    recipe, uri, _ = tracked  # the registry lives beside the runs it links to
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("LLMKIT_HOME", str(recipe.base_dir / "home"))  # the tiny model's HF conversion is cached there

    # register: a GGUF file, then the train stage's adapter; the same files again give the same version
    assert main(["register", str(tiny_gguf), "--name", "tiny"]) == 0
    assert main(["register", str(recipe.run_dir / "train"), "--name", "tiny"]) == 0
    assert main(["register", str(recipe.run_dir / "train"), "--name", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "new version 1 (gguf)" in out and "new version 2 (peft-adapter)" in out and "already registered as version 2" in out
    c = _client(uri)
    v2 = c.get_model_version("tiny", "2")
    assert int(c.get_model_version_by_alias("tiny", "candidate").version) == 2
    assert v2.tags["llmkit.fingerprint"] == read_manifest(recipe.run_dir / "train")["fingerprint"]
    chain = json.loads(v2.tags["llmkit.lineage"])
    assert chain[0]["kind"] == "model" and {"dataset", "input"} <= {x["kind"] for x in chain}
    assert v2.tags["llmkit.stage_run_id"] == _runs(uri)["train"].info.run_id
    # registry: specs resolve to local files
    g = resolve("registry:tiny/1")
    assert g.suffix == ".gguf" and sha256_file(g) == sha256_file(tiny_gguf)
    assert (resolve("registry:tiny@candidate") / "adapter_config.json").is_file()
    with pytest.raises(ModelNotFound, match=r"no alias @production .*tiny v1, tiny v2 @candidate"):
        resolve("registry:tiny")
    with pytest.raises(ConfigError):
        resolve("registry:tiny@")

    task = tmp_path / "t.jsonl"
    task.write_text(json.dumps({"type": "generate", "prompt": "Hi", "max_tokens": 4,
                                "checks": {"contains": "Nimbus here!"}}) + "\n")
    # the first promotion: no production to compare with, so an absolute gate
    assert main(["promote", "tiny", "--version", "1", "--tasks", str(task), "--gate", "t.items=>= 1"]) == 0
    assert int(c.get_model_version_by_alias("tiny", "production").version) == 1
    # refused: a failing gate, named; production stays
    assert main(["promote", "tiny", "--version", "2", "--tasks", str(task), "--gate", "t.contains=>= 0.5",
                 "--gate", "t.items=>= baseline"]) == 1
    err = capsys.readouterr().err
    assert "1 eval gate failed" in err and "t.contains >= 0.5: 0 is not >= 0.5" in err and "stays version 1" in err
    assert int(c.get_model_version_by_alias("tiny", "production").version) == 1
    assert "t.contains" in c.get_model_version("tiny", "2").tags["llmkit.promote_refused"]
    # accepted: no worse than production
    assert main(["promote", "tiny", "--version", "2", "--tasks", str(task), "--gate", "t.contains=>= baseline"]) == 0
    assert int(c.get_model_version_by_alias("tiny", "production").version) == 2
    tags = c.get_model_version("tiny", "2").tags
    assert tags["llmkit.promoted_by"] == "gates" and tags["llmkit.promoted_from"] == "1"
    assert json.loads(tags["llmkit.promote_gates"])[0]["passed"] is True
    # rollback: back to version 1 without gates
    assert main(["promote", "tiny", "--version", "1", "--force"]) == 0
    assert int(c.get_model_version_by_alias("tiny", "production").version) == 1
    assert c.get_model_version("tiny", "1").tags["llmkit.promoted_by"].startswith("force")
    # models list shows the registry beside the built-in models
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert "smollm2-135m-instruct" in listing
    assert any(line.split()[:2] == ["tiny", "1"] and "@production" in line and "registry:tiny/1" in line
               for line in listing.splitlines())


def test_models_list_without_a_registry_does_not_import_mlflow(tmp_path, monkeypatch, capsys):
    import subprocess
    import sys

    env = {"LLMKIT_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    code = ("import sys; from llmkit.cli import main; rc = main(['models', 'list']); "
            "print('MLFLOW' if 'mlflow' in sys.modules else 'NO-MLFLOW'); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "NO-MLFLOW" in r.stdout and "REGISTERED" not in r.stdout


def test_tracking_on_or_off(tmp_path, monkeypatch):
    import llmkit.track as track
    from llmkit.errors import MissingExtra

    plain = parse_recipe("name: a\n", base_dir=tmp_path, source="a.yaml")
    asked = parse_recipe("name: a\ntrack: {mlflow_uri: 'sqlite:///x.db'}\n", base_dir=tmp_path, source="a.yaml")
    off = parse_recipe("name: a\ntrack: {enabled: false}\n", base_dir=tmp_path, source="a.yaml")
    monkeypatch.setenv("LLMKIT_TRACK", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    t = track.for_recipe(plain)
    assert t is not None and t.uri == f"sqlite:///{tmp_path / 'llmkit-home' / 'mlflow.db'}"  # the embedded default
    assert track.for_recipe(asked).uri == f"sqlite:///{tmp_path / 'x.db'}"  # relative to the recipe, as its paths
    assert track.for_recipe(off) is None
    monkeypatch.setenv("LLMKIT_TRACK", "0")
    assert track.for_recipe(asked) is None
    monkeypatch.setenv("LLMKIT_TRACK", "1")
    monkeypatch.setattr(track, "available", lambda: False)  # MLflow not installed
    assert track.for_recipe(plain) is None  # quietly off
    with pytest.raises(MissingExtra, match=r"pip install 'llmkit\[track\]'"):
        track.for_recipe(asked)  # asked for, so refused up front
