"""Batched log-likelihoods (`ModelTarget.loglikelihood_many`: one pass over a shared prefix on transformers, one
llama.cpp batch on a GGUF) equal the one-at-a-time path, on the tiny random Llama."""

import pytest

from llmkit.eval import ModelTarget

REQUESTS = [
    # a choice item: the question shared, each choice's first token differs (the prefix's last row scores it)
    ("Question: Paris is the capital of\nAnswer:", " France"),
    ("Question: Paris is the capital of\nAnswer:", " Germany"),
    ("Question: Paris is the capital of\nAnswer:", " the router"),
    ("Question: Paris is the capital of\nAnswer:", " the dog"),  # shares " the" with the one before
]
MIXED = [
    ("", "The quick brown fox jumps over the lazy dog."),  # a text row: no context, its first token unscored
    ("Then check the status ", "light"),  # a trailing space moves to the continuation
    ("Support assistant: please restart the", " router."),  # nothing shared with the others: a padded batch
]


@pytest.fixture(scope="module", params=["transformers", "llamacpp"])
def target(request, tiny_llama, tiny_gguf):
    t = ModelTarget(str(tiny_llama if request.param == "transformers" else tiny_gguf), threads=1)
    yield t
    t.close()


@pytest.mark.parametrize("requests", [REQUESTS, MIXED, REQUESTS[:1], REQUESTS[2:] + MIXED],
                         ids=["choices", "unrelated", "one", "both"])
def test_batched_equals_one_at_a_time(target, requests):
    single = [target.loglikelihood(c, x) for c, x in requests]
    batched = target.loglikelihood_many(requests)
    assert [n for _, n in batched] == [n for _, n in single]
    assert [ll for ll, _ in batched] == pytest.approx([ll for ll, _ in single], abs=1e-4)
    assert len({round(ll, 3) for ll, _ in single}) == len(single)  # different texts, different scores


def test_more_rows_than_one_pass_holds(target, monkeypatch):
    """Past MAX_BATCH_TOKENS the rows go in several passes, each on its own copy of the shared prefix's cache."""
    from llmkit.eval import targets

    monkeypatch.setattr(targets, "MAX_BATCH_TOKENS", 8)
    requests = REQUESTS + [(REQUESTS[0][0], f" the {w} router") for w in ("red", "blue", "old", "new", "big")]
    single = [target.loglikelihood(c, x) for c, x in requests]
    batched = target.loglikelihood_many(requests)
    assert [n for _, n in batched] == [n for _, n in single]
    assert [ll for ll, _ in batched] == pytest.approx([ll for ll, _ in single], abs=1e-4)
