"""The two rag stores side by side on the same rows: LanceStore (embedded) and QdrantStore in qdrant-client's local
mode (in-process, on disk; the mode tests use; a Qdrant server is not measured here).

    .venv/bin/python bench/rag_stores.py [--rows 5000] [--queries 200] [--dim 384] [--seed 0]

Rows: --rows random normal vectors of --dim, L2-normalized (numpy default_rng(--seed)), in 50 sources; queries
drawn the same way by a second generator. Figures:
- insert: wall time of `store.write(rows, ann_min_rows=None)` (both exact); QdrantStore upserts batches of
  qdrant.BATCH points; also the time per point of 100 single-point upserts into local mode, for comparison.
- query: per query, `store.search(q, 10)` wall time (the vector given; no embedding); p50 and p90 over
  --queries, after 5 warm-up queries; top-10 agreement = share of queries whose ids equal numpy's exact top 10.
The machine's load (uptime) is printed first: on a shared box the figures move with it.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from llmkit.rag import qdrant
from llmkit.rag.store import LanceStore, schema


def rows_and_queries(n: int, nq: int, dim: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    src = [f"doc{i % 50}.md" for i in range(n)]
    rows = pa.Table.from_pydict({
        "id": [f"{s}#{i}" for i, s in enumerate(src)], "source": src, "page": [None] * n, "heading": [None] * n,
        "start": [0] * n, "end": [100] * n, "text": [f"chunk {i} " * 20 for i in range(n)],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), dim)}, schema=schema(dim))
    q = np.random.default_rng(seed + 1).normal(size=(nq, dim)).astype(np.float32)
    return rows, x, q / np.linalg.norm(q, axis=1, keepdims=True)


def measure(store, rows, x, queries) -> dict:
    t = time.perf_counter()
    store.write(rows, ann_min_rows=None)
    insert_s = time.perf_counter() - t
    for q in queries[:5]:
        store.search(q, 10)
    times, same = [], 0
    for q in queries:
        t = time.perf_counter()
        got = store.search(q, 10)
        times.append(time.perf_counter() - t)
        same += [i for i, _ in got] == [rows["id"][j].as_py() for j in np.argsort(-(x @ q))[:10]]
    ms = np.array(times) * 1e3
    return {"insert_s": insert_s, "p50_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "agree": same / len(queries)}


def single_point_ms(folder: Path, rows: pa.Table, n: int = 100) -> float:
    """ms per point when each point is its own upsert (what batching is measured against)."""
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(folder))
    dim = rows.schema.field("vector").type.list_size
    client.create_collection("one", vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE))
    vecs = rows["vector"].combine_chunks().flatten().to_numpy().reshape(-1, dim)
    t = time.perf_counter()
    for i in range(n):
        client.upsert("one", [models.PointStruct(id=i, vector=vecs[i].tolist(), payload={"i": i})])
    ms = (time.perf_counter() - t) / n * 1e3
    client.close()
    return ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    rows, x, queries = rows_and_queries(a.rows, a.queries, a.dim, a.seed)
    with tempfile.TemporaryDirectory() as d:
        res = {"lancedb": measure(LanceStore(Path(d) / "lance", "docs"), rows, x, queries),
               "qdrant (local)": measure(qdrant.QdrantStore(Path(d) / "qdrant", "docs"), rows, x, queries)}
        one = single_point_ms(Path(d) / "one", rows)
    print(f"\n{a.rows} rows x {a.dim}-d, {a.queries} queries, k=10, exact search in both")
    print(f"{'store':<16}{'insert s':>10}{'rows/s':>10}{'query p50 ms':>14}{'p90 ms':>9}{'top10 = exact':>15}")
    for name, r in res.items():
        print(f"{name:<16}{r['insert_s']:>10.2f}{a.rows / r['insert_s']:>10.0f}{r['p50_ms']:>14.2f}"
              f"{r['p90_ms']:>9.2f}{r['agree']:>15.0%}")
    print(f"qdrant local, one point per upsert: {one:.1f} ms/point (batched above: "
          f"{res['qdrant (local)']['insert_s'] / a.rows * 1e3:.1f} ms/point, batches of {qdrant.BATCH})")
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
