"""The request log on its own: SQLite (WAL) and JSON lines written by the writer thread, read back the same;
feedback keyed by request id; retention by rows and by days; unreadable lines named by file and line."""

from __future__ import annotations

import json
import sqlite3
import time

import numpy as np
import pytest

from llmkit.errors import ConfigError
from llmkit.monitor.store import JsonlLog, SqliteLog, open_log, read_embeddings, read_log


def rec(i: int, **kw) -> dict:
    return {"request_id": f"chatcmpl-{i}", "route": "/v1/chat/completions", "model": "m", "status": 200,
            "latency_s": 0.1 * i, "prompt_tokens": 5, "completion_tokens": i, "input": [f"q{i}"], "output": [f"a{i}"],
            "guard": [{"side": "input", "rail": "pii", "action": "redact", "score": 1.0}], **kw}


@pytest.mark.parametrize("name", ["log.db", "log.jsonl"])
def test_round_trip_and_feedback(tmp_path, name):
    log = open_log(tmp_path / name)
    assert isinstance(log, SqliteLog if name.endswith(".db") else JsonlLog)
    for i in range(5):
        log.write(rec(i, refused=i == 3))
    assert log.feedback("chatcmpl-2", 1, "nice") and log.feedback("chatcmpl-4", -1)
    assert not log.feedback("chatcmpl-99", 1)
    log.close()
    reqs, fb = read_log(tmp_path / name)
    assert [r["request_id"] for r in reqs] == [f"chatcmpl-{i}" for i in range(5)]
    assert reqs[1]["guard"][0]["rail"] == "pii" and reqs[1]["input"] == ["q1"] and reqs[4]["completion_tokens"] == 4
    assert [bool(r.get("refused")) for r in reqs] == [False, False, False, True, False]
    assert [(f["request_id"], f["rating"]) for f in fb] == [("chatcmpl-2", 1), ("chatcmpl-4", -1)]


def test_sqlite_is_wal_and_readable_while_writing(tmp_path):
    log = SqliteLog(tmp_path / "log.sqlite")
    log.write(rec(1))
    log.flush()
    db = sqlite3.connect(tmp_path / "log.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 1
    log.write(rec(2))  # a reader holds the file open: the writer goes on
    log.flush()
    assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 2
    log.embeddings(["chatcmpl-1", None], np.eye(2, 384, dtype=np.float32))
    log.close()
    vecs = read_embeddings(tmp_path / "log.sqlite")
    assert list(vecs) == ["chatcmpl-1"] and vecs["chatcmpl-1"][0] == 1.0 and vecs["chatcmpl-1"].dtype == np.float32


def test_retention_by_rows_and_days(tmp_path):
    log = SqliteLog(tmp_path / "log.db", max_rows=3)
    for i in range(6):
        log.write(rec(i))
    log.feedback("chatcmpl-5", 1)
    log.prune()  # the writer may have pruned already (it does every minute); now it has, either way
    log.close()
    reqs, fb = read_log(tmp_path / "log.db")
    assert [r["request_id"] for r in reqs] == ["chatcmpl-3", "chatcmpl-4", "chatcmpl-5"] and len(fb) == 1
    old = SqliteLog(tmp_path / "old.db", max_days=1)
    old.write(rec(1, time=time.time() - 2 * 86400))
    old.write(rec(2))
    old.prune()
    old.close()
    assert [r["request_id"] for r in read_log(tmp_path / "old.db")[0]] == ["chatcmpl-2"]


def test_bad_lines_are_named(tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_text(json.dumps(rec(1)) + "\n{oops\n\n[1,\n")
    with pytest.raises(ConfigError) as e:
        read_log(p)
    assert "log.jsonl:2" in str(e.value) and "log.jsonl:4" in str(e.value)
    with pytest.raises(ConfigError, match="no such request log"):
        read_log(tmp_path / "missing.db")


def test_writers_on_many_threads(tmp_path):
    """Requests finish on many threads (the event loop, guard threads); one writer thread commits them all."""
    from concurrent.futures import ThreadPoolExecutor

    log = SqliteLog(tmp_path / "log.db")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: log.write(rec(i)), range(2000)))
    log.close()
    assert sorted(int(r["request_id"].split("-")[1]) for r in read_log(tmp_path / "log.db")[0]) == list(range(2000))
    with pytest.raises(RuntimeError, match="closed"):
        log.write(rec(1))
