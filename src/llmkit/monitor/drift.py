"""Prompt drift: are the prompts a server gets now like the ones its model was trained on?

Both sets become sentence embeddings of the bundled all-MiniLM-L6-v2 (int8 ONNX, `llmkit.models.OnnxEmbedder`:
384-d, L2-normalized), and a two-sample test compares them:

    mmd         maximum mean discrepancy with an RBF kernel (bandwidth: the median pairwise distance of the
                pooled sample), p-value from a permutation test. score = MMD² (unbiased U-statistic).
    classifier  a logistic regression told to tell the two sets apart, 5-fold cross-validated; score = the
                out-of-fold ROC AUC (0.5: indistinguishable, 1: fully separable), p-value from a Mann-Whitney
                U test on the out-of-fold scores (the AUC's own test).

The default is `mmd` with an alert at MMD² ≥ 0.05 and p < 0.01 (bench/drift.py, reference: the support example's
314 training prompts, 3 seeded samples of 50/100/200 prompts each): support questions in new phrasings score
0.016-0.017 (never flagged); cooking, code and German support questions 0.19-0.35 (always flagged); a 25%
out-of-distribution mix 0.026 (under the alert: `drift_threshold` 0.02 catches it). Both tests' p-values are
< 0.01 for every set, in-distribution included (the small, templated training set is told apart from any new
phrasing), so only an effect size separates. The classifier's AUC is 0.89-0.90 in-distribution against 1.00
out of it (saturated: no room to grade drift; alert at 0.95) and a test costs 5-10× more (0.55-1.1 s against
0.07-0.10 s). MMD² here is the unbiased estimate, so 0 means no drift at any sample size.

The reference set is a dataset artifact's train.jsonl (its rows' user turns) or any JSON-lines file of chat rows
(`messages`), instruction rows (`instruction` [+ `input`]) or prompt rows (`prompt`); at most `max_reference`
prompts of it are used (a seeded sample), embedded once and cached by content under $LLMKIT_HOME/monitor/.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from llmkit.errors import ConfigError

Method = Literal["classifier", "mmd"]
METHODS: tuple[str, ...] = ("classifier", "mmd")
# the alert: score at or above the threshold and p below ALPHA
THRESHOLDS = {"classifier": 0.95, "mmd": 0.05}
ALPHA = 0.01
MIN_SAMPLES = 30  # fewer recent prompts than this: no score (a test on a handful says nothing)
DEFAULT_METHOD: Method = "mmd"


@dataclass
class DriftResult:
    method: str
    score: float  # classifier: ROC AUC; mmd: MMD²
    p_value: float
    threshold: float
    drifted: bool  # score >= threshold and p_value < ALPHA
    n_reference: int
    n_recent: int
    seconds: float
    n_seen: int | None = None  # the live monitor: prompts it had embedded in all when it ran this test

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------
# The two tests, on (N, D) float arrays


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int = 200, seed: int = 0) -> tuple[float, float]:
    """(MMD², permutation p-value) of samples x (n, D) and y (m, D) under an RBF kernel whose bandwidth is the
    median pairwise distance of the pooled sample (Gretton et al. 2012's heuristic). MMD² is the unbiased
    U-statistic (no self-pairs), so its expected value is 0 without drift whatever n and m are, and one
    threshold holds for any window size."""
    z = np.concatenate([x, y]).astype(np.float64)
    n, m = len(x), len(y)
    sq = np.einsum("ij,ij->i", z, z)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)  # (n+m, n+m) squared distances
    med = np.median(d2[np.triu_indices(n + m, 1)])
    k = np.exp(-d2 / (2 * med if med > 0 else 1.0))  # k(z, z) = 1 on the diagonal
    total = k.sum()
    # every permutation is a relabelling: a (P+1, n+m) 0/1 matrix of who is "x", the first row the real split
    rng = np.random.default_rng(seed)
    a0 = np.concatenate([np.ones(n), np.zeros(m)])
    a = np.stack([a0] + [rng.permutation(a0) for _ in range(permutations)])
    ak = a @ k
    xx = np.einsum("pi,pi->p", ak, a)  # Σ k(x, x') over x's pairs, self-pairs included (n of them, each 1)
    xy = ak.sum(1) - xx  # Σ k(x, y)
    yy = total - xx - 2 * xy
    stats = (xx - n) / (n * (n - 1)) + (yy - m) / (m * (m - 1)) - 2 * xy / (n * m)
    p = (1 + np.sum(stats[1:] >= stats[0])) / (1 + permutations)
    return float(stats[0]), float(p)


def classifier_test(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> tuple[float, float]:
    """(out-of-fold ROC AUC, Mann-Whitney p-value) of a logistic regression that tells x (label 0) from y (1)."""
    from scipy.stats import mannwhitneyu
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    z = np.concatenate([x, y])
    labels = np.concatenate([np.zeros(len(x), int), np.ones(len(y), int)])
    folds = max(2, min(folds, len(x), len(y)))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    # class_weight balanced: the reference is usually larger than the recent window; C=1 on unit vectors
    clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000)
    scores = cross_val_predict(clf, z, labels, cv=cv, method="decision_function")
    auc = roc_auc_score(labels, scores)
    p = mannwhitneyu(scores[labels == 1], scores[labels == 0], alternative="greater").pvalue
    return float(auc), float(p)


def two_sample(method: Method, reference: np.ndarray, recent: np.ndarray, seed: int = 0) -> DriftResult:
    import time

    if method not in METHODS:
        raise ConfigError([f"drift method '{method}': expected one of {', '.join(METHODS)}"])
    t0 = time.perf_counter()
    score, p = (classifier_test if method == "classifier" else mmd_test)(reference, recent, seed=seed)
    th = THRESHOLDS[method]
    return DriftResult(method, score, p, th, bool(score >= th and p < ALPHA), len(reference), len(recent),
                       time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------------------
# Texts and their embeddings


def row_prompts(row: dict) -> list[str]:
    """The user texts of one dataset row: chat `messages` (user turns), `prompt`, or `instruction` (+ `input`)."""
    if isinstance(row.get("messages"), list):
        return [m["content"] for m in row["messages"] if isinstance(m, dict) and m.get("role") == "user"
                and isinstance(m.get("content"), str) and m["content"].strip()]
    if isinstance(row.get("prompt"), str):
        return [row["prompt"]] if row["prompt"].strip() else []
    if isinstance(row.get("instruction"), str):
        text = row["instruction"] + ("\n" + row["input"] if isinstance(row.get("input"), str) and row["input"] else "")
        return [text] if text.strip() else []
    return []


def reference_prompts(path: str | Path, limit: int = 1000, seed: int = 0) -> list[str]:
    """User texts of a dataset artifact folder (its train.jsonl) or a JSON-lines file; a seeded sample of
    `limit` when there are more. Every unreadable line is reported at once."""
    p = Path(path)
    if p.is_dir():
        p = p / "train.jsonl"
    if not p.is_file():
        raise ConfigError([f"{path}: expected a dataset artifact folder with train.jsonl, or a .jsonl file of "
                           "chat (messages), instruction or prompt rows"])
    texts, errors = [], []
    with p.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append(f"{p}:{i}: not JSON ({e.msg})")
                continue
            found = row_prompts(row) if isinstance(row, dict) else []
            if not found:
                errors.append(f"{p}:{i}: no user text (expected messages with a user turn, prompt, or instruction)")
            texts += found
    if errors:
        raise ConfigError(errors[:20] + ([f"... and {len(errors) - 20} more"] if len(errors) > 20 else []))
    if len(texts) > limit:
        texts = random.Random(seed).sample(texts, limit)
    return texts


_EMBEDDER = None


def embedder(threads: int = 1):
    """The int8 MiniLM (one per process; ~0.3 s to load). One thread by default: drift runs beside the engines."""
    global _EMBEDDER
    if _EMBEDDER is None:
        from llmkit.models import OnnxEmbedder, int8_embedder_files

        # prompts past 128 word pieces add little to what a prompt is about and cost quadratically
        _EMBEDDER = OnnxEmbedder(*int8_embedder_files(), max_seq_length=128, threads=threads)
    return _EMBEDDER


def embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """(N, 384) float32 unit vectors."""
    if not texts:
        return np.zeros((0, 384), np.float32)
    return embedder().encode(texts, batch_size=batch_size)


def reference_embeddings(path: str | Path, limit: int = 1000) -> np.ndarray:
    """The reference set's embeddings, cached under $LLMKIT_HOME/monitor/ by the texts' hash."""
    from llmkit.models import home

    texts = reference_prompts(path, limit)
    key = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:24]
    cache = home() / "monitor" / f"reference-{key}.npy"
    if cache.is_file():
        return np.load(cache)
    vecs = embed(texts)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npy")
    np.save(tmp, vecs)
    tmp.replace(cache)
    return vecs
