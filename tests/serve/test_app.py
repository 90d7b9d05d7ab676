"""The OpenAI API of a real server on the tiny model, driven by the official `openai` client and raw HTTP."""

from __future__ import annotations

import base64
import json
import threading

import httpx
import numpy as np
import openai
import pytest
from serve_helpers import MODEL, wait_until

USER = [{"role": "user", "content": "Paris is the capital of"}]


def post(server, path: str, body, **kw) -> httpx.Response:
    kw.setdefault("timeout", 60)
    if isinstance(body, (dict, list)):
        return httpx.post(server.url + path, json=body, **kw)
    return httpx.post(server.url + path, content=body, **kw)


def envelope(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


# -- generation ---------------------------------------------------------------------------------------------


def test_chat(server):
    r = server.openai().chat.completions.create(model=MODEL, messages=USER, max_tokens=4, temperature=0)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == MODEL
    assert r.choices[0].message.role == "assistant" and isinstance(r.choices[0].message.content, str)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens <= 4
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_with_usage(server):
    stream = server.openai().chat.completions.create(model=MODEL, messages=USER, max_tokens=6, temperature=0,
                                                     stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    plain = server.openai().chat.completions.create(model=MODEL, messages=USER, max_tokens=6, temperature=0)
    assert text == plain.choices[0].message.content  # greedy: the stream says what the plain answer says


def test_stream_ends_with_done(server):
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", timeout=60,
                      json={"model": MODEL, "messages": USER, "max_tokens": 3, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    for e in events[:-1]:
        json.loads(e.removeprefix("data: "))


def test_completions_and_max_tokens_length(server):
    r = server.openai().completions.create(model=MODEL, prompt=["The quick brown", "Paris is"], max_tokens=3,
                                           temperature=0)
    assert r.id.startswith("cmpl-") and r.object == "text_completion"
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in r.choices)
    assert r.usage.completion_tokens == 6


def test_completions_stream(server):
    chunks = list(server.openai().completions.create(model=MODEL, prompt="The quick brown", max_tokens=3,
                                                     temperature=0, stream=True))
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].text for c in chunks)


def test_n_choices(server):
    r = server.openai().chat.completions.create(model=MODEL, messages=USER, max_tokens=3, n=2, temperature=0)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].message.content == r.choices[1].message.content  # greedy twice
    assert r.usage.completion_tokens == 6


def test_stop(server):
    c = server.openai()
    free = c.completions.create(model=MODEL, prompt="The quick brown", max_tokens=12, temperature=0).choices[0].text
    stop = free[4:6]
    assert stop.strip(), f"greedy text too short or blank to pick a stop string from: {free!r}"
    r = c.completions.create(model=MODEL, prompt="The quick brown", max_tokens=12, temperature=0, stop=[stop])
    assert r.choices[0].text == free[: free.find(stop)]
    assert r.choices[0].finish_reason == "stop"


# -- the other endpoints ----------------------------------------------------------------------------------


def test_embeddings_real_minilm(server):
    c = server.openai()
    texts = ["How do I reset my password?", "I forgot my password, how can I change it?",
             "The giraffe is the tallest land animal."]
    r = c.embeddings.create(model="all-minilm-l6-v2", input=texts)
    v = np.array([d.embedding for d in r.data])
    assert v.shape == (3, 384) and [d.index for d in r.data] == [0, 1, 2]
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3
    assert r.usage.prompt_tokens > 10
    raw = post(server, "/v1/embeddings", {"model": "all-minilm-l6-v2", "input": texts[0], "encoding_format": "base64"})
    b64 = np.frombuffer(base64.b64decode(raw.json()["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(b64, r.data[0].embedding, atol=1e-5)  # alone vs in a batch: padding
    err = envelope(post(server, "/v1/embeddings", {"model": "all-minilm-l6-v2", "input": "x", "dimensions": 8}), 400)
    assert err["param"] == "dimensions"


def test_models_health_metrics(server):
    models = server.openai().models.list()
    assert {m.id for m in models.data} == {MODEL, "all-minilm-l6-v2"}
    assert all(m.owned_by == "llmkit" and m.object == "model" for m in models.data)
    assert server.openai().models.retrieve(MODEL).id == MODEL
    h = httpx.get(server.url + "/health")
    assert h.status_code == 200 and h.json()["status"] == "ok"
    before = server.metric("llmkit_requests_total", route="/v1/chat/completions", status="200")
    server.openai().chat.completions.create(model=MODEL, messages=USER, max_tokens=2)
    text = httpx.get(server.url + "/metrics").text
    assert 'llmkit_requests_total{route="/v1/chat/completions",status="200"}' in text
    assert "llmkit_time_to_first_token_seconds_bucket" in text and "llmkit_completion_tokens_total" in text
    assert server.metric("llmkit_requests_total", route="/v1/chat/completions", status="200") == before + 1
    assert httpx.get(server.url + "/openapi.json").json()["paths"]["/v1/chat/completions"]


# -- errors -------------------------------------------------------------------------------------------------


def test_malformed_json_and_wrong_types(server):
    err = envelope(post(server, "/v1/chat/completions", b'{"model": "tiny", "messages": [',
                        headers={"content-type": "application/json"}), 400)
    assert err["code"] == "invalid_json"
    err = envelope(post(server, "/v1/chat/completions", {"model": MODEL, "messages": USER, "temperature": "hot"}), 400)
    assert err["param"] == "temperature" and err["type"] == "invalid_request_error"
    err = envelope(post(server, "/v1/chat/completions", {"model": MODEL, "messages": "hi"}), 400)
    assert err["param"] == "messages"
    err = envelope(post(server, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": 3}]}), 400)
    assert err["param"] == "messages[0].content"
    err = envelope(post(server, "/v1/chat/completions", {"messages": USER}), 400)
    assert err["param"] == "model" and err["code"] == "missing_required_parameter"
    # unknown fields are ignored, as OpenAI clients send extras
    assert post(server, "/v1/chat/completions", {"model": MODEL, "messages": USER, "max_tokens": 1,
                                                 "metadata": {"a": 1}, "zzz": True}).status_code == 200


def test_openai_client_sees_typed_errors(server):
    c = server.openai()
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="no-such-model", messages=USER)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:  # transformers cannot do constrained decoding
        c.chat.completions.create(model=MODEL, messages=USER, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}})
    assert e.value.body["code"] == "unsupported_feature"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=MODEL, messages=USER, frequency_penalty=1.0)
    assert e.value.body["param"] == "frequency_penalty"


def test_context_length_exceeded(server):
    long = [{"role": "user", "content": "fox " * 300}]  # n_ctx is 256 for these servers
    err = envelope(post(server, "/v1/chat/completions", {"model": MODEL, "messages": long}), 400)
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages"
    err = envelope(post(server, "/v1/chat/completions", {"model": MODEL, "messages": USER, "max_tokens": 250}), 400)
    assert err["code"] == "context_length_exceeded"


def test_unknown_route_and_method(server):
    assert envelope(httpx.get(server.url + "/v1/nope"), 404)["code"] == "not_found"
    assert envelope(httpx.get(server.url + "/v1/chat/completions"), 405)["code"] == "method_not_allowed"


def test_body_too_large(server):
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (1 << 20)}]}
    err = envelope(post(server, "/v1/chat/completions", big), 413)
    assert err["code"] == "request_too_large"

    def chunked():  # no Content-Length: counted while reading
        for _ in range(20):
            yield b"x" * 65536

    envelope(post(server, "/v1/chat/completions", chunked(), headers={"content-type": "application/json"}), 413)


# -- cancellation -------------------------------------------------------------------------------------------


def _capture_generations(server, monkeypatch, submit=None) -> list:
    """Record the Generation of every request (and optionally replace the engine's submit)."""
    engine = server.state.models.entries[MODEL].slot.engine
    submitted, submit = [], submit or engine.submit

    def spy(*a, **kw):
        gen = submit(*a, **kw)
        submitted.append(gen)
        return gen

    monkeypatch.setattr(engine, "submit", spy)
    return submitted


def test_client_disconnect_cancels_the_generation(make_server, monkeypatch):
    srv = make_server()
    release, started = threading.Event(), threading.Event()
    submitted = _capture_generations(srv, monkeypatch, held_submit(release, started))
    body = {"model": MODEL, "prompt": "The quick brown", "max_tokens": 200, "stream": True}
    with httpx.stream("POST", f"{srv.url}/v1/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break  # the first token arrived: hang up
    wait_until(lambda: submitted and submitted[0].finish_reason is not None, 30, "the generation to end")
    assert submitted[0].cancelled.is_set() and submitted[0].finish_reason == "cancelled"
    assert srv.metric("llmkit_cancelled_generations_total", reason="disconnect") == 1
    wait_until(lambda: srv.state.inflight == 0, 10, "the request to be done")
    assert not srv.state.slots._sem.locked()  # its generation slot was given back


def test_non_streaming_disconnect_cancels(make_server, monkeypatch):
    srv = make_server()
    release, started = threading.Event(), threading.Event()
    submitted = _capture_generations(srv, monkeypatch, held_submit(release, started))
    body = {"model": MODEL, "prompt": "The quick brown", "max_tokens": 200}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up; the server polls, sees it gone, cancels
        post(srv, "/v1/completions", body, timeout=httpx.Timeout(60, read=0.5))
    wait_until(lambda: submitted and submitted[0].finish_reason is not None, 30, "the generation to end")
    assert submitted[0].finish_reason == "cancelled"
    assert srv.metric("llmkit_cancelled_generations_total", reason="disconnect") == 1


def test_request_timeout_cancels(make_server, monkeypatch):
    srv = make_server(request_timeout_s=0.01)
    submitted = _capture_generations(srv, monkeypatch)
    err = envelope(post(srv, "/v1/completions", {"model": MODEL, "prompt": "The quick", "max_tokens": 200}), 503)
    assert err["code"] == "timeout"
    if submitted:  # the deadline may pass before the engine got the request at all
        wait_until(lambda: submitted[0].finish_reason is not None, 30, "the generation to end")
        assert submitted[0].finish_reason == "cancelled"
    assert srv.metric("llmkit_cancelled_generations_total", reason="timeout") == 1


# -- limits -------------------------------------------------------------------------------------------------


def test_rate_limits(make_server):
    srv = make_server(requests_per_minute=2)
    ok = {"model": MODEL, "messages": USER, "max_tokens": 1}
    assert [post(srv, "/v1/chat/completions", ok).status_code for _ in range(2)] == [200, 200]
    r = post(srv, "/v1/chat/completions", ok)
    err = envelope(r, 429)
    assert err["type"] == "rate_limit_error" and int(r.headers["retry-after"]) >= 1
    assert srv.metric("llmkit_rate_limited_total") == 1
    with pytest.raises(openai.RateLimitError):
        srv.openai().models.list()


def test_tokens_per_minute(make_server):
    srv = make_server(tokens_per_minute=100)
    err = envelope(post(srv, "/v1/chat/completions", {"model": MODEL, "messages": USER, "max_tokens": 150}), 429)
    assert "too large" in err["message"]
    ok = {"model": MODEL, "messages": USER, "max_tokens": 1}  # ~15 prompt tokens + 1
    assert [post(srv, "/v1/chat/completions", ok).status_code for _ in range(2)] == [200, 200]
    r = post(srv, "/v1/chat/completions", {**ok, "max_tokens": 70})  # ~85 more than the ~70 left
    envelope(r, 429)
    assert int(r.headers["retry-after"]) >= 1


def held_submit(release: threading.Event, started: threading.Event | None = None):
    """An engine.submit whose generations yield one piece, then wait for `release` (or a cancel) to finish:
    the server's side of cancellation and draining, tested without racing a fast tiny model."""
    from llmkit.engines import Generation, Piece

    def submit(prompt, params, adapter=None):
        gen = Generation(prompt_tokens=1)

        def produce():
            gen.put(Piece("a"))
            gen.completion_tokens = 1
            if started is not None:
                started.set()
            while not release.wait(0.01):  # like a real engine, it checks for cancellation between steps
                if gen.cancelled.is_set():
                    return gen.close("cancelled")
            gen.put(Piece("b"))
            gen.completion_tokens = 2
            gen.close("length")

        threading.Thread(target=produce, daemon=True).start()
        return gen

    return submit


def test_queue_limit_overload(make_server, monkeypatch):
    """Beyond max_inflight running and max_queue waiting, a request is a 503 at once, not a hang."""
    srv = make_server(max_inflight=1, max_queue=0)
    release, started = threading.Event(), threading.Event()
    monkeypatch.setattr(srv.state.models.entries[MODEL].slot.engine, "submit", held_submit(release, started))
    body = {"model": MODEL, "messages": USER, "max_tokens": 2}
    first = threading.Thread(target=post, args=(srv, "/v1/chat/completions", body))
    first.start()
    assert started.wait(30)
    r = post(srv, "/v1/chat/completions", body)
    assert envelope(r, 503)["code"] == "overloaded" and r.headers["retry-after"]
    release.set()
    first.join(30)


# -- shutdown -----------------------------------------------------------------------------------------------


def test_graceful_shutdown(make_server, monkeypatch):
    srv = make_server()
    release, started = threading.Event(), threading.Event()
    monkeypatch.setattr(srv.state.models.entries[MODEL].slot.engine, "submit", held_submit(release, started))
    lines: list[str] = []

    def stream() -> None:
        body = {"model": MODEL, "prompt": "The quick brown", "max_tokens": 2, "stream": True}
        with httpx.stream("POST", f"{srv.url}/v1/completions", json=body, timeout=60) as r:
            lines.extend(r.iter_lines())

    t = threading.Thread(target=stream)
    t.start()
    assert started.wait(30)
    srv.server.begin_drain()
    wait_until(lambda: srv.state.draining, 10, "draining")
    r = post(srv, "/v1/chat/completions", {"model": MODEL, "messages": USER, "max_tokens": 1})
    assert envelope(r, 503)["code"] == "shutting_down"  # new work is refused ...
    assert httpx.get(srv.url + "/health").status_code == 503
    assert srv.thread.is_alive() and not srv.state.closed  # ... while the running stream may finish
    release.set()
    t.join(60)
    srv.thread.join(60)
    assert not srv.thread.is_alive()
    assert [x for x in lines if x][-1] == "data: [DONE]"
    chunks = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "ab"  # the whole answer
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert srv.state.closed  # engines closed after the drain
