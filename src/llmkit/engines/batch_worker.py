"""What one worker of a batch job is: its settings (BatchSpec) and its engine (EngineWorker), the same class in a
thread of this process (engines/batch.py) and inside a Ray actor (engines/ray_batch.py). Below both, so that
neither imports the other back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from llmkit.engines.base import GenParams
from llmkit.errors import LlmkitError


@dataclass
class BatchSpec:
    model: str = "smollm2-135m-instruct"
    engine: Literal["auto", "llamacpp", "transformers"] = "auto"  # auto: llamacpp for GGUF, else transformers
    backend: Literal["local", "ray"] = "local"
    workers: int = 1  # engines: threads of this process (local) or Ray actors (ray)
    parallel: int = 4  # prompts per chunk, decoded together by one engine
    threads: int | None = None  # CPU threads per engine; default: the cores / workers (local), cpus_per_worker (ray)
    cpus_per_worker: float = 1.0  # Ray: CPUs each actor reserves
    n_ctx: int = 2048  # tokens per sequence (prompt + answer)
    template: bool = True  # apply the chat template to {"prompt"} rows
    ray_address: str | None = None  # None: $RAY_ADDRESS, else a local Ray on 127.0.0.1
    params: GenParams = field(default_factory=lambda: GenParams(max_tokens=256))


def answer_chunk(engine, items: list[tuple[int, dict]], params: GenParams, template: bool) -> list[dict]:
    """Generate every prompt of `items` ([(line, row)]) on `engine` at once (the engine batches them)."""
    gens = []
    for line, data in items:
        try:
            if "messages" in data:
                prompt = engine.format_chat(data["messages"])
            else:
                prompt = engine.format_chat([{"role": "user", "content": data["prompt"]}]) if template \
                    else data["prompt"]
            gens.append((line, engine.submit(prompt, params), None))
        except LlmkitError as e:
            gens.append((line, None, str(e)))
    out = []
    for line, gen, err in gens:
        if gen is not None:
            try:
                text = gen.text()
            except LlmkitError as e:
                err = str(e)
        if err is not None:
            out.append({"line": line, "error": err})
            continue
        out.append({"line": line, "answer": text, "finish_reason": gen.finish_reason,
                    "prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens})
    return out


def open_engine(spec: BatchSpec, threads: int):
    """The engine of one worker (in this process or inside a Ray actor)."""
    from llmkit.engines import load_engine
    from llmkit.models import resolve_model

    ref = resolve_model(spec.model)
    name = spec.engine if spec.engine != "auto" else ("llamacpp" if ref.kind == "gguf" else "transformers")
    opts = {"n_ctx": spec.n_ctx, "parallel": spec.parallel} if name == "llamacpp" else {}
    return load_engine(name, ref, n_threads=threads, **opts)


class EngineWorker:
    """One engine and the chunks it answers; the same class runs in a thread here and as a Ray actor."""

    def __init__(self, spec: BatchSpec, threads: int):
        self.spec = spec
        self.engine = open_engine(spec, threads)

    def run(self, items: list[tuple[int, dict]]) -> list[dict]:
        return answer_chunk(self.engine, items, self.spec.params, self.spec.template)

    def where(self) -> str:
        """The Ray node this worker runs on ('local' outside Ray)."""
        try:
            import ray

            if ray.is_initialized():
                return ray.get_runtime_context().get_node_id()
        except ImportError:
            pass
        return "local"

    def close(self) -> None:
        self.engine.close()


