"""The embedder: a sentence-transformers model (default the bundled all-MiniLM-L6-v2), or the same model as int8
ONNX (`all-minilm-l6-v2-int8`, llmkit.rag.onnx_embed), loaded once per process.

Vectors are L2-normalized, so the store's cosine distance and a dot product rank alike.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from llmkit.errors import ConfigError
from llmkit.models import BUNDLED_EMBEDDER_INT8
from llmkit.rag.sentence_embed import open_sentence_transformer


class Embedder(Protocol):
    """What llmkit uses of an embedder: a SentenceTransformer has it, and so has onnx_embed.OnnxEmbedder, which
    does not subclass it (that would drag torch in and promise the rest of its API)."""

    max_seq_length: int
    # called like a transformers fast tokenizer: tokenizer(text, add_special_tokens=..., return_offsets_mapping=...,
    # truncation=False, verbose=False) → {"input_ids": ..., "offset_mapping": ...} (the chunker, the server)
    tokenizer: Any

    def encode(self, sentences: Sequence[str], batch_size: int = ..., convert_to_numpy: bool = ...,
               normalize_embeddings: bool = ..., show_progress_bar: bool | None = ...) -> np.ndarray: ...

    def get_embedding_dimension(self) -> int: ...


def open_embedder(spec: str) -> Embedder:
    """A new embedder for `spec` (the server keeps its own; the rag stage shares `load_embedder`'s)."""
    if spec == BUNDLED_EMBEDDER_INT8:
        from llmkit.rag.onnx_embed import load_int8

        return load_int8()
    return open_sentence_transformer(spec)


load_embedder = functools.lru_cache(maxsize=2)(open_embedder)


def check_chunk_size(model, spec: str, chunk_tokens: int) -> None:
    """A chunk longer than the model reads would be cut silently by sentence-transformers: refuse it up front."""
    limit = model.max_seq_length - 2  # [CLS] and [SEP]
    if chunk_tokens > limit:
        raise ConfigError([f"rag.chunk_tokens: {chunk_tokens} is more than {spec} reads ({limit} tokens "
                           f"besides its 2 special ones); use at most {limit}"])


def encode(model, texts: list[str], batch_size: int, progress: bool = True,
           after_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """(N, D) float32, L2-normalized, in batches of `batch_size` with a tqdm bar; `after_batch(i)` after each.

    Batches are formed over all `texts` sorted by length (longest first, as sentence-transformers sorts within
    one `encode` call), so each batch pads to similar lengths; rows come back in the input order. Batching in
    input order padded every chunk to its batch's longest: index() ran at 0.83x the raw embedder (bench/rag.py).
    """
    from tqdm import tqdm

    dim = model.get_embedding_dimension()
    out = np.zeros((len(texts), dim), dtype=np.float32)
    with tqdm(total=len(texts), desc="embed", unit="chunk", disable=not progress) as bar:
        for b, rows in enumerate(batches(texts, batch_size)):
            out[rows] = encode_batch(model, [texts[r] for r in rows])
            bar.update(len(rows))
            if after_batch is not None:
                after_batch(b + 1)
    return out


def batches(texts: list[str], batch_size: int) -> list[list[int]]:
    """Row indices of `texts` in batches of `batch_size`, longest first (what `encode` runs, in this process or on
    Ray actors: the same batches give the same padding, so the same vectors)."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    return [order[i:i + batch_size] for i in range(0, len(texts), batch_size)]


def encode_batch(model, texts: list[str]) -> np.ndarray:
    """(len(texts), D) float32, L2-normalized: one batch, as one `encode` call."""
    return model.encode(texts, batch_size=len(texts), convert_to_numpy=True, normalize_embeddings=True,
                        show_progress_bar=False)


