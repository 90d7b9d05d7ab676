"""The embedder behind /v1/embeddings: a sentence-transformers model, by default the bundled all-MiniLM-L6-v2,
or its int8 ONNX form (`all-minilm-l6-v2-int8`); both load through llmkit.rag.embed.open_embedder.

Importing sentence-transformers (torch, transformers) takes seconds on a cold start, so the model loads on its
own thread from server startup on, and /health answers at once; a request that comes before the load finished
waits for it. Encoding runs on that same thread, so the event loop never blocks and two requests never encode
on top of each other (the CPU cores are the engines' too).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor

from llmkit.serve.errors import APIError

log = logging.getLogger("llmkit.serve")

class Embedder:
    def __init__(self, spec: str, id: str | None = None):
        self.spec = spec
        self.id = id or self.id_of(spec)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="llmkit-embed")
        self._model: Future = self.pool.submit(self._load)

    @staticmethod
    def id_of(spec: str) -> str:
        """The model id clients send: the bundled name, else the spec as given."""
        return spec

    def _load(self):
        t0 = time.perf_counter()
        from llmkit.rag.embed import open_embedder

        model = open_embedder(self.spec)
        log.info("embedder %s loaded in %.1f s", self.id, time.perf_counter() - t0)
        return model

    @property
    def ready(self) -> bool:
        return self._model.done() and self._model.exception() is None

    def status(self) -> str:
        if not self._model.done():
            return "loading"
        return "ready" if self._model.exception() is None else f"failed: {self._model.exception()}"

    async def model(self):
        return await asyncio.wrap_future(self._model)  # re-raises a failed load (MissingExtra → 503)

    async def encode(self, texts: list[str]):
        """(vectors (N, D) float32, tokens per text). An input longer than the model reads is a 400, not cut."""
        model = await self.model()

        def work():
            counts = [len(x) for x in model.tokenizer(texts, add_special_tokens=True)["input_ids"]]
            limit = model.max_seq_length
            for i, n in enumerate(counts):
                if n > limit:
                    raise APIError(400, f"input[{i}] is {n} tokens; {self.id} reads at most {limit}: split it",
                                   param=f"input[{i}]", code="context_length_exceeded")
            vectors = model.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False)
            return vectors.astype("<f4"), counts

        return await asyncio.get_running_loop().run_in_executor(self.pool, work)

    async def dimensions(self) -> int:
        return (await self.model()).get_embedding_dimension()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
