"""The registry: section's stages in `llmkit run` on a tiny recipe: the first version is registered and promoted
on the eval stage's gates; a changed training run registers version 2, scores it beside @production and promotes
it when the registry gates pass; a re-run skips both stages; a candidate that fails the gates leaves @production
where it was and stops the run before the rag stage."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mlflow")

from llmkit.config import load_recipe  # noqa: E402
from llmkit.errors import GateFailed  # noqa: E402
from llmkit.pipeline import run_recipe  # noqa: E402


def _write(d, tiny_gguf, lr: float, gate: str) -> None:
    rows = [{"prompt": f"question {i} about thing {i * 5}", "completion": f"answer {i}"} for i in range(30)]
    (d / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "task.jsonl").write_text(json.dumps({"type": "generate", "prompt": "Hi", "max_tokens": 4,
                                              "checks": {"contains": "answer"}}) + "\n")
    (d / "docs").mkdir(exist_ok=True)
    (d / "docs" / "a.md").write_text("# Reset\nHold the reset button for ten seconds.\n")
    (d / "t.yaml").write_text(
        f"name: t\nmodel: {tiny_gguf}\ndata: {{train: t.jsonl, val_fraction: 0.2}}\n"
        f"train: {{epochs: 1, batch_size: 8, max_length: 64, eval_every: 100, save_every: 100, precision: fp32, lr: {lr}}}\n"
        "eval: {tasks: [q=task.jsonl], baseline: base, max_tokens: 4, gates: {q.items: '>= 1'}}\n"
        f"registry: {{artifact: train, gates: {{q.contains: '{gate}'}}}}\n"
        "rag: {sources: [docs], collection: docs}\n"
        f"track: {{mlflow_uri: 'sqlite:///{d / 'mlflow.db'}'}}\n")


def _stages(lines: list[str]) -> dict[str, str]:
    """stage -> the line after its header ('ran in ...', 'skipped (...)')."""
    out, stage = {}, None
    for line in lines:
        if line.startswith("["):
            stage = line.split("] ")[1].split(" ")[0]
        elif stage and line.strip().startswith(("ran", "skipped")):
            out[stage] = line.strip()
    return out


def test_register_and_promote_stages(tiny_gguf, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path / "home"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri, registry_uri=uri)

    def production() -> int:
        return int(c.get_model_version_by_alias("t", "production").version)

    _write(tmp_path, tiny_gguf, lr=1e-3, gate=">= baseline - 1")
    lines: list[str] = []
    run_recipe(load_recipe(tmp_path / "t.yaml"), echo=lines.append)
    assert production() == 1
    assert any("first version: the eval stage's gates" in x for x in lines)
    assert c.get_model_version("t", "1").tags["llmkit.promoted_by"].startswith("first version")
    promoted = json.loads((tmp_path / "runs/t/promote/manifest.json").read_text())
    assert promoted["outputs"]["version"] == 1 and promoted["outputs"]["previous"] is None

    lines.clear()  # the same recipe again: nothing new to register or promote
    run_recipe(load_recipe(tmp_path / "t.yaml"), echo=lines.append)
    st = _stages(lines)
    assert st["register"].startswith("skipped") and st["promote"].startswith("skipped"), st

    lines.clear()  # retrained: version 2, scored beside version 1 and promoted by the registry's gates
    _write(tmp_path, tiny_gguf, lr=2e-3, gate=">= baseline - 1")
    run_recipe(load_recipe(tmp_path / "t.yaml"), echo=lines.append)
    assert production() == 2
    tags = c.get_model_version("t", "2").tags
    assert tags["llmkit.promoted_by"] == "gates" and tags["llmkit.promoted_from"] == "1"
    metrics = json.loads((tmp_path / "runs/t/promote-eval/metrics.json").read_text())
    assert metrics["gates"][0]["metric"] == "q.contains" and metrics["gates"][0]["passed"]
    assert metrics["baseline"] is not None  # version 1 was scored beside it

    lines.clear()  # retrained again, but the gate cannot pass: @production stays, rag does not run
    _write(tmp_path, tiny_gguf, lr=3e-3, gate=">= baseline + 1")
    with pytest.raises(GateFailed, match=r"q.contains >= baseline \+ 1.*\n?.*|not promoted") as e:
        run_recipe(load_recipe(tmp_path / "t.yaml"), echo=lines.append)
    assert "t version 3 not promoted; @production stays version 2" in str(e.value)
    assert production() == 2 and int(c.get_model_version_by_alias("t", "candidate").version) == 3
    assert not any(x.startswith("[") and "] rag" in x for x in lines)
