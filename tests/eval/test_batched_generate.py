"""Generate items on transformers go GEN_BATCH (16) at a time through one batched `generate` (left-padded), with the
replies the model gives one at a time: the bundled SmolLM2-135M (its HF conversion), fp32, greedy."""

import json

from llmkit.config import EvalConfig
from llmkit.eval import ModelTarget, _units, evaluate
from llmkit.eval.tasks import load_task
from llmkit.models import hf_folder, resolve_model

QUESTIONS = ["How do I reset my password?", "What does HTTP 404 mean?", "Name a fruit.", "Say hello in French.",
             "Why is the sky blue? Answer in one short sentence, please.", "What is Python?"]


def _task(tmp_path):
    rows = [{"type": "generate", "prompt": q, "max_tokens": 16, "checks": {"regex": r"\w"}} for q in QUESTIONS]
    rows.append({"type": "generate", "prompt": "Name a planet.", "max_tokens": 8, "checks": {"regex": r"\w"}})
    rows.append({"type": "perplexity", "text": "The router connects your home to the internet."})
    p = tmp_path / "gen.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _replies(out):
    return {r["id"]: r["reply"] for r in map(json.loads, (out / "items.jsonl").read_text().splitlines())
            if r["type"] == "generate"}


def test_units_group_plain_generate_items_by_max_tokens(tmp_path):
    task = load_task(str(_task(tmp_path)))
    todo = [(task, i) for i in task.items]

    class OneAtATime:  # the shape of a transformers ModelTarget
        concurrency, generate_batch = 1, 8

        def generate_many(self, conversations, max_tokens): ...

        def loglikelihood_many(self, requests): ...

    units = _units(OneAtATime(), todo)
    gen = [u for u in units if u[0][1].type == "generate"]
    assert sorted(len(u) for u in gen) == [1, 6]
    assert all(len({i.row["max_tokens"] for _, i in u}) == 1 for u in gen)
    OneAtATime.concurrency, OneAtATime.generate_batch = 8, 1  # llama.cpp batches its threads' requests itself
    assert all(len(u) == 1 for u in _units(OneAtATime(), todo) if u[0][1].type == "generate")


def test_transformers_answers_generate_items_in_one_batch_with_the_replies_of_one_at_a_time(tmp_path):
    folder = str(hf_folder(resolve_model("smollm2-135m-instruct"), progress=False))
    cfg = EvalConfig(tasks=[str(_task(tmp_path))])
    many = ModelTarget(folder, threads=2)
    assert many.engine_name == "transformers" and many.concurrency == 1 and many.generate_batch == ModelTarget.GEN_BATCH >= 6
    calls = []
    batched = many.generate_many
    many.generate_many = lambda convs, n: calls.append((len(convs), n)) or batched(convs, n)
    evaluate(cfg, many, tmp_path / "many", progress=False)
    many.close()
    assert calls == [(6, 16)]  # the 8-token item alone goes through generate()
    one = ModelTarget(folder, threads=2)
    one.generate_batch = 1  # the runner then asks one item at a time
    evaluate(cfg, one, tmp_path / "one", progress=False)
    one.close()
    got, want = _replies(tmp_path / "many"), _replies(tmp_path / "one")
    assert got == want and len(got) == 7
    assert len(set(want.values())) == 7  # the questions differ, so do the replies
