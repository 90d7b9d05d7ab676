"""The server on its default engine, llama.cpp with continuous batching (the tiny GGUF), through the official
`openai` client: what only this engine serves (logprobs, JSON mode, JSON schema) and concurrent requests."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from serve_helpers import MODEL


@pytest.fixture(scope="module")
def srv(tiny_gguf):
    from serve_helpers import make_state, running

    with running(make_state(tiny_gguf, engine="llamacpp", max_inflight=4)) as r:
        yield r


def test_concurrent_chats_equal_the_same_chats_one_by_one(srv):
    client = srv.openai()
    prompts = ["The quick brown fox", "Paris is the capital", "Support assistant: restart", "In 2024 there"]

    def ask(text):
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}],
                                           max_tokens=12, temperature=0)
        return r.choices[0].message.content

    one_by_one = [ask(t) for t in prompts]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(ask, prompts)) == one_by_one


def test_streamed_chat_with_logprobs(srv):
    stream = srv.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0, stream=True,
        logprobs=True, top_logprobs=2, stream_options={"include_usage": True})
    chunks = list(stream)
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(entries) == 6 and chunks[-1].usage.completion_tokens == 6
    for e in entries:
        assert len(e.top_logprobs) == 2 and e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob
        assert e.logprob == pytest.approx(e.top_logprobs[0].logprob, abs=1e-5)  # greedy picks the top token


def test_json_mode_and_json_schema(srv):
    client = srv.openai()
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a json please"}],
                                       max_tokens=64, temperature=0, response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":  # a random tiny model may ramble past 64 tokens inside a string
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "ok?"}], max_tokens=32, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    assert r.choices[0].finish_reason == "stop"
    assert set(json.loads(r.choices[0].message.content)) == {"ok"}


def test_completions_with_logprobs_and_n(srv):
    r = srv.openai().completions.create(model=MODEL, prompt="The quick brown", max_tokens=5, n=2, temperature=0.9,
                                        seed=3, logprobs=1)
    assert len(r.choices) == 2 and all(len(c.logprobs.tokens) == 5 for c in r.choices)
    # tokens are byte-level: one that ends mid-character shows as U+FFFD on its own, the text does not split it
    c = r.choices[0]
    assert "".join(c.logprobs.tokens).replace("\ufffd", "") == c.text.replace("\ufffd", "")
    assert c.logprobs.text_offset == sorted(c.logprobs.text_offset)
