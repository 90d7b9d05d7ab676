"""Request validation and response shapes that need no server: OpenAI's param paths, logprobs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmkit.engines import Piece
from llmkit.serve.errors import param_path
from llmkit.serve.protocol import ChatCompletionRequest, CompletionRequest
from llmkit.serve.serving import chat_logprobs, completion_logprobs

MSG = [{"role": "user", "content": "hi"}]


def test_strict_types_and_ignored_extras():
    r = ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, "temperature": 1, "metadata": {}})
    assert r.temperature == 1.0 and r.stops() == []
    for bad in ({"temperature": "0.5"}, {"n": 1.5}, {"stream": "yes"}, {"stop": ["a"] * 5}, {"logprobs": 1}):
        with pytest.raises(ValidationError):
            ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, **bad})
    parts = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]})
    assert parts.messages[0].text() == "ab"


def test_unsupported_fields_are_named():
    r = ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, "top_logprobs": 2, "stream_options": {}})
    assert {p for p, _ in r.unsupported()} == {"top_logprobs", "stream_options"}
    c = CompletionRequest.model_validate({"model": "m", "prompt": "x", "echo": True, "stream": True, "best_of": 3})
    assert {p for p, _ in c.unsupported()} == {"echo", "best_of"}
    c = CompletionRequest.model_validate({"model": "m", "prompt": [1, 2], "max_tokens": 0})
    assert {p for p, _ in c.unsupported()} == {"max_tokens"}  # only echo may ask for no new tokens


def test_every_prompt_form_openai_takes():
    forms = {"a": ["a"], ("a", "b"): ["a", "b"], (1, 2): [[1, 2]], ((1, 2), (3,)): [[1, 2], [3]]}
    for prompt, want in forms.items():
        as_json = prompt if isinstance(prompt, str) else [list(x) if isinstance(x, tuple) else x for x in prompt]
        assert CompletionRequest.model_validate({"model": "m", "prompt": as_json}).prompts() == want
    for bad in ([], [[]], ["a", 1], [1, -1], [[1], "a"], [True], [1.5]):
        with pytest.raises(ValidationError):
            CompletionRequest.model_validate({"model": "m", "prompt": bad})


def test_param_path_as_openai_writes_it():
    assert param_path(("body", "messages", 0, "content", "list[TextPart]", 1, "text")) == "messages[0].content[1].text"
    assert param_path(("body", "stop", "str")) == "stop"


def test_logprob_shapes():
    pieces = [Piece("Hel", 5, -0.1, [("Hel", -0.1), ("Hi", -2.3)]), Piece("lo", 6, -0.5, [("lo", -0.5)]), Piece("")]
    chat = chat_logprobs(pieces).model_dump()
    assert [t["token"] for t in chat["content"]] == ["Hel", "lo"]
    assert chat["content"][0]["bytes"] == list(b"Hel")
    assert chat["content"][0]["top_logprobs"][1] == {"token": "Hi", "logprob": -2.3, "bytes": list(b"Hi")}
    legacy = completion_logprobs(pieces).model_dump()
    assert legacy == {"tokens": ["Hel", "lo"], "token_logprobs": [-0.1, -0.5],
                      "top_logprobs": [{"Hel": -0.1, "Hi": -2.3}, {"lo": -0.5}], "text_offset": [0, 3]}
