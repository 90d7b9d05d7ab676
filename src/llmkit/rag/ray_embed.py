"""The rag stage's embedding on Ray actors (`rag.backend: ray`), for corpora larger than one machine embeds in
time. Everything else of the stage (reading, chunking, the store, BM25) stays in this process: embedding is
where the time goes (bench/rag.py), and the vectors are small to send back.

The driver forms exactly the batches the local path forms (embed.batches: longest first), so each batch pads
the same way; `workers` actors (each `cpus_per_worker` CPUs, torch on as many threads) load the embedder once
and encode whole batches; the driver puts each batch's vectors back in its rows. Two batches wait per actor,
so an actor never idles on a round trip.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from llmkit.engines.ray_cluster import connect


class EmbedWorker:
    """One embedder in one Ray actor."""

    def __init__(self, spec: str, threads: int):
        import torch

        from llmkit.rag.embed import open_embedder

        torch.set_num_threads(threads)
        self.model = open_embedder(spec)

    def encode(self, texts: list[str]) -> np.ndarray:
        from llmkit.rag.embed import encode_batch

        return encode_batch(self.model, texts)

    def dim(self) -> int:
        return self.model.get_embedding_dimension()


def encode_on_ray(spec: str, texts: list[str], batch_size: int, *, workers: int = 2, cpus_per_worker: float = 1.0,
                  address: str | None = None, progress: bool = True,
                  after_batch: Callable[[int], None] | None = None, stats: dict | None = None) -> np.ndarray:
    """(N, D) float32, L2-normalized, as embed.encode gives, computed by `workers` Ray actors. `stats`, when
    given, gets `startup_s`: joining Ray and loading the embedders (bench/ray_scale.py)."""
    import time

    from tqdm import tqdm

    from llmkit.rag.embed import batches

    t0 = time.perf_counter()
    ray = connect(address, "rag.backend: ray")
    actor = ray.remote(num_cpus=cpus_per_worker)(EmbedWorker)
    actors = [actor.remote(spec, max(1, int(cpus_per_worker))) for _ in range(workers)]
    try:
        dim = ray.get([a.dim.remote() for a in actors])[0]  # every actor has its embedder loaded
        if stats is not None:
            stats["startup_s"] = time.perf_counter() - t0
        out = np.zeros((len(texts), dim), dtype=np.float32)
        todo = iter(batches(texts, batch_size))
        inflight: dict = {}  # ObjectRef -> (actor index, rows)

        def send(a: int) -> None:
            if (rows := next(todo, None)) is not None:
                inflight[actors[a].encode.remote([texts[r] for r in rows])] = (a, rows)

        for a in range(len(actors)):
            send(a)
            send(a)
        done = 0
        with tqdm(total=len(texts), desc="embed (ray)", unit="chunk", disable=not progress) as bar:
            while inflight:
                ready, _ = ray.wait(list(inflight), num_returns=1)
                a, rows = inflight.pop(ready[0])
                out[rows] = ray.get(ready[0])
                bar.update(len(rows))
                done += 1
                if after_batch is not None:
                    after_batch(done)
                send(a)
        return out
    finally:
        for a in actors:
            ray.kill(a)
