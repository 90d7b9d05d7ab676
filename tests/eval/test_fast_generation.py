"""In-process generation on llama.cpp: a GGUF target runs 8 items at once (one batch) with the replies it gives
one at a time, and `generate_engine: llamacpp` runs a PEFT adapter as a llama.cpp LoRA on its base's GGUF."""

import json
import shutil

import pytest

from llmkit.config import EvalConfig
from llmkit.errors import UnsupportedModel
from llmkit.eval import ModelTarget, evaluate

PROMPT = [{"role": "user", "content": "Question 99: my router R2 is slow."}]


def _gen_task(tmp_path, n=6):
    rows = [{"type": "generate", "prompt": f"Question {i}: my router R{i % 5} is slow.", "max_tokens": 16,
             "checks": {"regex": r"\w"}} for i in range(n)]
    p = tmp_path / "gen.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _replies(out):
    return [json.loads(x)["reply"] for x in (out / "items.jsonl").read_text().splitlines()]


def test_a_gguf_target_batches_items_with_the_replies_of_one_at_a_time(tmp_path):
    """The bundled 135M GGUF (a random tiny model repeats one token whatever it is asked): 12 short replies."""
    rows = [{"type": "generate", "prompt": q, "max_tokens": 12, "checks": {"regex": r"\w"}} for q in (
        "How do I reset my password?", "What does HTTP 404 mean?", "Name a fruit.", "Say hello in French.",
        "What is 2 + 2?", "Name a colour.", "Why is the sky blue?", "What is Python?", "Name a planet.",
        "Give me a word that rhymes with cat.", "What is the capital of Italy?", "How many legs does a spider have?")]
    (tmp_path / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = EvalConfig(tasks=[str(tmp_path / "gen.jsonl")])
    many = ModelTarget("smollm2-135m-instruct", threads=1)
    assert many.concurrency == ModelTarget.PARALLEL == 8
    evaluate(cfg, many, tmp_path / "many", progress=False)
    assert many.engine.stats["max_batch_seqs"] > 1  # items really shared a llama.cpp batch
    many.close()
    one = ModelTarget("smollm2-135m-instruct", threads=1)
    one.concurrency = 1
    evaluate(cfg, one, tmp_path / "one", progress=False)
    assert one.engine.stats["max_batch_seqs"] == 1
    one.close()
    assert _replies(tmp_path / "many") == _replies(tmp_path / "one")
    assert len(set(_replies(tmp_path / "one"))) == len(rows)  # the prompts differ, so do the replies


@pytest.fixture
def pirate_on_gguf(style_adapters, tiny_gguf, tmp_path):
    """The pirate adapter recorded on the GGUF of its base (as `llmkit train` records the bundled model)."""
    mine = shutil.copytree(style_adapters["pirate"], tmp_path / "pirate")
    cfg = json.loads((mine / "adapter_config.json").read_text())
    (mine / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": str(tiny_gguf)}))
    return mine


def test_an_adapter_generates_on_llamacpp_and_scores_on_transformers(pirate_on_gguf, tmp_path):
    fast = ModelTarget(str(pirate_on_gguf), threads=1, generate_engine="llamacpp")
    assert fast.engine_name == "transformers" and fast.concurrency == 8
    assert fast.ref()["generate_engine"] == "llamacpp"
    assert fast.generate(PROMPT, 24).startswith("Ahoy matey!")  # the LoRA is applied on llama.cpp
    assert set(fast._engines) == {"llamacpp"}  # generating never loaded transformers
    cfg = EvalConfig(tasks=[str(_gen_task(tmp_path))])
    evaluate(cfg, fast, tmp_path / "fast", progress=False)
    assert all(r.startswith("Ahoy matey!") for r in _replies(tmp_path / "fast"))
    ll = fast.loglikelihood_many([("Question 1: my router R1 is slow.", " Ahoy matey!")])
    fast.close()
    plain = ModelTarget(str(pirate_on_gguf), threads=1)
    assert plain.concurrency == 1 and plain.generate(PROMPT, 24).startswith("Ahoy matey!")
    assert plain.loglikelihood_many([("Question 1: my router R1 is slow.", " Ahoy matey!")]) == ll  # transformers both
    plain.close()


def test_llamacpp_refuses_an_hf_folder_with_no_gguf_behind_it(tiny_llama):
    t = ModelTarget(str(tiny_llama), generate_engine="llamacpp")
    with pytest.raises(UnsupportedModel, match="not a GGUF nor converted from one"):
        t.generate(PROMPT, 4)
