"""Speculative decoding by prompt lookup in the llama.cpp engine (engines/speculative.py): the output is the
non-speculative output token for token, greedy and seeded sampling alike, while drafts really are fed, accepted
and rejected; stop strings, max_tokens, logprobs and grammars behave as without drafts. The last test does the
same on the bundled SmolLM2-135M with a RAG prompt whose answer copies its source."""

import json
from types import SimpleNamespace

import pytest

from llmkit.engines import GenParams
from llmkit.engines.llamacpp import LlamaCppEngine
from llmkit.engines.speculative import Drafter
from llmkit.errors import LlmkitError
from llmkit.models import resolve_model

PROMPTS = ["The quick brown fox", "Copy this: the router restarts when the status light is green. Copy: the router",
           "Paris is the capital", "Support assistant: please restart"]


@pytest.fixture(scope="module")
def engines(tiny_gguf):
    ref = resolve_model(str(tiny_gguf))
    off = LlamaCppEngine(ref, n_ctx=256, n_threads=1)
    on = LlamaCppEngine(ref, n_ctx=256, n_threads=1, speculative="prompt_lookup")
    yield off, on
    off.close()
    on.close()


def run(engine, prompt, params) -> tuple[list, object]:
    gen = engine.submit(prompt, params)
    return list(gen), gen


def test_greedy_output_is_the_same_token_for_token(engines):
    off, on = engines
    before = dict(on.stats)
    for p in PROMPTS:
        want, g_off = run(off, p, GenParams(max_tokens=100))
        got, g_on = run(on, p, GenParams(max_tokens=100))
        assert [x.token for x in got] == [x.token for x in want]
        assert "".join(x.text for x in got) == "".join(x.text for x in want)
        assert (g_on.finish_reason, g_on.completion_tokens) == (g_off.finish_reason, g_off.completion_tokens)
    fed = on.stats["draft_tokens"] - before["draft_tokens"]
    accepted = on.stats["draft_accepted"] - before["draft_accepted"]
    assert accepted > 0.5 * fed > 0  # the random model's greedy reply repeats itself: drafts that are accepted
    # ... so several tokens came out of one decode
    assert on.stats["decode_calls"] - before["decode_calls"] < len(PROMPTS) * 100 // 2


def test_rejected_drafts_leave_no_trace_in_the_cache(engines, monkeypatch):
    """Drafts of known quality (a stand-in drafter that knows the reply): the first `good` tokens right, then
    wrong ones. Each rejection rolls the KV cache back; a stale row left behind would shift every later
    distribution, and a temperature-1.5 seeded reply would change at once."""
    off, on = engines
    params = GenParams(max_tokens=80, temperature=1.5, seed=5)
    prompt = off.tokenize(PROMPTS[3])
    want = [x.token for x in off.submit(prompt, params)]
    plan = iter([(2, 3), (0, 4), (5, 1), (1, 1), (3, 0), (0, 2)] * 20)  # (right tokens, wrong tokens) per draft

    class Oracle(Drafter):
        def propose(self, history, limit):
            done = len(history) - len(prompt)  # tokens emitted so far
            good, bad = next(plan)
            return (want[done:done + good] + [(t + 1) % 256 for t in want[done + good:done + good + bad]])[:limit]

    monkeypatch.setattr("llmkit.engines.llamacpp.Drafter", Oracle)
    before = dict(on.stats)
    assert [x.token for x in on.submit(prompt, params)] == want
    fed = on.stats["draft_tokens"] - before["draft_tokens"]
    accepted = on.stats["draft_accepted"] - before["draft_accepted"]
    assert 0 < accepted < fed and on.stats["decode_calls"] - before["decode_calls"] < 60


@pytest.mark.parametrize("temperature", [0.7, 1.5])
def test_seeded_sampling_is_the_same_token_for_token(engines, temperature):
    """Each emitted token is sampled from its own row with one random draw, as without drafts: a seeded run gives
    the same varied reply, with drafts accepted and rejected along the way."""
    off, on = engines
    before = dict(on.stats)
    for p in PROMPTS:
        params = GenParams(max_tokens=80, temperature=temperature, seed=3)
        want = [x.token for x in off.submit(p, params)]
        got = [x.token for x in on.submit(p, params)]
        assert got == want and len(set(got)) > 20
    assert on.stats["draft_tokens"] > before["draft_tokens"]


def test_max_tokens_stop_strings_and_logprobs_as_without_drafts(engines):
    off, on = engines
    got, gen = run(on, PROMPTS[1], GenParams(max_tokens=13))
    assert gen.completion_tokens == 13 and gen.finish_reason == "length" and len(got) == 13
    full = off.submit(PROMPTS[0], GenParams(max_tokens=40)).text()
    stop = full[9:11]
    want, g_off = run(off, PROMPTS[0], GenParams(max_tokens=40, stop=[stop]))
    got, g_on = run(on, PROMPTS[0], GenParams(max_tokens=40, stop=[stop]))
    assert "".join(x.text for x in got) == "".join(x.text for x in want) == full[: full.find(stop)]
    assert g_on.finish_reason == g_off.finish_reason == "stop"
    want, _ = run(off, PROMPTS[3], GenParams(max_tokens=30, logprobs=2))
    got, _ = run(on, PROMPTS[3], GenParams(max_tokens=30, logprobs=2))
    assert [x.token for x in got] == [x.token for x in want]
    assert [x.logprob for x in got] == pytest.approx([x.logprob for x in want], abs=1e-4)
    assert [[t for t, _ in x.top_logprobs] for x in got] == [[t for t, _ in x.top_logprobs] for x in want]


def test_a_grammar_holds_through_drafts(engines):
    off, on = engines
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
              "required": ["ok", "n"]}
    params = GenParams(max_tokens=64, response_format={"type": "json_schema", "json_schema": {"schema": schema}})
    got = on.submit(PROMPTS[0], params).text()
    assert got == off.submit(PROMPTS[0], params).text()
    assert set(json.loads(got)) == {"ok", "n"}


def test_the_draft_schedule():
    d = Drafter(max_tokens=6, ngram=2)
    history = [1, 2, 3, 4, 5, 6, 7, 8, 1, 2]
    assert d.propose(history, limit=100) == [3, 4, 5, 6, 7, 8]  # what followed the last 2-gram before
    assert d.propose(history, limit=3) == [3, 4, 5]
    assert d.propose([9, 8, 7], limit=5) == []  # no earlier n-gram: no draft
    assert d.propose([5, 9, 5], limit=5) == []  # only [9, 5] follows: shorter than MIN_DRAFT, not worth a step
    d.update(6, 1)  # fewer than 2 tokens taken: pause 1 step, then 2, 4 ...; the length halves (at least 3)
    assert d.propose(history, limit=100) == [] and d.propose(history, limit=100) == [3, 4, 5]
    d.update(3, 3)
    assert d.length == 5  # wholly accepted: 2 longer
    d.update(5, 2)
    assert d.length == 4  # partly: twice what was taken
    d.update(4, 0)
    assert [d.propose(history, limit=100) for _ in range(2)] == [[], [3, 4, 5]]
    d.update(3, 1)
    assert [d.propose(history, limit=100) for _ in range(3)] == [[], [], [3, 4, 5]]
    assert (d.proposed, d.accepted) == (21, 7)


def test_bad_settings_are_refused(tiny_gguf):
    with pytest.raises(LlmkitError, match="speculative must be one of off, prompt_lookup"):
        LlamaCppEngine(resolve_model(str(tiny_gguf)), n_ctx=64, n_threads=1, speculative="ngram")


def test_rag_answer_on_the_bundled_model_is_unchanged_and_drafts_pay():
    """SmolLM2-135M answering from the R2 router's manual (the serving path's RAG prompt): its answer copies the
    reset steps, drafts are accepted, the decode calls fall, and the tokens are those of plain decoding."""
    from pathlib import Path

    from llmkit.rag.answer import augment

    doc = (Path(__file__).resolve().parents[2] / "examples/support/docs/r2-router.md").read_text()
    hits = [SimpleNamespace(text=s if i == 0 else "## " + s) for i, s in enumerate(doc.split("\n## ")[:4])]
    ref = resolve_model("smollm2-135m-instruct")
    out = {}
    for mode in ("off", "prompt_lookup"):
        eng = LlamaCppEngine(ref, n_ctx=1024, n_threads=1, speculative=mode)
        try:
            prompt = eng.format_chat(augment([{"role": "user", "content": "How do I do a factory reset of the R2 router? Give the steps."}],
                                             hits))
            out[mode] = ([x.token for x in eng.submit(prompt, GenParams(max_tokens=96))], dict(eng.stats))
            text = eng.detokenize(out[mode][0])
        finally:
            eng.close()
    (want, plain), (got, spec) = out["off"], out["prompt_lookup"]
    assert got == want
    assert "paperclip" in text  # it does copy its source
    assert spec["draft_accepted"] >= 0.25 * spec["draft_tokens"] > 0
    assert spec["decode_calls"] < 0.75 * plain["decode_calls"]


def test_the_serve_setting_reaches_the_engine(make_server, engines):
    """`serve: {speculative: prompt_lookup}` (CLI --speculative): the server's engine drafts, and its greedy reply
    through the OpenAI client is the plain engine's."""
    from serve_helpers import MODEL

    srv = make_server(engine="llamacpp", speculative="prompt_lookup", draft_tokens=5, draft_ngram=2)
    engine = srv.state.models.entries[MODEL].slot.engine
    assert (engine.speculative, engine.draft_tokens, engine.draft_ngram) == ("prompt_lookup", 5, 2)
    r = srv.openai().completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=40, temperature=0)
    off, _ = engines
    assert r.choices[0].text == off.submit(PROMPTS[2], GenParams(max_tokens=40)).text()
    assert engine.stats["draft_accepted"] > 0
