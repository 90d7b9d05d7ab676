"""The rag stage: documents → an index artifact (a vector store + a BM25 index + manifest), incrementally.

    index(RagConfig(sources=["docs"]), Path("runs/x/rag"))

The artifact folder:

    manifest.json   kind "rag-index"; inputs: every indexed file's sha256; outputs.files: per file its chunks
                    and pages; outputs.failed: files that could not be read and why; metrics: counts, timings
    lance/          store lancedb: the LanceDB store, one table named after the collection (store.SCHEMA rows)
    qdrant/         store qdrant: qdrant.json naming the collection (`<collection>__<hex>`) and, in local mode,
                    its data; on a server (LLMKIT_QDRANT_URL) the superseded collection is dropped once the new
                    index is published (rag/qdrant.py says what a killed run leaves there)
    milvus/         store milvus: milvus.json naming the collection on the Milvus server ($LLMKIT_MILVUS_URI) and
                    the server's URI; the superseded collection is dropped the same way (rag/milvus.py)
    bm25/           the bm25s index over the same chunks, and ids.json (its row order)

Incremental: a file whose content hash is the previous index's is not read or embedded again (its rows and
vectors are copied), a changed one is re-chunked and re-embedded, a deleted one drops out. That reuse needs the
same embedder and chunking; any change there rebuilds everything.

Crash safety comes from `artifacts.build`: the new index is written in a temporary sibling folder and renamed
over the old one only when complete, so a killed run leaves the previous index in place and queryable, and the
next run (which sweeps the leftovers) produces what a clean run would.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmkit import artifacts
from llmkit.config import RagConfig
from llmkit.errors import DataError
from llmkit.rag import chunk as chunking
from llmkit.rag import embed, ingest
from llmkit.rag.schema import schema
from llmkit.rag.store import STORES, drop_server_collections, open_store, server_collections, store_path

KIND = "rag-index"
# What a previous index must share for its vectors to be reused.
REUSE_KEYS = ("embedder", "chunk_tokens", "chunk_overlap", "store")
# Where the embedding runs: not part of the index's identity (Ray and local give the same vectors)
RUN_ON = ("backend", "ray_address", "workers")


def bm25_tokens(texts: list[str]):
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", show_progress=False)


def index(cfg: RagConfig, out: Path, *, base_dir: Path | None = None, force: bool = False,
          progress: bool = True) -> dict:
    """Index `cfg.sources` into the artifact folder `out`; skipped when it already holds this exact index.

    Returns {"status": "ran" | "skipped", "out", "metrics", "failed": [{source, path, reason}]}.
    """
    t0 = time.perf_counter()
    out = Path(out).resolve()
    base = Path(base_dir) if base_dir is not None else Path(".")
    roots = [p if (p := Path(s).expanduser()).is_absolute() else base / p for s in cfg.sources]
    files, failed = ingest.walk(roots, cfg.include, cfg.exclude)
    inputs = {f.source: {"path": str(f.path.resolve()), "sha256": artifacts.sha256_file(f.path)} for f in files}
    config = cfg.model_dump(exclude=set(RUN_ON))
    fp = artifacts.fingerprint(KIND, {**config, "refused": [f.source for f in failed]}, inputs)
    if not force and (m := artifacts.finished(out, fp)):
        return {"status": "skipped", "out": out, "metrics": m["metrics"], "failed": m["outputs"]["failed"]}
    if not files:
        raise DataError(f"nothing to index: no file under {', '.join(map(str, roots))} matches include "
                        f"{cfg.include}" + (f" and not exclude {cfg.exclude}" if cfg.exclude else ""))

    timings: dict[str, float] = {}
    t = time.perf_counter()
    model = embed.load_embedder(cfg.embedder)
    embed.check_chunk_size(model, cfg.embedder, cfg.chunk_tokens)
    timings["load_embedder_s"] = time.perf_counter() - t

    previous = _reusable(out, config)
    kept = {s for s, ref in inputs.items() if previous and previous["inputs"].get(s, {}).get("sha256") == ref["sha256"]
            and s in previous["outputs"]["files"]}
    todo = [f for f in files if f.source not in kept]

    # read and chunk what changed; a file that fails is reported (and stops the stage under on_error: fail)
    t = time.perf_counter()
    chunks: dict[str, list[chunking.Chunk]] = {}
    pages: dict[str, int] = {}
    for f in todo:
        try:
            doc = ingest.read(f.path)
        except DataError as e:
            failed.append(ingest.Failed(f.source, str(f.path), str(e)))
            continue
        chunks[f.source] = chunking.chunk_pages(doc, model.tokenizer, cfg.chunk_tokens, cfg.chunk_overlap)
        pages[f.source] = len(doc)
    timings["read_chunk_s"] = time.perf_counter() - t
    if failed and cfg.on_error == "fail":
        raise DataError("cannot index these files (on_error: fail; `skip` indexes the rest):\n" +
                        "\n".join(f"  - {x.path}: {x.reason}" for x in failed))

    if not any(chunks.values()) and not kept:
        raise DataError("nothing to index: no text in any file" +
                        "".join(f"\n  - {x.path}: {x.reason}" for x in failed))

    # the server collection the published index points to (if any), dropped once this one replaces it
    superseded = server_collections(out)
    with artifacts.build(KIND, out, {**config, "refused": [f.source for f in failed if f.source not in inputs]},
                         {s: inputs[s] for s in inputs if s in kept or s in chunks}) as b:
        b.fingerprint = fp  # what the skip check above computes: the files found (a failed one is retried)
        t = time.perf_counter()
        new = [(s, i, c) for s in sorted(chunks) for i, c in enumerate(chunks[s])]
        texts = [c.embed_text() for _, _, c in new]
        if cfg.backend == "ray" and texts:
            from llmkit.rag.ray_embed import encode_on_ray

            vectors = encode_on_ray(cfg.embedder, texts, cfg.batch_size, workers=cfg.workers,
                                    address=cfg.ray_address, progress=progress,
                                    after_batch=lambda _: artifacts.kill_point("embed.batch"))
        else:
            vectors = embed.encode(model, texts, cfg.batch_size, progress,
                                   after_batch=lambda _: artifacts.kill_point("embed.batch"))
        timings["embed_s"] = time.perf_counter() - t

        t = time.perf_counter()
        dim = model.get_embedding_dimension()
        tables, k = {}, 0
        for s in sorted(chunks):  # `new` is in this order: each file's rows are one slice of `vectors`
            n = len(chunks[s])
            tables[s] = _rows(list(enumerate(chunks[s])), vectors[k:k + n], s, dim)
            k += n
        if kept:
            old = open_store(cfg.store, store_path(cfg.store, out), cfg.collection).read()
            for s in kept:
                tables[s] = old.filter(pc.equal(old["source"], s))
        rows = pa.concat_tables([tables[s] for s in sorted(tables)]) if tables else schema(dim).empty_table()
        store = open_store(cfg.store, store_path(cfg.store, b.tmp), cfg.collection)
        store.write(rows, ann_min_rows=cfg.ann_min_rows)
        _write_bm25(b.tmp / "bm25", rows)
        timings["store_s"] = time.perf_counter() - t

        files_out = {s: {"chunks": int(tables[s].num_rows),
                         "pages": pages.get(s, previous["outputs"]["files"][s]["pages"] if s in kept else 0)}
                     for s in sorted(tables)}
        b.outputs = {"collection": cfg.collection, "store": cfg.store, "dim": dim, "files": files_out,
                     "ann": STORES[cfg.store].ANN if store.has_ann else None,
                     "failed": [vars(x) for x in failed]}
        removed = sorted(set(previous["outputs"]["files"]) - set(tables)) if previous else []
        b.outputs["embedded_on"] = f"ray ({cfg.workers} actors)" if cfg.backend == "ray" else "local"
        b.metrics = {"files": len(files_out), "chunks": int(rows.num_rows), "embedded_files": len(chunks),
                     "unchanged_files": len(kept), "removed_files": len(removed), "failed_files": len(failed),
                     "embedded_chunks": len(new), **{k: round(v, 3) for k, v in timings.items()},
                     "seconds": round(time.perf_counter() - t0, 3)}
    drop_server_collections(superseded)
    return {"status": "ran", "out": out, "metrics": b.metrics, "failed": b.outputs["failed"]}


def _reusable(out: Path, config: dict) -> dict | None:
    """The previous finished index in `out` if its vectors can be reused with this config, else None."""
    try:
        m = artifacts.read_manifest(out)
    except Exception:  # noqa: BLE001 -- no index, or an unreadable one: build from scratch
        return None
    if m.get("kind") != KIND or m.get("status") != "finished" or not store_path(config["store"], out).is_dir():
        return None
    if any(m["config"].get(k) != config[k] for k in REUSE_KEYS + ("collection",)):
        return None
    return m


def _rows(items: list[tuple[int, chunking.Chunk]], vectors: np.ndarray, source: str, dim: int) -> pa.Table:
    return pa.Table.from_pydict({
        "id": [f"{source}#{i}" for i, _ in items],
        "source": [source] * len(items),
        "page": [c.page for _, c in items],
        "heading": [c.heading for _, c in items],
        "start": [c.start for _, c in items],
        "end": [c.end for _, c in items],
        "text": [c.text for _, c in items],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
    }, schema=schema(dim))


def _write_bm25(folder: Path, rows: pa.Table) -> None:
    import bm25s

    texts = [f"{h}\n{t}" if h else t for h, t in zip(rows["heading"].to_pylist(), rows["text"].to_pylist())]
    retriever = bm25s.BM25()
    retriever.index(bm25_tokens(texts), show_progress=False)
    retriever.save(str(folder))
    (folder / "ids.json").write_text(json.dumps(rows["id"].to_pylist()))
