"""The batched perplexity scorers give the one-row-at-a-time reference's numbers (llama.cpp and transformers)."""

import json
import math
import random

import numpy as np
import pytest

from llmkit.compress.report import _load, _nll, measure, per_row
from llmkit.compress.scoring import LlamaScorer, common_prefix


def _rows(vocab: int, n: int = 7, seed: int = 0) -> list[tuple[int, list[int]]]:
    """(start, ids) rows with a 9-token prefix in common (a system prompt) and lengths from 12 to 70 tokens."""
    rnd = random.Random(seed)
    prefix = [rnd.randrange(3, vocab) for _ in range(9)]
    rows = []
    for _ in range(n):
        ids = prefix + [rnd.randrange(3, vocab) for _ in range(rnd.randrange(3, 62))]
        rows.append((rnd.randrange(10, len(ids)), ids))
    return rows


def _ppl(per: list) -> float:
    return math.exp(sum(s for s, _, _ in per) / sum(n for _, n, _ in per))


def test_common_prefix_stops_before_the_first_needed_logits():
    assert common_prefix([(5, [1, 2, 3, 4, 5, 6]), (6, [1, 2, 3, 9, 9, 9, 9])]) == 3
    assert common_prefix([(3, [1, 2, 3, 4, 5]), (6, [1, 2, 3, 4, 5, 6, 7])]) == 2  # logits at 2 predict ids[3]
    assert common_prefix([(1, [7, 8]), (1, [7, 8])]) == 0


# one sequence with the shared prefix kept (the default); several, rows split across decodes or whole per decode
@pytest.mark.parametrize("n_seq,n_batch", [(1, 512), (1, 16), (3, 16), (8, 512)])
def test_llama_scorer_equals_the_one_row_reference(tiny_gguf, n_seq, n_batch):
    llm = _load(tiny_gguf, 1, 256)
    rows = _rows(llm.n_vocab())
    want = per_row(lambda s, ids: _nll(llm, s, ids))(rows)
    llm.close()
    done = []
    with LlamaScorer(tiny_gguf, 1, 256, n_seq=n_seq, n_batch=n_batch) as scorer:
        got = scorer.score(rows, done.append)
        again = scorer.score(rows[::-1])  # a second call starts from an empty cache
    assert sum(done) == len(rows)
    assert round(_ppl(got), 4) == round(_ppl(want), 4)
    for (s, n, top), (s0, n0, top0) in zip(got, want):
        assert n == n0 and np.array_equal(top, top0) and s == pytest.approx(s0, rel=1e-6)
    assert [n for _, n, _ in again] == [n for _, n, _ in want[::-1]]
    assert round(_ppl(again), 4) == round(_ppl(want), 4)


def test_batched_report_equals_the_reference_report(tiny_llama, tiny_gguf, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"Where is fox {i}?" + " Tell me." * (i % 3)},
                          {"role": "assistant", "content": f"Fox {i} is in the forest near river {i * 7}."}]}
            for i in range(6)]
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = dict(rows=6, prompts=2, gen_tokens=8, threads=1)
    old = measure(tiny_gguf, tiny_gguf, tiny_llama, tmp_path, batched=False, **args)
    new = measure(tiny_gguf, tiny_gguf, tiny_llama, tmp_path, **args)
    for k in ("eval", "ppl", "ppl_f16", "top1_agreement", "greedy_same", "greedy_prefix_agreement", "samples"):
        assert new[k] == old[k], k
