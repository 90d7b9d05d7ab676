"""Scores of one generated reply, and the multiple-choice and perplexity arithmetic.

exact and contains compare the raw text (exact ignores surrounding whitespace); f1 is SQuAD's token F1 (lower
case, punctuation and articles dropped); rouge_l is Google's `rouge-score` (ROUGE-L F-measure, its default
tokenizer); choice accuracy follows lm-evaluation-harness exactly (acc: argmax of the summed log-likelihoods;
acc_norm: argmax of log-likelihood / the choice's length in characters, the first of equals winning).
"""

from __future__ import annotations

import collections
import json
import math
import re
import string

from llmkit.errors import MissingExtra


def exact(reply: str, reference: str) -> float:
    return float(reply.strip() == reference.strip())


def contains(reply: str, needles: str | list[str]) -> float:
    return float(all(n in reply for n in ([needles] if isinstance(needles, str) else needles)))


def regex(reply: str, pattern: str) -> float:
    return float(re.search(pattern, reply) is not None)


def json_valid(reply: str) -> float:
    try:
        json.loads(reply)
    except ValueError:
        return 0.0
    return 1.0


def _squad_tokens(s: str) -> list[str]:
    s = "".join(c for c in s.lower() if c not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return s.split()


def token_f1(reply: str, reference: str) -> float:
    """SQuAD v1.1's F1 between the reply's and the reference's normalized tokens."""
    pred, gold = _squad_tokens(reply), _squad_tokens(reference)
    if not pred or not gold:
        return float(pred == gold)
    common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    p, r = common / len(pred), common / len(gold)
    return 2 * p * r / (p + r)


def rouge_l(reply: str, reference: str) -> float:
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise MissingExtra("the rouge_l check uses Google's rouge-score: pip install 'llmkit[eval]'") from None
    return rouge_scorer.RougeScorer(["rougeL"]).score(reference, reply)["rougeL"].fmeasure


def score_reply(reply: str, row: dict) -> dict[str, float]:
    """Every check a generate row asks for, each 0..1, under its metric name."""
    checks, ref = row["checks"], row.get("reference", "")
    out: dict[str, float] = {}
    for name, arg in checks.items():
        if name == "exact":
            out["exact_match"] = exact(reply, ref)
        elif name == "contains":
            out["contains"] = contains(reply, arg)
        elif name == "regex":
            out["regex"] = regex(reply, arg)
        elif name == "f1":
            out["f1"] = token_f1(reply, ref)
        elif name == "rouge_l":
            out["rouge_l"] = rouge_l(reply, ref)
        elif name == "json":
            out["json_valid"] = json_valid(reply)
    return out


def _argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=lambda i: (xs[i], -i))  # the first of equals, as numpy's argmax


def choice_scores(lls: list[float], choices: list[str], answer: int) -> dict[str, float]:
    """acc and acc_norm of one multiple-choice item, as lm-evaluation-harness computes them."""
    return {"acc": float(_argmax(lls) == answer),
            "acc_norm": float(_argmax([ll / len(c) for ll, c in zip(lls, choices)]) == answer)}


def perplexity(nll: float, tokens: int) -> float:
    """exp of the mean negative log-likelihood per token (nats)."""
    return math.exp(nll / tokens) if tokens else float("nan")
