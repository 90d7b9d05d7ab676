"""`llmkit report RUN_DIR`: one page for a whole run, built once per module from a real pipeline run of the tiny
model (model, data, a few LoRA steps, q8_0 export with its quality report, eval against the base with gates, a
RAG index of two files), a server's request log beside it and a load benchmark's results. Checked: each section
shows the manifests' numbers, every link on the page resolves (each stage's manifest among them), stages not run
are shown as such, the registry's versions join the lineage graph; and in headless Chromium every chart is
drawn, with no console error and no request outside file:// (a screenshot is saved in the test's folder)."""

from __future__ import annotations

import json
import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from browser import chromium_page, needs_chromium

from llmkit.artifacts import read_manifest
from llmkit.cli import main
from llmkit.web import run_report

STAGES = ("model", "data", "train", "compress", "eval", "rag")


@pytest.fixture(scope="module")
def run(tiny_gguf, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("reported")
    rows = [{"prompt": f"question {i} about thing {i * 5}", "completion": f"answer {i} is 42"} for i in range(30)]
    (d / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "task.jsonl").write_text(json.dumps({"type": "generate", "prompt": "Hi", "max_tokens": 4,
                                              "checks": {"contains": "answer"}}) + "\n")
    (d / "docs").mkdir()
    (d / "docs" / "a.md").write_text("# Reset\n\nHold the reset button for ten seconds.\n")
    (d / "docs" / "b.txt").write_text("The router's light turns green when it is online.\n")
    (d / "t.yaml").write_text(
        f"name: t\nmodel: {tiny_gguf}\ndata: {{train: t.jsonl, val_fraction: 0.2}}\n"
        "train: {epochs: 1, batch_size: 8, max_length: 64, eval_every: 1, save_every: 100, precision: fp32}\n"
        "compress: {quantize: q8_0, eval_rows: 4, prompts: 2, gen_tokens: 8}\n"
        "eval: {tasks: [q=task.jsonl], baseline: base, max_tokens: 4, gates: {q.items: '>= 1'}}\n"
        "rag: {sources: [docs], collection: docs}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMKIT_HOME", str(d / "home"))
        mp.setenv("LLMKIT_TRACK", "0")
        from llmkit.config import load_recipe
        from llmkit.pipeline import run_recipe

        recipe = load_recipe(d / "t.yaml")
        run_recipe(recipe, echo=lambda s: None)
    run = recipe.run_dir
    (run / "serve").mkdir()
    from llmkit.monitor.store import open_log

    log = open_log(run / "serve" / "requests.db")
    now = time.time()
    for i in range(40):  # 40 requests over 2 minutes, every tenth refused by a rail
        log.write({"request_id": f"chatcmpl-{i}", "time": now - 120 + 3 * i, "route": "/v1/chat/completions",
                   "model": "t", "status": 200, "latency_s": 0.4 + i / 100, "ttft_s": 0.1, "completion_tokens": 12,
                   "input": ["hi"], "refused": i % 10 == 9,
                   "guard": [{"side": "input", "rail": "injection", "action": "block"}] if i % 10 == 9 else []})
    log.close()
    # bench/serve_load.py's results format: two servers, two concurrency levels each
    levels = lambda k: [{"clients": n, "requests": 4 * n, "ok": 4 * n, "errors": 0, "cut": 0, "tok_s": k * n ** 0.5,  # noqa: E731
                         "p50_latency": 1.0 + n / k, "p95_latency": 1.5 + n / k, "p50_ttft": 0.1, "decode_tok_s": k}
                        for n in (1, 8)]
    (run / "serve" / "serve_load.json").write_text(json.dumps({
        "model": "m.gguf", "uptime_start": "up 1 day, load average: 0.10", "load_start": 0.1,
        "runs": [{"server": "peer", "threads": 2, "levels": levels(40)},
                 {"server": "llmkit", "threads": 2, "levels": levels(70)}]}))
    return run


@pytest.fixture(scope="module")
def page(run) -> tuple[Path, str]:
    out = run_report.write(run)
    return out, out.read_text()


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.hrefs += [v for k, v in attrs if k == "href" and v]


def _links(html: str) -> list[str]:
    p = Links()
    p.feed(html)
    return p.hrefs


def test_each_section_shows_the_manifests_numbers(run, page):
    out, html = page
    assert out == run / "report.html"
    for sid in ("stages", "lineage", "data", "train", "compress", "eval", "gates", "tasks", "rag", "serving"):
        assert f'id="{sid}"' in html, sid
    # the tiny recipe has no registry: section, so only its register and promote stages are "not run"
    not_run = re.findall(r"<b>(\w+)</b></td><td><span class=\"pill none\">NOT RUN", html)
    assert not_run == ["register", "promote"], not_run
    assert html.lower().replace("not run yet has none", "").count("not run") == 2
    data = read_manifest(run / "data")["metrics"]
    assert re.search(rf'title="data/data_card.json: rows_in">{data["rows_in"]}</a>', html)
    comp = read_manifest(run / "compress")["metrics"]
    assert f'title="compress/manifest.json: metrics.ppl">{comp["ppl"]:.4g}</a>' in html
    train = read_manifest(run / "train")["metrics"]
    assert len(train["losses"]) >= 2 and 'data-kind="line"' in html
    assert f'title="train/manifest.json: metrics.steps">{train["steps"]}</a>' in html
    assert 'GATES PASS' in html and "<code>q.items</code>" in html
    assert "docs/a.md" in html and "docs/b.txt" in html  # chunks per file
    assert "Retrieval quality not measured" in html  # no rag task in this run's eval
    # serving: the benchmark's table and charts, the request log's totals
    assert "llmkit · 2 threads" in html and "peer · 2 threads" in html
    assert re.search(r'title="serve/requests.db: requests">40</a>', html)
    assert re.search(r'title="serve/requests.db: refused">4</a>', html)
    assert "guard hits input:injection" in html
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_every_link_resolves_and_each_stage_links_its_manifest(run, page):
    out, html = page
    hrefs = [h for h in _links(html) if not h.startswith("#")]
    missing = [h for h in hrefs if not (out.parent / unquote(h)).exists()]
    assert not missing, missing
    assert all(not h.startswith(("/", "file:", "http")) for h in hrefs), hrefs  # relative: the folder can move
    for s in STAGES:
        assert f"{s}/manifest.json" in hrefs, s
    # the lineage graph: each stage a node linked to its manifest, the raw files with their hashes
    graph = html[html.index('data-kind="lineage"'):]
    graph = graph[:graph.index("</svg>")]
    assert all(f'href="{s}/manifest.json"' in graph for s in STAGES)
    sha = read_manifest(run / "data")["inputs"]["train"]["sha256"][:12]
    assert f"sha256 {sha}" in graph


def test_the_page_elsewhere_links_back_into_the_run(run, tmp_path):
    rc = main(["report", str(run), "--out", str(tmp_path / "sub" / "r.html"), "--no-registry"])
    assert rc == 0
    html = (tmp_path / "sub" / "r.html").read_text()
    hrefs = [h for h in _links(html) if not h.startswith("#")]
    assert hrefs and all((tmp_path / "sub" / unquote(h)).exists() for h in hrefs)
    assert ">eval/metrics.json</a>" in html  # named by the eval folder, however far the page is from it


def test_stages_not_run_and_a_damaged_manifest(run, tmp_path, capsys):
    part = tmp_path / "part"
    for s in ("model", "data", "train"):
        shutil.copytree(run / s, part / s)
    (part / "train" / "manifest.json").write_text("{not json")
    assert main(["report", str(part), "--no-registry"]) == 0
    assert capsys.readouterr().out.strip() == str(part / "report.html")
    html = (part / "report.html").read_text()
    for sid in ("compress", "eval", "rag", "serving"):
        section = html[html.index(f'id="{sid}"'):]
        assert 'class="notrun">not run' in section[:section.index("</section>")], sid
    assert "UNREADABLE" in html and "line 1: not valid JSON" in html
    assert "NO EVAL" in html and "rows read" in html  # the data section still there
    assert html.count("NOT RUN") == 3 + 2  # and register, promote: the tiny recipe has no registry: section


def test_a_folder_without_stages_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--no-registry"]) != 0
    assert "not a run folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope"), "--no-registry"]) != 0
    assert not (tmp_path / "empty" / "report.html").exists()


def test_registered_versions_join_the_lineage(run, tmp_path):
    gguf = next((run / "compress").glob("*.gguf"))
    versions = [{"name": "t", "version": 3, "aliases": ["production"], "format": "gguf", "created": 0,
                 "source_path": str(gguf)},
                {"name": "other", "version": 1, "aliases": [], "format": "gguf", "created": 0,
                 "source_path": str(tmp_path / "elsewhere.gguf")}]  # list_versions' rows; the second is not this run's
    html = run_report.render(run, tmp_path / "r.html", registry=versions)
    graph = html[html.index('data-kind="lineage"'):]
    graph = graph[:graph.index("</svg>")]
    assert "t v3" in graph and "registry @production" in graph and "other v1" not in graph
    assert 'data-kind="registry"' in graph
    assert "Registered versions" in html


def test_the_registry_without_a_database_is_quick_and_empty(run, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}")
    versions, note = run_report.registry_versions(run)
    assert versions == [] and "no version registered from this run" in note


@needs_chromium
def test_the_run_report_draws_every_chart_offline_in_chromium(page, tmp_path):
    out, _ = page
    with chromium_page(tmp_path / "profile") as (p, errors, requests):
        p.goto(out.as_uri(), wait_until="load")
        charts = p.eval_on_selector_all(
            "svg.chart", "els => els.map(e => [e.dataset.kind, e.querySelectorAll('rect.bar, path.line, rect.node')"
                         ".length, e.getBoundingClientRect().width, e.getBoundingClientRect().height])")
        nav = p.eval_on_selector_all("nav a", "els => els.map(e => e.textContent)")
        shot = tmp_path / "run_report.png"
        p.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot: {shot}")
    assert not errors, errors
    assert all(u.startswith("file://") for u in requests), [u for u in requests if not u.startswith("file://")]
    kinds = sorted(k for k, _, _, _ in charts)
    # lineage; data: token histogram (no row dropped: no drop chart); train: loss curve; compress: grouped;
    # eval: the task's grouped chart; rag: chunks per file; serving: 2 bench charts + 3 request log charts
    assert kinds == sorted(["lineage", "histogram", "line", "grouped", "grouped", "bar", "line", "line", "line",
                            "line", "line"]), charts
    assert all(n > 0 and w > 0 and h > 0 for _, n, w, h in charts), charts
    assert nav[:4] == ["Stages", "Lineage", "Data", "Training"] and "Serving" in nav
    assert shot.stat().st_size > 20_000


def test_the_eval_rag_task_metrics_show_in_the_rag_section(run, tmp_path):
    part = tmp_path / "part"
    for s in ("eval", "rag"):
        shutil.copytree(run / s, part / s)
    m = json.loads((part / "eval" / "metrics.json").read_text())
    m["model"].update({"rag.recall@4": 0.75, "rag.mrr": 0.5, "rag.items": 4})  # the keys eval/rag_task.py writes
    (part / "eval" / "metrics.json").write_text(json.dumps(m))
    html = run_report.render(part, part / "report.html")
    rag = html[html.index('id="rag"'):]
    rag = rag[:rag.index("</section>")]
    assert 'title="eval/metrics.json: model.rag.recall@4">0.75</a>' in rag and ">mrr<" in rag
    assert "not measured" not in rag
