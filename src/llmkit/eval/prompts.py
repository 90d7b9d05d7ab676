"""Prompt experiments: the same tasks, once per prompt template, on the same model and items; each metric's
difference between two templates with its paired bootstrap CI; a winner named only when its CI excludes 0.

A template is a versioned YAML file:

    name: numbered            # letters, digits, - and _
    version: 2                # any string or number; name@version labels the results
    description: ask for numbered steps     # optional
    system: You are Nimbus support.         # optional: the system message (null: none)
    template: "{prompt}\\n\\nAnswer in numbered steps."   # the user turn; {prompt} is the item's prompt

    r = compare_prompts(EvalConfig(tasks=["examples/support/eval.jsonl"]), "smollm2-135m-instruct",
                        Path("runs/ab"), ["examples/prompts/plain.yaml", "examples/prompts/numbered.yaml"])

The template rewrites the items whose reply is generated: generate, judge and pairwise rows (a `prompt` row
becomes [system, template(prompt)]; a `messages` row gets its last user turn templated and the system message
replaced). A judge is still shown the row's own question, so templates are judged on equal terms. choice,
perplexity and rag items are asked unchanged (log-likelihoods of fixed text; retrieval), so their metrics are
the same under every template and get no difference. Every item's record is cached under the template's
content hash: a killed experiment resumes, and an edited template is asked again. Gates are not checked here
(which template would they gate?): run `llmkit eval` on the winner.
"""

from __future__ import annotations

import itertools
import json
import math
import string
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llmkit import artifacts
from llmkit.config import EvalConfig
from llmkit.errors import ConfigError
from llmkit.eval.stats import CONFIDENCE, excludes_zero, paired_difference_ci
from llmkit.eval.tasks import _NAME, Item, Task

FIELDS = ("name", "version", "system", "template", "description")
TEMPLATED = ("generate", "judge", "pairwise")  # item types whose reply a template changes
LOWER_IS_BETTER = {"unparsed", "position_disagreement", "loss_rate"}
NO_DIRECTION = {"tie_rate"}  # a difference, but neither way is better


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: str
    template: str
    system: str | None = None
    description: str | None = None
    path: str = field(default="", compare=False)

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def sha256(self) -> str:
        """What decides the replies: the system prompt and the template (not the name or description)."""
        return artifacts.sha256_json({"system": self.system, "template": self.template})

    def user(self, prompt: str) -> str:
        return self.template.format(prompt=prompt)

    def apply(self, row: dict) -> dict:
        """The row as this template asks it (a new dict; rows of other types are returned unchanged)."""
        if row["type"] not in TEMPLATED:
            return row
        system = [{"role": "system", "content": self.system}] if self.system else []
        if "prompt" in row:
            return {**row, "messages": [*system, {"role": "user", "content": self.user(row["prompt"])}]}
        msgs = [dict(m) for m in row["messages"]]
        last = max(i for i, m in enumerate(msgs) if m["role"] == "user")
        question = msgs[last]["content"]
        msgs[last]["content"] = self.user(question)
        if self.system:
            msgs = system + [m for m in msgs if m["role"] != "system"]
        # a judge is shown the untemplated question (judge._question reads `prompt` first)
        return {**row, "messages": msgs, **({"prompt": question} if row["type"] != "generate" else {})}


def _lines(doc: yaml.Node) -> dict[str, int]:
    """Each top-level key's line (1-based) in a composed YAML mapping."""
    if not isinstance(doc, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in doc.value if isinstance(k, yaml.ScalarNode)}


def load_template(path: str | Path) -> PromptTemplate:
    """A template file, every problem reported at once as `file:line: field: expected ...`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        node, doc = yaml.compose(text), yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such prompt template file"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML: {e}"]) from None
    if not isinstance(doc, dict):
        raise ConfigError([f"{path}:1: expected a mapping with {', '.join(FIELDS)}"])
    lines = _lines(node)

    def at(k: str) -> str:
        return f"{path}:{lines.get(k, 1)}: {k}"

    problems = [f"{at(k)}: unknown field (allowed: {', '.join(FIELDS)})" for k in doc if k not in FIELDS]
    for k in ("name", "version", "template"):
        if k not in doc:
            problems.append(f"{path}:1: {k}: required, but it is missing")
    name, version, tmpl = doc.get("name"), doc.get("version"), doc.get("template")
    if "name" in doc and not (isinstance(name, str) and _NAME.match(name)):
        problems.append(f"{at('name')}: expected a name of letters, digits, - and _, got {name!r}")
    if "version" in doc and not (isinstance(version, (str, int, float)) and not isinstance(version, bool)
                                 and str(version).strip()):
        problems.append(f"{at('version')}: expected a version string or number, got {version!r}")
    for k in ("system", "description"):
        if doc.get(k) is not None and not isinstance(doc[k], str):
            problems.append(f"{at(k)}: expected a string (or null), got {doc[k]!r}")
    if "template" in doc:
        if not isinstance(tmpl, str) or not tmpl.strip():
            problems.append(f"{at('template')}: expected a non-empty string with {{prompt}}, got {tmpl!r}")
        else:
            try:
                names = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(tmpl) if f is not None]
            except ValueError as e:
                names = None
                problems.append(f"{at('template')}: expected a format string ({e}; write a literal brace as {{{{ or }}}})")
            if names is not None:
                bad = sorted({f for f, _, _ in names if f != "prompt"})
                if bad:
                    problems.append(f"{at('template')}: unknown placeholder {', '.join('{' + b + '}' for b in bad)}"
                                    " (only {prompt}; write a literal brace as {{ or }})")
                elif not names:
                    problems.append(f"{at('template')}: expected {{prompt}} where the item's prompt goes")
                elif any(spec or conv for _, spec, conv in names):
                    problems.append(f"{at('template')}: expected a plain {{prompt}}, without a format spec")
    if problems:
        raise ConfigError(problems)
    return PromptTemplate(name, str(version), tmpl, doc.get("system"), doc.get("description"), str(path))


def load_templates(paths: list[str | Path], base_dir: Path = Path(".")) -> list[PromptTemplate]:
    """Every template file checked; the problems of all of them at once; at least two, labels unique."""
    out, problems = [], []
    for p in paths:
        p = Path(p).expanduser()
        try:
            out.append(load_template(p if p.is_absolute() else base_dir / p))
        except ConfigError as e:
            problems += e.problems if hasattr(e, "problems") else [str(e)]
    labels = [t.label for t in out]
    problems += [f"two prompt templates are {lb}: give each name@version once" for lb in sorted(set(labels))
                 if labels.count(lb) > 1]
    if not problems and len(out) < 2:
        problems.append("a prompt experiment compares templates: give at least two (--prompts a.yaml b.yaml)")
    if problems:
        raise ConfigError(problems)
    return out


def templated(tasks: list[Task], t: PromptTemplate) -> list[Task]:
    """Copies of `tasks` whose items are asked through template `t` (same ids, same scorers)."""
    return [Task(task.name, task.source, [Item(i.id, i.type, t.apply(i.row), i.score) for i in task.items],
                 task.summarize) for task in tasks]


def differences(tasks: list[Task], templates: list[PromptTemplate], records: dict[str, list[dict]]) -> list[dict]:
    """For each pair of templates and each per-item score of the templated items: the mean difference A - B
    over the items both scored, its paired bootstrap CI, and the better template if the CI excludes 0."""
    kinds = {(t.name, i.id): i.type for t in tasks for i in t.items}
    per: dict[str, dict[tuple[str, str], dict[str, float]]] = {}
    for label, recs in records.items():
        per[label] = {(r["task"], r["id"]): r.get("scores", {}) for r in recs
                      if kinds.get((r["task"], r["id"])) in TEMPLATED}
    metrics = sorted({(task, k) for lb in per for (task, _), sc in per[lb].items() for k in sc})
    out = []
    for a, b in itertools.combinations([t.label for t in templates], 2):
        for task, k in metrics:
            keys = [key for key in per[a] if key[0] == task and k in per[a][key] and k in per[b].get(key, {})]
            xa, xb = [per[a][key][k] for key in keys], [per[b][key][k] for key in keys]
            d, lo, hi = paired_difference_ci(xa, xb) if keys else (math.nan, math.nan, math.nan)
            shown = excludes_zero(lo, hi)
            better = None
            if shown and k not in NO_DIRECTION:
                better = a if (d > 0) != (k in LOWER_IS_BETTER) else b
            out.append({"metric": f"{task}.{k}", "a": a, "b": b, "difference": _r(d), "low": _r(lo), "high": _r(hi),
                        "items": len(keys), "shown": shown, "better": better})
    return out


def _r(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def winners(diffs: list[dict], labels: list[str]) -> dict[str, str | None]:
    """Per metric, the template that beats every other one with a CI that excludes 0, else None."""
    out: dict[str, str | None] = {}
    for metric in dict.fromkeys(d["metric"] for d in diffs):
        rows = [d for d in diffs if d["metric"] == metric]
        out[metric] = next((lb for lb in labels if all(d["better"] == lb for d in rows if lb in (d["a"], d["b"]))),
                           None)
    return out


def tables(templates: list[PromptTemplate], per: dict[str, dict[str, float]], diffs: list[dict],
           wins: dict[str, str | None]) -> list[dict]:
    labels = [t.label for t in templates]
    metric_names = [k for k in per[labels[0]] if not k.endswith(".items")]
    level = int(CONFIDENCE * 100)
    return [
        {"id": "prompts-metrics", "title": "Metrics per prompt template", "columns": ["metric", *labels],
         "rows": [[k, *[per[lb].get(k) for lb in labels]] for k in metric_names],
         "note": "choice, perplexity and rag items are asked unchanged under every template."},
        {"id": "prompts-differences", "title": f"Paired differences between templates ({level}% bootstrap CI)",
         "columns": ["comparison", "difference", "low", "high", "items", "winner"],
         "rows": [[f"{d['metric']}: {d['a']} - {d['b']}", d["difference"], d["low"], d["high"], d["items"],
                   d["better"] or ("differs" if d["shown"] else "no difference shown")] for d in diffs],
         "chart": {"type": "bar_ci", "label": "comparison", "value": "difference", "lo": "low", "hi": "high"},
         "note": "A winner is named only when the CI of its difference excludes 0 "
                 f"(per-metric winner over all templates: {json.dumps(wins)})."},
    ]


def compare_prompts(cfg: EvalConfig, target, out: Path, templates: list[str | Path | PromptTemplate], *,
                    base_dir: Path = Path("."), dataset: Path | None = None, force: bool = False,
                    progress: bool = True) -> dict:
    """Score `target` (model spec or Target) on `cfg.tasks` once per template; write `out` (metrics.json with a
    `prompts` section and report tables, items.jsonl, manifest.json). Returns {"status", "out", "metrics"}."""
    from llmkit.eval import _as_target, _read_cache, _run, aggregate, load_tasks
    from llmkit.eval import judge as judge_
    from llmkit.eval.targets import EndpointTarget

    temps = [t if isinstance(t, PromptTemplate) else None for t in templates]
    if any(t is None for t in temps):
        temps = load_templates([t.path if isinstance(t, PromptTemplate) else t for t in templates], base_dir)
    tasks = load_tasks(cfg, base_dir, dataset)
    judge_.bind(tasks, cfg, None)
    owned = isinstance(target, (str, Path))
    tgt = _as_target(target, cfg)
    inputs = {"model": tgt.ref(), **{f"task:{t.name}": artifacts.input_ref(t.source) for t in tasks},
              **{f"task:{t.name}:{p}": artifacts.input_ref(p) for t in tasks for p in t.inputs}}
    config = {"eval": cfg.model_dump(), "model": tgt.name}
    cache_fp = artifacts.fingerprint("eval", config, inputs)  # templates not in it: each has its own keys
    config["prompts"] = [{"label": t.label, "sha256": t.sha256} for t in temps]
    inputs.update({f"prompt:{t.label}": artifacts.input_ref(t.path) for t in temps if t.path})
    out = Path(out).resolve()
    fp = artifacts.fingerprint("eval", config, inputs)
    if not force and not isinstance(tgt, EndpointTarget) and artifacts.finished(out, fp):
        return {"status": "skipped", "out": str(out), "metrics": json.loads((out / "metrics.json").read_text())}

    out.parent.mkdir(parents=True, exist_ok=True)
    cache = out.parent / f".{out.name}.items-{cache_fp[:16]}.jsonl"
    done = _read_cache(cache)
    role = {t.label: f"{t.label}#{t.sha256[:12]}" for t in temps}  # edited template, new key: asked again
    try:
        for t in temps:
            _run(role[t.label], tgt, templated(tasks, t), cfg, cache, done, progress)
    finally:
        if owned:
            tgt.close()

    order = {(t.name, i.id): n for n, (t, i) in enumerate((t, i) for t in tasks for i in t.items)}
    records = {t.label: sorted((r for (rl, task, i), r in done.items() if rl == role[t.label] and (task, i) in order),
                               key=lambda r: order[(r["task"], r["id"])]) for t in temps}
    per = {lb: aggregate(tasks, recs)[0] for lb, recs in records.items()}
    diffs = differences(tasks, temps, records)
    wins = winners(diffs, [t.label for t in temps])
    metrics = {"targets": {"model": tgt.name},
               "prompts": {"templates": [{"label": t.label, "name": t.name, "version": t.version,
                                          "description": t.description, "path": t.path, "sha256": t.sha256,
                                          "system": t.system, "template": t.template} for t in temps],
                           "metrics": per, "differences": diffs, "winners": wins, "confidence": CONFIDENCE},
               "tables": {"model": {"prompts": tables(temps, per, diffs, wins)}}}
    with artifacts.build("eval", out, config, inputs) as b:
        artifacts.write_json_atomic(b.tmp / "metrics.json", metrics)
        with open(b.tmp / "items.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({**r, "prompt": lb}) + "\n" for lb, recs in records.items() for r in recs)
        b.outputs = {"metrics": "metrics.json", "items": "items.jsonl"}
        b.metrics = {f"{lb}.{k}": v for lb, m in per.items() for k, v in m.items()}
    for old in out.parent.glob(f".{out.name}.items-*.jsonl"):
        old.unlink(missing_ok=True)
    return {"status": "ran", "out": str(out), "metrics": metrics}


def summary(metrics: dict) -> str:
    """Each difference with its CI, and the verdict."""
    p = metrics["prompts"]
    lines = [f"templates: {', '.join(t['label'] for t in p['templates'])}  "
             f"({int(p['confidence'] * 100)}% paired bootstrap CIs)"]
    for d in p["differences"]:
        if d["difference"] is None:
            lines.append(f"{d['metric']}: {d['a']} - {d['b']}: no items both scored")
            continue
        ci = "n/a" if d["low"] is None else f"[{d['low']:+.3f}, {d['high']:+.3f}]"
        verdict = (f"{d['better']} better" if d["better"] else "differs" if d["shown"] else "no difference shown")
        lines.append(f"{d['metric']}: {d['a']} - {d['b']} = {d['difference']:+.3f} {ci} over {d['items']} items: "
                     f"{verdict}")
    return "\n".join(lines)
