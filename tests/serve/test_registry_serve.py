"""Serving from the registry: `registry:tiny@production` served on llama.cpp while 8 clients (streaming and not)
keep asking; the alias moves from version 1 to version 2 (two tiny GGUFs of different seeds, so their greedy
answers differ) and the server loads version 2 beside version 1 and switches between requests. Must show: zero
failed requests, answers from both versions (each version's own text), the old engine closed afterwards, the
switch counted in /metrics and shown in /v1/models, /health and the request log. Then a version that cannot load
(a broken GGUF) leaves version 2 serving, with the error counted and shown."""

from __future__ import annotations

import json
import logging
import threading
import time

import httpx
import pytest
from serve_helpers import running, wait_until

pytest.importorskip("mlflow")

from llmkit.config import ServeConfig  # noqa: E402
from llmkit.serve import load_state  # noqa: E402
from llmkit.serve.auth import KeyStore  # noqa: E402

PROMPT = [{"role": "user", "content": "Say something about routers."}]


@pytest.fixture
def registry(tiny_gguf, tmp_path, monkeypatch):
    """A sqlite MLflow registry with `tiny` v1 (the session's tiny GGUF, @production) and v2 (another seed)."""
    from conftest import build_tiny_llama, write_gguf

    from llmkit.track.registry import register, set_alias

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    other = write_gguf(build_tiny_llama(tmp_path / "hf-seed1", seed=1), tmp_path / "tiny-seed1.gguf")
    assert register(tiny_gguf, "tiny")["version"] == 1
    assert register(other, "tiny")["version"] == 2
    set_alias("tiny", "production", 1)
    return tmp_path


def _version(fingerprint: str | None) -> int:
    return int(fingerprint.rsplit("-v", 1)[1])


def test_production_switches_under_load_with_no_failed_request(registry, caplog):
    from llmkit.track.registry import register, set_alias

    caplog.set_level(logging.INFO, logger="llmkit.serve")

    log_file = registry / "requests.jsonl"
    cfg = ServeConfig(engine="llamacpp", threads=1, n_ctx=256, embedder=None, registry_poll_s=0.2,
                      request_log=str(log_file))
    state = load_state(cfg, ["registry:tiny@production"], keys=KeyStore())
    with running(state) as r:
        old_slot = state.models.entries["tiny"].slot
        cards = {c["id"]: c for c in httpx.get(f"{r.url}/v1/models").json()["data"]}
        assert cards["tiny"]["llmkit_version"] == 1  # the id stays the registry name; the version is shown

        answers: list[tuple[int, str]] = []  # (version that answered, text), in the order they ended
        failures: list[str] = []
        stop = threading.Event()

        def client(i: int) -> None:
            oa = r.openai()
            while not stop.is_set():
                try:
                    if i % 2:  # streaming: every chunk must come from one version
                        chunks = list(oa.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=24,
                                                                 temperature=0, stream=True))
                        versions = {_version(c.system_fingerprint) for c in chunks}
                        assert len(versions) == 1, versions
                        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                        answers.append((versions.pop(), text))
                    else:
                        resp = oa.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=24, temperature=0)
                        answers.append((_version(resp.system_fingerprint), resp.choices[0].message.content))
                except Exception as e:  # noqa: BLE001 -- every failure is collected and must be none
                    failures.append(f"client {i}: {type(e).__name__}: {e}")

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(8)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: len(answers) >= 24, 60, "answers from version 1 under load")
            set_alias("tiny", "production", 2)  # what `llmkit promote tiny --version 2` does once gates pass
            wait_until(lambda: any(v == 2 for v, _ in answers), 60, "answers from version 2")
            n = len(answers)
            wait_until(lambda: len(answers) >= n + 24, 60, "more answers after the switch")
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert failures == []
        by_version = {v: {t for w, t in answers if w == v} for v in (1, 2)}
        assert by_version[1] and by_version[2]
        assert not by_version[1] & by_version[2]  # two different models answered, not one relabelled
        first_v2 = next(i for i, (v, _) in enumerate(answers) if v == 2)
        assert all(v == 2 for v, _ in answers[first_v2 + 16:])  # once switched it stays switched

        wait_until(lambda: old_slot.closed, 30, "the old engine closed")  # after its last request
        assert old_slot.users == 0 and state.models.entries["tiny"].slot is not old_slot
        assert r.metric("llmkit_registry_switches_total", model="tiny") == 1
        assert r.metric("llmkit_registry_version", model="tiny") == 2
        assert "model tiny: version 1 → 2" in caplog.messages
        cards = {c["id"]: c for c in httpx.get(f"{r.url}/v1/models").json()["data"]}
        assert cards["tiny"]["llmkit_version"] == 2
        assert httpx.get(f"{r.url}/health").json()["registry"]["tiny"]["version"] == 2

        # a version that cannot load: version 2 keeps serving, the failure is counted and shown
        broken = registry / "broken.gguf"
        broken.write_bytes(b"GGUF" + b"\0" * 64)
        assert register(broken, "tiny")["version"] == 3
        set_alias("tiny", "production", 3)
        wait_until(lambda: r.metric("llmkit_registry_load_failures_total", model="tiny") == 1, 60,
                   "the failed load of version 3")
        health = httpx.get(f"{r.url}/health").json()["registry"]["tiny"]
        assert health["version"] == 2 and health["failed_version"] == 3 and "version 3" in health["error"]
        resp = r.openai().chat.completions.create(model="tiny", messages=PROMPT, max_tokens=24, temperature=0)
        assert _version(resp.system_fingerprint) == 2 and resp.choices[0].message.content in by_version[2]
        assert r.metric("llmkit_registry_switches_total", model="tiny") == 1
        assert any("could not load version 3 of tiny" in m and "still serving version 2" in m for m in caplog.messages)

    # the request log names the version that answered each request
    deadline = time.monotonic() + 30
    while True:
        rows = [json.loads(x) for x in log_file.read_text().splitlines()] if log_file.is_file() else []
        if len(rows) >= len(answers) + 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert {row["version"] for row in rows} == {1, 2}
    assert all(row["status"] == 200 for row in rows)


def test_a_pinned_version_and_a_named_spec(registry):
    """`NAME=registry:tiny/2` serves version 2 as NAME and follows nothing."""
    cfg = ServeConfig(engine="llamacpp", threads=1, n_ctx=256, embedder=None, registry_poll_s=0.2)
    state = load_state(cfg, ["support=registry:tiny/2"], keys=KeyStore())
    try:
        assert list(state.models.entries) == ["support"]
        assert state.models.entries["support"].version == 2 and state.followers == []
    finally:
        state.close()
