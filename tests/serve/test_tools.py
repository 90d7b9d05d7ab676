"""Tool calling (serve/tools.py) on a live server through the official `openai` client: the tiny random GGUF on
llama.cpp, whose text is noise but whose grammar-constrained calls must still be valid calls of the given tools.

The tiny model's ChatML template does not read `tools`, so these requests also exercise the text form of the
tools (system message, `<tool_call>` blocks, `<tool_response>` turns); the native form is tested on a template
that does read them."""

import json

import jsonschema
import pytest
from serve_helpers import MODEL

from llmkit.serve import protocol as p
from llmkit.serve import tools

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    # bounded values only: a random model fills an unbounded string until max_tokens
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"enum": ["utc", "cet"]}},
                                       "required": ["tz"], "additionalProperties": False}}}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def srv(tiny_gguf):
    from serve_helpers import running

    from llmkit.config import ServeConfig
    from llmkit.serve import load_state
    from llmkit.serve.auth import KeyStore

    # the tools' text takes ~900 tokens of the tiny byte-level vocabulary: a context past the model's 256
    # (llama.cpp allows it; the random model's output is noise either way)
    state = load_state(ServeConfig(engine="llamacpp", threads=1, n_ctx=2048, max_inflight=2),
                       [f"{MODEL}={tiny_gguf}"], keys=KeyStore())
    with running(state) as r:
        yield r


def assert_valid(call) -> None:
    assert call.id.startswith("call_") and call.type == "function"
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def ask(srv, **kw):
    kw = {"messages": ASK, "tools": TOOLS, "temperature": 0, "max_tokens": 120, **kw}
    return srv.openai().chat.completions.create(model=MODEL, **kw)


def test_required_and_named_calls_are_valid_calls(srv):
    r = ask(srv, tool_choice="required", parallel_tool_calls=False)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None and len(c.message.tool_calls) == 1
    assert_valid(c.message.tool_calls[0])
    for name in SCHEMAS:  # whichever the model would pick, naming a function gets that one
        c = ask(srv, tool_choice={"type": "function", "function": {"name": name}}).choices[0]
        assert c.finish_reason == "tool_calls" and [t.function.name for t in c.message.tool_calls] == [name]
        assert_valid(c.message.tool_calls[0])


def test_parallel_calls_are_an_array_of_valid_calls(srv):
    r = ask(srv, tool_choice="required", n=3, temperature=1.0, seed=1)  # parallel_tool_calls defaults to true
    for c in r.choices:
        if c.finish_reason == "length":  # a sampled array may go on past max_tokens; it is then text
            assert c.message.tool_calls is None and c.message.content.startswith("[")
            continue
        assert c.finish_reason == "tool_calls" and c.message.tool_calls
        for call in c.message.tool_calls:
            assert_valid(call)
        assert len({call.id for call in c.message.tool_calls}) == len(c.message.tool_calls)
    assert any(c.finish_reason == "tool_calls" for c in r.choices)


def test_streamed_calls_arrive_as_openai_streams_them(srv):
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        whole = ask(srv, tool_choice=choice).choices[0].message.tool_calls
        chunks = list(ask(srv, tool_choice=choice, stream=True))
        deltas = [d for ch in chunks for d in ch.choices[0].delta.tool_calls or []]
        assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content is None
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        assert all(len(ch.choices[0].delta.tool_calls or []) <= 1 for ch in chunks)  # one delta a chunk
        starts = [d for d in deltas if d.id is not None]
        assert [(d.index, d.type, d.function.name, d.function.arguments) for d in starts] == \
            [(i, "function", w.function.name, "") for i, w in enumerate(whole)]
        for i, w in enumerate(whole):  # greedy: the fragments join to the non-streamed call's arguments
            frags = [d.function.arguments for d in deltas if d.index == i and d.id is None]
            assert len(frags) > 1 and all(d.function.name is None for d in deltas if d.id is None)
            assert json.loads("".join(frags)) == json.loads(w.function.arguments)


def test_a_tool_result_goes_back_into_the_prompt(srv):
    first = ask(srv, tool_choice={"type": "function", "function": {"name": "get_weather"}}).choices[0].message
    result = "Sunny, 21 degrees"
    history = ASK + [first.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": result}]
    r = ask(srv, messages=history, tool_choice="none", max_tokens=8)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")
    # what the model saw: the call as a <tool_call> block and the result as a <tool_response> turn
    engine = srv.state.models.entries[MODEL].slot.engine
    req = p.ChatCompletionRequest.model_validate({"model": MODEL, "messages": history, "tools": TOOLS})
    prompt = tools.render(engine, tools.history(req.messages), tools.plan(req))
    call = json.dumps({"name": "get_weather", "arguments": json.loads(first.tool_calls[0].function.arguments)})
    assert f"<tool_call>\n{call}\n</tool_call>" in prompt
    assert f"<tool_response>\n{result}\n</tool_response>" in prompt and '"name": "get_time"' in prompt
    assert "<tools>" not in tools.render(engine, tools.history(req.messages),
                                         tools.plan(req.model_copy(update={"tool_choice": "none"})))


def test_auto_answers_in_text_when_the_model_writes_no_call(srv):
    c = ask(srv, tool_choice="auto", max_tokens=10).choices[0]  # the random model writes noise, never a call
    assert c.message.tool_calls is None and c.message.content and c.finish_reason == "length"


def test_bad_tools_are_400s_naming_the_field(srv):
    import openai

    client = srv.openai()
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}
    cases = [({"tools": [bad]}, "tools[0].function.parameters"),
             ({"tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]},
              "tools[0].function.parameters"),
             ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
              "tool_choice.function.name"),
             ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
             ({"tool_choice": "required"}, "tool_choice"),
             ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
             ({"messages": ASK + [{"role": "tool", "content": "x"}]}, "messages[1]")]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=MODEL, **{"messages": ASK, **extra})
        assert e.value.status_code == 400 and e.value.body["param"] == param, (extra, e.value.body)
        assert e.value.body["type"] == "invalid_request_error"


# ---------------------------------------------------------------------------------------------------------
# The parsing of `auto` replies and the stream scanner, on texts a trained model writes


def _plan(**kw) -> tools.ToolPlan:
    return tools.plan(p.ChatCompletionRequest.model_validate({"model": "m", "messages": ASK, "tools": TOOLS, **kw}))


def _streamed(plan: tools.ToolPlan, text: str, step: int) -> tuple[str, list[dict], str]:
    """(content, calls, finish) of `text` fed to a ToolStream `step` characters at a time."""
    s = tools.ToolStream(plan)
    content, deltas = "", []
    for k in range(0, len(text), step):
        c, d = s.feed(text[k:k + step])
        content, deltas = content + c, deltas + d
    rest, more, finish = s.close("stop")
    calls: list[dict] = []
    for d in deltas + more:
        if d.id is not None:
            calls.append({"name": d.function.name, "arguments": ""})
        calls[d.index]["arguments"] += d.function.arguments
    return content + rest, calls, finish


@pytest.mark.parametrize("text, content, names", [
    ('<tool_call>\n{"name": "get_time", "arguments": {"tz": "utc"}}\n</tool_call>', None, ["get_time"]),
    ('Let me check.\n<tool_call>{"name": "get_time", "arguments": {"tz": "utc"}}</tool_call>\n'
     '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}</tool_call>',
     "Let me check.", ["get_time", "get_weather"]),
    ('{"name": "get_time", "parameters": {"tz": "cet"}}', None, ["get_time"]),  # Llama 3.1's bare JSON
    ('<tool_call>{"name": "get_time", "arguments": {"tz": "mars"}}</tool_call>', "<tool_call>", []),  # fails schema
    ('<tool_call>{"name": "launch", "arguments": {}}</tool_call>', "<tool_call>", []),  # no such tool
    ("It is sunny {maybe} <tool_ca", "It is sunny", []),
])
def test_auto_replies_whole_and_streamed(text, content, names):
    plan = _plan(tool_choice="auto")
    message, finish = tools.reply(plan, text, "stop")
    assert [c.function.name for c in message.tool_calls or []] == names
    assert finish == ("tool_calls" if names else "stop")
    if names:
        assert message.content == content
    else:
        assert message.content == text and message.content.startswith(content)
    for step in (1, 3, 50):  # the stream splits the same way, whatever the pieces
        streamed, calls, sfinish = _streamed(plan, text, step)
        assert sfinish == finish and [c["name"] for c in calls] == names
        assert [json.loads(c["arguments"]) for c in calls] == \
            [json.loads(c.function.arguments) for c in message.tool_calls or []]
        assert streamed.strip() == (message.content or "").strip()


def test_the_scanner_streams_each_parallel_call():
    text = ('[{"name": "get_weather", "arguments": {"city": "a\\"}{", "unit": "celsius"}}, '
            '{"name": "get_time", "arguments": {"tz": "utc"}}]')
    plan = _plan(tool_choice="required")
    whole = tools.reply(plan, text, "stop")[0].tool_calls
    for step in (1, 2, 7, 200):
        _, calls, finish = _streamed(plan, text, step)
        assert finish == "tool_calls"
        assert [(c["name"], json.loads(c["arguments"])) for c in calls] == \
            [(w.function.name, json.loads(w.function.arguments)) for w in whole]


def test_a_template_that_reads_tools_gets_them(tiny_llama, tiny_gguf, tmp_path):
    """The native path: a Hermes-style template receives `tools` and the history as it is, on the transformers
    engine (apply_chat_template) and the llama.cpp engine's own jinja rendering alike."""
    import shutil

    from transformers import AutoTokenizer

    from llmkit.engines.base import template_uses_tools
    from llmkit.engines.hf import TransformersEngine
    from llmkit.engines.llamacpp import LlamaCppEngine
    from llmkit.models import resolve_model

    template = (
        "{% if tools %}<|im_start|>system\n<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>"
        "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
        "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}"
        "<|im_end|>\n{% endfor %}<|im_start|>assistant\n")
    folder = shutil.copytree(tiny_llama, tmp_path / "tool-template")
    tok = AutoTokenizer.from_pretrained(folder)
    assert not template_uses_tools(tok.chat_template) and template_uses_tools(template)
    tok.chat_template = template
    tok.save_pretrained(folder)
    req = p.ChatCompletionRequest.model_validate({"model": "m", "tools": TOOLS, "messages": ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "utc"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12:00"}]})
    hf = TransformersEngine(resolve_model(str(folder)), n_threads=1)
    cpp = LlamaCppEngine(resolve_model(str(tiny_gguf)), n_ctx=64, n_threads=1)
    cpp.chat_template = template  # the GGUF's own is plain ChatML; the renderer is what is tested here
    try:
        for engine in (hf, cpp):
            prompt = tools.render(engine, tools.history(req.messages), tools.plan(req))
            assert prompt.count("<tools>") == 1 and '"name": "get_weather"' in prompt
            assert '<tool_call>{"name": "get_time", "arguments": {"tz": "utc"}}</tool_call>' in prompt
            assert "<|im_start|>tool\n12:00" in prompt and "# Tools" not in prompt
    finally:
        hf.close()
        cpp.close()


def test_the_transformers_engine_serves_auto_and_refuses_constrained_calls(tiny_llama):
    import openai
    from serve_helpers import running

    from llmkit.config import ServeConfig
    from llmkit.serve import load_state
    from llmkit.serve.auth import KeyStore

    state = load_state(ServeConfig(engine="transformers", threads=1, n_ctx=2048), [f"{MODEL}={tiny_llama}"],
                       keys=KeyStore())
    with running(state) as r:
        c = ask(r, tool_choice="auto", max_tokens=4).choices[0]
        assert c.message.tool_calls is None and c.finish_reason == "length"
        with pytest.raises(openai.BadRequestError) as e:
            ask(r, tool_choice="required")
        assert e.value.body["param"] == "tool_choice" and "transformers engine" in e.value.body["message"]


def test_required_grammar_keeps_refs_of_each_tool():
    """pydantic-made schemas (LangChain's tools) point into their own `$defs`; placed inside the grammar's schema
    the pointers must still land there, for every tool and with parallel calls."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    unit = {"type": "object", "properties": {"u": {"$ref": "#/$defs/Unit"}}, "required": ["u"],
            "$defs": {"Unit": {"enum": ["c", "f"]}}}
    defs = {"type": "object", "properties": {"tz": {"$ref": "#/$defs/Tz"}}, "$defs": {"Tz": {"enum": ["utc"]}}}
    for parallel in (True, False):
        req = {"model": "m", "messages": ASK, "tool_choice": "required", "parallel_tool_calls": parallel,
               "tools": [{"type": "function", "function": {"name": "a", "parameters": unit}},
                         {"type": "function", "function": {"name": "b", "parameters": defs}}]}
        grammar = json_schema_to_gbnf(json.dumps(tools.plan(
            p.ChatCompletionRequest.model_validate(req)).response_format()["json_schema"]["schema"]))
        assert '"\\"c\\""' in grammar and '"\\"utc\\""' in grammar
