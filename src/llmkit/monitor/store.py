"""The server's request log: one record per generation request, and the feedback clients send on them.

Two formats, picked by the file's suffix:

    requests.db / .sqlite / .sqlite3   SQLite in WAL mode (the default for `llmkit monitor`; queryable with SQL)
    requests.jsonl / anything else     JSON lines (one object per request; feedback as `{"type": "feedback"}` lines)

A request never waits for the disk: `write` puts the record on a queue and returns (~µs); one writer thread
prepares each record (the server's scrubbing), drains the queue and commits what has gathered in one transaction. `flush()` waits until everything queued so
far is on disk (feedback calls it, so a rating sent right after its answer finds that answer's row).

Records hold texts only after the server's PII/secret redaction (serve/ scrubs before it writes). Retention
(`max_rows`, `max_days`) is applied by the writer thread as it goes, never on a request's path.

Columns of `requests` (SQLite) and keys of a JSON line:
    request_id  the response's `id` (chatcmpl-…, cmpl-…); feedback names it
    time        unix seconds at the end of the request          route, model, version, adapter, status
    latency_s   request to end of response                      ttft_s: request to first generated text
    prompt_tokens, completion_tokens                            client: a hash of the API key or IP
    refused     1 when the client got a refusal instead of the model's answer: an input rail blocked the
                request (400 content_filter) or an output rail blocked the reply (finish_reason content_filter)
    guard       JSON list of the rails that fired: {side, rail, action, score, threshold?}
    rag         JSON list of the sources the answer was given: {collection, source, chunk, score}
    input, output  JSON lists of texts (user turns / prompts; replies), after redaction
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger("llmkit.monitor")

SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
COLUMNS = ("request_id", "time", "route", "model", "version", "adapter", "status", "latency_s", "ttft_s",
           "prompt_tokens", "completion_tokens", "client", "refused", "guard", "rag", "input", "output")
JSON_COLUMNS = ("guard", "rag", "input", "output")
SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    request_id TEXT, time REAL NOT NULL, route TEXT, model TEXT, version TEXT, adapter TEXT, status INTEGER,
    latency_s REAL, ttft_s REAL, prompt_tokens INTEGER, completion_tokens INTEGER, client TEXT, refused INTEGER,
    guard TEXT, rag TEXT, input TEXT, output TEXT);
CREATE INDEX IF NOT EXISTS requests_time ON requests(time);
CREATE UNIQUE INDEX IF NOT EXISTS requests_request_id ON requests(request_id);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY, request_id TEXT NOT NULL, time REAL NOT NULL, rating INTEGER NOT NULL, comment TEXT);
CREATE INDEX IF NOT EXISTS feedback_request_id ON feedback(request_id);
CREATE TABLE IF NOT EXISTS embeddings (request_id TEXT PRIMARY KEY, vector BLOB NOT NULL);
"""
RETENTION_EVERY_S = 60.0  # how often the writer applies the retention limits


class RequestLog(Protocol):
    path: Path

    def write(self, record: dict) -> None: ...

    def feedback(self, request_id: str, rating: int, comment: str | None = None) -> bool: ...

    def embeddings(self, request_ids: list[str | None], vectors) -> None: ...

    def flush(self, timeout: float = 10.0) -> bool: ...

    def close(self) -> None: ...


def is_sqlite(path: str | Path) -> bool:
    return Path(path).suffix.lower() in SQLITE_SUFFIXES


def open_log(path: str | Path, max_rows: int | None = None, max_days: float | None = None,
             prepare: Callable[[dict], dict] | None = None) -> RequestLog:
    """The request log at `path`: SQLite for .db/.sqlite/.sqlite3, else JSON lines. `prepare` turns each record into
    what is stored (the server's PII/secret scrubbing), on the writer's thread: not on the request's."""
    cls = SqliteLog if is_sqlite(path) else JsonlLog
    return cls(path, max_rows=max_rows, max_days=max_days, prepare=prepare)


class _Writer:
    """A queue and the one thread that drains it: `handle(batch)` runs on that thread with everything queued
    since its last call. `flush` waits for what was queued before it."""

    def __init__(self, name: str, prepare: Callable[[dict], dict] | None = None):
        self.prepare = prepare or (lambda r: r)
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.closed = False

    def start(self) -> None:
        self.thread.start()

    def put(self, item) -> None:
        if self.closed:
            raise RuntimeError("the request log is closed")
        self.q.put(item)

    def flush(self, timeout: float = 10.0) -> bool:
        if self.closed or not self.thread.is_alive():
            return True
        done = threading.Event()
        self.q.put(done)
        return done.wait(timeout)

    def stop(self) -> None:
        if not self.closed:
            self.closed = True
            self.q.put(None)
            self.thread.join(30)

    def _loop(self) -> None:
        stop = False
        while not stop:
            batch, events = [self.q.get()], []
            while True:  # everything else already waiting goes into the same transaction
                try:
                    batch.append(self.q.get_nowait())
                except queue.Empty:
                    break
            items = []
            for x in batch:
                if x is None:
                    stop = True
                elif isinstance(x, threading.Event):
                    events.append(x)
                else:
                    items.append(x)
            try:
                self.handle(items)
            except Exception:  # noqa: BLE001 -- a full disk must not kill the writer; the next batch tries again
                log.exception("could not write %d request log record(s)", len(items))
            for e in events:
                e.set()
        self.finish()

    def handle(self, items: list) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        pass


class SqliteLog(_Writer):
    def __init__(self, path: str | Path, max_rows: int | None = None, max_days: float | None = None,
                 prepare: Callable[[dict], dict] | None = None):
        super().__init__("llmkit-request-log", prepare)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_rows, self.max_days = max_rows, max_days
        self._db = connect(self.path, write=True)
        self._pruned = 0.0
        self.start()

    def write(self, record: dict) -> None:
        self.put(("request", record))

    def embeddings(self, request_ids: list[str | None], vectors) -> None:
        """Keep prompt embeddings (the drift monitor's) beside their requests, as float16 (768 bytes each)."""
        self.put(("embedding", [(rid, v.astype("float16").tobytes()) for rid, v in zip(request_ids, vectors) if rid]))

    def feedback(self, request_id: str, rating: int, comment: str | None = None) -> bool:
        """Store a rating of a logged request; False when no request has that id."""
        self.flush()
        with connect(self.path) as db:  # a reader of its own: WAL lets it read beside the writer
            if db.execute("SELECT 1 FROM requests WHERE request_id = ?", (request_id,)).fetchone() is None:
                return False
        self.put(("feedback", (request_id, time.time(), rating, comment)))
        self.flush()
        return True

    def handle(self, items: list) -> None:
        rows = [_row(self.prepare(r)) for kind, r in items if kind == "request"]
        fb = [r for kind, r in items if kind == "feedback"]
        emb = [pair for kind, pairs in items if kind == "embedding" for pair in pairs]
        with self._db:  # one transaction per batch: one fsync for many requests
            if rows:
                self._db.executemany(f"INSERT OR REPLACE INTO requests ({', '.join(COLUMNS)}) "
                                     f"VALUES ({', '.join('?' * len(COLUMNS))})", rows)
            if fb:
                self._db.executemany("INSERT INTO feedback (request_id, time, rating, comment) VALUES (?, ?, ?, ?)", fb)
            if emb:
                self._db.executemany("INSERT OR REPLACE INTO embeddings (request_id, vector) VALUES (?, ?)", emb)
        asked = [r for kind, r in items if kind == "prune"]
        if asked or (self.max_rows or self.max_days) and time.monotonic() - self._pruned > RETENTION_EVERY_S:
            n = self._prune()
            for box in asked:
                box.append(n)

    def prune(self) -> int:
        """Apply the retention limits now (the writer does every minute, on its own thread, as here); the number
        of requests deleted."""
        box: list[int] = []
        self.put(("prune", box))
        self.flush()
        return box[0] if box else 0

    def _prune(self) -> int:
        n = 0
        with self._db:
            if self.max_days:
                n += self._db.execute("DELETE FROM requests WHERE time < ?",
                                      (time.time() - self.max_days * 86400,)).rowcount
            if self.max_rows:
                n += self._db.execute("DELETE FROM requests WHERE id <= (SELECT MAX(id) FROM requests) - ?",
                                      (self.max_rows,)).rowcount
            if n:
                for table in ("feedback", "embeddings"):
                    self._db.execute(f"DELETE FROM {table} WHERE request_id NOT IN (SELECT request_id FROM requests)")
        self._pruned = time.monotonic()
        return n

    def finish(self) -> None:
        self._db.close()

    def close(self) -> None:
        self.stop()


class JsonlLog(_Writer):
    """JSON lines: one `{"time": …, …}` object per request, one `{"type": "feedback", …}` per rating. Feedback on
    a JSON-lines log is accepted for requests this server process logged (the ids are kept in memory, the last
    `max_rows` or 100,000); retention by rows/days is not applied to an append-only text file (rotate it with
    logrotate's copytruncate, or use SQLite)."""

    def __init__(self, path: str | Path, max_rows: int | None = None, max_days: float | None = None,
                 prepare: Callable[[dict], dict] | None = None):
        super().__init__("llmkit-request-log", prepare)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a", encoding="utf-8")
        self._ids: deque[str] = deque(maxlen=max_rows or 100_000)
        self._known: set[str] = set()
        self.start()

    def embeddings(self, request_ids: list[str | None], vectors) -> None:
        pass  # JSON lines keep no vectors: `llmkit monitor --reference` embeds a JSON-lines log's prompts again

    def write(self, record: dict) -> None:
        rid = record.get("request_id")
        if rid:
            if len(self._ids) == self._ids.maxlen:
                self._known.discard(self._ids[0])
            self._ids.append(rid)
            self._known.add(rid)
        self.put(("request", {"time": round(time.time(), 3), **record}))

    def feedback(self, request_id: str, rating: int, comment: str | None = None) -> bool:
        if request_id not in self._known:
            return False
        self.put(("feedback", {"type": "feedback", "request_id": request_id, "time": round(time.time(), 3),
                               "rating": rating, "comment": comment}))
        self.flush()
        return True

    def handle(self, items: list) -> None:
        if items:
            rows = [self.prepare(r) if kind == "request" else r for kind, r in items]
            self._f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            self._f.flush()

    def finish(self) -> None:
        self._f.close()

    def close(self) -> None:
        self.stop()


def connect(path: Path, write: bool = False) -> sqlite3.Connection:
    """A connection to a request log database in WAL mode (readers never block the writer, nor it them)."""
    db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
    if write:
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL under WAL: a commit is durable against a process crash; a power cut may lose the last
        # transactions, never corrupt the file (https://www.sqlite.org/pragma.html#pragma_synchronous)
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
    return db


def _row(r: dict) -> tuple:
    t = r.get("time") or time.time()
    vals = {**r, "time": round(t, 3)}
    for k in JSON_COLUMNS:
        if vals.get(k) is not None:
            vals[k] = json.dumps(vals[k], ensure_ascii=False)
    if "refused" in vals:
        vals["refused"] = int(bool(vals["refused"]))
    return tuple(vals.get(c) for c in COLUMNS)


# ---------------------------------------------------------------------------------------------------------
# Reading a log back (`llmkit monitor`, the drift monitor, tests)


def read_log(path: str | Path, since: float | None = None) -> tuple[list[dict], list[dict]]:
    """(requests, feedback) of a log, oldest first, JSON fields decoded; `since`: unix seconds."""
    from llmkit.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: no such request log"])
    if is_sqlite(path):
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            db.row_factory = sqlite3.Row
            where, args = ("WHERE time >= ?", (since,)) if since is not None else ("", ())
            reqs = [dict(r) for r in db.execute(f"SELECT {', '.join(COLUMNS)} FROM requests {where} ORDER BY time",
                                                args)]
            fb = [dict(r) for r in db.execute(f"SELECT request_id, time, rating, comment FROM feedback {where} "
                                              "ORDER BY time", args)]
        finally:
            db.close()
        for r in reqs:
            for k in JSON_COLUMNS:
                r[k] = json.loads(r[k]) if r[k] else []
        return reqs, fb
    reqs, fb, errors = [], [], []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append(f"{path}:{i}: not a JSON object ({e.msg})")
                continue
            if since is not None and obj.get("time", 0) < since:
                continue
            (fb if obj.get("type") == "feedback" else reqs).append(obj)
    if errors:
        raise ConfigError(errors[:20])
    for r in reqs:  # the server's older JSON lines named the latency `seconds`
        if "latency_s" not in r and "seconds" in r:
            r["latency_s"] = r["seconds"]
    return reqs, fb


def read_embeddings(path: str | Path) -> dict[str, np.ndarray]:
    """request id → prompt embedding (float32) that the server's drift monitor stored; {} for JSON lines."""
    if not is_sqlite(path):
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT request_id, vector FROM embeddings").fetchall()
    except sqlite3.OperationalError:  # a log written before embeddings were kept
        return {}
    finally:
        db.close()
    return {rid: np.frombuffer(v, dtype=np.float16).astype(np.float32) for rid, v in rows}
