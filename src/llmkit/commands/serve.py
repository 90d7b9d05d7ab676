"""`llmkit serve`: the OpenAI-compatible server, its flags generated from ServeConfig."""

from __future__ import annotations

import argparse
from pathlib import Path

from llmkit.commands import validated


def _serve(args: argparse.Namespace) -> int:
    from llmkit.config import ServeConfig, load_recipe
    from llmkit.serve import serve

    base, models, policy = ServeConfig(), [], None
    if args.recipe:
        recipe = load_recipe(args.recipe)
        if recipe.guard is not None and args.guard is None:
            from llmkit.guard import from_config

            policy = from_config(recipe.guard, recipe.base_dir)
        base = recipe.serve or base
        if recipe.registry is not None:  # its registry: @production lives in the recipe's tracking database
            import os

            from llmkit.track import recipe_uri

            os.environ.setdefault("MLFLOW_TRACKING_URI", recipe_uri(recipe))
        model, engine = _recipe_model(recipe)
        models = [f"{recipe.name}={model}"]
        base = base.model_copy(update={"engine": engine} if engine else {})
        for key in ("api_keys_file", "guard", "request_log", "drift_reference"):  # relative to the recipe, like every path in it
            value = getattr(base, key)
            if value and value != "default":
                base = base.model_copy(update={key: str(recipe.path(value))})
        if recipe.rag is not None and not base.rag and (recipe.run_dir / "rag" / "manifest.json").is_file():
            base = base.model_copy(update={"rag": [str(recipe.run_dir / "rag")]})  # its rag stage's collection
    given = {k: v for k, v in vars(args).items() if k in ServeConfig.model_fields and v is not None}
    if given.get("embedder", "").lower() in ("none", "null"):
        given["embedder"] = None
    cfg = validated(ServeConfig, {**base.model_dump(), **given})
    runs = args.runs or (str(recipe.run_dir.parent) if args.recipe else None)
    if runs is None and Path("runs").is_dir():
        runs = "runs"
    extend = None
    if not args.no_ui:
        from llmkit.web import mount

        registry_uri = None
        if args.recipe:
            from llmkit.track import recipe_uri

            registry_uri = recipe_uri(recipe)  # the recipe's own tracking database, as `llmkit register` uses

        def extend(app, state):  # serve/ builds the app, the edge mounts web/ on it (serve/ never imports web/)
            mount(app, state, runs=runs, registry_uri=registry_uri)

    serve(cfg, cfg.models or models or None, log_level=args.log_level, policy=policy, extend=extend)
    return 0


def _recipe_model(recipe) -> tuple[str, str | None]:
    """What `serve --recipe` serves: with a registry: section, `registry:NAME@production` once the promote stage
    set it (followed: a later promotion swaps it in); else its compressed model (a GGUF on llamacpp, an int8/int4
    folder on transformers), else its trained model (transformers), else its base model (the configured engine)."""
    if recipe.registry is not None and (recipe.run_dir / "promote" / "manifest.json").is_file():
        name = recipe.registry.name or recipe.name
        return f"registry:{name}@production", "llamacpp" if recipe.registry.artifact == "compress" else "transformers"
    compressed = recipe.run_dir / "compress"
    ggufs = sorted(compressed.glob("*.gguf"), key=lambda q: q.stat().st_mtime)
    if ggufs:
        return str(ggufs[-1]), "llamacpp"
    if (compressed / "quanto_qmap.json").is_file():
        return str(compressed), "transformers"
    train = recipe.run_dir / "train"
    if (train / "adapter_config.json").is_file() or (train / "config.json").is_file():
        return str(train), "transformers"
    return recipe.model, None


def _add_config_flags(parser: argparse.ArgumentParser, model, names: dict[str, list[str]]) -> None:
    """One flag per field of a config model, its help the field's description: the CLI is the config, not a
    second copy of it. Unset flags are None, so the config (or recipe) default stays."""
    import types
    import typing

    from pydantic_core import PydanticUndefined

    for field, info in model.model_fields.items():
        flags = names.get(field, [f"--{field.replace('_', '-')}"])
        kind = info.annotation
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # `X | None`: the X
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        default = f" (default: {info.default})" if info.default not in (None, [], "", PydanticUndefined) else ""
        help_ = ((info.description or "") + default).replace("%", "%%")  # argparse %-formats help
        if kind is bool:
            parser.add_argument(*flags, dest=field, action="store_const", const=True, default=None, help=help_)
        elif typing.get_origin(kind) is typing.Literal:
            parser.add_argument(*flags, dest=field, choices=typing.get_args(kind), default=None, help=help_)
        elif typing.get_origin(kind) is list:
            parser.add_argument(*flags, dest=field, action="append", default=None,
                                metavar="MODEL" if field == "models" else "DIR", help=help_)
        else:
            parser.add_argument(*flags, dest=field, type=kind, default=None, help=help_)


def add_parser(sub) -> None:
    sv = sub.add_parser("serve", help="serve models over OpenAI's HTTP API (chat, completions, embeddings)",
                        description="An OpenAI-compatible server: /v1/chat/completions, /v1/completions, "
                                    "/v1/embeddings, /v1/models, /v1/feedback, plus /health, /metrics (Prometheus) "
                                    "and /docs; the dashboard and chat playground page at /ui (same API keys). "
                                    "Any OpenAI client works: base_url http://HOST:PORT/v1. "
                                    "Chats take tools and tool_choice (function calling; required and named calls are "
                                    "held to the tools' schemas by a grammar on llamacpp). Each --model is a "
                                    "registry name, folder, .gguf, hub id or PEFT adapter folder; NAME=SPEC sets the "
                                    "id clients send. --model registry:NAME@production serves that MLflow registry "
                                    "version as NAME and follows the alias: a new version is loaded beside the old "
                                    "one and swapped in between requests (--registry-poll-s). With --recipe: its registry:NAME@production version "
                                    "once `llmkit run` promoted one (followed), else the recipe's compressed model "
                                    "(GGUF, or int8/int4 folder on transformers), else its "
                                    "trained model, else its base model, served as the recipe's name, with its "
                                    "serve: section as defaults for these flags (and its rag stage's index as --rag). "
                                    "--rag DIR makes a collection answer chats: a request body with "
                                    "\"rag\": {\"collection\": NAME, \"top_k\": 4} gets NAME's chunks as numbered "
                                    "sources and a top-level citations list. Listening on anything but loopback "
                                    "needs API keys. Ctrl-C (SIGTERM) drains: new requests get 503, running ones "
                                    "finish; a second Ctrl-C stops at once. "
                                    "--engine openai makes it a gateway in front of upstream OpenAI-compatible "
                                    "servers (vLLM, llama.cpp's server, another llmkit): --model "
                                    "[NAME=]http://HOST:PORT/v1[,URL...] serves one upstream model (replicas "
                                    "comma-separated: least outstanding requests first, health-checked, a request "
                                    "retried on another replica when one fails before the client got anything), "
                                    "with this server's keys, limits, guards, RAG, metrics and request log on top.")
    sv.add_argument("--recipe", help="serve this recipe's model, with its serve: section as the defaults")
    from llmkit.config import ServeConfig

    _add_config_flags(sv, ServeConfig, {"models": ["--model"], "api_keys_file": ["--api-keys"]})
    sv.add_argument("--runs", metavar="DIR",
                    help="the runs folder the dashboard page (/ui) shows: runs, lineage, eval reports (default: the "
                         "recipe's runs folder with --recipe, else ./runs when it exists)")
    sv.add_argument("--no-ui", action="store_true", help="do not serve the dashboard and playground page at /ui")
    sv.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                    help="uvicorn's log level (default info)")
    sv.set_defaults(fn=_serve)
