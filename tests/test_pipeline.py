import pytest

from llmkit.artifacts import lineage, read_manifest
from llmkit.config import parse_recipe
from llmkit.errors import DataError, GateFailed, StageNotAvailable
from llmkit.pipeline import run_recipe


def _recipe(tmp_path, model, extra=""):
    return parse_recipe(f"name: t\nmodel: {model}\n{extra}", base_dir=tmp_path, source="t.yaml")


def test_second_run_skips_the_finished_stage(tmp_path, tiny_gguf):
    recipe = _recipe(tmp_path, tiny_gguf)
    lines = []
    first = run_recipe(recipe, echo=lines.append)
    assert [r.status for r in first] == ["ran"]
    m = read_manifest(tmp_path / "runs" / "t" / "model")
    assert m["metrics"]["architecture"] == "llama" and m["inputs"]["weights"]["path"] == str(tiny_gguf)
    second = run_recipe(recipe, echo=lines.append)
    assert [r.status for r in second] == ["skipped"]
    assert "finished artifact" in second[0].reason
    assert [r.status for r in run_recipe(recipe, force=True, echo=lines.append)] == ["ran"]


def test_changed_input_reruns(tmp_path, tiny_llama, tiny_gguf):
    from conftest import write_gguf

    g = write_gguf(tiny_llama, tmp_path / "m.gguf")
    recipe = _recipe(tmp_path, g)
    run_recipe(recipe, echo=lambda s: None)
    write_gguf(tiny_llama, g, quant="Q8_0")  # same path, new content
    assert [r.status for r in run_recipe(recipe, echo=lambda s: None)] == ["ran"]


def test_deleted_cache_means_not_finished(tmp_path, tiny_gguf, llmkit_home):
    import shutil

    recipe = _recipe(tmp_path, tiny_gguf)
    run_recipe(recipe, echo=lambda s: None)
    shutil.rmtree(llmkit_home / "hf")
    assert [r.status for r in run_recipe(recipe, echo=lambda s: None)] == ["ran"]


def test_unavailable_stage_fails_up_front(tmp_path, tiny_gguf, monkeypatch):
    from llmkit import pipeline

    monkeypatch.delitem(pipeline.STAGES, "eval")
    monkeypatch.setitem(pipeline.PLANNED, "eval", "evaluation")
    (tmp_path / "t.jsonl").write_text("{}\n")
    recipe = _recipe(tmp_path, tiny_gguf, "eval: {tasks: [t.jsonl]}\n")
    with pytest.raises(StageNotAvailable, match=r"eval \(evaluation\)"):
        run_recipe(recipe, echo=lambda s: None)
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_a_bad_eval_task_file_fails_before_any_stage_runs(tmp_path, tiny_gguf):
    (tmp_path / "t.jsonl").write_text('{"type": "choice", "prompt": "Q"}\n{"type": "perplexity"}\n')
    recipe = _recipe(tmp_path, tiny_gguf, "eval: {tasks: [t.jsonl]}\n")
    with pytest.raises(DataError) as e:
        run_recipe(recipe, echo=lambda s: None)
    assert f"{tmp_path / 't.jsonl'}:1: choices" in str(e.value) and f"{tmp_path / 't.jsonl'}:2: prompt" in str(e.value)
    assert not (tmp_path / "runs").exists()


def test_a_failing_gate_stops_the_pipeline_naming_each_gate(tmp_path, tiny_gguf):
    import json

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\nSome text.\n")
    (tmp_path / "t.jsonl").write_text(json.dumps(
        {"type": "generate", "prompt": "Hi", "max_tokens": 4, "checks": {"contains": "Nimbus here!"}}) + "\n")
    recipe = _recipe(tmp_path, tiny_gguf, 'eval: {tasks: [t.jsonl], baseline: base, gates: {t.contains: ">= 0.5", '
                                          't.items: ">= baseline + 1"}}\nrag: {sources: [docs]}\n')
    lines: list[str] = []
    with pytest.raises(GateFailed) as e:
        run_recipe(recipe, echo=lines.append)
    assert e.value.failures == ["t.contains >= 0.5: 0 is not >= 0.5", "t.items >= baseline + 1: 1 is not >= 2"]
    assert e.value.exit_code == 1
    run = tmp_path / "runs" / "t"
    m = read_manifest(run / "eval")
    assert m["kind"] == "eval" and m["config"]["model"] == str(tiny_gguf) and m["inputs"]["baseline"]["engine"] == "transformers"
    assert not (run / "rag").exists()  # the stage after eval never ran
    assert any("gate t.contains >= 0.5: FAIL" in x for x in lines)


def test_lineage_of_model_stage(tmp_path, tiny_gguf):
    run_recipe(_recipe(tmp_path, tiny_gguf), echo=lambda s: None)
    chain = lineage(tmp_path / "runs" / "t" / "model")
    assert [m["kind"] for _, m in chain] == ["model", "input"]


def test_model_then_data_with_lineage_and_skip(tmp_path, tiny_gguf):
    import json

    rows = [{"prompt": f"question {i} about thing {i * 5}", "completion": f"answer {i}"} for i in range(30)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = _recipe(tmp_path, tiny_gguf, "data: {train: t.jsonl, val_fraction: 0.2}\n")
    first = run_recipe(recipe, echo=lambda s: None)
    assert [(r.stage, r.status) for r in first] == [("model", "ran"), ("data", "ran")]
    assert [r.status for r in run_recipe(recipe, echo=lambda s: None)] == ["skipped", "skipped"]
    chain = lineage(tmp_path / "runs" / "t" / "data")
    kinds = [(d, m["kind"]) for d, m in chain]
    assert (0, "dataset") in kinds and (1, "model") in kinds and (2, "input") in kinds
    assert any(m.get("_name") == "train" and m["path"].endswith("t.jsonl") for _, m in chain)
