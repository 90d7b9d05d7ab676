"""Retrieval: dense (the store's cosine search) and BM25 (bm25s), fused by reciprocal-rank fusion.

    hits = retrieve(Path("runs/x/rag"), "How do I reset the R2?", top_k=4, where={"source": "docs/*.md"})

RRF scores a chunk by its ranks, not its raw scores (cosine and BM25 are on different scales):
score = Σ 1 / (rrf_k + rank) over the lists it appears in (rank from 1). So a chunk that only BM25 finds (an
exact part number the embedder blurs) still makes the top k, and one both find ranks above either alone.

`Index` loads an index folder once (the server keeps one per collection); `retrieve` caches it per folder and
manifest, so a re-index is picked up by the next call.
"""

from __future__ import annotations

import fnmatch
import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from llmkit import artifacts
from llmkit.errors import ArtifactError, DataError
from llmkit.rag.index import KIND, bm25_tokens
from llmkit.rag.store import open_store, store_path

Mode = Literal["hybrid", "dense", "bm25"]
CANDIDATES = 50  # taken from each list before fusion (at least top_k)


@dataclass
class Hit:
    text: str
    source: str  # the file as indexed: "<source folder name>/<path below it>"
    page: int | None  # 1-based PDF page; None for formats without pages
    heading: str | None
    start: int  # character span in the page's text (the file itself for .md/.txt; extracted text for html/pdf)
    end: int
    score: float  # the fused RRF score (or the one list's score in dense/bm25 mode)
    rank: int  # 1-based
    dense_rank: int | None = None  # where each list put it (None: not among its candidates)
    bm25_rank: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Index:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        m = artifacts.read_manifest(self.folder)
        if m.get("kind") != KIND:
            raise ArtifactError(f"{folder} is a {m.get('kind')!r} artifact, not a rag index")
        self.manifest = m
        self.config = m["config"]
        self.collection: str = m["outputs"]["collection"]
        self.store = open_store(m["outputs"]["store"], store_path(m["outputs"]["store"], self.folder), self.collection)
        rows = self.store.read(["id", "source", "page", "heading", "start", "end", "text"])
        self.rows = rows.to_pylist()
        self.pos = {r["id"]: i for i, r in enumerate(self.rows)}
        self.sources = np.array([r["source"] for r in self.rows], dtype=object)

        import bm25s

        self.bm25 = bm25s.BM25.load(str(self.folder / "bm25"))
        ids = json.loads((self.folder / "bm25" / "ids.json").read_text())
        self.bm25_pos = np.array([self.pos[i] for i in ids], dtype=np.int64)  # bm25 row → our row
        self._model = None

    @property
    def model(self):
        if self._model is None:
            from llmkit.rag.embed import load_embedder

            self._model = load_embedder(self.config["embedder"])
        return self._model

    def mask(self, where: dict | None) -> np.ndarray | None:
        """Rows that pass the filter, or None for all. `where`: {"source": glob or [globs]}."""
        if not where:
            return None
        unknown = set(where) - {"source"}
        if unknown:
            raise DataError(f"unknown filter key(s) {sorted(unknown)}; supported: source (a glob or list of globs)")
        globs = where["source"] if isinstance(where["source"], list) else [where["source"]]
        return np.array([any(fnmatch.fnmatch(s, g) for g in globs) for s in self.sources], dtype=bool)

    def dense(self, query: str, k: int, mask: np.ndarray | None) -> list[tuple[int, float]]:
        vec = self.model.encode([query], convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)[0]
        sources = None if mask is None else sorted(set(self.sources[mask]))
        return [(self.pos[i], s) for i, s in self.store.search(vec, k, sources)]

    def lexical(self, query: str, k: int, mask: np.ndarray | None) -> list[tuple[int, float]]:
        tokens = bm25_tokens([query])
        if not tokens.vocab or not len(self.rows):  # only stopwords: BM25 has nothing to match
            return []
        weight = None if mask is None else mask[self.bm25_pos].astype(np.float32)
        docs, scores = self.bm25.retrieve(tokens, k=min(k, len(self.rows)), show_progress=False, weight_mask=weight)
        return [(int(self.bm25_pos[d]), float(s)) for d, s in zip(docs[0], scores[0]) if s > 0]

    def search(self, query: str, top_k: int | None = None, where: dict | None = None, mode: Mode = "hybrid") -> list[Hit]:
        if not query.strip():
            raise DataError("the query is empty")
        top_k = top_k or self.config.get("top_k", 4)
        if top_k < 1:
            raise DataError(f"top_k must be >= 1, got {top_k}")
        mask = self.mask(where)
        n = max(CANDIDATES, top_k)
        dense = self.dense(query, n, mask) if mode != "bm25" else []
        lexical = self.lexical(query, n, mask) if mode != "dense" else []
        d_rank = {row: r for r, (row, _) in enumerate(dense, 1)}
        b_rank = {row: r for r, (row, _) in enumerate(lexical, 1)}
        if mode == "hybrid":
            k = self.config.get("rrf_k", 60)
            fused = {row: sum(1.0 / (k + ranks[row]) for ranks in (d_rank, b_rank) if row in ranks)
                     for row in d_rank.keys() | b_rank.keys()}
            # ties (same ranks, swapped) go to the dense list's order, then the index's row order
            order = sorted(fused, key=lambda row: (-fused[row], d_rank.get(row, n + 1), row))
            scored = [(row, fused[row]) for row in order]
        else:
            scored = dense if mode == "dense" else lexical
        hits = []
        for rank, (row, score) in enumerate(scored[:top_k], 1):
            r = self.rows[row]
            hits.append(Hit(r["text"], r["source"], r["page"], r["heading"], r["start"], r["end"], round(score, 6),
                            rank, d_rank.get(row), b_rank.get(row)))
        return hits


@functools.lru_cache(maxsize=8)
def _open(folder: str, manifest_mtime: int) -> Index:
    return Index(Path(folder))


def open_index(index_dir: Path) -> Index:
    p = Path(index_dir).resolve()
    try:
        mtime = (p / artifacts.MANIFEST).stat().st_mtime_ns
    except FileNotFoundError:
        raise ArtifactError(f"{index_dir} is not a rag index: it has no {artifacts.MANIFEST} "
                            "(make one with `llmkit rag index`)") from None
    return _open(str(p), mtime)


def retrieve(index_dir: Path, query: str, top_k: int = 4, where: dict | None = None, mode: Mode = "hybrid") -> list[Hit]:
    """The `top_k` chunks of the index at `index_dir` that best answer `query`, best first."""
    return open_index(index_dir).search(query, top_k, where, mode)
