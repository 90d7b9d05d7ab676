"""llama.cpp engine (GGUF) through llama-cpp-python's `Llama` API.

One request at a time for now; the serving issue replaces `chat` with continuous batching over the low-level
multi-sequence API, behind the same Protocol.
"""

from __future__ import annotations

from collections.abc import Iterator

from llmkit.engines import GenParams, default_threads
from llmkit.errors import MissingExtra, UnsupportedModel
from llmkit.models import ModelRef


class LlamaCppEngine:
    name = "llamacpp"

    def __init__(self, model: ModelRef, n_ctx: int = 4096, n_threads: int | None = None, seed: int = 0):
        if model.kind != "gguf":
            what = "a PEFT adapter" if model.kind == "adapter" else "an HF folder"
            raise UnsupportedModel(
                f"the llamacpp engine runs GGUF files; '{model.name}' is {what}. "
                "Use --engine transformers, or export it to GGUF with `llmkit compress`."
            )
        try:
            from llama_cpp import Llama
        except ImportError:
            raise MissingExtra("llama-cpp-python is not installed: pip install llama-cpp-python") from None
        self.model = model
        threads = n_threads or default_threads()
        self._llm = Llama(model_path=str(model.path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                          seed=seed, verbose=False)

    def _kwargs(self, p: GenParams) -> dict:
        # repeat_penalty 1.0 and top_k 0 make temperature 0 plain greedy, the same as transformers' greedy.
        kw = dict(max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p, top_k=0,
                  repeat_penalty=1.0, stop=p.stop or None, stream=True)
        if p.seed is not None:
            kw["seed"] = p.seed
        return kw

    def chat(self, messages: list[dict], params: GenParams) -> Iterator[str]:
        for chunk in self._llm.create_chat_completion(messages=messages, **self._kwargs(params)):
            piece = chunk["choices"][0]["delta"].get("content")
            if piece:
                yield piece

    def complete(self, prompt: str, params: GenParams) -> Iterator[str]:
        for chunk in self._llm.create_completion(prompt, **self._kwargs(params)):
            piece = chunk["choices"][0]["text"]
            if piece:
                yield piece

    def tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def close(self) -> None:
        self._llm.close()
