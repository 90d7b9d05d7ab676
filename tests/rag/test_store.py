"""The LanceDB store: exact search below `ann_min_rows`, an HNSW index above it whose queries set `ef`
(a LanceDB index queried with its defaults lost recall in bench/rag.py) — checked against numpy's exact answer."""

import numpy as np
import pyarrow as pa

from llmkit.rag.store import LanceStore, schema


def _rows(vectors: np.ndarray) -> pa.Table:
    n, dim = vectors.shape
    return pa.Table.from_pylist([{"id": f"doc.md#{i}", "source": "doc.md", "page": None, "heading": None, "start": 0,
                                  "end": 1, "text": f"chunk {i}", "vector": v.tolist()} for i, v in enumerate(vectors)],
                                schema=schema(dim))


def _data(n=3000, dim=64, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(60, dim))
    x = centers[rng.integers(0, 60, n)] + 0.35 * rng.normal(size=(n, dim))  # clustered, like real embeddings
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.integers(0, n, 30)] + 0.2 * rng.normal(size=(30, dim))
    return x.astype(np.float32), (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _recall(store, x, queries, k=10) -> float:
    hits = 0
    for q in queries:
        exact = {f"doc.md#{i}" for i in np.argsort(-(x @ q))[:k]}
        got = store.search(q, k)
        assert len(got) == k and [s for _, s in got] == sorted((s for _, s in got), reverse=True)
        hits += len(exact & {i for i, _ in got})
    return hits / (k * len(queries))


def test_flat_below_the_threshold_and_hnsw_above_it(tmp_path):
    x, queries = _data()
    flat = LanceStore(tmp_path / "flat", "docs")
    flat.write(_rows(x), ann_min_rows=5000)
    assert not flat.has_ann and _recall(flat, x, queries) == 1.0

    ann = LanceStore(tmp_path / "ann", "docs")
    ann.write(_rows(x), ann_min_rows=1000)
    assert ann.has_ann
    reopened = LanceStore(tmp_path / "ann", "docs")  # how retrieval opens it: the index is found on disk
    assert reopened.has_ann
    assert _recall(reopened, x, queries) >= 0.95
