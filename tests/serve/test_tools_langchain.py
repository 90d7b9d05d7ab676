"""LangChain's `ChatOpenAI(...).bind_tools(...)` against the server: the tool calls it parses out of our answers
(non-streamed and streamed), on the tiny random GGUF, whose grammar-constrained calls are valid all the same."""

import jsonschema
import pytest
from serve_helpers import MODEL


def get_weather(city: str, unit: str) -> str:
    """The current weather in a city.

    Args:
        city: the city's name
        unit: celsius or fahrenheit
    """
    return "sunny"


SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                           "unit": {"enum": ["celsius", "fahrenheit"]}},
          "required": ["city", "unit"], "additionalProperties": False}
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city.",
                                         "parameters": SCHEMA}}


@pytest.fixture(scope="module")
def url(tiny_gguf):
    from serve_helpers import running

    from llmkit.config import ServeConfig
    from llmkit.serve import load_state
    from llmkit.serve.auth import KeyStore

    state = load_state(ServeConfig(engine="llamacpp", threads=1, n_ctx=2048), [f"{MODEL}={tiny_gguf}"],
                       keys=KeyStore())
    with running(state) as r:
        yield r.url


def test_bind_tools_gets_tool_calls(url):
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{url}/v1", api_key="none", model=MODEL, temperature=0, max_tokens=120,
                     max_retries=0)
    ask = [HumanMessage("What is the weather in Paris?")]
    for choice in ("get_weather", "required"):  # a name, and "any call" (LangChain sends both as OpenAI does)
        msg = llm.bind_tools([TOOL], tool_choice=choice).invoke(ask)
        assert isinstance(msg, AIMessage) and len(msg.tool_calls) == 1 and not msg.invalid_tool_calls
        call = msg.tool_calls[0]
        assert call["name"] == "get_weather" and call["id"].startswith("call_")
        jsonschema.validate(call["args"], SCHEMA)
        assert msg.response_metadata["finish_reason"] == "tool_calls"
    # streamed: LangChain joins the argument fragments back into the same call
    chunks = list(llm.bind_tools([TOOL], tool_choice="get_weather").stream(ask))
    whole = chunks[0]
    for c in chunks[1:]:
        whole += c
    assert [(c["name"], c["args"]) for c in whole.tool_calls] == [(c["name"], c["args"]) for c in msg.tool_calls]
    # the round trip: the call and its result back in the history (a function LangChain made the schema of)
    follow = llm.bind_tools([get_weather], tool_choice="none").invoke(
        ask + [msg, ToolMessage("sunny, 21 degrees", tool_call_id=call["id"])], max_tokens=8)
    assert not follow.tool_calls and isinstance(follow.content, str) and follow.content
