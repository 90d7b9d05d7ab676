"""Deterministic offline text samples: windows of Python's own reference text (`pydoc_data.topics`, ~465k
characters of prose, grammar and code, shipped with CPython), the same on every machine. Used by the int8
embedder's agreement gate and by the benchmarks (bench/rag.py, bench/embedders.py)."""

from __future__ import annotations

import numpy as np


def pydoc_words() -> list[str]:
    """The topics in sorted-key order, joined and split on whitespace into one word stream (~65k words)."""
    from pydoc_data.topics import topics

    return " ".join(topics[k] for k in sorted(topics)).split()


def pydoc_windows(n: int, lo: int, hi: int, seed: int) -> list[str]:
    """n distinct texts of lo..hi words from the stdlib's `pydoc_data.topics` (Python's own reference text, so
    varied: prose, grammar, code), windows words[s:s+L] drawn with a fixed seed: the same on every machine."""
    words = pydoc_words()
    rng = np.random.default_rng(seed)
    seen, texts = set(), []
    while len(texts) < n:
        length = int(rng.integers(lo, hi + 1))
        s = int(rng.integers(0, len(words) - length))
        text = " ".join(words[s:s + length])
        if text not in seen:
            seen.add(text)
            texts.append(text)
    return texts
