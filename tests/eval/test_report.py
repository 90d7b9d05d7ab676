"""The report and model card from given metrics (fake but realistic suite tables, as the safety and bias suites
write them), the loss curve found up a train manifest's lineage, and interpretability on the tiny model with
both engines."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml

from llmkit import artifacts
from llmkit.eval import card, report
from llmkit.eval.interpret import interpret
from llmkit.eval.targets import ModelTarget

METRICS = {
    "model": {"support.contains": 0.9, "support.items": 10, "perplexity.perplexity": 4.2, "perplexity.items": 70,
              "safety.refusal_rate": 0.85, "safety.items": 40, "bias.max_gap": 0.12, "bias.items": 60},
    "baseline": {"support.contains": 0.1, "support.items": 10, "perplexity.perplexity": 9.8, "perplexity.items": 70,
                 "safety.refusal_rate": 0.95, "safety.items": 40, "bias.max_gap": 0.08, "bias.items": 60},
    "delta": {}, "passed": False,
    "gates": [{"metric": "support.contains", "expr": ">= baseline + 0.5", "value": 0.9, "threshold": 0.6,
               "passed": True, "why": "", "gate": "support.contains >= baseline + 0.5"},
              {"metric": "safety.refusal_rate", "expr": ">= 0.9", "value": 0.85, "threshold": 0.9, "passed": False,
               "why": "0.85 is not >= 0.9", "gate": "safety.refusal_rate >= 0.9"}],
    "targets": {"model": "runs/x/train", "baseline": "smollm2-135m-instruct"},
    "tables": {role: {
        "safety": [{"id": "refusal", "title": "Refusal rate by source", "columns": ["source", "n", "rate", "lo", "hi"],
                    "rows": [["harmful (held out)", 20, 0.85 if role == "model" else 0.95, 0.7, 0.95],
                             ["over-refusal (benign)", 20, 0.1, 0.0, 0.25]],
                    "chart": {"type": "bar_ci", "label": "source", "value": "rate", "lo": "lo", "hi": "hi"}}],
        "bias": [{"id": "groups", "title": "Counterfactual gap by group", "note": "95% bootstrap CI",
                  "columns": ["group", "gap", "lo", "hi"],
                  "rows": [["gender", 0.12, 0.03, 0.2], ["religion", -0.04, -0.1, 0.02], ["age", 0.0, None, None]],
                  "chart": {"type": "bar_ci", "label": "group", "value": "gap", "lo": "lo", "hi": "hi"}},
                 {"id": "bbq", "title": "BBQ", "columns": ["context", "accuracy", "bias score"],
                  "rows": [["ambiguous", 0.41, 0.18], ["disambiguated", 0.62, 0.05]],
                  "chart": {"type": "bar", "label": "context", "value": "accuracy"}}]}
        for role in ("model", "baseline")},
}


@pytest.fixture
def trained(tmp_path) -> Path:
    """A train artifact (manifest only) and a compress artifact made from it: the eval scores the GGUF."""
    with artifacts.build("model", tmp_path / "train", {"train": {"method": "lora", "epochs": 2, "lr": 5e-4}},
                         {}) as b:
        (b.tmp / "adapter_config.json").write_text("{}")
        b.outputs = {"format": "peft-adapter", "base": "smollm2-135m-instruct"}
        b.metrics = {"steps": 4, "losses": [[1, 2.6], [2, 1.9], [3, 1.2], [4, 0.9]], "val_losses": [[2, 2.0], [4, 1.1]],
                     "train_loss_first": 2.6, "train_loss_last": 0.9, "val_loss": 1.1, "precision": "bf16"}
    with artifacts.build("model", tmp_path / "compress", {}, {"adapter": artifacts.input_ref(tmp_path / "train")}) as b:
        (b.tmp / "model.gguf").write_bytes(b"GGUF")
    return tmp_path / "compress" / "model.gguf"


def test_report_shows_gates_tasks_suites_training_and_links(trained, tmp_path):
    out = tmp_path / "eval"
    inputs = {"model": {"path": str(trained), "sha256": "ab" * 32},
              "task:support": {"path": str(tmp_path / "support.jsonl"), "sha256": "cd" * 32}}
    html = report.render(METRICS, inputs, out)
    assert "GATES FAIL" in html and "1 of 2 gates fail" in html
    gates = html[html.index('id="gates"'):html.index('id="tasks"')]
    assert gates.index("support.contains") < gates.index("safety.refusal_rate")  # in the recipe's order
    assert re.search(r'pill fail">FAIL</span></td><td><code>safety.refusal_rate', gates)
    # Δ coloured by direction: perplexity fell (better), the refusal rate fell (worse)
    assert re.search(r'class="num better">-5.6<', html) and re.search(r'class="num worse">-0.1<', html)
    charts = re.findall(r'<svg class="chart" data-kind="(\w+)"', html)
    # 4 tasks' small multiples; per role: refusal (ci), groups (ci), bbq (bar); the loss curve
    assert charts.count("grouped") == 4 and charts.count("bar_ci") == 4 and charts.count("bar") == 2
    assert charts.count("line") == 1
    # the CI whiskers are drawn where lo/hi exist (not for "age", whose CI is missing)
    assert html.count('class="whisker"') == 2 * (2 + 2)
    # links are relative to the eval folder: the train manifest two folders up the lineage, the task file
    assert 'href="../train/manifest.json"' in html and 'href="../support.jsonl"' in html
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_model_card_has_the_hugging_face_layout(trained, tmp_path):
    inputs = {"model": {"path": str(trained), "sha256": "ab" * 32}}
    text = card.render(METRICS, inputs, {"tasks": ["perplexity", "support.jsonl"], "max_tokens": 96,
                                         "engine": "auto"})
    front, body = text.split("---\n", 2)[1:]
    meta = yaml.safe_load(front)
    assert meta["base_model"] == "smollm2-135m-instruct" and meta["library_name"] == "peft"
    assert "lora" in meta["tags"]
    results = {r["task"]["name"]: r for r in meta["model-index"][0]["results"]}
    assert set(results) == {"support", "perplexity", "safety", "bias"}
    assert {"type": "contains", "name": "support.contains", "value": 0.9} in results["support"]["metrics"]
    for h in ("## Model details", "## Uses", "## Bias, risks, and limitations", "## Training details",
              "## Evaluation"):
        assert h in body
    assert "training loss 2.6 → 0.9, validation loss 1.1" in body
    assert "`safety.refusal_rate >= 0.9`: FAIL: 0.85 is not >= 0.9" in body


@pytest.mark.parametrize("engine", ["transformers", "llamacpp"])
def test_interpret_both_engines(engine, tiny_llama, tiny_gguf):
    target = ModelTarget(str(tiny_llama if engine == "transformers" else tiny_gguf), engine)
    try:
        r = interpret(target, [[{"role": "user", "content": "Paris is the capital of"}]], max_tokens=6)
    finally:
        target.close()
    (e,) = r["prompts"]
    assert r["engine"] == engine and len(e["tokens"]) == 6
    for t in e["tokens"]:  # the chosen token is the most likely one (greedy), its logprob among the top 5
        assert len(t["top"]) == 5 and t["logprob"] == pytest.approx(t["top"][0][1], abs=1e-4)
        assert sum(math.exp(lp) for _, lp in t["top"]) <= 1 + 1e-4
    if engine == "llamacpp":
        assert "no gradients" in e["attribution"]["skipped"] and "skipped" in e["logit_lens"]
        return
    a, lens = e["attribution"], e["logit_lens"]
    assert len(a["scores"]) == 3 and all(len(row) == len(a["input_tokens"]) for row in a["scores"])
    assert "<|im_start|>" not in a["input_tokens"] and "Paris" in "".join(a["input_tokens"])
    assert any(abs(v) > 0 for row in a["scores"] for v in row)
    assert lens["layers"] == ["embed", "1", "2 (out)"] and len(lens["top"]) == 3
    # the output layer's row is the model's own greedy choice at each position: the reply's tokens
    assert [tok for tok, _ in lens["top"][-1][-5:]] == [t["text"] for t in e["tokens"][:5]]
    json.dumps(r)  # interpret.json is plain JSON


def test_integrated_gradients_on_demand_obey_completeness(tiny_llama):
    """The slower method: its scores sum to the change in the reply token's log-probability between the prompt
    and the baseline prompt (content tokens -> id 0), up to the Riemann error of its steps."""
    import torch

    from llmkit.eval.interpret import _special_ids, attribution

    target = ModelTarget(str(tiny_llama), "transformers")
    eng = target.engine
    prompt = eng.format_chat([{"role": "user", "content": "Paris is the capital of"}])
    want = eng.tokenize("France")[0]
    ig = attribution(eng, prompt, [want], "integrated_gradients")
    gxi = attribution(eng, prompt, [want])
    assert len(ig["scores"][0]) == len(gxi["scores"][0]) and "IntegratedGradients" in ig["method"]
    ids = eng.tokenizer.encode(prompt)
    special = set(_special_ids(eng.tokenizer))
    base = [i if i in special else 0 for i in ids]
    with torch.no_grad():
        f = [torch.log_softmax(eng.lm(input_ids=torch.tensor([x])).logits[0, -1], -1)[want].item() for x in (ids, base)]
    assert sum(ig["scores"][0]) == pytest.approx(f[0] - f[1], rel=0.1, abs=0.02)
    with pytest.raises(ValueError, match="expected one of"):
        attribution(eng, prompt, [want], "saliency")
    target.close()


def test_eval_command_explains_the_prompts_it_is_given_and_prints_the_report(tiny_llama, tmp_path, capsys):
    from llmkit.cli import main

    (tmp_path / "t.jsonl").write_text(json.dumps(
        {"type": "generate", "prompt": "Hi", "max_tokens": 4, "checks": {"contains": "Nimbus here!"}}) + "\n")
    args = ["eval", "--model", str(tiny_llama), "--tasks", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "e")]
    assert main([*args, "--interpret", "Restart the router", "Paris is"]) == 0
    assert f"report: {tmp_path / 'e' / 'report.html'}" in capsys.readouterr().out
    got = json.loads((tmp_path / "e" / "interpret.json").read_text())
    assert [p["messages"][0]["content"] for p in got["model"]["prompts"]] == ["Restart the router", "Paris is"]
    assert main([*args, "--interpret", "--force"]) == 0  # --interpret alone: none
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert "interpret" not in manifest["outputs"] and manifest["outputs"]["report"] == "report.html"
    assert 'id="interpret"' not in (tmp_path / "e" / "report.html").read_text()


def test_attribution_of_a_reply_cut_inside_a_character(tiny_llama):
    """A reply cut at ATTR_TOKENS may end between the byte tokens of one character; Captum's pretty-printer then
    indexed past the end (found by the example recipe on the tiny model). Those last bytes are left out."""
    from llmkit.eval.interpret import attribution

    target = ModelTarget(str(tiny_llama), "transformers")
    eng = target.engine
    prompt = eng.format_chat([{"role": "user", "content": "Where is the café?"}])
    ids = eng.tokenize("the café")
    cut = next(n for n in range(1, len(ids)) if eng.tokenizer.decode(ids[:n]).endswith("\ufffd"))
    r = attribution(eng, prompt, ids[:cut])
    assert "".join(r["output_tokens"]) == eng.tokenizer.decode(ids[:cut]).rstrip("\ufffd")
    assert len(r["scores"]) == len(r["output_tokens"])
    target.close()
