"""Embedding throughput: the bundled fp32 all-MiniLM-L6-v2 on sentence-transformers (torch) against the same model
as int8 ONNX on onnxruntime (`rag.embedder: all-minilm-l6-v2-int8`, llmkit.rag.onnx_embed), on the same texts.

    .venv/bin/python bench/embedders.py [--texts 500] [--batches 16 64] [--threads 2] [--repeats 2]

What it measures: chunks/s of `model.encode(texts, batch_size=B)` (both sort by length and pad per batch), for
--texts chunk-like texts of 40..80 words drawn from Python's `pydoc_data.topics` (deterministic windows,
llmkit.rag.samples.pydoc_windows, seed 0), at each batch size, with --threads CPU threads for both (torch's
intra-op threads; onnxruntime's intra_op_num_threads). Each model is warmed up on 64 texts first; each cell is the
best of --repeats full passes (the box is shared, so the best pass is the least disturbed one). It prints the
load average before and after (another process on the same cores changes everything), a table, the int8/fp32
ratio per batch size, and the mean/min cosine between the two models' vectors on these texts. Not a test: the
agreement gate and its tests are in llmkit.rag.onnx_embed and tests/rag/test_onnx_embedder.py.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from llmkit.models import BUNDLED_EMBEDDER, embedder_path, int8_embedder_files  # noqa: E402
from llmkit.rag.onnx_embed import OnnxEmbedder  # noqa: E402
from llmkit.rag.samples import pydoc_windows  # noqa: E402


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def run(encode, texts: list[str], batch: int, repeats: int) -> tuple[float, np.ndarray]:
    best, vecs = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        vecs = encode(texts, batch)
        best = min(best, time.perf_counter() - t)
    return best, vecs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--texts", type=int, default=500)
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    print(f"before: {uptime()}")
    texts = pydoc_windows(args.texts, 40, 80, seed=0)
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    fp32 = SentenceTransformer(embedder_path(BUNDLED_EMBEDDER), device="cpu")
    int8 = OnnxEmbedder(*int8_embedder_files(), threads=args.threads)
    models = {
        "fp32 sentence-transformers": lambda xs, b: fp32.encode(xs, batch_size=b, convert_to_numpy=True,
                                                               normalize_embeddings=True, show_progress_bar=False),
        "int8 onnxruntime": lambda xs, b: int8.encode(xs, batch_size=b),
    }
    tokens = [len(x) for x in int8.tokenizer(texts)["input_ids"]]
    print(f"{len(texts)} texts, {np.mean(tokens):.0f} word pieces on average (max {max(tokens)}), "
          f"{args.threads} threads, best of {args.repeats}; torch {torch.__version__}, "
          f"onnxruntime {__import__('onnxruntime').__version__}, cpus {os.cpu_count()}")
    rate: dict[tuple[str, int], float] = {}
    vecs: dict[str, np.ndarray] = {}
    for name, encode in models.items():
        encode(texts[:64], 16)  # warm-up: first-call allocations, lazy inits
        for b in args.batches:
            secs, vecs[name] = run(encode, texts, b, args.repeats)
            rate[name, b] = len(texts) / secs
    print(f"\n| model | {' | '.join(f'batch {b} chunks/s' for b in args.batches)} |")
    print(f"|---|{'---:|' * len(args.batches)}")
    for name in models:
        print(f"| {name} | {' | '.join(f'{rate[name, b]:.1f}' for b in args.batches)} |")
    a, b = models
    print(f"| ratio int8 / fp32 | {' | '.join(f'{rate[b, n] / rate[a, n]:.2f}x' for n in args.batches)} |")
    cos = (vecs[a] * vecs[b]).sum(axis=1)
    print(f"\ncosine int8 vs fp32 on these texts: mean {cos.mean():.5f}, min {cos.min():.5f}")
    print(f"after: {uptime()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
