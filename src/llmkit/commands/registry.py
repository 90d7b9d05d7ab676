"""`llmkit register` and `llmkit promote`: model versions in the MLflow registry, and promotion behind eval gates.

promote composes the floors below it (DESIGN.md): eval scores the candidate version beside the current
`production` version and checks the gates; only when every gate passes does track move the alias. A refusal
names each failing gate and exits 1. `--force` moves the alias without evaluating: the rollback path, since a
rollback happens because production misbehaves, and gating the old version against it would measure the wrong
thing. Every move is written on the version's tags (when, from which version, gates or forced).
"""

from __future__ import annotations

import argparse


def _register(args: argparse.Namespace) -> int:
    from llmkit.track.registry import register

    r = register(args.artifact, args.name, uri=args.uri, description=args.description, alias=args.alias)
    what = "new version" if r["new"] else "already registered as version"
    print(f"{r['name']}: {what} {r['version']} ({r['format']}), alias @{args.alias} → {r['version']}")
    print(f"serve or score it as registry:{r['name']}/{r['version']} or registry:{r['name']}@{args.alias}; "
          f"promote it with: llmkit promote {r['name']} --version {r['version']}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    import datetime as dt
    from pathlib import Path

    from llmkit.config import EvalConfig, load_recipe
    from llmkit.errors import ConfigError
    from llmkit.models import home
    from llmkit.track.registry import alias_version, set_alias, version

    name, v = args.name, args.version
    version(name, v, args.uri)  # exists, or ModelNotFound listing what does
    current = alias_version(name, "production", args.uri)
    if current == v:
        print(f"{name}: version {v} is already @production")
        return 0
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    tags = {"llmkit.promoted_at": now, "llmkit.promoted_from": str(current or "")}
    if args.force:
        set_alias(name, "production", v, args.uri, {**tags, "llmkit.promoted_by": "force (gates not run)"})
        print(f"{name}: @production → version {v} (was {current or 'unset'}); gates not run (--force)")
        return 0

    from llmkit.pipeline import promote_version

    recipe = load_recipe(args.recipe) if args.recipe else None
    cfg = (recipe.eval if recipe and recipe.eval else EvalConfig()).model_dump()
    # the baseline of a promotion is the production version, never the recipe's
    cfg["baseline"] = f"registry:{name}/{current}" if current else None
    if args.tasks:
        cfg["tasks"] = args.tasks
    if args.limit is not None:
        cfg["limit"] = args.limit
    problems = []
    for g in args.gate or []:
        metric, eq, expr = g.partition("=")
        if not eq:
            problems.append(f"--gate {g!r}: expected METRIC=EXPR, e.g. support.contains='>= baseline'")
        cfg["gates"][metric] = expr
    if not cfg["gates"]:
        problems.append("no gates to check: give --gate METRIC=EXPR or --recipe with eval.gates (or --force to move "
                        "the alias without checking)")
    try:
        ecfg = EvalConfig.model_validate(cfg)
    except ValueError as e:
        problems.append(str(e))
        ecfg = None
    if ecfg is not None and current is None:
        from llmkit.eval.gates import uses_baseline

        if uses_baseline(ecfg.gates):
            problems.append(f"{name} has no @production version yet to compare with: the first promotion needs "
                            "absolute gates (e.g. '>= 0.8'), or --force")
    if problems:
        raise ConfigError(problems)
    assert ecfg is not None
    dataset = Path(args.data) if args.data else (recipe.run_dir / "data" if recipe else None)
    if dataset is not None and not (dataset / "manifest.json").is_file():
        dataset = None
    out = Path(args.out) if args.out else home() / "registry" / "evals" / name / f"v{v}-vs-{f'v{current}' if current else 'none'}"
    promote_version(name, v, ecfg, args.uri, out, recipe.base_dir if recipe else Path("."), dataset,
                    force_eval=args.force_eval)
    print(f"{name}: @production → version {v} (was {current or 'unset'}); every gate passed")
    return 0


def add_parser(sub) -> None:
    r = sub.add_parser("register", help="make a model artifact a new version in the MLflow model registry",
                       description="Register ARTIFACT (a .gguf file, a PEFT adapter or HF folder, or a train/compress "
                                   "artifact folder) as a new version of registered model NAME in MLflow (the same "
                                   "tracking URI as `llmkit run`), its files logged with it and its lineage as tags, "
                                   "and point the alias (default `candidate`) at it. The same files registered again "
                                   "give the same version back.")
    r.add_argument("artifact", help="a .gguf file, adapter folder, HF folder, or a train/compress artifact folder")
    r.add_argument("--name", required=True, help="registered model name")
    r.add_argument("--alias", default="candidate", help="alias to point at the new version (default candidate)")
    r.add_argument("--description", help="a description for the version")
    r.add_argument("--uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the embedded sqlite)")
    r.set_defaults(fn=_register)

    p = sub.add_parser("promote", help="move a model's @production alias to a version once its eval gates pass",
                       description="Score version V of NAME beside the current @production version (the baseline, "
                                   "so gates may say '>= baseline'), with the tasks and gates of --recipe's eval: "
                                   "section and/or --tasks/--gate, and move @production to V only when every gate "
                                   "passes; else name each failing gate and exit 1 (@production stays). Rollback: "
                                   "promote an older version with --force, which moves the alias without "
                                   "evaluating (the move is recorded on the version's tags).")
    p.add_argument("name", help="registered model name")
    p.add_argument("--version", type=int, required=True, help="the version to promote")
    p.add_argument("--recipe", help="a recipe whose eval: section gives the tasks and gates (its baseline is "
                                    "replaced by the production version)")
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="task files or `perplexity` (default: the recipe's)")
    p.add_argument("--gate", action="append", metavar="METRIC=EXPR",
                   help="a gate, e.g. --gate 'support.contains=>= baseline' (repeatable; adds to the recipe's)")
    p.add_argument("--data", help="dataset artifact for the perplexity task (default: the recipe's data stage)")
    p.add_argument("--limit", type=int, help="score at most this many items per task")
    p.add_argument("--out", help="eval artifact folder (default $LLMKIT_HOME/registry/evals/NAME/vV-vs-vP)")
    p.add_argument("--force", action="store_true", help="move the alias without running the gates (rollback)")
    p.add_argument("--force-eval", action="store_true", help="score again even when a finished eval matches")
    p.add_argument("--uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the embedded sqlite)")
    p.set_defaults(fn=_promote)
