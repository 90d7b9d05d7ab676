"""Must-show of issue 18 on the example recipe itself: examples/recipe.yaml (its data, eval tasks, registry and
rag sections as written) run end to end into a real `mlflow server` on 127.0.0.1, with two changes that keep it
within the test budget: the tiny random Llama (a 2,048-token context) in place of SmolLM2 (so one short epoch), and a gate such a model
can pass. The run is then read back twice: through the MLflow client (runs per stage, params, metrics, the
registered version and its aliases) and through the server's REST API (plain HTTP)."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

pytest.importorskip("mlflow")
pytest.importorskip("flask")

from llmkit.artifacts import read_manifest  # noqa: E402
from llmkit.config import parse_recipe  # noqa: E402
from llmkit.pipeline import run_recipe  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _rest(base: str, path: str, body: dict | None = None, **query) -> dict:
    url = f"{base}/api/2.0/mlflow/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_the_example_recipe_in_mlflow(mlflow_server, tmp_path, monkeypatch):
    from conftest import build_tiny_llama, write_gguf
    from mlflow import MlflowClient

    # the example's rows are up to ~1,400 tokens of the tiny byte-level vocabulary (its retrieved-sources rows):
    # a context of 2048 holds them
    tiny_gguf = write_gguf(build_tiny_llama(tmp_path / "tiny", context=2048), tmp_path / "tiny-f32.gguf")
    base = mlflow_server
    monkeypatch.setenv("LLMKIT_TRACK", "1")
    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path / "home"))
    raw = yaml.safe_load((EXAMPLES / "recipe.yaml").read_text())
    raw.update(model=str(tiny_gguf), out_dir=str(tmp_path / "runs" / "{name}"), track={"mlflow_uri": base})
    raw["train"].update(epochs=1, precision="fp32")
    raw["eval"].update(gates={"support.items": ">= 12"}, max_tokens=16)  # a random model writes no "Nimbus here!"
    recipe = parse_recipe(yaml.safe_dump(raw), base_dir=EXAMPLES, source=str(EXAMPLES / "recipe.yaml"))
    assert recipe.stages() == ["model", "data", "train", "compress", "eval", "register", "promote", "rag"]
    lines: list[str] = []
    run_recipe(recipe, echo=lines.append)
    assert not [x for x in lines if x.startswith("warning")], lines

    # through the MLflow client
    c = MlflowClient(base, registry_uri=base)
    exp = c.get_experiment_by_name("support-assistant")
    runs = {r.info.run_name: r for r in c.search_runs([exp.experiment_id])}
    assert set(runs) == {"support-assistant pipeline", *recipe.stages()}
    parent = runs["support-assistant pipeline"].info.run_id
    assert all(runs[s].data.tags["mlflow.parentRunId"] == parent for s in recipe.stages())
    for s in recipe.stages():
        assert runs[s].data.tags["llmkit.fingerprint"] == read_manifest(recipe.run_dir / s)["fingerprint"]
    assert runs["train"].data.params["train.lora.r"] == "16" and runs["train"].data.params["train.lr"] == "0.0005"
    losses = read_manifest(recipe.run_dir / "train")["metrics"]["losses"]
    curve = c.get_metric_history(runs["train"].info.run_id, "train_loss")
    assert [(m.step, round(m.value, 6)) for m in curve] == [(s, round(v, 6)) for s, v in losses]
    assert runs["eval"].data.metrics["support.items"] == 12 and "baseline.support.contains" in runs["eval"].data.metrics
    mv = c.get_model_version_by_alias("support-assistant", "production")
    assert mv.version == "1" and c.get_model_version_by_alias("support-assistant", "candidate").version == "1"
    assert mv.tags["llmkit.format"] == "gguf"
    assert mv.tags["llmkit.fingerprint"] == read_manifest(recipe.run_dir / "compress")["fingerprint"]
    assert mv.tags["llmkit.promoted_by"].startswith("first version")

    # the same through the server's REST API
    found = _rest(base, "runs/search", {"experiment_ids": [exp.experiment_id]})["runs"]
    assert {r["info"]["run_name"] for r in found} == set(runs)
    rm = _rest(base, "registered-models/get", name="support-assistant")["registered_model"]
    assert {a["alias"]: a["version"] for a in rm["aliases"]} == {"candidate": "1", "production": "1"}
    train = next(r for r in found if r["info"]["run_name"] == "train")
    hist = _rest(base, "metrics/get-history", run_id=train["info"]["run_id"], metric_key="train_loss")["metrics"]
    assert len(hist) == len(losses)
