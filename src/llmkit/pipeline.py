"""`llmkit run`: the stages of a recipe in order, skipping finished ones.

Each stage is `fn(recipe, out_dir, force, echo) -> StageResult`. A stage computes its inputs' content hashes
and its config, and is skipped when `out_dir` already holds a finished artifact with that fingerprint.
A recipe that names a stage this version does not implement fails up front, before any slow work, rather
than running part of the pipeline and pretending.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmkit import artifacts, track
from llmkit.config import Recipe
from llmkit.errors import StageNotAvailable
from llmkit.models import describe, hf_folder, resolve_model

Echo = Callable[[str], None]


@dataclass
class StageResult:
    stage: str
    out: Path
    status: str  # "ran" | "skipped"
    reason: str
    seconds: float


def model_stage(recipe: Recipe, out: Path, force: bool, echo: Echo) -> StageResult:
    """Resolve the base model and make sure an HF-format copy exists (training and eval need float weights)."""
    t0 = time.perf_counter()
    ref = resolve_model(recipe.model)
    inputs = {"weights": artifacts.input_ref(ref.path)}
    config = {"model": recipe.model}
    fp = artifacts.fingerprint("model", config, inputs)
    if not force and artifacts.finished(out, fp):
        return StageResult("model", out, "skipped", "finished artifact with the same model hash", time.perf_counter() - t0)
    with artifacts.build("model", out, config, inputs) as b:
        folder = hf_folder(ref)
        b.outputs = {"hf_folder": str(folder.resolve()), "source": str(ref.path)}
        b.metrics = {k: v for k, v in describe(ref).items() if k not in ("path", "hf_conversion")}
    return StageResult("model", out, "ran", "", time.perf_counter() - t0)


def data_stage(recipe: Recipe, out: Path, force: bool, echo: Echo) -> StageResult:
    from llmkit.data import prepare
    from llmkit.guard import data_guard

    assert recipe.data is not None
    t0 = time.perf_counter()
    r = prepare(recipe.data, out, base_dir=recipe.base_dir, model=recipe.model, force=force,
                model_artifact=recipe.run_dir / "model", guard=data_guard(recipe))
    if r.status == "ran":
        from llmkit.data.card import summary

        echo(f"      {summary(r.card)}; card: {out / 'data_card.md'}")
    reason = "finished artifact with the same inputs and config" if r.status == "skipped" else ""
    return StageResult("data", out, r.status, reason, time.perf_counter() - t0)


def train_stage(recipe: Recipe, out: Path, force: bool, echo: Echo) -> StageResult:
    from llmkit.train import finetune

    assert recipe.train is not None
    t0 = time.perf_counter()
    data = recipe.run_dir / "data"
    if not (data / artifacts.MANIFEST).is_file():
        raise StageNotAvailable(f"{recipe.source}: the train stage needs a dataset artifact at {data}; add a data: section")
    # a killed run continues from its last checkpoint when the config and data are unchanged
    r = finetune(recipe.train, data, recipe.model, out, resume="auto", force=force)
    if r["status"] == "ran":
        from llmkit.train.sft import summary

        echo(f"      {summary(r['metrics'])}; loss curve: {out / 'loss.png'}")
    reason = "finished artifact with the same inputs and config" if r["status"] == "skipped" else ""
    return StageResult("train", out, r["status"], reason, time.perf_counter() - t0)


def compress_stage(recipe: Recipe, out: Path, force: bool, echo: Echo) -> StageResult:
    """Export the train artifact (merged) when the recipe trains, else the base model; report on the val split."""
    from llmkit.compress import compress, summary

    assert recipe.compress is not None
    t0 = time.perf_counter()
    train = recipe.run_dir / "train"
    if recipe.train is not None and not (train / artifacts.MANIFEST).is_file():
        raise StageNotAvailable(f"{recipe.source}: the compress stage exports the train stage's model, but {train} "
                                "holds no finished artifact")
    model = str(train) if recipe.train is not None else recipe.model
    data = recipe.run_dir / "data"
    r = compress(recipe.compress, model, out, dataset=data if (data / artifacts.MANIFEST).is_file() else None,
                 name=recipe.name, force=force)
    if r["status"] == "ran":
        echo(f"      {summary(r['metrics'])}; report: {out / 'report.md'}")
    reason = "finished artifact with the same inputs and config" if r["status"] == "skipped" else ""
    return StageResult("compress", out, r["status"], reason, time.perf_counter() - t0)


def eval_stage(recipe: Recipe, out: Path, force: bool, echo: Echo) -> StageResult:
    """Score the trained model beside its base on the recipe's tasks; a failing gate stops the pipeline."""
    from llmkit.errors import GateFailed
    from llmkit.eval import evaluate, recipe_inputs, summary

    assert recipe.eval is not None
    t0 = time.perf_counter()
    plan = recipe_inputs(recipe)
    try:
        r = evaluate(recipe.eval, plan["target"], out, plan["baseline"], base_dir=plan["base_dir"],
                     dataset=plan["dataset"], force=force)
    except GateFailed:
        if (out / "metrics.json").is_file():
            import json

            echo("      " + summary(json.loads((out / "metrics.json").read_text())).replace("\n", "\n      "))
            echo(f"      report: {out / 'report.html'}")
        raise
    if r["status"] == "ran":
        echo("      " + summary(r["metrics"]).replace("\n", "\n      "))
        echo(f"      report: {out / 'report.html'}")
    if recipe.eval.prompts:  # a prompt experiment compares templates; it is not part of the gated run
        echo(f"      eval.prompts: compare the templates with `llmkit eval --recipe {recipe.source or 'RECIPE'} "
             "--prompts ...` (llmkit run scores and gates the model only)")
    reason = "finished artifact with the same inputs and config" if r["status"] == "skipped" else ""
    return StageResult("eval", out, r["status"], reason, time.perf_counter() - t0)


def register_stage(recipe: Recipe, out: Path, force: bool, echo: Echo) -> StageResult:
    """Register the compressed (or trained) model as a version in the MLflow registry; alias `candidate` -> it.
    The same files give the same version back, so a re-run (or a run killed midway) never adds a second one."""
    from llmkit.track.registry import register

    assert recipe.registry is not None
    t0 = time.perf_counter()
    cfg, name, uri = recipe.registry, recipe.registry.name or recipe.name, track.recipe_uri(recipe)
    src = recipe.run_dir / cfg.artifact
    if not (src / artifacts.MANIFEST).is_file():
        raise StageNotAvailable(f"{recipe.source}: registry.artifact is {cfg.artifact}, but {src} holds no finished "
                                f"artifact (add a {cfg.artifact}: section)")
    # the tracking URI is not part of the fingerprint: a database without this version registers it again below
    config = {"name": name, "artifact": cfg.artifact}
    inputs = {"model": artifacts.input_ref(src)}
    done = None if force else artifacts.finished(out, artifacts.fingerprint("register", config, inputs))
    if done is not None and _has_version(name, done["outputs"]["version"], uri):
        return StageResult("register", out, "skipped", f"already {name} version {done['outputs']['version']}",
                           time.perf_counter() - t0)
    with artifacts.build("register", out, config, inputs) as b:
        r = register(src, name, uri=uri, alias="candidate")
        # (MLflow's artifact URI of the version holds a random run id: it stays in MLflow, out of the manifest)
        b.outputs = {"name": name, "version": r["version"], "spec": f"registry:{name}/{r['version']}",
                     "format": r["format"]}
    echo(f"      {name} version {r['version']} ({r['format']}) @candidate"
         f"{'' if r['new'] else ' (these files were registered before)'}; tracking: {uri}")
    return StageResult("register", out, "ran", "", time.perf_counter() - t0)


def _has_version(name: str, v: int, uri: str) -> bool:
    from llmkit.errors import ModelNotFound
    from llmkit.track.registry import version

    try:
        version(name, v, uri)
        return True
    except ModelNotFound:  # the tracking database was reset since: register again
        return False


def promote_stage(recipe: Recipe, out: Path, force: bool, echo: Echo) -> StageResult:
    """Move `@production` to the registered version once its gates pass beside the current production version.
    The first version has no production to compare with: the eval stage's gates (tuned vs base) stand for it."""
    from llmkit.track.registry import alias_version, set_alias

    assert recipe.registry is not None
    t0 = time.perf_counter()
    reg = recipe.run_dir / "register"
    if not (reg / artifacts.MANIFEST).is_file():
        raise StageNotAvailable(f"{recipe.source}: the promote stage needs the register stage's artifact at {reg}")
    name, v = (artifacts.read_manifest(reg)["outputs"][k] for k in ("name", "version"))
    uri = track.recipe_uri(recipe)
    current = alias_version(name, "production", uri)
    gates = recipe.registry.gates or (recipe.eval.gates if recipe.eval else {})
    config = {"name": name, "version": v, "gates": gates}
    inputs = {"candidate": artifacts.input_ref(reg)}
    fp = artifacts.fingerprint("promote", config, inputs)
    if current == v and artifacts.finished(out, fp):
        return StageResult("promote", out, "skipped", f"version {v} is already @production", time.perf_counter() - t0)
    outputs: dict = {"name": name, "version": v, "previous": current, "spec": f"registry:{name}@production"}
    if current == v:  # moved by `llmkit promote`, or by this stage in a run killed before it wrote its manifest
        from llmkit.track.registry import version

        tags = version(name, v, uri).tags
        prev = tags.get("llmkit.promoted_from")
        outputs.update(by=tags.get("llmkit.promoted_by") or "already @production", previous=int(prev) if prev else None)
    elif current is None:
        import datetime as dt

        outputs["by"] = "first version: the eval stage's gates (tuned vs base) passed"
        set_alias(name, "production", v, uri, {"llmkit.promoted_at": dt.datetime.now(dt.timezone.utc).isoformat(
            timespec="seconds"), "llmkit.promoted_from": "", "llmkit.promoted_by": outputs["by"]})
    else:
        from llmkit.config import EvalConfig

        if recipe.eval is None:
            raise StageNotAvailable(f"{recipe.source}: promoting beside @production (version {current}) scores both "
                                    "on the eval: section's tasks; add one")
        ecfg = EvalConfig.model_validate({**recipe.eval.model_dump(), "gates": gates})
        data = recipe.run_dir / "data"
        evals = recipe.run_dir / "promote-eval"
        promote_version(name, v, ecfg, uri, evals, recipe.base_dir,
                        data if (data / artifacts.MANIFEST).is_file() else None, force_eval=force, echo=echo)
        outputs.update(by="gates", eval=str(evals))
    with artifacts.build("promote", out, config, inputs) as b:
        b.outputs = outputs
    echo(f"      {name}: @production → version {v} (was {outputs['previous'] or 'unset'}); {outputs['by']}")
    return StageResult("promote", out, "ran", "", time.perf_counter() - t0)


def promote_version(name: str, v: int, ecfg, uri: str | None, out: Path, base_dir: Path, dataset: Path | None,
                    force_eval: bool = False, echo: Echo = print) -> dict:
    """Score version `v` of `name` beside the current @production version (the baseline) with `ecfg`'s tasks and
    gates, and move @production to `v` only when every gate passes. A refusal raises GateFailed naming each
    failing gate; `@candidate` then points at `v` with the refusal on its tags. Returns evaluate()'s result."""
    import datetime as dt
    import json

    from llmkit.errors import GateFailed
    from llmkit.eval import evaluate, summary
    from llmkit.track.registry import alias_version, resolve, set_alias

    current = alias_version(name, "production", uri)
    ecfg = ecfg.model_copy(update={"baseline": f"registry:{name}/{current}" if current else None})
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    target = resolve(f"registry:{name}/{v}", uri)
    baseline = resolve(f"registry:{name}/{current}", uri) if current else None
    echo(f"{name}: scoring version {v} beside @production ({f'version {current}' if current else 'none'}) → {out}")
    try:
        r = evaluate(ecfg, str(target), out, str(baseline) if baseline else None, base_dir=base_dir, dataset=dataset,
                     force=force_eval)
    except GateFailed as e:
        if (out / "metrics.json").is_file():
            echo(summary(json.loads((out / "metrics.json").read_text())))
        set_alias(name, "candidate", v, uri, {"llmkit.promote_refused_at": now,
                                              "llmkit.promote_refused": json.dumps(e.failures)})
        raise GateFailed(e.failures, f"{name} version {v} not promoted; @production stays "
                                     f"{f'version {current}' if current else 'unset'}") from None
    echo(summary(r["metrics"]))
    gates = json.dumps([{k: g[k] for k in ("metric", "expr", "value", "threshold", "passed")}
                        for g in r["metrics"]["gates"]])
    set_alias(name, "production", v, uri, {"llmkit.promoted_at": now, "llmkit.promoted_from": str(current or ""),
                                           "llmkit.promoted_by": "gates", "llmkit.promote_gates": gates,
                                           "llmkit.promote_eval": str(out)})
    return r


def rag_stage(recipe: Recipe, out: Path, force: bool, echo: Echo) -> StageResult:
    """Index the recipe's documents; unchanged files keep their vectors (see rag/index.py)."""
    from llmkit.rag import index

    assert recipe.rag is not None
    t0 = time.perf_counter()
    r = index(recipe.rag, out, base_dir=recipe.base_dir, force=force)
    m = r["metrics"]
    if r["status"] == "ran":
        echo(f"      {m['files']} files, {m['chunks']} chunks ({m['embedded_files']} embedded, {m['unchanged_files']} "
             f"unchanged, {m['removed_files']} removed); collection {recipe.rag.collection!r}")
    for f in r["failed"]:
        echo(f"      not indexed: {f['path']}: {f['reason']}")
    reason = "finished artifact with the same inputs and config" if r["status"] == "skipped" else ""
    return StageResult("rag", out, r["status"], reason, time.perf_counter() - t0)


STAGES: dict[str, Callable[[Recipe, Path, bool, Echo], StageResult]] = {
    "model": model_stage,
    "data": data_stage,
    "train": train_stage,
    "compress": compress_stage,
    "eval": eval_stage,
    "register": register_stage,
    "promote": promote_stage,
    "rag": rag_stage,
}

# Stages that use MLflow themselves: mirroring of the stages before them must have finished.
MLFLOW_STAGES = ("register", "promote")

# Which issue brings each stage that is not here yet, so the error can say so.
PLANNED: dict[str, str] = {}


def run_recipe(recipe: Recipe, force: bool = False, echo: Echo = print) -> list[StageResult]:
    stages = recipe.stages()
    missing = [s for s in stages if s not in STAGES]
    if missing:
        names = ", ".join(f"{s} ({PLANNED.get(s, 'planned')})" for s in missing)
        raise StageNotAvailable(
            f"{recipe.source}: the recipe asks for stage(s) that this llmkit does not have yet: {names}. "
            f"Available stages: {', '.join(STAGES)}. Remove those sections to run the rest."
        )
    if recipe.registry is not None:  # the registry needs MLflow; say so before any slow stage runs
        from llmkit.track.client import INSTALL, available

        if not available():
            from llmkit.errors import MissingExtra

            raise MissingExtra(f"{recipe.source or 'the recipe'}: registry: keeps model versions in MLflow, which is "
                               f"not installed: {INSTALL}")
    if recipe.rag is not None and recipe.rag.store == "milvus":  # its server must answer before any slow stage runs
        from llmkit.rag.milvus import check_server

        check_server()
    if recipe.eval is not None:  # the eval's task files are checked before any slow stage runs
        from llmkit.eval import load_tasks, recipe_inputs

        recipe_inputs(recipe, check_only=True)
        load_tasks(recipe.eval.model_copy(update={"tasks": [t for t in recipe.eval.tasks if t != "perplexity"]}),
                   recipe.base_dir)
    # MLflow mirrors each stage after it finished, in a child process while the next stage runs (track/); it never
    # fails or holds up a stage. Stages that read MLflow themselves wait for the mirroring of what came before.
    tracker = track.for_recipe(recipe, echo)
    results, status = [], "FAILED"
    try:
        for i, stage in enumerate(stages, 1):
            out = recipe.run_dir / stage
            echo(f"[{i}/{len(stages)}] {stage} → {out}")
            artifacts.kill_point("begin", stage=stage)  # tests: kill points count per stage from here
            if tracker is not None and stage in MLFLOW_STAGES:
                tracker.flush()  # register links the version to the compress stage's run
            try:
                r = STAGES[stage](recipe, out, force, echo)
            except Exception as e:  # a full disk outside an artifact build (checkpoints, caches): one clear error
                if artifacts.no_space(e):
                    raise artifacts.disk_full(e, out) from e
                raise
            finally:  # a failing gate has still written its eval artifact
                if tracker is not None:
                    tracker.stage(out)
            echo(f"      {r.status}{f' ({r.reason})' if r.reason else ''} in {r.seconds:.1f} s")
            results.append(r)
        status = "FINISHED"
    finally:
        if tracker is not None:
            tracker.close(status)
    return results
