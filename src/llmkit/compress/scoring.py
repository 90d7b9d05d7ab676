"""Perplexity scoring in llama.cpp with logits only at target tokens and the rows' shared prefix decoded once.

    with LlamaScorer(Path("m.q8_0.gguf"), threads=1, n_ctx=1024) as s:
        per_row = s.score(es.sequences)   # [(summed NLL of ids[start:], target count, argmax per target)]

report.py's `_nll` (kept there as the reference path, and compared with this one in tests/compress) runs one row
per `Llama.eval` with `logits_all`: a row's prompt positions get logits too, the vocabulary-wide output matmul
runs for all of them, and every row decodes the chat template's default system prompt again. Here:
- with `n_seq` > 1 each row is its own llama.cpp sequence with its own KV stream (`kv_unified=False`,
  FACTS.md), so a row attends only to itself, and up to `n_batch` tokens of several rows go into one
  `llama_decode` (exact, but no faster on a compute-bound CPU; the default is one sequence);
- logits are asked for (`batch.logits[i] = 1`) only where a target token is predicted, positions start-1 ..
  len-2 of a row; llama.cpp then skips the output matmul for the other positions;
- the prefix that every row starts with (the system prompt, 24 tokens of ~144 on the example data) is
  decoded once, not once per row; a row then only removes what lies past it (`llama_memory_seq_rm`);
- the log-softmax of those target rows: exp in float32 (llama.cpp's logits are float32), sums and the rest in
  float64; 3.6x faster than `_nll`'s all-float64 and within ~1e-8 nats of it per token.
The context is built as `Llama` builds the reference's (n_batch = n_ubatch = 512, flash attention off), so
the numbers equal `_nll`'s: the same per-row NLL and argmaxes on the example's 77 val rows (f16 and q8_0), and
the same perplexity to 4 decimals in tests/compress/test_report_batched.py.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path

from llmkit.engines.llamacpp import new_context
from llmkit.errors import LlmkitError, MissingExtra

# Rows in flight. 1: prefill on CPU is compute-bound, so several rows per llama_decode did not pay (512 tokens of
# 1 or 8 sequences: 116-142 tok/s at 1 thread), and only one sequence keeps the shared prefix exactly (below)
N_SEQ = 1
N_BATCH = 512  # tokens per llama_decode, as the reference `Llama(n_batch=512)`


def common_prefix(seqs: list[tuple[int, list[int]]]) -> int:
    """Tokens every row starts with, short of the first position whose logits a row needs (start - 1)."""
    first = seqs[0][1]
    n = min(start - 1 for start, _ in seqs)
    for _, ids in seqs[1:]:
        n = next((i for i, (a, b) in enumerate(zip(first[:n], ids[:n])) if a != b), min(n, len(ids)))
    return max(0, n)


class LlamaScorer:
    """A llama.cpp context of `n_seq` sequences × `n_ctx` tokens for scoring rows (low-level API)."""

    def __init__(self, path: Path, threads: int, n_ctx: int, *, n_seq: int = N_SEQ, n_batch: int = N_BATCH):
        try:
            import llama_cpp as lc
            from llama_cpp import _logger
        except ImportError:
            raise MissingExtra("llama-cpp-python is not installed: pip install llama-cpp-python") from None
        _logger.set_verbose(False)
        self._lc, self.n_seq, self.n_batch, self.n_ctx = lc, n_seq, n_batch, n_ctx
        lc.llama_backend_init()
        self._model = lc.llama_model_load_from_file(str(path).encode(), lc.llama_model_default_params())
        if not self._model:
            raise LlmkitError(f"llama.cpp could not load {path}")
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self._model))
        # flash-attn off, as the reference `Llama(flash_attn=False)` whose numbers this scorer reproduces
        self._ctx = new_context(lc, self._model, n_ctx=n_ctx, n_seq=n_seq, n_batch=n_batch, threads=threads,
                                flash_attn=False)
        self._mem = lc.llama_get_memory(self._ctx)
        self._batch = lc.llama_batch_init(n_batch, 0, 1)

    def close(self) -> None:
        if self._ctx:
            self._lc.llama_batch_free(self._batch)
            self._lc.llama_free(self._ctx)
            self._lc.llama_model_free(self._model)
            self._ctx = None

    def __enter__(self) -> LlamaScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence, wants logits) items."""
        b = self._batch
        for n, (tok, pos, seq, out) in enumerate(items):
            b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = tok, pos, 1, out
            b.seq_id[n][0] = seq
        b.n_tokens = len(items)
        rc = self._lc.llama_decode(self._ctx, b)
        if rc != 0:
            raise LlmkitError(f"llama_decode failed ({rc}): the KV cache is full or the batch is invalid")

    def score(self, seqs: list[tuple[int, list[int]]], advance: Callable[[int], object] = lambda n: None,
              ) -> list[tuple[float, int, object]]:
        """(summed NLL of ids[start:], target count, argmax per target) for each (start, ids), in order;
        advance(k) is called as k more rows are done (a progress bar)."""
        import numpy as np

        lc = self._lc
        if any(len(ids) > self.n_ctx or start < 1 for start, ids in seqs):
            raise LlmkitError(f"a row is longer than the scorer's {self.n_ctx}-token context, or has no prefix")
        lc.llama_memory_clear(self._mem, True)
        # the prefix every row starts with is decoded once and kept; a row then starts past it. Only with one
        # sequence: with 8, keeping it in each stream scored 3 of the example's 77 val rows 0.2-0.4 nats off
        # the reference (bench/compress_report.py; cause not found), while 8 streams without it were exact
        shared = common_prefix(seqs) if seqs and self.n_seq == 1 else 0
        for i in range(0, shared, self.n_batch):
            self._decode([(t, i + j, 0, False) for j, t in enumerate(seqs[0][1][i:i + self.n_batch])])
        # per row: the NLL and the argmax at each target, summed per row at the end as `_nll` sums them
        nll = [np.empty(len(ids) - start) for start, ids in seqs]
        tops = [np.empty(len(ids) - start, dtype=np.int64) for start, ids in seqs]
        todo = list(range(len(seqs)))[::-1]  # rows not yet started, popped from the end
        slots: list[list[int] | None] = [None] * self.n_seq  # per sequence: [row, next position]
        while todo or any(slots):
            done = 0
            for s in range(self.n_seq):
                if slots[s] is None and todo:
                    slots[s] = [todo.pop(), shared]
                    lc.llama_memory_seq_rm(self._mem, s, shared, -1)  # the previous row's tokens
            items, wanted, where = [], [], []  # wanted: (row, target index) of each output; where: its batch index
            for s, slot in enumerate(slots):
                if slot is None:
                    continue
                row, pos = slot
                start, ids = seqs[row]
                chunk = ids[pos:pos + self.n_batch - len(items)]
                for j, tok in enumerate(chunk):
                    p = pos + j
                    out = start - 1 <= p < len(ids) - 1  # logits at p predict ids[p + 1]
                    items.append((tok, p, s, out))
                    if out:
                        wanted.append((row, p + 1 - start))
                        where.append(len(items) - 1)
                slot[1] = pos + len(chunk)
                if slot[1] == len(ids):
                    slots[s] = None
                    done += 1
                if len(items) == self.n_batch:
                    break
            self._decode(items)
            # (n_outputs, V) float32. Its rows need not be in batch order (llama.cpp splits a multi-sequence
            # batch into ubatches by sequence): each output's row is found from llama_get_logits_ith(batch index)
            base = ctypes.cast(lc.llama_get_logits(self._ctx), ctypes.c_void_p).value
            logits = np.ctypeslib.as_array(ctypes.cast(base, ctypes.POINTER(ctypes.c_float)),
                                           shape=(len(wanted), self.n_vocab))
            order = [(ctypes.cast(lc.llama_get_logits_ith(self._ctx, i), ctypes.c_void_p).value - base)
                     // (4 * self.n_vocab) for i in where]
            logits = logits[order]  # now in batch order of the flagged items
            rows = np.array([r for r, _ in wanted])
            idx = np.array([k for _, k in wanted])
            targets = np.array([seqs[r][1][seqs[r][0] + k] for r, k in wanted])
            for a in range(0, len(wanted), 64):  # slices of 64 outputs (12.6 MB each for a 49k vocab)
                x = logits[a:a + 64]
                top = x.max(axis=1, keepdims=True)
                lse = top[:, 0].astype(np.float64) + np.log(np.exp(x - top).sum(axis=1, dtype=np.float64))
                per = lse - x[np.arange(len(x)), targets[a:a + 64]].astype(np.float64)
                arg = x.argmax(axis=1)
                for r, k, v, m in zip(rows[a:a + 64], idx[a:a + 64], per, arg):
                    nll[r][k], tops[r][k] = v, m
            advance(done)
        return [(float(v.sum()), len(t), t) for v, t in zip(nll, tops)]
