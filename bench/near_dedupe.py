"""Precision and recall of near-duplicate removal on a generated set with paraphrase-level duplicates.

    .venv/bin/python bench/near_dedupe.py

1,500 distinct 30-50 word passages of Python's bundled documentation (pydoc_data.topics: related technical prose that
shares much vocabulary); 750 of them get 1-3 paraphrases each (synonym swaps on ~half the common words, a few
dropped words, filler openers, swapped sentences, lower-casing, a typo). Streaming dedupe keeps the first of
each group: a dropped row is a true positive when an earlier row came from the same passage.
"""

import random
import re
import time

from llmkit.data.clean import NearDedupe

WORD = re.compile(r"[A-Za-z]+")
# Generic edits a paraphrase makes: synonyms, contractions, filler, dropped words, a typo, reordered sentences.
SYN = {"the": "this", "is": "becomes", "are": "become", "can": "may", "will": "shall", "use": "employ",
       "used": "employed", "value": "result", "function": "routine", "object": "item", "returns": "gives back",
       "should": "ought to", "must": "has to", "not": "never", "if": "when", "example": "instance",
       "following": "next", "called": "invoked", "also": "too", "new": "fresh", "each": "every"}
FILLERS = ["Note that ", "In short, ", "Basically, ", "As documented, "]


def paragraphs(n):
    """Distinct 30-50 word passages of Python's own documentation (ships with CPython, offline):
    consecutive, non-overlapping windows of the whole text."""
    from pydoc_data.topics import topics

    # Several topics repeat the same paragraphs; keep each paragraph once so distinct passages are distinct.
    paras = dict.fromkeys(" ".join(p.split()) for k in sorted(topics) for p in re.split(r"\n\s*\n", topics[k]))
    words = " ".join(paras).split()
    rng, out, i = random.Random(1), [], 0
    while i < len(words):
        k = rng.randint(30, 50)
        out.append(" ".join(words[i:i + k]))
        i += k
    out = list(dict.fromkeys(out))
    rng.shuffle(out)
    return out[:n]


def paraphrase(q, rng):
    words = q.split()
    out = []
    for w in words:
        low = w.lower()
        if low in SYN and rng.random() < 0.5:
            w = SYN[low]
        elif rng.random() < 0.04:
            continue  # drop a word
        out.append(w)
    if rng.random() < 0.3:
        k = rng.randrange(len(out))
        if len(out[k]) > 4:
            out[k] = out[k][:2] + out[k][3] + out[k][2] + out[k][4:]  # swap two letters
    text = " ".join(out)
    sentences = text.split(". ")
    if len(sentences) > 2 and rng.random() < 0.5:
        i = rng.randrange(len(sentences) - 1)
        sentences[i], sentences[i + 1] = sentences[i + 1], sentences[i]
        text = ". ".join(sentences)
    if rng.random() < 0.5:
        text = rng.choice(FILLERS) + text[0].lower() + text[1:]
    if rng.random() < 0.2:
        text = text.lower()
    return text


def make(rng, n_base=1500, n_dup_groups=750):
    bases = paragraphs(n_base)
    rows = [(i, q) for i, q in enumerate(bases)]
    for i in rng.sample(range(len(bases)), n_dup_groups):
        for _ in range(rng.randint(1, 3)):
            rows.append((i, paraphrase(bases[i], rng)))
    rng.shuffle(rows)
    return rows


def evaluate(rows, **kw):
    nd = NearDedupe(**kw)
    seen_groups, tp, fp, fn = set(), 0, 0, 0
    t0 = time.perf_counter()
    for group, text in rows:
        dup_truth = group in seen_groups
        flagged = nd.seen(text)
        if flagged and dup_truth:
            tp += 1
        elif flagged:
            fp += 1
        elif dup_truth:
            fn += 1
        seen_groups.add(group)
    dt = time.perf_counter() - t0
    return tp / max(1, tp + fp), tp / max(1, tp + fn), len(rows) / dt


def main():
    rows = make(random.Random(0))
    n_dups = len(rows) - 1500
    print(f"{len(rows)} rows: 1500 distinct passages, {n_dups} paraphrase duplicates of 750 of them")
    print(f"{'ngram':>5} {'threshold':>9} {'precision':>9} {'recall':>7} {'F1':>6} {'rows/s':>8}")
    for ngram in (1, 2, 3):
        for th in (0.5, 0.6, 0.7, 0.8):
            p, r, speed = evaluate(rows, threshold=th, ngram=ngram)
            print(f"{ngram:>5} {th:>9} {p:>9.3f} {r:>7.3f} {2 * p * r / max(1e-9, p + r):>6.3f} {speed:>8.0f}")


if __name__ == "__main__":
    main()
