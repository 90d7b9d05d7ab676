"""Inference engines behind one Protocol, used by chat, eval and serve alike.

    engine = load_engine("llamacpp", resolve_model("smollm2-135m-instruct"))
    for piece in engine.chat([{"role": "user", "content": "Hi"}], GenParams(max_tokens=32)):
        print(piece, end="")

ENGINES maps a name to a loader; a loader imports its heavy library only when called, so listing engines or
models never imports torch. A name that is not in ENGINES is an error listing the ones that are.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from llmkit.errors import LlmkitError
from llmkit.models import ModelRef


@dataclass
class GenParams:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy: reproducible, and what the agreement tests compare
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


class Engine(Protocol):
    name: str
    model: ModelRef

    def chat(self, messages: list[dict], params: GenParams) -> Iterator[str]:
        """Apply the model's chat template and stream the reply's text pieces."""
        ...

    def complete(self, prompt: str, params: GenParams) -> Iterator[str]:
        """Stream a raw continuation of `prompt` (no template)."""
        ...

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, with no BOS added; special-token text such as `<|im_end|>` maps to its id."""
        ...

    def close(self) -> None: ...


def default_threads() -> int:
    """`LLMKIT_THREADS`, else the number of cores (at most 8: decode is memory-bound beyond that)."""
    env = os.environ.get("LLMKIT_THREADS")
    return int(env) if env else max(1, min(8, os.cpu_count() or 1))


def _load_llamacpp(model: ModelRef, **opts) -> Engine:
    from llmkit.engines.llamacpp import LlamaCppEngine

    return LlamaCppEngine(model, **opts)


def _load_transformers(model: ModelRef, **opts) -> Engine:
    from llmkit.engines.hf import TransformersEngine

    return TransformersEngine(model, **opts)


ENGINES: dict[str, Callable[..., Engine]] = {
    "llamacpp": _load_llamacpp,
    "transformers": _load_transformers,
}


def load_engine(name: str, model: ModelRef, **opts) -> Engine:
    if name not in ENGINES:
        raise LlmkitError(f"unknown engine '{name}'; available: {', '.join(ENGINES)}")
    return ENGINES[name](model, **opts)
