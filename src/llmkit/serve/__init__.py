"""`llmkit serve`: an OpenAI-compatible HTTP server over llmkit's engines.

    serve(ServeConfig(engine="transformers"), ["smollm2-135m-instruct", "support=runs/support/train"])

Each model is a registry name, a folder, a .gguf, a hub id, a PEFT adapter folder or a model registry version
(`registry:NAME@ALIAS`, followed when the alias moves: serve/follow.py; `registry:NAME/VERSION`); `NAME=SPEC`
sets the id clients send as `model` (default: the spec as given; NAME for a registry spec). An adapter is served by the engine of the base it names
(loaded too when it is not given), loaded on first use. The embedder (`cfg.embedder`) serves /v1/embeddings.

`load_state` does everything but listening, so that tests and other hosts can run `build_app(state)` under their
own server.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from llmkit import __version__
from llmkit.config import ServeConfig
from llmkit.errors import ConfigError, UnsupportedModel
from llmkit.guard import Guard, Policy, load_policy
from llmkit.models import ModelRef, resolve_model
from llmkit.serve.auth import KeyStore, check_bind
from llmkit.serve.embed import Embedder
from llmkit.serve.metrics import Metrics
from llmkit.serve.models import ModelTable
from llmkit.serve.rag import Collections
from llmkit.serve.recording import Recorder
from llmkit.serve.state import ServerState

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("llmkit.serve")

DEFAULT_MODEL = "smollm2-135m-instruct"


def split_spec(spec: str) -> tuple[str | None, str]:
    """'NAME=SPEC' → (NAME, SPEC); a plain spec → (None, spec). NAME is a simple id, so paths with '=' still work."""
    name, sep, rest = spec.partition("=")
    if sep and name and "/" not in name and not Path(spec).exists():
        return name, rest
    return None, spec


def _same_model(ref: ModelRef, spec: str) -> bool:
    if ref.name == spec:
        return True
    try:
        return resolve_model(spec).path == ref.path
    except Exception:  # noqa: BLE001 -- the base named by an adapter may not resolve here; then it is simply not this one
        return False


# GGUF file types that llama.cpp multiplies one sequence at a time on CPU (no llamafile sgemm, no repacking):
# batching gains little on them (bench: Q4_1 at 2 threads, 1/8/16 sequences → 100/153/147 tok/s; the same
# weights as Q8_0 → 103/216/246). `weights: auto` serves those as Q8_0.
SLOW_BATCH_FTYPES = {3: "Q4_1"}


def serving_weights(ref: ModelRef, cfg: ServeConfig) -> ModelRef:
    """The GGUF the llama.cpp engine should load for `ref`: itself, or (weights: auto, a Q4_1 file, batching on)
    a Q8_0 requantization of it, made once and cached by content under $LLMKIT_HOME/serve/."""
    if cfg.engine != "llamacpp" or cfg.weights == "as-is" or ref.kind != "gguf" or cfg.max_inflight < 2:
        return ref
    from llmkit.artifacts import sha256_file
    from llmkit.compress.quantize import quantize
    from llmkit.models import gguf_metadata, home

    ftype = gguf_metadata(ref.path)[0].get("general.file_type")
    if ftype not in SLOW_BATCH_FTYPES:
        return ref
    out = home() / "serve" / f"{sha256_file(ref.path)[:24]}.q8_0.gguf"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        log.info("requantizing %s (%s) to Q8_0 for batched decoding: %s", ref.name, SLOW_BATCH_FTYPES[ftype], out)
        quantize(ref.path, out, "q8_0", threads=cfg.threads or 1, requantize=True)
    return dataclasses.replace(ref, path=out)


def load_state(cfg: ServeConfig, models: list[str] | None = None, keys: KeyStore | None = None,
               policy: Policy | None = None) -> ServerState:
    """Check the bind address and keys, load the guard policy, every engine, and start loading the embedder.
    `policy` (a recipe's guard section) wins over `cfg.guard` (a policy file or `default`)."""
    from llmkit.engines import load_engine

    keys = KeyStore.load(cfg.api_keys_file) if keys is None else keys
    check_bind(cfg.host, keys, cfg.allow_public_without_keys)  # before any slow loading
    if policy is None and cfg.guard:
        policy = load_policy(cfg.guard)  # a bad policy fails before any model loads
    guard = Guard(policy, progress=log.info) if policy is not None and not policy.empty() else None
    specs = [split_spec(s) for s in (models or cfg.models or [DEFAULT_MODEL])]
    if cfg.engine == "openai":  # a gateway: each spec is upstream URL(s), no local model to resolve
        return _gateway_state(cfg, specs, keys, guard)
    refs, pinned = [], {}  # pinned: served id -> (registry name, alias or None, version)
    for name, spec in specs:
        if spec.startswith("registry:"):
            from llmkit.serve.follow import parse, pin

            reg, alias, v = parse(spec)
            v, path = pin(reg, alias, v)
            name = name or reg
            pinned[name] = (reg, alias, v)
            log.info("model %s: %s is version %d (%s)", name, spec, v, path)
            refs.append((name, resolve_model(str(path))))
        else:
            refs.append((name, resolve_model(spec)))
    bases = [(name, ref) for name, ref in refs if ref.kind != "adapter"]
    adapters = [(name, ref) for name, ref in refs if ref.kind == "adapter"]
    plan: list[tuple[str, ModelRef, int]] = []  # adapter id, ref, index of its base in `bases`
    for name, ref in adapters:
        assert ref.base is not None
        found = next((i for i, (_, b) in enumerate(bases) if _same_model(b, ref.base)), None)
        if found is None:  # its base was not listed: serve that too
            bases.append((None, resolve_model(ref.base)))
            found = len(bases) - 1
        plan.append((name or ref.name, ref, found))
    ids = [name or ref.name for name, ref in bases] + [name for name, _, _ in plan]
    if cfg.embedder:
        ids.append(Embedder.id_of(cfg.embedder))
    if dupes := sorted({i for i in ids if ids.count(i) > 1}):
        raise ConfigError([f"two served models are both called '{d}'; name one with NAME=SPEC" for d in dupes])
    opts: dict = {"n_threads": cfg.threads} if cfg.threads else {}
    if cfg.engine == "llamacpp":
        opts.update(n_ctx=cfg.n_ctx, parallel=cfg.max_inflight, speculative=cfg.speculative,
                    draft_tokens=cfg.draft_tokens, draft_ngram=cfg.draft_ngram)
    if cfg.engine == "vllm":
        opts = {"python": cfg.vllm_python, "health_s": cfg.upstream_health_s}
    def load(ref: ModelRef):
        engine = load_engine(cfg.engine, serving_weights(ref, cfg), **opts)
        if not hasattr(engine, "submit"):  # an engine of the Protocol's older, one-call-at-a-time shape
            engine.close()
            raise UnsupportedModel(f"engine {cfg.engine} cannot serve requests in this build (it has no "
                                   "submit()); serve with --engine transformers")
        return engine, getattr(engine, "n_ctx", None) or cfg.n_ctx

    if cfg.engine == "llamacpp":
        from llmkit.engines.llamacpp import cpu_kernels_line

        log.info("llama.cpp CPU kernels: %s", cpu_kernels_line())
    table = ModelTable(cfg.max_adapters)
    followers = []
    try:
        for i, (_name, ref) in enumerate(bases):
            served = table.add_base(ids[i], *load(ref))
            if ids[i] in pinned:
                reg, alias, served.version = pinned[ids[i]]
                if alias is not None:
                    from llmkit.serve.follow import Follower

                    followers.append(Follower(ids[i], reg, alias, served.version,
                                              lambda path: load(resolve_model(str(path)))))
        for name, ref, base in plan:
            table.add_adapter(name, ref, ids[base])
            if name in pinned:
                table.entries[name].version = pinned[name][2]
                if pinned[name][1] is not None:  # swapping adapters is not built: that version stays
                    log.warning("model %s: an adapter from the registry is served as version %d and does not "
                                "follow @%s", name, pinned[name][2], pinned[name][1])
    except BaseException:
        table.close()
        raise
    return _finish_state(cfg, table, keys, guard, followers)


def _gateway_state(cfg: ServeConfig, specs: list[tuple[str | None, str]], keys: KeyStore,
                   guard: Guard | None) -> ServerState:
    """`--engine openai`: each `[NAME=]URL[,URL...]` is one model served by its upstream replicas; NAME is the
    id clients send (default: the upstream's own model id)."""
    from llmkit.engines import load_engine

    table = ModelTable(cfg.max_adapters)
    try:
        for name, spec in specs:
            engine = load_engine("openai", spec, served_name=name, health_s=cfg.upstream_health_s)
            try:
                table.add_base(name or engine.upstream_model, engine, engine.n_ctx or cfg.n_ctx)
            except ValueError as e:
                engine.close()
                raise ConfigError([str(e)]) from None
    except BaseException:
        table.close()
        raise
    return _finish_state(cfg, table, keys, guard, [])


def _finish_state(cfg: ServeConfig, table: ModelTable, keys: KeyStore, guard: Guard | None,
                  followers: list) -> ServerState:
    """The collections, request log and embedder around a loaded model table (closed again if one fails)."""
    try:
        collections = Collections(cfg.rag) if cfg.rag else None
    except BaseException:
        table.close()
        raise
    metrics = Metrics()
    try:  # a bad drift reference fails here, after the models loaded: they must be closed again
        recorder = Recorder(cfg, guard, metrics) if cfg.request_log or cfg.drift_reference else None
    except BaseException:
        table.close()
        if collections is not None:
            collections.close()
        raise
    embedder = Embedder(cfg.embedder) if cfg.embedder else None
    for f in followers:
        metrics.registry_version.labels(f.id).set(f.version)
    return ServerState(cfg, table, embedder, keys, metrics=metrics, rag=collections, guard=guard, recorder=recorder,
                       fingerprint=f"llmkit-{__version__}-{cfg.engine}", followers=followers)


def serve(cfg: ServeConfig, models: list[str] | None = None, *, log_level: str = "info",
          policy: Policy | None = None, extend: Callable[[FastAPI, ServerState], object] | None = None) -> None:
    """Load the models and serve them on cfg.host:cfg.port until SIGINT/SIGTERM (then drain and stop).
    `extend(app, state)` adds routes before it listens (the serve command mounts the dashboard page with it)."""
    import uvicorn

    from llmkit.serve.app import Server, build_app

    _console_log(log_level)
    state = load_state(cfg, models, policy=policy)
    app = build_app(state)
    if extend is not None:
        extend(app, state)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=log_level,
                            timeout_graceful_shutdown=int(cfg.drain_timeout_s) + 1)
    Server(config, state).run()


def _console_log(level: str) -> None:
    """Print llmkit's own server lines (a registry version switch or failed load, the embedder loaded, a
    requantization) beside uvicorn's, in its format. A host that set up the `llmkit` logger keeps its own."""
    lg = logging.getLogger("llmkit")
    if lg.handlers:
        return
    from uvicorn.logging import DefaultFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))
    lg.addHandler(handler)
    lg.setLevel(level.upper())


__all__ = ["ServerState", "load_state", "serve", "split_spec"]
