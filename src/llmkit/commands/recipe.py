"""`llmkit validate` and `llmkit run`: a recipe as a whole, checked or run stage by stage."""

from __future__ import annotations

import argparse


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


def add_parser(sub) -> None:
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
