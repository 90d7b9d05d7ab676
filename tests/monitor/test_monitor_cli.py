"""`llmkit monitor LOG`: the windows' numbers are the log's (checked against numpy on a log written with known
values), the PNG and HTML are written, and with a reference the window of out-of-distribution prompts is flagged
while the in-distribution one is not (reusing the embeddings the server stored)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llmkit.cli import main
from llmkit.monitor.store import SqliteLog

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_040.0  # a fixed start in the past (2023): windows fall on known edges


def prompts(name: str) -> list[str]:
    return [json.loads(x)["prompt"] for x in (ROOT / "examples/drift" / name).read_text().splitlines()]


def write_log(path: Path) -> list[dict]:
    """Two 60 s windows: support questions, then cooking/code/German; errors, blocks, RAG and feedback in both."""
    log, rows = SqliteLog(path), []
    rng = np.random.default_rng(0)
    for w, texts in enumerate([prompts("in_distribution.jsonl")[:60], prompts("out_of_distribution.jsonl")[:60]]):
        for i, text in enumerate(texts):
            r = {"request_id": f"chatcmpl-{w}-{i}", "time": T0 + 60 * w + i * 0.9, "route": "/v1/chat/completions",
                 "model": "m", "status": 500 if i % 20 == 0 else 200, "latency_s": float(rng.uniform(0.1, 2.0)),
                 "ttft_s": 0.05, "prompt_tokens": 10, "completion_tokens": int(rng.integers(1, 50)),
                 "input": [text], "output": ["ok"], "refused": i % 10 == 1,
                 "guard": [{"side": "input", "rail": "pii", "action": "redact", "score": 1.0}] if i % 3 == 0 else [],
                 "rag": [{"collection": "docs", "source": f"docs/{'r2' if i % 4 else 'mesh'}.md", "score": 0.5}]}
            rows.append(r)
            log.write(r)
    log.write({"request_id": "x", "time": T0 + 30, "status": 400, "route": "/v1/chat/completions", "input": []})
    log.flush()
    log.feedback("chatcmpl-0-1", 1)
    log.feedback("chatcmpl-1-1", -1)
    log.close()
    return rows


def test_windows_match_the_log(tmp_path, capsys):
    rows = write_log(tmp_path / "log.db")
    assert main(["monitor", str(tmp_path / "log.db"), "--window", "1m", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert [w["requests"] for w in s["windows"]] == [61, 60]  # the 400 counts as a request, and a client error
    first = s["windows"][0]
    ok = [r for r in rows[:60] if r["status"] == 200]
    assert first["latency_p95"] == np.percentile([r["latency_s"] for r in ok], 95)
    assert first["tokens_per_s"] == np.median([r["completion_tokens"] / r["latency_s"] for r in ok])
    assert (first["errors"], first["client_errors"], first["refused"]) == (3, 1, 6)
    assert first["error_rate"] == 3 / 61 and first["guard"] == {"input:pii": 20}
    assert (first["feedback_up"], first["feedback_down"], s["windows"][1]["feedback_down"]) == (1, 0, 1)
    assert s["rag_sources"][0] == {"source": "docs/r2.md", "count": 90}
    assert first["drift"] is None


def test_table_plot_html_and_drift(tmp_path, capsys, monkeypatch):
    rows = write_log(tmp_path / "log.db")
    from llmkit.monitor import drift

    # the server's drift monitor stores each prompt's embedding; `llmkit monitor` embeds only what is missing
    log = SqliteLog(tmp_path / "log.db")
    log.embeddings([r["request_id"] for r in rows[:100]], drift.embed([r["input"][0] for r in rows[:100]]))
    log.close()
    embedded: list[int] = []
    real = drift.embed
    monkeypatch.setattr(drift, "embed", lambda texts, **kw: embedded.append(len(texts)) or real(texts, **kw))
    png, page = tmp_path / "m.png", tmp_path / "m.html"
    ref = str(ROOT / "examples/support/train.jsonl")
    code = main(["monitor", str(tmp_path / "log.db"), "--window", "60s", "--reference", ref, "--plot", str(png),
                 "--html", str(page), "--fail-on-drift"])
    out = capsys.readouterr().out
    assert code == 3, out  # the last prompts drifted
    # window 1: all cached; window 2: the 19 answered prompts not cached; the whole log: none new; the reference
    assert sorted(embedded) == sorted([19, len(drift.reference_prompts(ref))]), embedded
    lines = out.splitlines()
    assert "p95 s" in lines[0] and "input:pii" in lines[0]
    assert "ALERT" not in lines[1] and "ALERT" in lines[2], out
    assert "docs/r2.md" in out and "DRIFT" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert "data:image/png;base64," in page.read_text()
    assert main(["monitor", str(tmp_path / "log.db"), "--since", "1h"]) == 0  # all of it is older than an hour
    assert "no requests in that time" in capsys.readouterr().out
