"""The `llmkit` command: one subcommand per stage, plus `run`, `chat`, `models`, `validate`, `lineage`, `serve`,
`keys` and `guard`. The larger command groups live in `llmkit/commands/` (rag, guard), one module each.

Library errors (LlmkitError) become one clear line on stderr and a non-zero exit; `--debug` shows the
traceback. Heavy libraries are imported inside the commands that need them, so `llmkit --help` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from llmkit import __version__
from llmkit.commands import guard as guard_cmd
from llmkit.commands import rag as rag_cmd
from llmkit.commands import validated
from llmkit.errors import LlmkitError


def _models(args: argparse.Namespace) -> int:
    from llmkit.models import REGISTRY, describe, registry_path, resolve_model

    if args.action == "list":
        print(f"{'NAME':<24} {'FORMAT':<7} {'SIZE':>8}  {'STATUS':<12} DESCRIPTION")
        for entry in REGISTRY.values():
            try:
                path = registry_path(entry)
                size, status = f"{path.stat().st_size / 1e6:.0f} MB", "installed"
            except LlmkitError:
                size, status = "-", f"pip install {entry.package}"
            print(f"{entry.name:<24} {'gguf':<7} {size:>8}  {status:<12} {entry.description}")
        print("\nAny local HF folder, local .gguf file or hub id (org/name) works where a model name is expected.")
        return 0
    ref = resolve_model(args.name)
    info = describe(ref)
    if ref.name in REGISTRY:
        e = REGISTRY[ref.name]
        info.update(package=e.package, hub_id=e.hub_id, license=e.license)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return 0


def _chat(args: argparse.Namespace) -> int:
    from llmkit.engines import GenParams, load_engine
    from llmkit.models import resolve_model

    ref = resolve_model(args.model)
    opts = {"n_threads": args.threads} if args.threads else {}
    engine = load_engine(args.engine, ref, **opts)
    params = GenParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    messages = [{"role": "system", "content": args.system}] if args.system else []

    def reply() -> None:
        text = ""
        for piece in engine.chat(messages, params):
            text += piece
            print(piece, end="", flush=True)
        print()
        messages.append({"role": "assistant", "content": text})

    if args.prompt is not None:
        messages.append({"role": "user", "content": args.prompt})
        reply()
        return 0
    print(f"Chatting with {ref.name} on {engine.name}. Empty line or Ctrl-D to quit, /reset to start over.")
    while True:
        try:
            line = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not line:
            return 0
        if line == "/reset":
            del messages[(1 if args.system else 0):]
            continue
        messages.append({"role": "user", "content": line})
        reply()


def _validate(args: argparse.Namespace) -> int:
    from llmkit.config import load_recipe

    recipe = load_recipe(args.recipe)
    print(f"{args.recipe}: ok — stages: {', '.join(recipe.stages())}; artifacts under {recipe.run_dir}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from llmkit.config import load_recipe
    from llmkit.pipeline import run_recipe

    recipe = load_recipe(args.recipe)
    results = run_recipe(recipe, force=args.force)
    ran = sum(r.status == "ran" for r in results)
    print(f"done: {ran} stage(s) ran, {len(results) - ran} skipped as finished; artifacts in {recipe.run_dir}")
    return 0


def _data(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llmkit.config import load_recipe
    from llmkit.data import prepare
    from llmkit.data.card import summary
    from llmkit.errors import ConfigError
    from llmkit.guard import data_guard

    recipe = load_recipe(args.recipe)
    if recipe.data is None:
        raise ConfigError(["data: the recipe has no data section"], args.recipe)
    out = Path(args.out) if args.out else recipe.run_dir / "data"
    r = prepare(recipe.data, out, base_dir=recipe.base_dir, model=recipe.model, force=args.force,
                    guard=data_guard(recipe))
    if r.status == "skipped":
        print(f"skipped: {out} already holds a finished dataset for these inputs and config (--force to redo)")
    print(summary(r.card))
    print(f"dataset: {out}  (data card: {out / 'data_card.md'})")
    return 0


def _train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llmkit.config import load_recipe
    from llmkit.errors import ConfigError
    from llmkit.train import finetune
    from llmkit.train.sft import summary

    recipe = load_recipe(args.recipe)
    cfg = recipe.train
    if cfg is None:
        raise ConfigError(["train: the recipe has no train section"], args.recipe)
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _torchrun(args.nproc)
    if args.method:
        cfg = cfg.model_copy(update={"method": args.method})
    data = Path(args.data) if args.data else recipe.run_dir / "data"
    out = Path(args.out) if args.out else recipe.run_dir / "train"
    r = finetune(cfg, data, recipe.model, out, resume=args.resume, force=args.force, max_steps=args.max_steps)
    if r["status"] == "worker":  # ranks other than 0 under --nproc: rank 0 reports
        return 0
    if r["status"] == "skipped":
        print(f"skipped: {out} already holds a finished model for these inputs and config (--force to redo)")
    print(summary(r["metrics"]))
    print(f"model: {out}  (chat with it: llmkit chat {out} --engine transformers)")
    return 0


def _compress(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llmkit.compress import compress, summary
    from llmkit.compress.report import format_table
    from llmkit.config import CompressConfig

    sizes = {k: v for k in ("eval_rows", "prompts", "gen_tokens") if (v := getattr(args, k)) is not None}
    cfg = CompressConfig(merge=args.merge, quantize=args.quantize, allow_pickle=args.unsafe_allow_pickle,
                         imatrix=args.imatrix, **sizes)
    r = compress(cfg, args.model, Path(args.out), adapter=args.adapter, dataset=Path(args.data) if args.data else None,
                 name=args.name, force=args.force, threads=args.threads)
    if r["status"] == "skipped":
        print(f"skipped: {args.out} already holds a finished export for these inputs and config (--force to redo)")
    print(format_table([r["metrics"]]))
    print(summary(r["metrics"]))
    engine = "" if r["gguf"] else " --engine transformers"
    print(f"model: {r['model']}  (chat with it: llmkit chat {args.out}{engine})")
    return 0


def _torchrun(nproc: int) -> int:
    """Run this same `llmkit train` command as `nproc` processes under torchrun (DDP; gloo on CPU).

    torchrun, not `accelerate launch`: on CPU, `accelerate launch --cpu --num_processes 2` silently runs a
    single process.
    """
    import socket
    import subprocess

    with socket.socket() as s:  # a free port on loopback for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the ranks run the same command without --nproc (torchrun's own parser would also trip over it)
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            argv.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "llmkit.cli", *argv]
    return subprocess.call(cmd)


def _lineage(args: argparse.Namespace) -> int:
    from llmkit.artifacts import lineage

    for depth, m in lineage(args.path):
        pad = "    " * depth + ("└─ " if depth else "")
        if m["kind"] == "input":
            print(f"{pad}{m['_name']}: {m['path']}  sha256 {m['sha256'][:12]}")
        else:
            print(f"{pad}{m['kind']}  {m['_path']}  fingerprint {m['fingerprint'][:12]}  "
                  f"finished {m.get('finished_at')}  ({m.get('seconds')} s)")
    return 0


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
        model, engine = _recipe_model(recipe)
        models = [f"{recipe.name}={model}"]
        base = base.model_copy(update={"engine": engine} if engine else {})
        for key in ("api_keys_file", "guard", "request_log"):  # relative to the recipe, like every path in it
            value = getattr(base, key)
            if value and value != "default":
                base = base.model_copy(update={key: str(recipe.path(value))})
        if recipe.rag is not None and not base.rag and (recipe.run_dir / "rag" / "manifest.json").is_file():
            base = base.model_copy(update={"rag": [str(recipe.run_dir / "rag")]})  # its rag stage's collection
    given = {k: v for k, v in vars(args).items() if k in ServeConfig.model_fields and v is not None}
    if given.get("embedder", "").lower() in ("none", "null"):
        given["embedder"] = None
    cfg = validated(ServeConfig, {**base.model_dump(), **given})
    serve(cfg, cfg.models or models or None, log_level=args.log_level, policy=policy)
    return 0


def _recipe_model(recipe) -> tuple[str, str | None]:
    """What `serve --recipe` serves: its compressed model (a GGUF on llamacpp, an int8/int4 folder on
    transformers), else its trained model (transformers), else its base model (the configured engine)."""
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


def _keys(args: argparse.Namespace) -> int:
    from llmkit.serve.auth import hash_key, new_key

    if args.action == "new":
        key = new_key()
        print(f"key (give it to the client; it is not stored anywhere): {key}")
        print(f"line for the --api-keys file:                          {hash_key(key)}")
        return 0
    key = args.key if args.key is not None else sys.stdin.readline().strip()
    if not key:
        from llmkit.errors import ConfigError

        raise ConfigError(["no key given: `llmkit keys hash KEY`, or the key on stdin"])
    print(hash_key(key))
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmkit",
        description="The LLM engineer's toolkit: data → train → compress → eval → serve, with lineage.",
        epilog="Run `llmkit COMMAND --help` for a command's options. Docs: README.md.",
    )
    p.add_argument("--version", action="version", version=f"llmkit {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("models", help="list the model registry or show one model",
                       description="The registry of known models. A model may also be a local HF folder, a local "
                                   ".gguf file or a hub id (org/name) wherever a MODEL is expected.")
    msub = m.add_subparsers(dest="action", required=True, metavar="ACTION")
    msub.add_parser("list", help="registry models and whether their package is installed")
    show = msub.add_parser("show", help="format, architecture, sizes and cache state of one model")
    show.add_argument("name", help="registry name, local path or hub id")
    show.add_argument("--json", action="store_true", help="print JSON")
    m.set_defaults(fn=_models)

    c = sub.add_parser("chat", help="chat with a model in the terminal (streaming)",
                       description="Chat with MODEL. With --prompt, answer once and exit; otherwise an interactive "
                                   "session. Greedy decoding by default (--temperature 0).")
    c.add_argument("model", nargs="?", default="smollm2-135m-instruct", help="registry name, path or hub id "
                   "(default: smollm2-135m-instruct)")
    c.add_argument("--prompt", "-p", help="one-shot: answer this and exit")
    c.add_argument("--system", help="system prompt (default: the model's chat template's own)")
    c.add_argument("--engine", choices=["llamacpp", "transformers"], default="llamacpp",
                   help="llamacpp runs GGUF files (fast on CPU); transformers runs HF folders and converts a GGUF "
                        "to float weights once (cached)")
    c.add_argument("--max-tokens", type=int, default=256, help="reply length limit in tokens (default 256)")
    c.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    c.add_argument("--seed", type=int, default=None, help="sampling seed")
    c.add_argument("--threads", type=int, default=None, help="CPU threads (default: $LLMKIT_THREADS or cores)")
    c.set_defaults(fn=_chat)

    v = sub.add_parser("validate", help="check a recipe and report every problem with its line",
                       description="Validate RECIPE without running anything: unknown keys, wrong types and "
                                   "values, missing files. All problems are printed at once; exit 1 if any.")
    v.add_argument("recipe", help="recipe YAML file")
    v.set_defaults(fn=_validate)

    r = sub.add_parser("run", help="run a recipe's stages in order, skipping finished ones",
                       description="Run every stage the recipe names, in order (model, data, train, compress, eval, "
                                   "rag). A stage whose inputs and config hash the same as a finished artifact is "
                                   "skipped. Artifacts go to the recipe's out_dir (default runs/NAME).")
    r.add_argument("recipe", help="recipe YAML file")
    r.add_argument("--force", action="store_true", help="re-run stages even when a finished artifact matches")
    r.set_defaults(fn=_run)

    d = sub.add_parser("data", help="prepare a training dataset (load, validate, clean, dedupe, PII, split)",
                       description="Data pipelines. `prepare` turns the recipe's data section into a dataset artifact "
                                   "with a data card; every input row is accounted for.")
    dsub = d.add_subparsers(dest="action", required=True, metavar="ACTION")
    dp = dsub.add_parser("prepare", help="run the data stage of a recipe",
                         description="Read the recipe's data.train (and data.val) — JSONL, JSON, CSV, Parquet, a saved "
                                     "HF dataset folder or a hub id — normalize rows (alpaca, sharegpt, messages, "
                                     "prompt/completion, preference, text), clean, dedupe, scrub PII, measure tokens "
                                     "with the model's chat template and split. Bad rows are reported as FILE:LINE; "
                                     "with on_error: fail (default) they stop the stage with exit 1.")
    dp.add_argument("--recipe", required=True, help="recipe YAML with a data: section")
    dp.add_argument("--out", help="artifact folder (default: RUN_DIR/data)")
    dp.add_argument("--force", action="store_true", help="redo even when a finished artifact matches")
    d.set_defaults(fn=_data)

    t = sub.add_parser("train", help="fine-tune the recipe's model on its dataset (LoRA, QLoRA, full, DPO, pretrain)",
                       description="Fine-tune the recipe's model on the dataset artifact of its data stage. Shows "
                                   "loss, real (non-padding) tokens/s and ETA; checkpoints every train.save_every "
                                   "steps (atomically); --resume continues exactly where a killed run stopped.")
    t.add_argument("--recipe", required=True, help="recipe YAML with train: (and data:) sections")
    t.add_argument("--method", choices=["lora", "qlora", "full", "dpo", "pretrain"],
                   help="override train.method: lora (peft), qlora (LoRA over a 4-bit NF4 base, bitsandbytes), "
                        "full (every weight), dpo (LoRA preference tuning on prompt/chosen/rejected rows), "
                        "pretrain (text rows, every token a target)")
    t.add_argument("--data", help="dataset artifact folder (default: RUN_DIR/data)")
    t.add_argument("--out", help="output artifact folder (default: RUN_DIR/train)")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of this config")
    t.add_argument("--force", action="store_true", help="train again even when a finished artifact matches")
    t.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (default: from epochs)")
    t.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes on this machine (torchrun + DDP; gloo on CPU, nccl on GPU)")
    t.set_defaults(fn=_train)

    z = sub.add_parser("compress", help="merge a LoRA adapter and export a GGUF (f16, q8_0, q4_0, q4_k, q4_gptq) or a "
                                        "transformers int8/int4 folder, with a report",
                       description="Export MODEL, in an artifact folder OUT, to a GGUF file that llama.cpp loads "
                                   "(--quantize f16, q8_0, q4_0, q4_k, q4_gptq) or to a weight-only int8/int4 HF folder that "
                                   "the transformers engine loads (--quantize int8, int4; optimum-quanto, "
                                   "`llmkit chat OUT --engine transformers`). MODEL may be a registry name, an HF "
                                   "folder, a .gguf, a train artifact or a PEFT adapter folder (merged into the base "
                                   "it names). The export is measured against its float reference (f16 GGUF in "
                                   "llama.cpp; bf16 in transformers): size on disk, perplexity (the dataset's val "
                                   "rows, or a fixed text), top-1 and greedy agreement, decode tok/s; printed as a "
                                   "table and kept in the manifest. Written atomically: a killed export leaves "
                                   "nothing under OUT.")
    z.add_argument("model", help="registry name, HF folder, .gguf, train artifact or PEFT adapter folder")
    z.add_argument("--adapter", help="a PEFT adapter folder to merge into MODEL (its recorded base must match MODEL)")
    z.add_argument("--merge", action=argparse.BooleanOptionalAction, default=True,
                   help="merge the adapter into its base before export (default; every export needs merged weights)")
    z.add_argument("--quantize", choices=["f16", "q8_0", "q4_0", "q4_k", "q4_gptq", "int8", "int4"], default="q8_0",
                   help="GGUF: f16, q8_0, or 4-bit q4_0 / q4_k (llama.cpp's rounding) or q4_gptq (an IQ4_NL file whose "
                        "matrices GPTQ fits to --data's train rows; needs --data) (default q8_0); transformers folder: int8 or int4 "
                        "(weight-only, optimum-quanto: pip install 'llmkit[quant]')")
    z.add_argument("--out", required=True, help="output artifact folder")
    z.add_argument("--name", help="file name stem of the .gguf, and the report's name for an int8/int4 export "
                                  "(default: the model's name or folder name)")
    z.add_argument("--data", help="dataset artifact folder (or .jsonl) whose val rows the perplexity is measured on; "
                                   "default: a fixed text")
    z.add_argument("--imatrix", action="store_true",
                   help="GGUF 4-bit: weight the rounding by an importance matrix from --data's train rows (off by "
                        "default; see README)")
    z.add_argument("--eval-rows", type=int, help="val rows for perplexity (default 100)")
    z.add_argument("--prompts", type=int, help="prompts for greedy agreement (default 8)")
    z.add_argument("--gen-tokens", type=int, help="greedy tokens per prompt (default 48)")
    z.add_argument("--unsafe-allow-pickle", action="store_true",
                   help="load pickle checkpoints (.bin/.pt); pickle can run code when loaded: only files you trust")
    z.add_argument("--threads", type=int, default=None, help="CPU threads (default: $LLMKIT_THREADS or cores)")
    z.add_argument("--force", action="store_true", help="export again even when a finished artifact matches")
    z.set_defaults(fn=_compress)

    sv = sub.add_parser("serve", help="serve models over OpenAI's HTTP API (chat, completions, embeddings)",
                        description="An OpenAI-compatible server: /v1/chat/completions, /v1/completions, "
                                    "/v1/embeddings, /v1/models, plus /health, /metrics (Prometheus) and /docs. "
                                    "Any OpenAI client works: base_url http://HOST:PORT/v1. Each --model is a "
                                    "registry name, folder, .gguf, hub id or PEFT adapter folder; NAME=SPEC sets the "
                                    "id clients send. With --recipe: the recipe's compressed model (GGUF, or "
                                    "int8/int4 folder on transformers), else its "
                                    "trained model, else its base model, served as the recipe's name, with its "
                                    "serve: section as defaults for these flags (and its rag stage's index as --rag). "
                                    "--rag DIR makes a collection answer chats: a request body with "
                                    "\"rag\": {\"collection\": NAME, \"top_k\": 4} gets NAME's chunks as numbered "
                                    "sources and a top-level citations list. Listening on anything but loopback "
                                    "needs API keys. Ctrl-C (SIGTERM) drains: new requests get 503, running ones "
                                    "finish; a second Ctrl-C stops at once.")
    sv.add_argument("--recipe", help="serve this recipe's model, with its serve: section as the defaults")
    from llmkit.config import ServeConfig

    _add_config_flags(sv, ServeConfig, {"models": ["--model"], "api_keys_file": ["--api-keys"]})
    sv.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                    help="uvicorn's log level (default info)")
    sv.set_defaults(fn=_serve)

    rag_cmd.add_parser(sub)
    guard_cmd.add_parser(sub)

    k = sub.add_parser("keys", help="make API keys and the hashed lines that `serve --api-keys FILE` reads",
                       description="API keys for `llmkit serve`. The keys file holds one key a line, plaintext or, "
                                   "better, as its `sha256:<hex>` hash so that no key is stored in the clear.")
    ksub = k.add_subparsers(dest="action", required=True, metavar="ACTION")
    kh = ksub.add_parser("hash", help="print the sha256: line of a key (the key from stdin if not given)")
    kh.add_argument("key", nargs="?", help="the key; omit it to read it from stdin (keeps it out of shell history)")
    ksub.add_parser("new", help="make a random key and print it with its sha256: line")
    k.set_defaults(fn=_keys)

    ln = sub.add_parser("lineage", help="print the chain of manifests behind an artifact",
                        description="Follow manifest.json inputs from an artifact folder back to the raw files.")
    ln.add_argument("path", help="an artifact folder (one holding manifest.json)")
    ln.set_defaults(fn=_lineage)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except LlmkitError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
