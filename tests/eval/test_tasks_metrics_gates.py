"""Task files, metrics and gates: no model needed."""

import json

import pytest

from llmkit.config import EvalConfig
from llmkit.errors import ConfigError, DataError
from llmkit.eval import gates, load_tasks, metrics
from llmkit.eval.tasks import load_task


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_a_good_task_file_loads_with_its_name_and_ids(tmp_path):
    p = _write(tmp_path / "support.jsonl", [
        {"type": "generate", "prompt": "Hi", "checks": {"contains": ["Nimbus", "here"], "regex": "^Nimbus"}},
        {"type": "choice", "id": "q2", "prompt": "Q", "choices": ["a", "b"], "answer": 1},
        {"type": "perplexity", "prompt": "p", "completion": "c"},
    ])
    t = load_task(str(p))
    assert t.name == "support" and [i.id for i in t.items] == ["1", "q2", "3"]
    assert load_task(f"mine={p}").name == "mine"


def test_every_bad_row_is_named_by_file_and_line_at_once(tmp_path):
    p = _write(tmp_path / "bad.jsonl", [
        {"type": "generate", "prompt": "Hi", "checks": {"contains": "x"}},  # fine
        "{not json",
        {"type": "gen", "prompt": "x"},
        {"type": "generate", "prompt": "x", "checks": {"exact": True}},  # no reference
        {"type": "choice", "prompt": "Q", "choices": ["a"], "answer": 3},
        {"type": "generate", "prompt": "x", "checks": {"regex": "(unclosed"}, "colour": 1},
    ])
    with pytest.raises(DataError) as e:
        load_task(str(p))
    msg = str(e.value)
    assert "7 problems" in msg
    for want in [f"{p}:2: row: expected a JSON object", f"{p}:3: type: expected one of generate, choice, perplexity",
                 f"{p}:4: checks.exact: needs a reference", f"{p}:5: choices: expected a list of at least 2",
                 f"{p}:5: answer: expected the index", f"{p}:6: colour: unknown field",
                 f"{p}:6: checks.regex: expected a valid regular expression"]:
        assert want in msg


def test_problems_of_all_task_files_are_reported_together(tmp_path):
    a = _write(tmp_path / "a.jsonl", [{"type": "choice", "prompt": "Q"}])
    b = _write(tmp_path / "b.jsonl", [{"type": "perplexity"}])
    with pytest.raises(DataError) as e:
        load_tasks(EvalConfig(tasks=[str(a), str(b), "perplexity"]))
    msg = str(e.value)
    assert f"{a}:1: choices" in msg and f"{b}:1: prompt" in msg and "dataset artifact's val split" in msg


def test_a_task_yaml_names_the_task_and_gives_defaults(tmp_path):
    _write(tmp_path / "rows.jsonl", [{"prompt": "Hi"}, {"prompt": "Yo", "checks": {"regex": "y"}}])
    (tmp_path / "t.yaml").write_text("name: style\ndata: rows.jsonl\ndefaults: {type: generate, checks: {contains: Nimbus}}\n")
    t = load_task(str(tmp_path / "t.yaml"))
    assert t.name == "style" and t.items[0].row["checks"] == {"contains": "Nimbus"}
    assert t.items[1].row["checks"] == {"regex": "y"}


def test_metrics_on_known_values():
    assert metrics.exact("  Paris\n", "Paris") == 1.0 and metrics.exact("paris", "Paris") == 0.0
    assert metrics.contains("Nimbus here! Hi", ["Nimbus here!", "Hi"]) == 1.0
    assert metrics.contains("Nimbus", ["Nimbus", "bye"]) == 0.0
    assert metrics.regex("Nimbus here!", r"^Nimbus\b") == 1.0 and metrics.regex("x", r"^N") == 0.0
    assert metrics.json_valid('{"a": 1}') == 1.0 and metrics.json_valid("{a: 1}") == 0.0
    # SQuAD F1: "the" is dropped; pred {cat, sat}, gold {cat, sat, down}: p = 1, r = 2/3, F1 = 0.8
    assert metrics.token_f1("The cat sat.", "cat sat down") == pytest.approx(0.8)
    # ROUGE-L: LCS of "the cat sat on the mat" and "the cat on the mat" is 5 tokens: p = 5/6, r = 1, F = 10/11
    assert metrics.rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(10 / 11)
    # acc_norm divides by the choice's length: -3/1 beats -4/10? no: -3 < -0.4, so the long choice wins
    assert metrics.choice_scores([-3.0, -4.0], ["a", "bbbbbbbbbb"], 1) == {"acc": 0.0, "acc_norm": 1.0}
    assert metrics.choice_scores([-1.0, -1.0], ["a", "b"], 0)["acc"] == 1.0  # the first of equals, as numpy
    assert metrics.perplexity(2 * 0.6931471805599453, 2) == pytest.approx(2.0)


def test_gates_absolute_and_relative_name_every_failure():
    m = {"s.contains": 0.9, "s.exact_match": 0.4, "p.perplexity": 12.0}
    base = {"s.contains": 0.1, "s.exact_match": 0.45, "p.perplexity": 10.0}
    res = gates.check({"s.contains": ">= baseline + 0.5", "s.exact_match": ">= baseline - 0.02",
                       "p.perplexity": "<= baseline", "s.f1": ">= 0.5", "s.regex": "== 1"}, m, base)
    assert [r["passed"] for r in res] == [True, False, False, False, False]
    fails = gates.describe_failures(res)
    assert fails[0] == "s.exact_match >= baseline - 0.02: 0.4 is not >= 0.43"
    assert fails[1] == "p.perplexity <= baseline: 12 is not <= 10"
    assert fails[2].startswith("s.f1 >= 0.5: no such metric (measured: p.perplexity, s.contains")
    assert gates.check({"s.contains": ">= baseline"}, m)[0]["why"].startswith("no baseline")
    assert gates.parse(">= 1e-3") == (">=", 0.001, 0.0)


def test_the_recipe_validates_gates_and_their_baseline():
    from llmkit.config import parse_recipe

    r = parse_recipe('name: x\neval: {baseline: base, gates: {s.contains: ">= baseline + 0.2", p.perplexity: "< 30"}}\n')
    assert r.eval.gates["s.contains"] == ">= baseline + 0.2"
    with pytest.raises(ConfigError, match=r"eval.gates \(line 2\): gates must look like"):
        parse_recipe('name: x\neval: {gates: {s.contains: ">= baseline * 2"}}\n')
    with pytest.raises(ConfigError, match="eval.baseline is not set"):
        parse_recipe('name: x\neval: {gates: {s.contains: ">= baseline"}}\n')


def test_validate_names_a_missing_task_file_with_its_line(tmp_path):
    from llmkit.config import parse_recipe

    with pytest.raises(ConfigError, match=r"eval.tasks\[1\] \(line 3\): no such file or folder: .*nope.jsonl"):
        parse_recipe("name: x\neval:\n  tasks: [perplexity, s=nope.jsonl]\n", base_dir=tmp_path)
