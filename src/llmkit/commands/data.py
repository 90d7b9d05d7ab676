"""`llmkit data prepare`: the data stage of a recipe from the command line."""

from __future__ import annotations

import argparse


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


def add_parser(sub) -> None:
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
