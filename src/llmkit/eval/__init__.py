"""The eval stage: score a model (in process, or any OpenAI-compatible endpoint) on tasks, beside a baseline,
and check the recipe's gates.

    r = evaluate(EvalConfig(tasks=["support/eval.jsonl"], gates={"eval.contains": ">= baseline + 0.5"}),
                 "runs/x/train", Path("runs/x/eval"), baseline="smollm2-135m-instruct")
    print(summary(r))

The output is an artifact folder: `metrics.json` (each target's metrics, the differences, the gate results),
`items.jsonl` (one line per scored item: the reply or log-likelihoods and its scores), `interpret.json` (token
logprobs, attributions and a logit lens for a few prompts, interpret.py), `report.html` (report.py: one
self-contained page), `model_card.md` (card.py) and `manifest.json` (inputs: both models and the task files,
hashed). Unchanged inputs and config skip the work (endpoints are
always asked again: their weights cannot be hashed from here). While it runs, each finished item is appended to
a cache file beside `out` (`.OUT.items-FINGERPRINT.jsonl`): a killed eval resumes without asking finished items
again. A failing gate raises GateFailed naming every failing gate, after the artifact is written.

tasks.py reads and checks task files, metrics.py scores, targets.py asks models, gates.py checks thresholds.
"""

from __future__ import annotations

import itertools
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from llmkit import artifacts
from llmkit.config import EvalConfig, Recipe
from llmkit.errors import ConfigError, DataError, GateFailed, StageNotAvailable
from llmkit.eval import card, interpret, report
from llmkit.eval import gates as gates_
from llmkit.eval import judge as judge_
from llmkit.eval.bias import bias_tasks
from llmkit.eval.metrics import choice_scores, perplexity, score_reply
from llmkit.eval.rag_task import rag_task
from llmkit.eval.refusal import load_detector
from llmkit.eval.safety import safety_tasks
from llmkit.eval.targets import EndpointTarget, ModelTarget, Target
from llmkit.eval.tasks import Item, Summary, Task, dataset_perplexity_task, load_task

__all__ = ["EndpointTarget", "ModelTarget", "evaluate", "load_tasks", "recipe_inputs", "summary"]

ROLES = ("model", "baseline")


def _perplexity(cfg: EvalConfig, dataset: Path | None) -> list[Task]:
    if dataset is None:
        raise DataError("the built-in perplexity task scores a dataset artifact's val split: give a "
                        "dataset (--data, or a recipe with a data: section)")
    return [dataset_perplexity_task(dataset, cfg.limit)]


def _refused(replies: list[str]) -> list[float]:
    """1.0 for each reply the safety suite's refusal classifier calls a refusal (the bias suite's refusal rate
    per group is read from the same classifier, at the same threshold)."""
    det = load_detector()
    return [float(p >= det.threshold) for p in det.proba(replies)]


# Built-in tasks by name: fn(cfg, dataset) -> tasks. A suite switched on in the config (eval.safety: true) is
# run as if its name were listed in eval.tasks.
BUILTIN = {"perplexity": _perplexity, "rag": rag_task, "safety": safety_tasks,
           "bias": partial(bias_tasks, refusal_scorer=_refused)}
SUITES: tuple[str, ...] = ("safety", "bias")


def load_tasks(cfg: EvalConfig, base_dir: Path = Path("."), dataset: Path | None = None) -> list[Task]:
    """Every task of `cfg`, each file checked in full; the problems of all files are reported at once."""
    tasks, problems = [], []
    specs = list(cfg.tasks) + [s for s in SUITES if getattr(cfg, s, False) and s not in cfg.tasks]
    for spec in specs:
        try:
            if spec in BUILTIN:
                tasks += BUILTIN[spec](cfg, dataset)
            else:
                t = load_task(spec, base_dir)
                t.items = t.items[: cfg.limit] if cfg.limit else t.items
                tasks.append(t)
        except (DataError, ConfigError) as e:
            problems.append(str(e))
    names = [t.name for t in tasks]
    problems += [f"two tasks are named {n!r}; name one with NAME=path" for n in sorted(set(names)) if names.count(n) > 1]
    if problems:
        raise DataError("\n".join(problems))
    return tasks


def _score(target: Target, task: Task, item: Item, max_tokens: int) -> dict:
    """Ask `target` one item; the record that items.jsonl keeps."""
    row = item.row
    rec: dict = {"task": task.name, "id": item.id, "type": item.type}
    if item.score is not None:
        rec.update(item.score(target, row, max_tokens))
    elif item.type == "generate":
        messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
        reply = target.generate(messages, row.get("max_tokens", max_tokens))
        rec.update(reply=reply, scores=score_reply(reply, row))
    elif item.type == "choice":
        lls = [ll for ll, _ in _loglikelihoods(target, _choice_requests(row))]
        rec.update(lls=lls, scores=choice_scores(lls, row["choices"], row["answer"]))
    else:
        ((ll, n),) = _loglikelihoods(target, [_perplexity_request(target, row)])
        rec.update(nll=-ll, tokens=n)
    return rec


def _choice_requests(row: dict) -> list[tuple[str, str]]:
    """lm-eval's multiple choice: each choice after its target delimiter, a space."""
    return [(row["prompt"], " " + c) for c in row["choices"]]


def _perplexity_request(target: Target, row: dict) -> tuple[str, str]:
    if "messages" in row:
        return target.chat_prompt(row["messages"][:-1]), row["messages"][-1]["content"]
    if "text" in row:
        return "", row["text"]
    return row["prompt"], row["completion"]


PPL_BATCH = 8  # perplexity rows scored in one call of a target's loglikelihood_many
CHOICE_BATCH = 16  # multiple-choice items scored in one call (their questions packed into few rows)


def _units(target: Target, todo: list[tuple[Task, Item]]) -> list[list[tuple[Task, Item]]]:
    """The runner's units of work: one item each, except plain perplexity rows and multiple-choice items on a
    target that scores in batches: PPL_BATCH / CHOICE_BATCH of them in one call (eval/packing.py: few large
    forward passes, each shared prefix once), and plain generate items on a target with a `generate_batch` > 1
    (ModelTarget on transformers): that many of the same max_tokens in one `generate_many` call.
    Records are put back in task order at the end, so the order of work does not matter. A unit is cached when
    it finishes: a killed eval loses at most one unit."""
    kinds = {"perplexity": PPL_BATCH, "choice": CHOICE_BATCH} if getattr(target, "loglikelihood_many", None) else {}
    if getattr(target, "generate_batch", 1) > 1:
        kinds["generate"] = target.generate_batch
    plain = {kind: [x for x in todo if x[1].score is None and x[1].type == kind] for kind in kinds}
    for kind in ("perplexity", "generate"):  # similar lengths: little padding
        plain.get(kind, []).sort(key=lambda x: len(json.dumps(x[1].row)))
    rest = [[x] for x in todo if not (x[1].score is None and x[1].type in plain)]
    groups = {kind: [items] for kind, items in plain.items()}
    if "generate" in plain:  # one generate call has one max_tokens (a stable sort keeps the length order)
        def max_tokens(x):
            return x[1].row.get("max_tokens") or 0
        groups["generate"] = [list(g) for _, g in itertools.groupby(sorted(plain["generate"], key=max_tokens),
                                                                     max_tokens)]
    return rest + [group[i:i + size] for kind, size in kinds.items() for group in groups[kind]
                   for i in range(0, len(group), size)]


def _score_unit(target: Target, unit: list[tuple[Task, Item]], max_tokens: int) -> list[dict]:
    if len(unit) == 1:
        task, item = unit[0]
        return [_score(target, task, item, max_tokens)]
    if unit[0][1].type == "generate":  # one batched generate (all of the unit's items share max_tokens)
        rows = [i.row for _, i in unit]
        replies = target.generate_many([r.get("messages") or [{"role": "user", "content": r["prompt"]}] for r in rows],
                                       rows[0].get("max_tokens", max_tokens))
        return [{"task": t.name, "id": i.id, "type": i.type, "reply": reply, "scores": score_reply(reply, i.row)}
                for (t, i), reply in zip(unit, replies)]
    if unit[0][1].type == "choice":  # every choice of every item in one call, then split back per item
        requests = [r for _, i in unit for r in _choice_requests(i.row)]
        lls, at, recs = [ll for ll, _ in target.loglikelihood_many(requests)], 0, []
        for t, i in unit:
            mine, at = lls[at:at + len(i.row["choices"])], at + len(i.row["choices"])
            recs.append({"task": t.name, "id": i.id, "type": i.type, "lls": mine,
                         "scores": choice_scores(mine, i.row["choices"], i.row["answer"])})
        return recs
    scores = target.loglikelihood_many([_perplexity_request(target, i.row) for _, i in unit])
    return [{"task": t.name, "id": i.id, "type": i.type, "nll": -ll, "tokens": n} for (t, i), (ll, n) in zip(unit, scores)]


def _loglikelihoods(target: Target, requests: list[tuple[str, str]]) -> list[tuple[float, int]]:
    """A target's batched scoring where it has one (ModelTarget: one pass over a shared prefix), else one request
    at a time."""
    many = getattr(target, "loglikelihood_many", None)
    return many(requests) if many is not None else [target.loglikelihood(c, x) for c, x in requests]


def aggregate(tasks: list[Task], records: list[dict]) -> tuple[dict[str, float], dict[str, list[dict]]]:
    """Flat metrics `TASK.metric` over one target's item records, and each suite's tables by task."""
    out: dict[str, float] = {}
    tables: dict[str, list[dict]] = {}
    for task in tasks:
        recs = [r for r in records if r["task"] == task.name]
        if task.summarize is not None:
            s: Summary = task.summarize(recs)
            out.update({f"{task.name}.{k}": v for k, v in s.metrics.items()})
            out[f"{task.name}.items"] = len(recs)
            if s.tables:
                tables[task.name] = s.tables
            continue
        scores: dict[str, list[float]] = {}
        for r in recs:
            for k, v in r.get("scores", {}).items():
                scores.setdefault(k, []).append(v)
        for k, vs in scores.items():
            out[f"{task.name}.{k}"] = round(sum(vs) / len(vs), 6)
        ppl = [r for r in recs if r["type"] == "perplexity"]
        if ppl:
            nll, tokens = sum(r["nll"] for r in ppl), sum(r["tokens"] for r in ppl)
            out[f"{task.name}.perplexity"] = round(perplexity(nll, tokens), 6)
            out[f"{task.name}.nll_per_token"] = round(nll / tokens, 6)
        out[f"{task.name}.items"] = len(recs)
    return out, tables


def _run(role: str, target: Target, tasks: list[Task], cfg: EvalConfig, cache: Path, done: dict,
         progress: bool) -> None:
    """Ask `target` every item not in `done`, appending each finished record to `cache` as it lands."""
    from tqdm import tqdm

    todo = [(t, i) for t in tasks for i in t.items if (role, t.name, i.id) not in done]
    if not todo:
        return
    lock, stop = threading.Lock(), threading.Event()
    pool = ThreadPoolExecutor(max(1, target.concurrency))
    with open(cache, "a", encoding="utf-8") as f, \
            tqdm(total=len(todo), desc=f"eval {role}", unit="item", disable=not progress) as bar:
        def one(unit: list[tuple[Task, Item]]) -> None:
            if stop.is_set():
                return
            try:
                recs = [{"target": role, **r} for r in _score_unit(target, unit, cfg.max_tokens)]
            except BaseException:
                stop.set()  # queued items must not start after a failure
                raise
            with lock:
                for rec in recs:
                    f.write(json.dumps(rec) + "\n")
                    done[(role, rec["task"], rec["id"])] = rec
                f.flush()  # a killed eval keeps every finished item
                bar.update(len(recs))

        try:
            for fut in [pool.submit(one, u) for u in _units(target, todo)]:
                fut.result()
        finally:  # the first error (or Ctrl-C) stops the eval: nothing new starts; what finished stays cached
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)


def _read_cache(cache: Path) -> dict:
    done = {}
    if cache.is_file():
        for line in cache.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # the line a kill cut short: that item is asked again
            done[(rec["target"], rec["task"], rec["id"])] = rec
    return done


def _as_target(t: str | Path | Target | None, cfg: EvalConfig) -> Target | None:
    return ModelTarget(str(t), cfg.engine, generate_engine=cfg.generate_engine) if isinstance(t, (str, Path)) else t


def evaluate(cfg: EvalConfig, target: str | Path | Target, out: Path, baseline: str | Path | Target | None = None,
             *, base_dir: Path = Path("."), dataset: Path | None = None, force: bool = False,
             progress: bool = True) -> dict:
    """Score `target` (a model spec: registry name, HF folder, adapter, .gguf; or a Target such as an
    EndpointTarget) on `cfg.tasks`, and `baseline` (default: cfg.baseline) the same way; write the artifact
    folder `out`; raise GateFailed when a gate fails. Returns {"status": "ran" | "skipped", "out", "metrics"
    (model, baseline, delta, gates, passed)}."""
    tasks = load_tasks(cfg, base_dir, dataset)  # every task file checked before anything loads
    baseline = baseline if baseline is not None else cfg.baseline
    if baseline == "base":
        raise ConfigError(["eval.baseline: base means the recipe's base model; outside a recipe give the model"])
    if gates_.uses_baseline(cfg.gates) and baseline is None:
        raise ConfigError(["eval.gates: a gate compares with the baseline, but no baseline is given"])
    targets = {"model": _as_target(target, cfg), "baseline": _as_target(baseline, cfg)}
    roles = [r for r in ROLES if targets[r] is not None]
    judge_.bind(tasks, cfg, targets["baseline"])  # judge and pairwise rows get their judge (checked up front)
    inputs = {role: targets[role].ref() for role in roles}
    inputs.update({f"task:{t.name}": artifacts.input_ref(t.source) for t in tasks})
    inputs.update({f"task:{t.name}:{p}": artifacts.input_ref(p) for t in tasks for p in t.inputs})
    if cfg.reward_model:
        inputs["reward_model"] = _reward_model_ref(cfg.reward_model, base_dir)
    config = {"eval": cfg.model_dump(), **{role: targets[role].name for role in roles}}
    fp = artifacts.fingerprint("eval", config, inputs)
    out = Path(out).resolve()
    remote = any(isinstance(targets[r], EndpointTarget) for r in roles)
    if not force and not remote and artifacts.finished(out, fp):
        metrics = json.loads((out / "metrics.json").read_text())
        _raise_failed(metrics, out)
        return {"status": "skipped", "out": str(out), "metrics": metrics}

    out.parent.mkdir(parents=True, exist_ok=True)
    cache = out.parent / f".{out.name}.items-{fp[:16]}.jsonl"
    done = _read_cache(cache)
    owned = [r for r, given in zip(ROLES, (target, baseline)) if isinstance(given, (str, Path))]
    chats = ([[{"role": "user", "content": p}] for p in cfg.interpret] if cfg.interpret is not None
             else interpret.prompts_from_tasks(tasks))
    interp: dict = {}
    try:
        for role in roles:
            _run(role, targets[role], tasks, cfg, cache, done, progress)
            if chats and isinstance(targets[role], ModelTarget):  # an endpoint hands out no gradients or layers
                interp[role] = interpret.interpret(targets[role], chats, progress=progress, desc=f"interpret {role}")
            if role in owned:
                targets[role].close()  # one model in memory at a time
    finally:
        for role in owned:
            targets[role].close()

    order = {(t.name, i.id): n for n, (t, i) in enumerate((t, i) for t in tasks for i in t.items)}
    records = sorted((r for k, r in done.items() if (k[1], k[2]) in order),
                     key=lambda r: (ROLES.index(r["target"]), order[(r["task"], r["id"])]))
    if cfg.reward_model:
        _reward_scores(inputs["reward_model"]["path"], tasks, records, progress)
    both = {role: aggregate(tasks, [r for r in records if r["target"] == role]) for role in roles}
    per = {role: m for role, (m, _) in both.items()}
    base = per.get("baseline")
    results = gates_.check(cfg.gates, per["model"], base)
    metrics = {"model": per["model"], "baseline": base,
               "delta": {k: round(v - base[k], 6) for k, v in per["model"].items()
                         if base and isinstance(base.get(k), (int, float))} if base else None,
               "gates": results, "passed": all(r["passed"] for r in results),
               "targets": {role: targets[role].name for role in roles},
               "tables": {role: t for role, (_, t) in both.items()}}
    with artifacts.build("eval", out, config, inputs) as b:
        artifacts.write_json_atomic(b.tmp / "metrics.json", metrics)
        with open(b.tmp / "items.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        b.outputs = {"metrics": "metrics.json", "items": "items.jsonl"}
        if interp:
            artifacts.write_json_atomic(b.tmp / "interpret.json", interp)
            b.outputs["interpret"] = "interpret.json"
        report.write(b.tmp, out, metrics, inputs, interp)
        card.write(b.tmp, metrics, inputs, cfg.model_dump())
        b.outputs.update(report="report.html", model_card="model_card.md")
        b.metrics = {**per["model"], **{f"baseline.{k}": v for k, v in (base or {}).items()},
                     "gates_passed": metrics["passed"]}
    for old in out.parent.glob(f".{out.name}.items-*.jsonl"):  # this run's cache, and those of changed inputs
        old.unlink(missing_ok=True)
    _raise_failed(metrics, out)
    return {"status": "ran", "out": str(out), "metrics": metrics}


def _reward_model_ref(spec: str, base_dir: Path) -> dict:
    path = Path(spec) if Path(spec).is_absolute() else base_dir / spec
    manifest = artifacts.read_manifest(path) if (path / artifacts.MANIFEST).is_file() else {}
    if manifest.get("outputs", {}).get("head") != "reward":
        raise ConfigError([f"eval.reward_model: {path} is not a reward model artifact (a train stage's output "
                           "with method: reward)"])
    return artifacts.input_ref(path)


def _reward_scores(path: str, tasks: list[Task], records: list[dict], progress: bool) -> None:
    """Score every generate record's reply with the reward model at `path`: scores["reward"], averaged by
    `aggregate` into TASK.reward. Run after the targets (one model in memory at a time), on every record: the
    scores are not cached with the items, so a changed reward model never mixes with old scores."""
    from tqdm import tqdm

    from llmkit.train.reward import RewardModel

    rows = {(t.name, i.id): i.row for t in tasks for i in t.items}
    todo = [r for r in records if r["type"] == "generate" and isinstance(r.get("reply"), str)]
    if not todo:
        return
    rm = RewardModel.load(path)
    asked = [rows[(r["task"], r["id"])] for r in todo]
    prompts = [row.get("messages") or [{"role": "user", "content": row["prompt"]}] for row in asked]
    with tqdm(total=len(todo), desc="reward model", unit="reply", disable=not progress) as bar:
        for a in range(0, len(todo), rm.batch_size):
            batch = todo[a:a + rm.batch_size]
            for r, v in zip(batch, rm(prompts[a:a + len(batch)], [r["reply"] for r in batch])):
                r.setdefault("scores", {})["reward"] = round(float(v), 6)
            bar.update(len(batch))


def recipe_inputs(recipe: Recipe, check_only: bool = False) -> dict:
    """What a recipe's eval scores: the train stage's adapter (else the compress stage's export, else the base
    model), beside `baseline: base` = the base model as float weights (the HF folder the adapter was trained
    on), with the data stage's val split for the built-in perplexity task. check_only: resolve nothing slow."""
    from llmkit.models import hf_folder, resolve_model

    cfg = recipe.eval or EvalConfig()
    run, where = recipe.run_dir, recipe.source or "the recipe"
    if "perplexity" in cfg.tasks and recipe.data is None:
        raise ConfigError(["eval.tasks: the built-in perplexity task scores the data stage's val split, but the "
                           "recipe has no data: section (give task files instead)"], where)
    if check_only:
        return {}
    model: str | Path = recipe.model
    if recipe.train is not None or recipe.compress is not None:
        stage = run / ("train" if recipe.train is not None else "compress")
        if not (stage / artifacts.MANIFEST).is_file():
            raise StageNotAvailable(f"{where}: eval scores the {stage.name} stage's model, but {stage} holds no "
                                    "finished artifact yet (run `llmkit run` first)")
        model = stage if recipe.train is not None else artifacts.read_manifest(stage)["outputs"].get("gguf") or stage
    baseline = cfg.baseline
    if baseline == "base":
        baseline = str(hf_folder(resolve_model(recipe.model)))
    data = run / "data"
    return {"target": str(model), "baseline": baseline, "base_dir": recipe.base_dir,
            "dataset": data if (data / artifacts.MANIFEST).is_file() else None}


def _raise_failed(metrics: dict, out: Path) -> None:
    failures = gates_.describe_failures(metrics["gates"])
    if failures:
        raise GateFailed(failures, f"metrics: {out / 'metrics.json'}")


def summary(metrics: dict) -> str:
    """A table of each metric for the model (and baseline, and the difference)."""
    model, base = metrics["model"], metrics.get("baseline")
    rows = [("metric", "model") + (("baseline", "delta") if base else ())]
    for k, v in model.items():
        if base:
            b = base.get(k)
            d = "" if b is None else f"{v - b:+.4g}"
            rows.append((k, f"{v:.4g}", "" if b is None else f"{b:.4g}", d))
        else:
            rows.append((k, f"{v:.4g}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for g in metrics.get("gates", []):
        lines.append(f"gate {g['metric']} {g['expr'].strip()}: {'pass' if g['passed'] else 'FAIL: ' + g['why']}")
    return "\n".join(lines)
