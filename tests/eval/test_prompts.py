"""Prompt experiments on the tiny random Llama: templates checked with file:line errors, the same items asked once
per template, each difference's paired bootstrap CI, a winner only when the CI excludes 0, and resuming."""

import json
from pathlib import Path

import pytest

from llmkit.cli import main
from llmkit.config import EvalConfig
from llmkit.errors import ConfigError
from llmkit.eval import ModelTarget
from llmkit.eval.prompts import PromptTemplate, compare_prompts, differences, load_templates, winners
from llmkit.eval.stats import paired_difference_ci
from llmkit.eval.tasks import Item, Task

EXAMPLES = Path(__file__).parent.parent.parent / "examples" / "prompts"


def _write(tmp_path, name, text) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.fixture
def task(tmp_path) -> Path:
    rows = [{"type": "generate", "id": f"g{i}", "prompt": f"Please restart router {i}.", "max_tokens": 6,
             "checks": {"contains": "the", "regex": "[aeiou]"}} for i in range(5)]
    rows.append({"type": "choice", "id": "c", "prompt": "Paris is the capital of", "choices": ["France", "Spain"],
                 "answer": 0})
    p = tmp_path / "t.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_bad_templates_are_reported_at_once_with_file_and_line(tmp_path):
    a = _write(tmp_path, "a.yaml", "name: ok\nversion: 1\ntemplate: '{prompt} {answer}'\nsytem: hi\n")
    b = _write(tmp_path, "b.yaml", "name: 'bad name'\nsystem: 3\ntemplate: 'no placeholder'\n")
    c = _write(tmp_path, "c.yaml", "name: c\nversion: x\ntemplate: '{prompt'\n")
    with pytest.raises(ConfigError) as e:
        load_templates([a, b, c])
    msg = str(e.value)
    assert f"{a}:3: template: unknown placeholder {{answer}}" in msg and f"{a}:4: sytem: unknown field" in msg
    assert f"{b}:1: name: expected a name" in msg and f"{b}:1: version: required" in msg
    assert f"{b}:2: system: expected a string" in msg and f"{b}:3: template: expected {{prompt}}" in msg
    assert f"{c}:3: template: expected a format string" in msg
    with pytest.raises(ConfigError, match="at least two"):
        load_templates([EXAMPLES / "plain.yaml"])


def test_a_template_rewrites_generated_items_only():
    t = PromptTemplate("x", "1", "{prompt}\n\nBe brief.", system="You help.")
    gen = t.apply({"type": "generate", "prompt": "Hi", "checks": {"contains": "a"}})
    assert gen["messages"] == [{"role": "system", "content": "You help."}, {"role": "user", "content": "Hi\n\nBe brief."}]
    msgs = t.apply({"type": "judge", "rubric": "r", "messages": [{"role": "system", "content": "old"},
                                                                 {"role": "user", "content": "Q?"}]})
    assert msgs["messages"][0]["content"] == "You help." and len(msgs["messages"]) == 2
    assert msgs["prompt"] == "Q?"  # the judge is shown the untemplated question
    choice = {"type": "choice", "prompt": "Q", "choices": ["a", "b"], "answer": 0}
    assert t.apply(choice) is choice
    assert t.sha256 != PromptTemplate("x", "1", "{prompt}\n\nBe brief.").sha256  # the system prompt is content


def test_a_winner_only_when_the_ci_excludes_zero():
    """differences() on given records (the CI itself is SciPy's, through stats.py)."""
    task = Task("s", "s.jsonl", [Item(str(i), "generate", {}) for i in range(12)])
    a, b, c = (PromptTemplate(n, "1", "{prompt}") for n in "abc")
    recs = {"a@1": [{"task": "s", "id": str(i), "scores": {"contains": 1.0, "unparsed": 0.0}} for i in range(12)],
            "b@1": [{"task": "s", "id": str(i), "scores": {"contains": float(i % 2), "unparsed": 0.0}}
                    for i in range(12)],
            "c@1": [{"task": "s", "id": str(i), "scores": {"contains": 1.0, "unparsed": float(i < 9)}}
                    for i in range(12)]}
    diffs = {(d["metric"], d["a"], d["b"]): d for d in differences([task], [a, b, c], recs)}
    ab = diffs[("s.contains", "a@1", "b@1")]
    assert (ab["difference"], ab["low"], ab["high"]) == pytest.approx(paired_difference_ci([1.0] * 12,
                                                                                         [i % 2 for i in range(12)]))
    assert ab["low"] > 0 and ab["better"] == "a@1" and ab["items"] == 12
    ac = diffs[("s.contains", "a@1", "c@1")]
    assert ac["difference"] == 0 and ac["better"] is None and not ac["shown"]
    # unparsed: lower is better, so a (0 of 12) beats c (9 of 12)
    assert diffs[("s.unparsed", "a@1", "c@1")]["better"] == "a@1"
    w = winners(list(diffs.values()), ["a@1", "b@1", "c@1"])
    assert w["s.contains"] is None  # a beats b, but not c: no template beats every other one
    assert w["s.unparsed"] is None  # a and b tie at 0


class Counting:
    """The real tiny model, counting replies, stopped (as a kill would) at the `fail_at`-th."""

    def __init__(self, inner, fail_at=None):
        self.inner, self.fail_at, self.asked = inner, fail_at, 0
        self.name, self.concurrency = inner.name, 1

    def ref(self):
        return self.inner.ref()

    def generate(self, messages, max_tokens):
        self.asked += 1
        if self.asked == self.fail_at:
            raise KeyboardInterrupt("killed")
        return self.inner.generate(messages, max_tokens)

    def loglikelihood(self, context, continuation):
        return self.inner.loglikelihood(context, continuation)

    def close(self):
        pass


def test_compare_prompts_scores_the_same_items_per_template_and_resumes(task, tiny_llama, tmp_path):
    plain, steps = EXAMPLES / "plain.yaml", EXAMPLES / "nimbus-steps.yaml"
    cfg = EvalConfig(tasks=[str(task)])
    inner = ModelTarget(str(tiny_llama))
    killed = Counting(inner, fail_at=8)  # 5 replies of the first template, 2 of the second, then killed
    with pytest.raises(KeyboardInterrupt):
        compare_prompts(cfg, killed, tmp_path / "ab", [plain, steps], progress=False)
    again = Counting(inner)
    r = compare_prompts(cfg, again, tmp_path / "ab", [plain, steps], progress=False)
    assert r["status"] == "ran" and again.asked == 3  # only the second template's 3 unfinished replies

    items = [json.loads(x) for x in (tmp_path / "ab" / "items.jsonl").read_text().splitlines()]
    assert [(i["prompt"], i["id"]) for i in items if i["type"] == "generate"] == [
        (lb, f"g{n}") for lb in ("plain@1", "nimbus-steps@1") for n in range(5)]
    p = r["metrics"]["prompts"]
    assert [t["label"] for t in p["templates"]] == ["plain@1", "nimbus-steps@1"]
    assert p["metrics"]["plain@1"]["t.acc"] == p["metrics"]["nimbus-steps@1"]["t.acc"]  # choice: unchanged
    d = {x["metric"]: x for x in p["differences"]}
    assert set(d) == {"t.contains", "t.regex"}  # generated items only
    by = {lb: [i["scores"]["regex"] for i in items if i["prompt"] == lb and i["type"] == "generate"]
          for lb in ("plain@1", "nimbus-steps@1")}
    diff, lo, hi = paired_difference_ci(by["plain@1"], by["nimbus-steps@1"])
    assert (d["t.regex"]["difference"], d["t.regex"]["low"], d["t.regex"]["high"]) == pytest.approx((diff, lo, hi))
    assert (d["t.regex"]["better"] is not None) == (lo > 0 or hi < 0)
    tables = r["metrics"]["tables"]["model"]["prompts"]
    assert [t["id"] for t in tables] == ["prompts-metrics", "prompts-differences"]
    assert tables[1]["chart"]["type"] == "bar_ci" and len(tables[1]["rows"]) == 2

    # An edited template is a new key: after a kill, its items are asked again, the other template's are not.
    edited = _write(tmp_path, "steps.yaml", steps.read_text().replace("numbered steps.", "steps, briefly."))
    with pytest.raises(KeyboardInterrupt):
        compare_prompts(cfg, Counting(inner, fail_at=8), tmp_path / "ab2", [plain, steps], progress=False)
    third = Counting(inner)
    compare_prompts(cfg, third, tmp_path / "ab2", [plain, edited], progress=False)
    assert third.asked == 5  # all 5 of the edited template; none of plain's
    inner.close()


def test_eval_prompts_command(task, tiny_llama, tmp_path, capsys):
    args = ["eval", "--model", str(tiny_llama), "--tasks", str(task), "--out", str(tmp_path / "e"),
            "--prompts", str(EXAMPLES / "plain.yaml"), str(EXAMPLES / "nimbus-steps.yaml")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "t.contains: plain@1 - nimbus-steps@1 = " in out and "paired bootstrap" in out
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["prompts"]["winners"].keys() == {
        "t.contains", "t.regex"}
    assert main(args) == 0 and "skipped" in capsys.readouterr().out
    bad = _write(tmp_path, "bad.yaml", "name: b\nversion: 1\ntemplate: '{question}'\n")
    assert main([*args[:-2], str(bad), str(EXAMPLES / "plain.yaml")]) == 1
    assert f"{bad}:3: template: unknown placeholder {{question}}" in capsys.readouterr().err
