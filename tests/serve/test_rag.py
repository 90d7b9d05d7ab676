"""Chat answered from a collection: a real server (tiny model) with a rag index, driven by the openai client."""

from __future__ import annotations

import openai
import pytest
from serve_helpers import make_state, running

from llmkit.config import RagConfig
from llmkit.monitor.store import read_log
from llmkit.rag import index
from llmkit.rag.retrieve import Hit
from llmkit.serve.rag import augment, citations

DOCS = {"router.md": "# Router\n\n## Factory reset\n\nHold Reset for 10 seconds.\n\n## Lights\n\nAmber: no internet.\n",
        "modem.txt": "The MAC address is on the label.\n"}


@pytest.fixture(scope="module")
def rag_server(tiny_llama, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rag")
    for name, text in DOCS.items():
        (tmp / "docs").mkdir(exist_ok=True)
        (tmp / "docs" / name).write_text(text)
    index(RagConfig(sources=[str(tmp / "docs")], collection="help"), tmp / "store" / "help", progress=False)
    # a folder of collections; the request log records the sources each answer was given
    with running(make_state(tiny_llama, rag=[str(tmp / "store")], request_log=str(tmp / "requests.db"))) as r:
        yield r


def ask(client, max_tokens=4, **rag):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "How long do I hold reset?"}],
                                          max_tokens=max_tokens, temperature=0, extra_body={"rag": rag} if rag else None)


def test_chat_with_rag_returns_citations(rag_server):
    client = rag_server.openai()
    plain = ask(client)
    r = ask(client, collection="help", top_k=2)
    # the tiny model reads 256 tokens of its byte-level vocabulary: sources that do not fit are left out
    cites = r.model_extra["citations"]
    cite = cites[0]
    assert 1 <= len(cites) <= 2
    assert (cite["index"], cite["source"], cite["heading"]) == (1, "docs/router.md", "Factory reset")
    assert "10 seconds" in cite["text"] and isinstance(cite["cited"], bool)
    assert plain.usage.prompt_tokens + 40 < r.usage.prompt_tokens <= 256 - 4  # the source went into the prompt
    assert "citations" not in (plain.model_extra or {})
    assert rag_server.metric("llmkit_rag_retrievals_total", collection="help") >= 1
    rag_server.state.recorder.log.flush()
    logged = {x["request_id"]: x["rag"] for x in read_log(rag_server.state.recorder.log.path)[0]}
    assert [(s["collection"], s["source"]) for s in logged[r.id]] == [("help", c["source"]) for c in cites]
    assert logged[plain.id] == []
    only = ask(client, collection="help", top_k=4, source="*.txt")
    assert [c["source"] for c in only.model_extra["citations"]] == ["docs/modem.txt"]
    none_fit = ask(client, max_tokens=160, collection="help")  # no room left for any source: none, not a 400
    assert none_fit.model_extra["citations"] == []


def test_stream_sends_citations_first(rag_server):
    stream = rag_server.openai().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Where is the MAC address?"}], max_tokens=4,
        temperature=0, stream=True, extra_body={"rag": {"collection": "help", "top_k": 1}})
    chunks = list(stream)
    cites = chunks[0].model_extra["citations"]
    assert cites[0]["source"] == "docs/modem.txt" and cites[0]["cited"] is None
    assert all("citations" not in (c.model_extra or {}) for c in chunks[1:])


def test_rag_errors(rag_server, tiny_llama):
    client = rag_server.openai()
    with pytest.raises(openai.NotFoundError) as e:
        ask(client, collection="nope")
    assert e.value.code == "collection_not_found" and "help" in e.value.message
    with pytest.raises(openai.BadRequestError):
        ask(client, collection="help", top_k=0)
    with running(make_state(tiny_llama)) as plain, pytest.raises(openai.BadRequestError) as e:
        ask(plain.openai(), collection="help")
    assert e.value.code == "rag_not_configured"


def test_prompt_numbers_the_sources_and_citations_mark_cited():
    hits = [Hit("Hold Reset for 10 seconds.", "docs/router.md", None, "Factory reset", 0, 26, 0.03, 1),
            Hit("Page two.", "docs/m.pdf", 2, None, 0, 9, 0.02, 2)]
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "old q"},
            {"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]
    msgs = augment(chat, hits)
    assert msgs[:3] == chat[:3]  # the client's system prompt and earlier turns are untouched
    assert msgs[3] == {"role": "user", "content": (
        "Sources:\n\n[1] Hold Reset for 10 seconds.\n\n[2] Page two.\n\nQuestion: q\n\n"
        "Answer the question from the sources above and cite the source number like [1].")}
    assert [c.cited for c in citations(hits, ["Hold it 10 s [1]."])] == [True, False]
    assert [c.cited for c in citations(hits, ["See [1, 2]."])] == [True, True]
