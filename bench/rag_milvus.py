"""`store: milvus` (a Milvus server: milvus-lite's, started by scripts/milvus.sh on 127.0.0.1) beside the default
`store: lancedb` (embedded), on the example docs and on synthetic rows.

    .venv/bin/python bench/rag_milvus.py [--repeats 3] [--rows 5000] [--queries 200]

Figures:
- example docs (examples/support/docs, the index stage with each store into a fresh folder, --repeats times,
  median): the stage's wall time and its store_s (writing the rows into the store + BM25; the embedding, the
  same for both, is in the total only);
- query p50/p90 over the 20 questions of examples/support/rag_questions.jsonl, each asked --passes times after
  one warm-up pass: the store's dense search alone (`store.search`, the query vector given) and the whole hybrid
  retrieval (`Index.search`: embedding the question, dense, BM25, fusion);
- synthetic rows (bench/rag_stores.py's rows and measure(): --rows random 384-d vectors, --queries queries, k=10,
  exact search in both): insert time, query p50/p90, top-10 agreement with numpy's exact answer.
The machine's load (uptime) is printed before and after: on a shared box the figures move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rag_stores import measure, rows_and_queries  # bench/ is on sys.path when run as a script

from llmkit.config import RagConfig
from llmkit.rag import index, milvus, open_index
from llmkit.rag.milvus import MilvusStore
from llmkit.rag.store import LanceStore

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "examples" / "support" / "docs"
QUESTIONS = ROOT / "examples" / "support" / "rag_questions.jsonl"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def start_server(folder: Path) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run([str(ROOT / "scripts" / "milvus.sh"), "start", str(folder), str(port)], check=True, env=env)
    return f"http://127.0.0.1:{port}"


def pct(times: list[float]) -> tuple[float, float]:
    ms = np.array(times) * 1e3
    return float(np.median(ms)), float(np.percentile(ms, 90))


def docs_figures(store: str, out: Path, repeats: int, passes: int) -> dict:
    cfg = RagConfig(sources=[str(DOCS)], collection="nimbus", store=store)
    # a fresh folder each time: in the same one, even with force, unchanged files' vectors would be reused
    runs = [index(cfg, out / str(i), progress=False)["metrics"] for i in range(repeats)]
    idx = open_index(out / "0")
    questions = [json.loads(line)["question"] for line in QUESTIONS.read_text().splitlines() if line.strip()]
    vectors = idx.model.encode(questions, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    dense, hybrid = [], []
    for p in range(passes + 1):  # pass 0 warms up
        for q, v in zip(questions, vectors):
            t = time.perf_counter()
            idx.store.search(v, 4)
            t1 = time.perf_counter()
            idx.search(q, 4)
            t2 = time.perf_counter()
            if p:
                dense.append(t1 - t)
                hybrid.append(t2 - t1)
    return {"chunks": runs[0]["chunks"], "index_s": statistics.median(r["seconds"] for r in runs),
            "store_s": statistics.median(r["store_s"] for r in runs), "dense": pct(dense), "hybrid": pct(hybrid),
            "queries": len(dense)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="index runs per store (median)")
    ap.add_argument("--passes", type=int, default=5, help="passes over the 20 questions (after one warm-up)")
    ap.add_argument("--rows", type=int, default=5000, help="synthetic rows (0: skip)")
    ap.add_argument("--queries", type=int, default=200)
    a = ap.parse_args()
    print("uptime:", uptime())
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        os.environ[milvus.URI_ENV] = start_server(d / "server")
        try:
            docs = {s: docs_figures(s, d / s, a.repeats, a.passes) for s in ("lancedb", "milvus")}
            if a.rows:
                rows, x, queries = rows_and_queries(a.rows, a.queries, 384, 0)
                synth = {"lancedb": measure(LanceStore(d / "lance", "docs"), rows, x, queries),
                         "milvus": measure(MilvusStore(d / "milvus", "docs"), rows, x, queries)}
        finally:
            subprocess.run([str(ROOT / "scripts" / "milvus.sh"), "stop", str(d / "server")], check=False)
    n = docs["lancedb"]["chunks"]
    print(f"\nexample docs: {n} chunks; index stage median of {a.repeats} (fresh folders); "
          f"{docs['lancedb']['queries']} queries, top 4")
    print(f"{'store':<10}{'index s':>9}{'store s':>9}{'dense p50 ms':>14}{'p90':>8}{'hybrid p50 ms':>15}{'p90':>8}")
    for s, r in docs.items():
        print(f"{s:<10}{r['index_s']:>9.2f}{r['store_s']:>9.3f}{r['dense'][0]:>14.2f}{r['dense'][1]:>8.1f}"
              f"{r['hybrid'][0]:>15.2f}{r['hybrid'][1]:>8.1f}")
    if a.rows:
        print(f"\nsynthetic: {a.rows} rows x 384-d, {a.queries} queries, k=10, exact search in both")
        print(f"{'store':<10}{'insert s':>10}{'rows/s':>10}{'query p50 ms':>14}{'p90 ms':>9}{'top10 = exact':>15}")
        for s, r in synth.items():
            print(f"{s:<10}{r['insert_s']:>10.2f}{a.rows / r['insert_s']:>10.0f}{r['p50_ms']:>14.2f}"
                  f"{r['p90_ms']:>9.2f}{r['agree']:>15.0%}")
    print("uptime:", uptime())


if __name__ == "__main__":
    main()
