"""Inference engines behind one Protocol, used by chat, eval and serve alike.

    engine = load_engine("llamacpp", resolve_model("smollm2-135m-instruct"))
    for piece in engine.chat([{"role": "user", "content": "Hi"}], GenParams(max_tokens=32)):
        print(piece, end="")

ENGINES maps a name to a loader; a loader imports its heavy library only when called, so listing engines or
models never imports torch. A name that is not in ENGINES is an error listing the ones that are.
"""

from __future__ import annotations

from collections.abc import Callable

from llmkit.engines.base import Engine, Generation, GenParams, Piece, UnsupportedFeature, default_threads
from llmkit.errors import LlmkitError
from llmkit.models import ModelRef

__all__ = ["ENGINES", "Engine", "GenParams", "Generation", "Piece", "UnsupportedFeature", "default_threads",
           "load_engine"]


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
