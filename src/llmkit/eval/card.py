"""model_card.md in the Hugging Face model card layout: YAML front matter (base_model, library_name, tags,
datasets, model-index with this eval's results) and the sections of their template (Model details, Uses, Bias,
risks and limitations, Training details, Evaluation), filled from the eval and the train stage's manifest.

The numbers are this eval's; what only a person can know (intended users, licence) is marked to be filled in.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from llmkit.eval.report import train_manifests
from llmkit.eval.svg import fmt


def _model_index(name: str, metrics: dict, inputs: dict) -> list[dict]:
    results = []
    by_task: dict[str, list[dict]] = {}
    for k, v in (metrics.get("model") or {}).items():
        task, _, metric = k.partition(".")
        if metric != "items" and isinstance(v, (int, float)) and not isinstance(v, bool):
            by_task.setdefault(task, []).append({"type": metric, "name": k, "value": v})
    for task, ms in by_task.items():
        src = (inputs.get(f"task:{task}") or {}).get("path")
        results.append({"task": {"type": "text-generation", "name": task},
                        "dataset": {"name": task, "type": Path(src).name if src else task},
                        "metrics": ms})
    return [{"name": name, "results": results}]


def render(metrics: dict, inputs: dict, cfg: dict) -> str:
    targets = metrics.get("targets") or {}
    name = targets.get("model", "model")
    trained = train_manifests(inputs.get("model"))
    tm = trained[0][1] if trained else None
    tcfg = ((tm or {}).get("config") or {}).get("train") or {}
    tout = (tm or {}).get("outputs") or {}
    tmet = (tm or {}).get("metrics") or {}
    base = tout.get("base") or (tm or {}).get("config", {}).get("base") or targets.get("baseline")
    adapter = tout.get("format") == "peft-adapter"
    data = [(r.get("path") or "") for k, r in ((tm or {}).get("inputs") or {}).items() if k == "data"]
    front = {
        **({"base_model": str(base)} if base else {}),
        "library_name": "peft" if adapter else "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["llmkit", *([tcfg["method"]] if tcfg.get("method") else []), "eval"],
        **({"datasets": [Path(d).name for d in data]} if data else {}),
        "model-index": _model_index(Path(str(name)).name or str(name), metrics, inputs),
    }
    base_m = metrics.get("baseline")
    rows = ["| metric | this model |" + (" baseline | Δ |" if base_m else ""),
            "|---|---|" + ("---|---|" if base_m else "")]
    for k, v in (metrics.get("model") or {}).items():
        if k.endswith(".items"):
            continue
        line = f"| `{k}` | {fmt(v)} |"
        if base_m:
            b = base_m.get(k)
            d = f"{v - b:+.4g}" if isinstance(b, (int, float)) and isinstance(v, (int, float)) else "–"
            line += f" {fmt(b)} | {d} |"
        rows.append(line)
    gates = metrics.get("gates") or []
    gate_lines = [f"- `{g['metric']} {str(g['expr']).strip()}`: {'pass' if g['passed'] else 'FAIL: ' + g['why']}"
                  for g in gates] or ["- no gates were set"]
    suites = [t for t in (metrics.get("tables") or {}).get("model", {})]
    training = ["Not trained by llmkit, or its train manifest is not reachable from this eval's inputs."]
    if tm:
        training = [f"- method: {tcfg.get('method', '?')}"
                    + (f" (LoRA r {tcfg['lora'].get('r')}, alpha {tcfg['lora'].get('alpha')})"
                       if adapter and isinstance(tcfg.get("lora"), dict) else ""),
                    f"- epochs: {tcfg.get('epochs', '?')}, learning rate: {tcfg.get('lr', '?')}, batch size: "
                    f"{tcfg.get('batch_size', '?')}, max length: {tcfg.get('max_length', '?')}, precision: "
                    f"{tmet.get('precision', tcfg.get('precision', '?'))}",
                    f"- steps: {tmet.get('steps', '?')}, real tokens: {fmt(tmet.get('real_tokens'))}, "
                    f"{fmt(tmet.get('seconds'))} s ({fmt(tmet.get('real_tokens_per_s'))} real tok/s)",
                    f"- training loss {fmt(tmet.get('train_loss_first'))} → {fmt(tmet.get('train_loss_last'))}"
                    + (f", validation loss {fmt(tmet['val_loss'])}" if tmet.get("val_loss") is not None else ""),
                    f"- training data: {', '.join(data) or '?'}",
                    f"- manifest: `{trained[0][0] / 'manifest.json'}`"]
    body = [
        f"# Model card for {Path(str(name)).name or name}", "",
        f"Written by `llmkit eval` from its eval of `{name}`"
        + (f" against the baseline `{targets['baseline']}`" if targets.get("baseline") else "")
        + ". The numbers come from this eval's `metrics.json`; the full report is `report.html` beside this file.", "",
        "## Model details", "",
        f"- base model: `{base or '?'}`",
        f"- type: {'a PEFT LoRA adapter on the base model' if adapter else 'a causal language model'}",
        f"- fine-tuned with: llmkit ({tcfg.get('method', 'not trained here')})",
        "- licence: the base model's licence applies; fill in your own terms", "",
        "## Uses", "",
        "- Intended: the tasks it was evaluated on below" + (f" ({', '.join(sorted({k.split('.')[0] for k in metrics.get('model') or {}}))})"),
        "- Out of scope: anything its gates and suites did not measure; decisions about people without human review.",
        "", "## Bias, risks, and limitations", "",
        *([f"- suites run: {', '.join(suites)} (per-group tables with confidence intervals in `report.html`)"]
          if suites else ["- no safety or bias suite was run in this eval (eval.safety, eval.bias): their risks are "
                          "unmeasured here"]),
        "- A small model fine-tuned on a small set: it may state wrong facts fluently and follow its training "
        "style where it should not; check replies before acting on them.",
        "", "## Training details", "", *training, "",
        "## Evaluation", "",
        f"Settings: tasks {', '.join(cfg.get('tasks') or [])}; max tokens {cfg.get('max_tokens')}; engine "
        f"{cfg.get('engine')}; greedy decoding.", "", *rows, "", "Gates:", "", *gate_lines, "",
    ]
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(body)


def write(folder: Path, metrics: dict, inputs: dict, cfg: dict) -> Path:
    path = Path(folder) / "model_card.md"
    path.write_text(render(metrics, inputs, cfg), encoding="utf-8")
    return path
