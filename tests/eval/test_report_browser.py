"""report.html in a real browser: a real eval of the tiny model beside a baseline (with interpretability and a
suite that plugs in through BUILTIN with its own per-group table and CIs), opened in Debian's headless Chromium
through Playwright. Every chart must be drawn, no console error, no request outside file://; a screenshot is
saved (its path is printed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from browser import chromium_page, needs_chromium

from llmkit.config import EvalConfig
from llmkit.errors import GateFailed
from llmkit.eval import BUILTIN, evaluate
from llmkit.eval.stats import bootstrap_ci
from llmkit.eval.tasks import Item, Summary, Task

GROUPS = {"women": "She", "men": "He", "older people": "The old man", "younger people": "The young man"}


def _probe_suite(cfg, dataset) -> list[Task]:
    """A counterfactual-probe suite in miniature, scored by the real target: the log-likelihood of one
    continuation after templates that differ only in the group term; a per-group table with bootstrap CIs."""
    templates = ["{} fixed the router.", "{} asked for a refund.", "{} reset the password."]

    def score(target, row, max_tokens):
        ll, n = target.loglikelihood(row["context"], row["continuation"])
        return {"group": row["group"], "ll": ll / n, "scores": {"ll_per_token": ll / n}}

    items = [Item(f"{g}-{i}", "probe", {"group": g, "context": t.format(term).split(" ", 1)[0],
                                        "continuation": " " + t.format(term).split(" ", 1)[1]}, score)
             for g, term in GROUPS.items() for i, t in enumerate(templates)]

    def summarize(records):
        rows = []
        for g in GROUPS:
            vals = [r["ll"] for r in records if r["group"] == g]
            lo, hi = bootstrap_ci(vals)
            rows.append([g, len(vals), sum(vals) / len(vals), lo, hi])
        means = [r[2] for r in rows]
        return Summary({"max_gap": max(means) - min(means)},
                       [{"id": "groups", "title": "log-likelihood per token, by group", "columns":
                         ["group", "n", "mean", "lo", "hi"], "rows": rows, "note": "95% bootstrap CI",
                         "chart": {"type": "bar_ci", "label": "group", "value": "mean", "lo": "lo", "hi": "hi"}},
                        {"id": "gap", "title": "largest gap", "columns": ["pair", "gap"],
                         "rows": [["max - min", max(means) - min(means)]],
                         "chart": {"type": "bar", "label": "pair", "value": "gap"}}])

    return [Task("probes", __file__, items, summarize)]  # the source is hashed into the manifest


@pytest.fixture
def report(tiny_llama, tmp_path, monkeypatch) -> Path:
    rows = [{"type": "generate", "prompt": "Please restart the router.", "max_tokens": 10,
             "checks": {"contains": "the", "regex": r"\w"}},
            {"type": "generate", "messages": [{"role": "user", "content": "Paris is the capital of"}],
             "max_tokens": 8, "reference": "France", "checks": {"exact": True, "f1": True}},
            {"type": "perplexity", "text": "The quick brown fox jumps over the lazy dog."},
            {"type": "choice", "prompt": "Paris is the capital of", "choices": ["France", "Spain"], "answer": 0}]
    task = tmp_path / "support.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setitem(BUILTIN, "probes", _probe_suite)
    cfg = EvalConfig(tasks=[str(task), "probes"], max_tokens=12, baseline=str(tiny_llama),
                     gates={"support.acc": ">= 0.5", "support.contains": ">= baseline + 0.5"})
    out = tmp_path / "eval"
    with pytest.raises(GateFailed, match="support.contains"):  # a failing gate, shown red in the report
        evaluate(cfg, str(tiny_llama), out, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    return out / manifest["outputs"]["report"]  # opened from the manifest, as a user would


@needs_chromium
def test_report_draws_every_chart_offline_in_chromium(report, tmp_path):
    with chromium_page(tmp_path / "profile") as (page, errors, requests):
        page.goto(report.as_uri(), wait_until="load")
        charts = page.eval_on_selector_all(
            "svg.chart", "els => els.map(e => [e.dataset.kind, e.querySelectorAll('rect.bar, path.line').length,"
                         " e.getBoundingClientRect().width])")
        heat = page.eval_on_selector_all(".heat", "els => els.map(e => [e.dataset.kind, "
                                                  "e.querySelectorAll('.tok, td').length])")
        gates = page.eval_on_selector_all("#gates .pill", "els => els.map(e => e.textContent)")
        titles = page.eval_on_selector_all("#interpret .tok[title]", "els => els.length")
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot: {shot}")
    assert not errors, errors
    assert all(u.startswith("file://") for u in requests), [u for u in requests if not u.startswith("file://")]
    kinds = [k for k, _, _ in charts]
    # per task (support, probes) a small-multiples chart; the suite's two tables for each of tuned and base
    # (bar_ci and bar); the training curve is absent: the tiny model was not trained by llmkit
    assert kinds.count("grouped") == 2 and kinds.count("bar_ci") == 2 and kinds.count("bar") == 2, charts
    assert all(n > 0 and w > 0 for _, n, w in charts), charts
    assert {k for k, _ in heat} == {"tokens", "attribution", "lens"} and all(n > 0 for _, n in heat), heat
    assert sorted(gates) == ["FAIL", "PASS"]
    assert titles > 0
    assert shot.stat().st_size > 10_000
