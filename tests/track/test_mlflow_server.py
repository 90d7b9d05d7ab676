"""Must-show of issue 18: a real `mlflow server` on 127.0.0.1 (scripts/mlflow_server.sh, ~40 s to start on 2
cores) receives a tiny pipeline run and a registered, promoted version, and shows them through its REST API
(plain HTTP, not the MLflow client): runs nested under the pipeline run, params, the loss curve, the dataset
input, the version and its aliases. A `registry:` spec then resolves by downloading the version's files from it."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("flask")

from llmkit.artifacts import read_manifest, sha256_file  # noqa: E402
from llmkit.cli import main  # noqa: E402
from llmkit.config import load_recipe  # noqa: E402
from llmkit.pipeline import run_recipe  # noqa: E402


def _get(base: str, path: str, **query) -> dict:
    with urllib.request.urlopen(f"{base}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}", timeout=30) as r:
        return json.loads(r.read())


def _post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_a_run_and_a_promotion_through_a_real_mlflow_server(mlflow_server, tiny_gguf, tmp_path, monkeypatch, capsys):
    base = mlflow_server
    monkeypatch.setenv("LLMKIT_TRACK", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", base)
    rows = [{"prompt": f"question {i} about thing {i * 5}", "completion": f"answer {i}"} for i in range(30)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "s.yaml").write_text(
        f"name: s\nmodel: {tiny_gguf}\ndata: {{train: t.jsonl, val_fraction: 0.2}}\n"
        "train: {epochs: 1, batch_size: 8, max_length: 64, eval_every: 1, save_every: 100, precision: fp32}\n")
    recipe = load_recipe(tmp_path / "s.yaml")
    lines: list[str] = []
    run_recipe(recipe, echo=lines.append)
    assert not [x for x in lines if x.startswith("warning")]

    exp = _get(base, "experiments/get-by-name", experiment_name="s")["experiment"]
    runs = {r["info"]["run_name"]: r for r in _post(base, "runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]}
    assert set(runs) == {"s pipeline", "model", "data", "train"}
    tags = {t["key"]: t["value"] for t in runs["train"]["data"]["tags"]}
    params = {p["key"]: p["value"] for p in runs["train"]["data"]["params"]}
    assert tags["mlflow.parentRunId"] == runs["s pipeline"]["info"]["run_id"]
    assert tags["llmkit.fingerprint"] == read_manifest(recipe.run_dir / "train")["fingerprint"]
    assert params["train.lr"] == "0.0002"
    curve = _get(base, "metrics/get-history", run_id=runs["train"]["info"]["run_id"], metric_key="train_loss")["metrics"]
    losses = read_manifest(recipe.run_dir / "train")["metrics"]["losses"]
    assert [(m["step"], round(m["value"], 6)) for m in curve] == [(s, round(v, 6)) for s, v in losses]
    ds = runs["data"]["inputs"]["dataset_inputs"][0]["dataset"]
    assert ds["name"] == "t.jsonl" and ds["digest"] == sha256_file(tmp_path / "t.jsonl")[:32]

    assert main(["register", str(tiny_gguf), "--name", "tiny"]) == 0
    assert main(["promote", "tiny", "--version", "1", "--force"]) == 0
    rm = _get(base, "registered-models/get", name="tiny")["registered_model"]
    assert {a["alias"]: a["version"] for a in rm["aliases"]} == {"candidate": "1", "production": "1"}
    mv = _get(base, "model-versions/get", name="tiny", version="1")["model_version"]
    assert {t["key"]: t["value"] for t in mv["tags"]}["llmkit.sha256"] == sha256_file(tiny_gguf)

    from llmkit.track.registry import resolve

    local = resolve("registry:tiny@production")  # downloaded from the server into $LLMKIT_HOME/registry/tiny/1
    assert local.suffix == ".gguf" and sha256_file(local) == sha256_file(tiny_gguf)
