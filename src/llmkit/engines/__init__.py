"""Inference engines behind one Protocol, used by chat, eval and serve alike.

    engine = load_engine("llamacpp", resolve_model("smollm2-135m-instruct"))
    for piece in engine.chat([{"role": "user", "content": "Hi"}], GenParams(max_tokens=32)):
        print(piece, end="")

ENGINES maps a name to a loader; a loader imports its heavy library only when called, so listing engines or
models never imports torch. A name that is not in ENGINES is an error listing the ones that are.
"""

from __future__ import annotations

from collections.abc import Callable

from llmkit.engines.base import Engine, Generation, GenParams, Piece, UnsupportedFeature, UpstreamError, default_threads
from llmkit.errors import LlmkitError
from llmkit.models import ModelRef

__all__ = ["ENGINES", "Engine", "GenParams", "Generation", "Piece", "UnsupportedFeature", "UpstreamError",
           "default_threads", "load_engine"]


def _load_llamacpp(model: ModelRef, **opts) -> Engine:
    from llmkit.engines.llamacpp import LlamaCppEngine

    return LlamaCppEngine(model, **opts)


def _load_transformers(model: ModelRef, **opts) -> Engine:
    from llmkit.engines.hf import TransformersEngine

    return TransformersEngine(model, **opts)


def _load_openai(urls: str, **opts) -> Engine:
    """`urls`: one upstream base URL, or several (comma-separated) replicas of one model."""
    from llmkit.engines.upstream import OpenAIEngine

    return OpenAIEngine(urls, **opts)


def _load_vllm(model: ModelRef, **opts) -> Engine:
    """`vllm serve` started from its own venv (`python=`), then used as an openai upstream."""
    from llmkit.engines.vllm import start_vllm

    return start_vllm(model, **opts)


ENGINES: dict[str, Callable[..., Engine]] = {
    "llamacpp": _load_llamacpp,
    "transformers": _load_transformers,
    "openai": _load_openai,  # any OpenAI-compatible upstream: vLLM, llama.cpp's server, another llmkit
    "vllm": _load_vllm,
}


def load_engine(name: str, model: ModelRef, **opts) -> Engine:
    if name not in ENGINES:
        raise LlmkitError(f"unknown engine '{name}'; available: {', '.join(ENGINES)}")
    return ENGINES[name](model, **opts)
