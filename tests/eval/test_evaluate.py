"""The eval stage on the tiny random Llama: in process and against a real server (the same scores), against
lm-evaluation-harness (the same multiple-choice accuracy), resuming a killed run, and gates."""

import json
from pathlib import Path

import pytest

from llmkit.config import EvalConfig
from llmkit.errors import GateFailed
from llmkit.eval import EndpointTarget, ModelTarget, evaluate

LMEVAL = Path(__file__).parent.parent / "serve" / "lmeval_task"


def _mc_rows() -> list[dict]:
    """lm-eval's tiny_mc items as llmkit choice rows, with lm-eval's doc_to_text."""
    rows = [json.loads(x) for x in (LMEVAL / "tiny_mc.jsonl").read_text().splitlines()]
    return [{"type": "choice", "prompt": f"Question: {r['question']}\nAnswer:", "choices": r["choices"],
             "answer": r["answer"]} for r in rows]


@pytest.fixture
def task(tmp_path) -> Path:
    rows = [{"type": "generate", "prompt": "Please restart the router.", "max_tokens": 12,
             "checks": {"contains": "the", "regex": r"\w", "json": True}},
            {"type": "generate", "messages": [{"role": "user", "content": "Paris is the capital of"}],
             "max_tokens": 8, "reference": "France", "checks": {"exact": True, "f1": True, "rouge_l": True}},
            {"type": "perplexity", "prompt": "Paris is the capital of", "completion": " France."},
            {"type": "perplexity", "text": "The quick brown fox jumps over the lazy dog."},
            *_mc_rows()[:3]]
    p = tmp_path / "mix.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_in_process_and_endpoint_give_the_same_scores(task, tiny_llama, tmp_path):
    from serve_helpers import MODEL, make_state, running

    cfg = EvalConfig(tasks=[str(task)], max_tokens=16)
    local = evaluate(cfg, str(tiny_llama), tmp_path / "local", progress=False)
    with running(make_state(tiny_llama, engine="transformers")) as srv:
        remote = evaluate(cfg, EndpointTarget(f"{srv.url}/v1", concurrency=4), tmp_path / "remote", progress=False)
        assert remote["metrics"]["targets"]["model"] == f"{srv.url}/v1 ({MODEL})"
    a = [json.loads(x) for x in (tmp_path / "local" / "items.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "remote" / "items.jsonl").read_text().splitlines()]
    assert [r["id"] for r in a] == [r["id"] for r in b] == [str(i) for i in range(1, 8)]
    for x, y in zip(a, b):
        assert x.get("reply") == y.get("reply") and x.get("tokens") == y.get("tokens")
        assert x.get("scores") == y.get("scores")
        assert x.get("nll", 0) == pytest.approx(y.get("nll", 0), abs=1e-4)
        assert x.get("lls", [0]) == pytest.approx(y.get("lls", [0]), abs=1e-4)
    ma, mb = local["metrics"]["model"], remote["metrics"]["model"]
    assert ma.keys() == mb.keys() and {"mix.contains", "mix.f1", "mix.rouge_l", "mix.json_valid", "mix.acc",
                                       "mix.acc_norm", "mix.perplexity"} <= ma.keys()
    assert ma == pytest.approx(mb, rel=1e-4)
    m = json.loads((tmp_path / "local" / "manifest.json").read_text())
    assert m["kind"] == "eval" and m["inputs"]["task:mix"]["path"] == str(task)


def test_multiple_choice_accuracy_equals_lm_evals(tiny_llama, tmp_path, monkeypatch):
    """The same items through lm-eval's `hf` model (acc and acc_norm) and llmkit's in-process target."""
    import yaml
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = yaml.safe_load((LMEVAL / "tiny_mc.yaml").read_text())
    cfg["dataset_kwargs"]["data_files"]["test"] = str(LMEVAL / "tiny_mc.jsonl")
    cfg["metric_list"] = [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")]
    (tmp_path / "tiny_mc.yaml").write_text(yaml.safe_dump(cfg))
    out = simple_evaluate(model="hf", model_args=f"pretrained={tiny_llama},dtype=float32", tasks=["llmkit_tiny_mc"],
                          batch_size=3, device="cpu", task_manager=TaskManager(include_path=str(tmp_path)),
                          log_samples=True)
    theirs = out["results"]["llmkit_tiny_mc"]
    their_lls = [[float(r[0][0]) for r in s["resps"]]
                 for s in sorted(out["samples"]["llmkit_tiny_mc"], key=lambda s: s["doc_id"])]

    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _mc_rows()))
    ours = evaluate(EvalConfig(tasks=[str(tmp_path / "mc.jsonl")]), str(tiny_llama), tmp_path / "eval",
                    progress=False)["metrics"]["model"]
    our_lls = [json.loads(x)["lls"] for x in (tmp_path / "eval" / "items.jsonl").read_text().splitlines()]
    for a, b in zip(our_lls, their_lls):
        assert a == pytest.approx(b, abs=1e-4)
    assert ours["mc.acc"] == pytest.approx(theirs["acc,none"], abs=1e-6)  # metrics.json keeps 6 decimals
    assert ours["mc.acc_norm"] == pytest.approx(theirs["acc_norm,none"], abs=1e-6)
    assert 0 < ours["mc.acc"] < 1 or ours["mc.acc_norm"] != ours["mc.acc"]  # the items tell the models apart


class Counting:
    """A real target that counts what it is asked, and fails on the `fail_at`-th question (a killed eval)."""

    def __init__(self, inner, fail_at: int | None = None):
        self.inner, self.fail_at, self.asked = inner, fail_at, 0
        self.name, self.concurrency = inner.name, 1

    def _ask(self):
        self.asked += 1
        if self.asked == self.fail_at:
            raise KeyboardInterrupt("killed")

    def ref(self):
        return self.inner.ref()

    def chat_prompt(self, messages):
        return self.inner.chat_prompt(messages)

    def generate(self, messages, max_tokens):
        self._ask()
        return self.inner.generate(messages, max_tokens)

    def loglikelihood(self, context, continuation):
        self._ask()
        return self.inner.loglikelihood(context, continuation)

    def close(self):
        pass


def test_a_killed_eval_resumes_without_asking_finished_items(tiny_llama, tmp_path):
    rows = [{"type": "perplexity", "text": f"The quick brown fox number {i} jumps."} for i in range(5)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg, out, model = EvalConfig(tasks=[str(tmp_path / "p.jsonl")]), tmp_path / "eval", ModelTarget(str(tiny_llama))
    first = Counting(model, fail_at=4)
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, first, out, progress=False)
    assert not out.exists()  # nothing published
    (cache,) = tmp_path.glob(".eval.items-*.jsonl")
    assert len(cache.read_text().splitlines()) == 3
    second = Counting(model)
    r = evaluate(cfg, second, out, progress=False)
    assert second.asked == 2 and r["metrics"]["model"]["p.items"] == 5
    assert not cache.exists() and len((out / "items.jsonl").read_text().splitlines()) == 5
    third = Counting(model)
    assert evaluate(cfg, third, out, progress=False)["status"] == "skipped" and third.asked == 0
    model.close()


def test_a_failing_gate_names_every_failure_and_keeps_the_artifact(tiny_llama, tmp_path):
    (tmp_path / "g.jsonl").write_text(json.dumps(
        {"type": "generate", "prompt": "Hi", "max_tokens": 4, "checks": {"contains": "Nimbus here!"}}) + "\n")
    cfg = EvalConfig(tasks=[str(tmp_path / "g.jsonl")], baseline=str(tiny_llama),
                     gates={"g.contains": ">= 0.5", "g.regex": ">= 0.5", "g.items": "== 1"})
    for _ in range(2):  # the second run is skipped, and still fails
        with pytest.raises(GateFailed) as e:
            evaluate(cfg, str(tiny_llama), tmp_path / "eval", progress=False)
        assert e.value.failures == ["g.contains >= 0.5: 0 is not >= 0.5",
                                    "g.regex >= 0.5: no such metric (measured: g.contains, g.items)"]
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["passed"] is False and m["baseline"]["g.contains"] == 0 and m["delta"]["g.contains"] == 0
