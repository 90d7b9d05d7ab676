"""Continuous batching in the llama.cpp engine, on the tiny GGUF: batched sequences give exactly what each
gives alone, prompts share cached prefixes, and stop strings, max_tokens, cancel, logprobs, seeds and
grammar-constrained JSON behave as OpenAI's API promises."""

import json

import pytest

from llmkit.engines import GenParams
from llmkit.engines.llamacpp import LlamaCppEngine
from llmkit.models import resolve_model

PROMPTS = ["The quick brown fox", "Paris is the capital", "Support assistant: please restart",
           "In 2024 there were"]


@pytest.fixture(scope="module")
def engine(tiny_gguf):
    eng = LlamaCppEngine(resolve_model(str(tiny_gguf)), n_ctx=256, n_threads=1, parallel=4)
    yield eng
    eng.close()


def test_batched_sequences_match_each_sequence_alone(tiny_gguf, engine):
    alone = LlamaCppEngine(resolve_model(str(tiny_gguf)), n_ctx=256, n_threads=1, parallel=1)
    try:
        expected = [alone.submit(p, GenParams(max_tokens=24)).text() for p in PROMPTS]
    finally:
        alone.close()
    calls = engine.stats["decode_calls"]
    # a long first request, so that the others join it while it runs (they are submitted microseconds later)
    first = engine.submit(PROMPTS[0], GenParams(max_tokens=200))
    gens = [engine.submit(p, GenParams(max_tokens=24)) for p in PROMPTS]
    assert [g.text() for g in gens] == expected
    assert all(g.finish_reason == "length" and g.completion_tokens == 24 for g in gens)
    first.text()
    assert engine.stats["max_batch_seqs"] == 4  # they really shared decode steps
    assert engine.stats["decode_calls"] - calls < 200 + 4 * 24


def test_a_shared_prompt_prefix_is_not_computed_twice(engine):
    system = "Support assistant: please restart the router, then check the status light. " * 3
    first = engine.submit(system + "Paris", GenParams(max_tokens=8)).text()
    before = dict(engine.stats)
    second = engine.submit(system + "Berlin", GenParams(max_tokens=8))
    second.text()
    reused = engine.stats["prompt_tokens_reused"] - before["prompt_tokens_reused"]
    computed = engine.stats["prompt_tokens_computed"] - before["prompt_tokens_computed"]
    assert reused >= len(engine.tokenize(system)) - 1 and computed < second.prompt_tokens // 2
    # and reusing the cache changes nothing: the same prompt again gives the same text
    assert engine.submit(system + "Paris", GenParams(max_tokens=8)).text() == first


def test_stop_strings_are_cut_and_not_returned(engine):
    full = engine.submit(PROMPTS[1], GenParams(max_tokens=24)).text()
    stop = full[5:8]
    assert stop.strip(), full
    g = engine.submit(PROMPTS[1], GenParams(max_tokens=24, stop=[stop]))
    assert g.text() == full[: full.find(stop)] and g.finish_reason == "stop"


def test_cancel_frees_the_slot(engine):
    g = engine.submit(PROMPTS[0], GenParams(max_tokens=200))
    it = iter(g)
    next(it)
    g.cancel()
    list(it)
    assert g.finish_reason == "cancelled" and g.completion_tokens < 200
    assert engine.submit(PROMPTS[0], GenParams(max_tokens=4)).text()  # the engine goes on serving


def test_logprobs_are_a_distribution_and_greedy_takes_the_top(engine):
    pieces = list(engine.submit(PROMPTS[2], GenParams(max_tokens=6, logprobs=3)))
    assert len(pieces) == 6
    for p in pieces:
        probs = [lp for _, lp in p.top_logprobs]
        assert probs == sorted(probs, reverse=True) and all(lp <= 0 for lp in probs)
        assert p.logprob == pytest.approx(probs[0], abs=1e-5)  # greedy: the sampled token is the top one
        assert p.top_logprobs[0][0] == p.token_text


def test_sampling_is_reproducible_with_a_seed(engine):
    def run(seed):
        return engine.submit(PROMPTS[3], GenParams(max_tokens=16, temperature=1.0, seed=seed)).text()

    assert run(7) == run(7)
    assert len({run(s) for s in range(4)}) > 1


def test_json_schema_output_is_valid_json(engine):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
              "required": ["ok", "n"]}
    g = engine.submit(PROMPTS[0], GenParams(max_tokens=64, response_format={"type": "json_schema",
                                                                           "json_schema": {"schema": schema}}))
    text = g.text()
    assert g.finish_reason == "stop", text
    value = json.loads(text)
    assert set(value) == {"ok", "n"} and isinstance(value["ok"], bool)


def test_too_long_a_request_is_refused_up_front(engine):
    with pytest.raises(Exception, match="exceeds the context"):
        engine.submit(PROMPTS[0], GenParams(max_tokens=1000))


def test_a_request_that_cannot_start_fails_alone(engine, monkeypatch):
    from llmkit.engines import UnsupportedFeature

    real = engine._sampler

    def refuse(req):  # as llama.cpp does with a grammar it cannot compile
        if req.params.max_tokens == 3:
            raise UnsupportedFeature("llama.cpp rejected the grammar made from response_format")
        return real(req)

    monkeypatch.setattr(engine, "_sampler", refuse)
    bad = engine.submit(PROMPTS[0], GenParams(max_tokens=3))
    with pytest.raises(UnsupportedFeature):
        bad.text()
    assert bad.finish_reason == "error"
    assert engine.submit(PROMPTS[0], GenParams(max_tokens=4)).text()  # the scheduler thread is still alive


def test_prompt_logprobs_in_chunks_beside_decoding_sequences(tiny_gguf):
    """A prompt scored across several small batches (n_batch 4), while another sequence decodes in the same
    batches, gets the same logprobs as when it is scored alone in one batch; the other's output is unchanged."""
    from llmkit.engines import GenParams, load_engine
    from llmkit.models import resolve_model

    prompt = "Support assistant: please restart the router, then check the status light."
    scored = GenParams(max_tokens=0, prompt_logprobs=1)
    alone = load_engine("llamacpp", resolve_model(str(tiny_gguf)), n_ctx=128)
    try:
        gen = alone.submit(prompt, scored)
        assert gen.text() == "" and gen.finish_reason == "length" and gen.completion_tokens == 0
        want = gen.prompt_logprobs
        other_alone = alone.submit("The quick brown fox", GenParams(max_tokens=12)).text()
        assert len(want) == len(alone.tokenize(prompt)) > 8 and want[0].logprob is None
    finally:
        alone.close()
    eng = load_engine("llamacpp", resolve_model(str(tiny_gguf)), n_ctx=128, parallel=2, n_batch=4)
    try:
        other = eng.submit("The quick brown fox", GenParams(max_tokens=12))
        gen = eng.submit(prompt, scored)
        assert other.text() == other_alone and gen.text() == ""
    finally:
        eng.close()
    got = gen.prompt_logprobs
    assert [x.token for x in got] == [x.token for x in want]
    assert [x.logprob for x in got[1:]] == pytest.approx([x.logprob for x in want[1:]], abs=1e-4)
    assert [x.top_logprobs[0][0] for x in got[1:]] == [x.top_logprobs[0][0] for x in want[1:]]
