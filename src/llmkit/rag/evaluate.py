"""Retrieval quality on a question set: recall@k and MRR, for hybrid, dense-only and BM25-only retrieval.

The set is JSONL, one question a line:

    {"question": "How long do I hold the reset button on the R2?", "source": "docs/r2-router.md",
     "heading": "Factory reset"}

A hit is relevant when its source is the row's `source` (a glob) and, if the row names a `heading`, its heading
is that heading (case and spacing ignored). recall@k: the share of questions with a relevant hit in the top k;
MRR: the mean of 1 / rank of the first relevant hit (0 when none is in the top k).
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from llmkit.errors import DataError
from llmkit.rag.retrieve import Hit, Mode, open_index


def read_questions(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not isinstance(row.get("source"), str):
            raise DataError(f"{path}:{n}: expected {{\"question\": str, \"source\": str, \"heading\": str (optional)}}")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no questions")
    return rows


def _norm(s: str | None) -> str:
    return " ".join((s or "").lower().split())


def relevant(hit: Hit, row: dict) -> bool:
    if not fnmatch.fnmatch(hit.source, row["source"]):
        return False
    return "heading" not in row or _norm(hit.heading) == _norm(row["heading"])


def evaluate(index_dir: Path, questions: Path, top_k: int = 4,
             modes: tuple[Mode, ...] = ("hybrid", "dense", "bm25")) -> dict:
    """{mode: {"recall@k": float, "mrr": float, "questions": n, "misses": [question, ...]}} over the set."""
    idx = open_index(index_dir)
    rows = read_questions(questions)
    out = {}
    for mode in modes:
        found, rr, misses = 0, 0.0, []
        for row in rows:
            hits = idx.search(row["question"], top_k, mode=mode)
            first = next((h.rank for h in hits if relevant(h, row)), None)
            if first is None:
                misses.append(row["question"])
            else:
                found += 1
                rr += 1.0 / first
        out[mode] = {f"recall@{top_k}": round(found / len(rows), 4), "mrr": round(rr / len(rows), 4),
                     "questions": len(rows), "misses": misses}
    return out
