"""The server's monitoring, driven over HTTP: the request log in SQLite (every field a request fills), feedback
on a response id (/v1/feedback, behind the keys, 404 for an unknown id, in the OpenAPI schema), and prompt drift
flagged for out-of-distribution traffic and not for in-distribution traffic (exported in /metrics)."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import httpx
import pytest
from serve_helpers import MODEL, wait_until

from llmkit.monitor.store import read_log
from llmkit.serve.auth import KeyStore, hash_key

ROOT = Path(__file__).resolve().parents[2]


def prompts(name: str) -> list[str]:
    return [json.loads(x)["prompt"] for x in (ROOT / "examples/drift" / name).read_text().splitlines()]


def test_sqlite_request_log_and_feedback(make_server, tmp_path):
    db = tmp_path / "requests.db"
    srv = make_server(request_log=str(db))
    c = srv.openai()
    chat = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "mail me at jo@acme.io"}],
                                     max_tokens=4, temperature=0)
    chunks = list(c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=3, stream=True))
    comp = c.completions.create(model=MODEL, prompt="hello", max_tokens=2)
    r = httpx.post(f"{srv.url}/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user",
                                                                                           "content": "x"}]})
    assert r.status_code == 404
    srv.state.recorder.log.flush()
    reqs, _ = read_log(db)
    by_id = {x["request_id"]: x for x in reqs}
    assert set(by_id) >= {chat.id, chunks[0].id, comp.id}  # the ids clients got are the log's keys
    first = by_id[chat.id]
    assert first["route"] == "/v1/chat/completions" and first["model"] == MODEL and first["status"] == 200
    assert first["prompt_tokens"] == chat.usage.prompt_tokens and first["completion_tokens"] == 4
    assert 0 < first["ttft_s"] <= first["latency_s"]
    assert first["input"] == ["mail me at <EMAIL_ADDRESS>"]  # redacted before it reached the disk
    assert first["refused"] is None and first["adapter"] is None
    assert by_id[chunks[0].id]["output"] == ["".join(ch.choices[0].delta.content or "" for ch in chunks
                                                     if ch.choices)]
    assert by_id[comp.id]["route"] == "/v1/completions"
    assert "jo@acme.io" not in db.read_bytes().decode("latin-1")
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    ok = httpx.post(f"{srv.url}/v1/feedback", json={"request_id": chat.id, "rating": "up", "comment": "good"})
    assert ok.status_code == 200 and ok.json()["rating"] == 1
    assert httpx.post(f"{srv.url}/v1/feedback", json={"request_id": comp.id, "rating": -1}).status_code == 200
    missing = httpx.post(f"{srv.url}/v1/feedback", json={"request_id": "chatcmpl-nope", "rating": "up"})
    assert missing.status_code == 404
    assert missing.json()["error"]["param"] == "request_id" and missing.json()["error"]["code"] == "request_not_found"
    bad = httpx.post(f"{srv.url}/v1/feedback", json={"request_id": chat.id, "rating": 5})
    assert bad.status_code == 400 and "rating" in bad.json()["error"]["param"]
    _, fb = read_log(db)
    assert [(f["request_id"], f["rating"], f["comment"]) for f in fb] == [(chat.id, 1, "good"), (comp.id, -1, None)]
    assert srv.metric("llmkit_feedback_total", rating="up") == 1
    schema = httpx.get(f"{srv.url}/openapi.json").json()
    assert "/v1/feedback" in schema["paths"] and "FeedbackRequest" in schema["components"]["schemas"]


def test_feedback_needs_a_key_and_a_log(make_server, tmp_path):
    srv = make_server(keys=KeyStore({hash_key("sk-test")}), request_log=str(tmp_path / "log.jsonl"))
    chat = srv.openai("sk-test").chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                         max_tokens=1)
    body = {"request_id": chat.id, "rating": "down"}
    assert httpx.post(f"{srv.url}/v1/feedback", json=body).status_code == 401
    ok = httpx.post(f"{srv.url}/v1/feedback", json=body, headers={"Authorization": "Bearer sk-test"})
    assert ok.status_code == 200
    srv.state.recorder.log.flush()
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines[0]["request_id"] == chat.id and lines[1] == {**lines[1], "type": "feedback", "rating": -1}
    plain = make_server()
    r = httpx.post(f"{plain.url}/v1/feedback", json=body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "feedback_not_configured"


def test_drift_flagged_for_out_of_distribution_traffic_only(make_server, tmp_path):
    """Support questions in new phrasings keep the drift score under the alert; cooking, code and German
    questions set it off. The score reaches /metrics from the monitor's own thread (polled, never waited for)."""
    window = 60
    srv = make_server(request_log=str(tmp_path / "requests.db"), drift_reference=str(ROOT / "examples/support"
                                                                                      / "train.jsonl"),
                      drift_window=window, drift_interval_s=0.2, max_inflight=4)
    c = srv.openai()

    def send(texts: list[str]) -> None:
        for t in texts:
            c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": t}], max_tokens=1)

    def scored(n: int) -> bool:  # a test ran after the n-th prompt arrived
        return srv.metric("llmkit_drift_samples") == window and srv.metric("llmkit_drift_prompts") == n

    send(prompts("in_distribution.jsonl")[:window])
    wait_until(lambda: scored(window), 120, "the drift test of the in-distribution traffic")
    in_score = srv.metric("llmkit_drift_score")
    assert srv.metric("llmkit_drift_alert") == 0, in_score
    print(f"in-distribution drift score {in_score:.4f}")
    send(prompts("out_of_distribution.jsonl")[:window])
    wait_until(lambda: scored(2 * window), 120, "the drift test of the out-of-distribution traffic")
    out_score = srv.metric("llmkit_drift_score")
    assert srv.metric("llmkit_drift_alert") == 1 and srv.metric("llmkit_drift_p_value") < 0.01
    assert out_score > 3 * in_score, (in_score, out_score)
    print(f"out-of-distribution drift score {out_score:.4f}")
    text = httpx.get(f"{srv.url}/metrics").text
    assert f"llmkit_drift_score {out_score}" in text
    # the embeddings the monitor computed are kept beside their requests, for `llmkit monitor` to reuse
    srv.state.recorder.log.flush()
    n = sqlite3.connect(tmp_path / "requests.db").execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
    assert n == 2 * window


def test_bad_drift_reference_fails_the_start(make_server, tmp_path):
    from llmkit.errors import ConfigError

    (tmp_path / "ref.jsonl").write_text('{"text": "no user turn here"}\nnot json\n')
    with pytest.raises(ConfigError) as e:
        make_server(drift_reference=str(tmp_path / "ref.jsonl"), request_log=str(tmp_path / "log.db"))
    assert "ref.jsonl:1" in str(e.value) and "ref.jsonl:2" in str(e.value)
    assert "llmkit-request-log" not in [t.name for t in threading.enumerate()]  # the log opened first was closed
