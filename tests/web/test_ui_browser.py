"""The dashboard page (/ui) in a real browser: a real server (tiny model, a RAG collection, a guard policy, a
SQLite request log, API keys) with the page mounted as `llmkit serve` mounts it, opened in Debian's headless
Chromium through Playwright. The page asks for the key, the playground streams a reply with citations and
per-token logprobs, the charts fill from the request log, the runs table links an eval report and draws the
lineage graph; no console error once the key is given. A screenshot is saved (its path is printed)."""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from browser import chromium_page, needs_chromium
from serve_helpers import MODEL, make_state, wait_until

from llmkit import artifacts
from llmkit.config import RagConfig
from llmkit.rag import index
from llmkit.serve.app import Server, build_app
from llmkit.serve.auth import KeyStore, hash_key
from llmkit.web import mount

KEY = "sk-test-dashboard"
POLICY = "input:\n  pii: {action: redact}\n  topics: {deny: [password]}\n"
DOCS = {"router.md": "# Router\n\n## Factory reset\n\nHold Reset for 10 seconds.\n\n## Lights\n\nAmber: no internet.\n"}


def make_runs(root: Path) -> None:
    """A run of two stages, as `llmkit run` leaves them: a dataset from a raw file, an eval of it with a report."""
    raw = root.parent / "train.jsonl"
    raw.write_text('{"messages": []}\n')
    with artifacts.build("dataset", root / "support" / "data", {}, {"train": artifacts.input_ref(raw)}) as b:
        (b.tmp / "train.jsonl").write_text(raw.read_text())
        b.metrics["rows"] = 1
    with artifacts.build("eval", root / "support" / "eval", {},
                         {"data": artifacts.input_ref(root / "support" / "data")}) as b:
        (b.tmp / "report.html").write_text("<!doctype html><title>report</title><h1>eval report</h1>")
        b.outputs["report"] = "report.html"
        b.metrics |= {"passed": True, "support.acc": 0.75}


@contextmanager
def serving(state, runs: Path):
    """The server as `llmkit serve` runs it: serve/'s app with web/ mounted by the edge."""
    app = build_app(state)
    mount(app, state, runs=runs)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10), state)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()

    def up() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(up, 30, "the server's /health")
    try:
        yield url
    finally:
        server.begin_drain()
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui")
    (tmp / "docs").mkdir()
    for name, text in DOCS.items():
        (tmp / "docs" / name).write_text(text)
    index(RagConfig(sources=[str(tmp / "docs")], collection="help"), tmp / "store" / "help", progress=False)
    make_runs(tmp / "runs")
    (tmp / "policy.yaml").write_text(POLICY)
    state = make_state(tiny_llama, keys=KeyStore({hash_key(KEY)}), rag=[str(tmp / "store")],
                       request_log=str(tmp / "requests.db"), guard=str(tmp / "policy.yaml"))
    with serving(state, tmp / "runs") as url:
        yield url


def test_json_routes_need_the_key_and_refuse_paths_outside_runs(server):
    assert httpx.get(f"{server}/ui").status_code == 200  # the page itself holds no data
    r = httpx.get(f"{server}/ui/api/info")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    auth = {"Authorization": f"Bearer {KEY}"}
    info = httpx.get(f"{server}/ui/api/info", headers=auth).json()
    assert info["collections"] == ["help"] and info["logprobs"] is True
    assert info["guard"]["input"] == [{"rail": "pii", "action": "redact"}, {"rail": "topics", "action": "block"}]
    runs = httpx.get(f"{server}/ui/api/runs", headers=auth).json()["runs"]
    assert [(s["stage"], s["report"]) for s in runs[0]["stages"]] == [("data", None), ("eval", "support/eval/report.html")]
    assert httpx.get(f"{server}/ui/files/support/eval/report.html").status_code == 401
    assert "eval report" in httpx.get(f"{server}/ui/files/support/eval/report.html", headers=auth).text
    for bad in ("../requests.db", "support/data/train.jsonl", "%2e%2e/policy.yaml"):
        assert httpx.get(f"{server}/ui/files/{bad}", headers=auth).status_code == 404, bad


@needs_chromium
def test_playground_streams_a_cited_reply_and_charts_fill(server, tmp_path):
    import openai
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
    for text in ("My email is jane@example.com, where is the router?", "What do amber lights mean?"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=6)
    with pytest.raises(openai.BadRequestError):  # the topics rail refuses it: a guard hit in the log
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "my password"}], max_tokens=4)

    with chromium_page(tmp_path / "profile", width=1400) as (page, errors, _):
        page.goto(f"{server}/ui", wait_until="load")
        page.wait_for_selector("#banner:not([hidden])")  # no key yet: the page asks for one
        assert "API key" in page.inner_text("#banner")
        assert all("401" in e for e in errors), errors  # the refused request, nothing else
        errors.clear()
        page.fill("#key", KEY)
        page.click("#keyform button")
        page.wait_for_selector("#model option", state="attached")
        assert page.is_hidden("#banner")
        page.select_option("#collection", "help")
        page.fill("#maxtok", "12")
        page.fill("#topk", "1")
        page.fill("#prompt", "How long do I hold reset?")
        page.click("#send")
        page.wait_for_selector(".msg.bot .bubble:not(.streaming)", timeout=30_000)
        cite = page.inner_text(".msg.bot .cite")
        assert "docs/router.md" in cite and "Factory reset" in cite
        tokens = page.eval_on_selector_all(".msg.bot .tok[data-lp]", "els => els.map(e => JSON.parse(e.dataset.lp))")
        assert tokens and all(len(t["top_logprobs"]) == 5 for t in tokens), page.inner_html(".msg.bot")
        page.hover(".msg.bot .tok[data-lp]")
        assert page.is_visible("#tip") and "%" in page.inner_text("#tip")
        assert "tokens" in page.inner_text(".msg.bot .meta")
        # the charts fill from the request log (the page refreshes them after each reply): 4 requests so far
        page.wait_for_function("document.querySelector('#kpis .kpi .v')?.textContent === '4'", timeout=15_000)
        points = page.eval_on_selector("#c-latency svg", "e => +e.dataset.points")
        bars = page.eval_on_selector_all("#c-guard rect.bar", "els => els.map(e => e.querySelector('title').textContent)")
        assert points > 0
        assert any(b.startswith("input:topics") for b in bars) and any(b.startswith("input:pii") for b in bars), bars
        assert "drift monitor off" in page.inner_text("#c-drift")
        # runs: the eval's report is linked, the lineage graph has the raw file, the dataset and the eval
        assert page.is_visible("#runtable a[href='/ui/files/support/eval/report.html']")
        kinds = page.eval_on_selector_all("#graph .node .kind", "els => els.map(e => e.textContent)")
        assert sorted(kinds) == ["dataset", "eval", "input"], kinds
        page.mouse.move(0, 0)
        page.evaluate("window.scrollTo(0, 0)")
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot: {shot}")
    assert not errors, errors
    assert shot.stat().st_size > 20_000
