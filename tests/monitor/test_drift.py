"""The drift tests on their own: MMD's permutation test and the classifier test on synthetic samples (same
distribution → no drift, shifted → drift), the unbiased MMD² around 0 without drift, the reference sets a
dataset can give, and the example traffic's phrasings kept out of the training set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmkit.errors import ConfigError
from llmkit.monitor import drift

ROOT = Path(__file__).resolve().parents[2]


def unit(rng, n: int, shift: float = 0.0) -> np.ndarray:
    x = rng.normal(size=(n, 16))
    x[:, 0] += shift
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("method", drift.METHODS)
def test_same_distribution_is_not_drift_and_a_shift_is(method):
    rng = np.random.default_rng(0)
    ref = unit(rng, 200)
    same = drift.two_sample(method, ref, unit(rng, 100))
    moved = drift.two_sample(method, ref, unit(rng, 100, shift=3.0))
    assert not same.drifted and same.p_value > 0.05
    assert moved.drifted and moved.p_value < 0.01 and moved.score > same.score
    assert (moved.n_reference, moved.n_recent) == (200, 100)


def test_unbiased_mmd_is_near_zero_without_drift_at_any_size():
    rng = np.random.default_rng(1)
    for n in (30, 300):
        scores = [drift.mmd_test(unit(rng, n), unit(rng, n), permutations=20)[0] for _ in range(5)]
        assert abs(np.mean(scores)) < 0.01, (n, scores)


def test_reference_prompts_from_every_row_shape(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"},
                          {"role": "assistant", "content": "a"}, {"role": "user", "content": "u2"}]},
            {"prompt": "p", "chosen": "c", "rejected": "r"}, {"instruction": "i", "input": "more", "output": "o"}]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert drift.reference_prompts(tmp_path / "data") == ["u1", "u2", "p", "i\nmore"]
    assert len(drift.reference_prompts(tmp_path / "data", limit=2)) == 2
    with pytest.raises(ConfigError, match="train.jsonl"):
        drift.reference_prompts(tmp_path)


def test_example_traffic_is_held_out_from_the_training_prompts():
    train = set(drift.reference_prompts(ROOT / "examples/support/train.jsonl", limit=10**6))
    for name in ("in_distribution", "out_of_distribution"):
        texts = [json.loads(x)["prompt"] for x in (ROOT / "examples/drift" / f"{name}.jsonl").read_text().splitlines()]
        assert len(texts) >= 100 and not train & set(texts)


def test_embeddings_are_cached_by_content(tmp_path, llmkit_home):
    (tmp_path / "ref.jsonl").write_text('{"prompt": "my router is slow"}\n{"prompt": "reset the modem"}\n')
    a = drift.reference_embeddings(tmp_path / "ref.jsonl")
    assert a.shape == (2, 384) and np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-3)
    assert len(list((llmkit_home / "monitor").glob("reference-*.npy"))) == 1
    assert np.array_equal(drift.reference_embeddings(tmp_path / "ref.jsonl"), a)
