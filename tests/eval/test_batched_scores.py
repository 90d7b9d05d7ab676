"""Batched log-likelihoods (`ModelTarget.loglikelihood_many`: shared prefixes packed into few rows on transformers,
one llama.cpp batch on a GGUF) equal the one-at-a-time path, on the tiny random Llama."""

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
    """Past ROW_TOKENS the groups go in several packed rows (a group longer than a row gets one of its own)."""
    from llmkit.eval import packing

    monkeypatch.setattr(packing, "ROW_TOKENS", 8)
    requests = REQUESTS + [(REQUESTS[0][0], f" the {w} router") for w in ("red", "blue", "old", "new", "big")]
    single = [target.loglikelihood(c, x) for c, x in requests]
    batched = target.loglikelihood_many(requests)
    assert [n for _, n in batched] == [n for _, n in single]
    assert [ll for ll, _ in batched] == pytest.approx([ll for ll, _ in single], abs=1e-4)


def test_several_items_in_one_call(target, monkeypatch):
    """Choices of several questions in one call: each group's question computed once, groups packed into rows."""
    from llmkit.eval import packing

    questions = ["Question: Paris is the capital of\nAnswer:", "Q: the router light is\nA:", "Where is Rome?"]
    requests = [(q, c) for q in questions for c in (" France", " red", " in Italy and far")]
    single = [target.loglikelihood(c, x) for c, x in requests]
    for row_tokens in (512, 30):  # all in one row; a few groups per row
        monkeypatch.setattr(packing, "ROW_TOKENS", row_tokens)
        batched = target.loglikelihood_many(requests)
        assert [n for _, n in batched] == [n for _, n in single]
        assert [ll for ll, _ in batched] == pytest.approx([ll for ll, _ in single], abs=1e-4)


def test_a_shared_question_is_packed_once():
    from llmkit.eval import packing

    enc = [([1, 2, 3, 4, 5, 10], 5), ([1, 2, 3, 4, 5, 11, 12], 5), ([7, 8, 9, 20], 3)]
    (row,) = packing._pack(enc, packing._groups(enc, ["q1", "q1", "q2"]))
    assert row.ids == [1, 2, 3, 4, 5, 10, 11, 12, 7, 8, 9, 20]
    assert row.pos == [0, 1, 2, 3, 4, 5, 5, 6, 0, 1, 2, 3]  # each choice restarts right after its question
    seen = packing._mask(row, __import__("torch").float32)[0, 0] == 0
    assert seen[6].tolist() == [True] * 5 + [False, True] + [False] * 5  # choice b sees its question and itself
    assert not seen[8, :8].any()  # question 2 sees nothing of item 1
