"""`llmkit track sync RUN_DIR`: mirror the finished stages of a run folder into MLflow (those it lacks)."""

from __future__ import annotations

import argparse


def _sync(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llmkit.config import load_recipe
    from llmkit.errors import ArtifactError
    from llmkit.track import recipe_uri, stage_folders, sync, tracking_uri

    run_dir = Path(args.run_dir).resolve()
    recipe = load_recipe(args.recipe) if args.recipe else None
    if not stage_folders(run_dir):
        raise ArtifactError(f"{run_dir}: no finished stage artifacts (folders with manifest.json) to mirror")
    uri = tracking_uri(args.uri) if args.uri or recipe is None else recipe_uri(recipe)
    experiment = args.experiment or (recipe.name if recipe else run_dir.name)
    t = sync(run_dir, experiment, uri)
    if t.failed:
        return 1
    print(f"{uri}: experiment {experiment!r}: {len(t.mirrored)} stage(s) mirrored"
          f"{' (' + ', '.join(t.mirrored) + ')' if t.mirrored else ''}, {len(t.found)} already there")
    return 0


def add_parser(sub) -> None:
    t = sub.add_parser("track", help="MLflow tracking: mirror a run folder's stages (track sync)",
                       description="`llmkit run` mirrors each finished stage into MLflow as it goes (one experiment "
                                   "per recipe, stages nested under a pipeline run; default sqlite:///$LLMKIT_HOME/"
                                   "mlflow.db, else track.mlflow_uri or $MLFLOW_TRACKING_URI; off with "
                                   "LLMKIT_TRACK=0). When MLflow was unreachable the artifacts are still written; "
                                   "`track sync` mirrors what MLflow lacks afterwards.")
    tsub = t.add_subparsers(dest="action", required=True, metavar="ACTION")
    s = tsub.add_parser("sync", help="mirror the finished stages of RUN_DIR that MLflow does not have yet")
    s.add_argument("run_dir", help="a run folder (runs/NAME) holding stage artifacts")
    s.add_argument("--recipe", help="the recipe (its name is the experiment; its track.mlflow_uri is used)")
    s.add_argument("--experiment", help="MLflow experiment (default: the recipe's name, else the folder's name)")
    s.add_argument("--uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the embedded sqlite)")
    s.set_defaults(fn=_sync)
