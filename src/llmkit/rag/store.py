"""Where the chunks and their vectors live, behind a small Protocol: embedded LanceDB, Qdrant (qdrant.py; a
server for scale-out, or its in-process local mode), or a Milvus server (milvus.py).

    STORES = {"lancedb": LanceStore, "qdrant": QdrantStore, "milvus": MilvusStore}   # another adapter registers
                                                                                       # here, same methods

A store holds one collection: rows of `SCHEMA` (the chunk's id, text, metadata and vector). The index stage
writes a whole collection at once into a fresh folder, `store_path(kind, index folder)` (so a killed write never
touches the published index); retrieval reads it. A server store keeps only a record of its collection there,
and the index stage drops the superseded collection once the new index is published (`server_collections`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa

from llmkit.errors import ArtifactError, MissingExtra
from llmkit.rag import milvus, qdrant
from llmkit.rag.milvus import MilvusStore
from llmkit.rag.qdrant import QdrantStore
from llmkit.rag.schema import schema  # noqa: F401 -- re-exported: the stores' row schema


class Store(Protocol):
    def write(self, rows: pa.Table, ann_min_rows: int | None = None) -> None:
        """Create the collection with these rows (replacing any it held); build an approximate-nearest-neighbour
        index when there are at least `ann_min_rows` of them (None: never)."""

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """All rows (those columns only, if given), in the order written."""

    def search(self, vector: np.ndarray, k: int, sources: list[str] | None = None) -> list[tuple[str, float]]:
        """The k nearest chunks as (id, cosine similarity), best first; only chunks of `sources` when given."""

    @property
    def has_ann(self) -> bool:
        """Whether searches go through an approximate index (its kind: the class's `ANN`) rather than exact."""


class LanceStore:
    """LanceDB, embedded: a folder on disk, no server. Exact (flat) search below `ann_min_rows`; above it an HNSW
    index over scalar-quantized vectors in one partition (FACTS.md, random vectors at 100k: 257 ms flat vs 11 ms
    IVF_HNSW_SQ per query). Its query must set `ef` itself: bench/rag.py at 3k chunks found an index queried with
    LanceDB's defaults losing recall (IVF_PQ: recall@10 0.80), HNSW_SQ with ef 100 at 0.994."""

    EF = 128  # HNSW search breadth per query: recall vs time
    ANN = "hnsw_sq"  # index.py records this in the manifest when has_ann

    def __init__(self, folder: Path, collection: str):
        # lance logs from Rust; "creating a new dataset" is a WARN there, and we only create new ones
        os.environ.setdefault("LANCEDB_LOG", "error")
        try:
            import lancedb
        except ImportError:
            raise MissingExtra("the lancedb store needs lancedb: pip install lancedb") from None
        self.db = lancedb.connect(str(folder))
        self.collection = collection
        self._table = None
        self._ann: bool | None = None

    @property
    def table(self):
        if self._table is None:
            try:
                self._table = self.db.open_table(self.collection)
            except (FileNotFoundError, ValueError) as e:
                raise ArtifactError(f"the store has no collection {self.collection!r}: {e}") from None
        return self._table

    def write(self, rows: pa.Table, ann_min_rows: int | None = None) -> None:
        self._table = self.db.create_table(self.collection, rows, mode="overwrite")
        self._ann = ann_min_rows is not None and rows.num_rows >= max(ann_min_rows, 1)
        if self._ann:
            import lancedb

            self._table.create_index("vector", config=lancedb.index.HnswSq(distance_type="cosine", num_partitions=1))

    @property
    def has_ann(self) -> bool:
        if self._ann is None:
            self._ann = any(i.columns == ["vector"] for i in self.table.list_indices())
        return self._ann

    def read(self, columns: list[str] | None = None) -> pa.Table:
        rows = self.table.to_arrow()
        return rows.select(columns) if columns else rows

    def search(self, vector: np.ndarray, k: int, sources: list[str] | None = None) -> list[tuple[str, float]]:
        q = self.table.search(np.asarray(vector, dtype=np.float32)).distance_type("cosine").limit(k)
        q = q.select(["id", "_distance"])
        if self.has_ann:
            q = q.ef(max(self.EF, k))
        if sources is not None:
            if not sources:
                return []
            q = q.where("source IN (" + ", ".join(_sql_str(s) for s in sources) + ")", prefilter=True)
        return [(r["id"], 1.0 - float(r["_distance"])) for r in q.to_list()]


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


STORES = {"lancedb": LanceStore, "qdrant": QdrantStore, "milvus": MilvusStore}
DIRS = {"lancedb": "lance", "qdrant": "qdrant", "milvus": "milvus"}  # each store's folder inside the index folder
# stores whose collection may live on a server: their modules' server_record(folder), drop_server_collection(record)
SERVERS = {"qdrant": qdrant, "milvus": milvus}


def _known(kind: str) -> str:
    if kind not in STORES:
        raise ArtifactError(f"unknown store {kind!r} (supported: {', '.join(STORES)})")
    return kind


def store_path(kind: str, index_folder: Path) -> Path:
    return Path(index_folder) / DIRS[_known(kind)]


def open_store(kind: str, folder: Path, collection: str) -> Store:
    return STORES[_known(kind)](folder, collection)


def server_collections(index_folder: Path) -> list[tuple[str, dict]]:
    """The server collections the index in `index_folder` points to, as (store kind, record); whatever store it
    was written with, so a re-index into another store still drops them."""
    return [(kind, rec) for kind, mod in SERVERS.items()
            if (rec := mod.server_record(store_path(kind, index_folder))) is not None]


def drop_server_collections(found: list[tuple[str, dict]]) -> None:
    """Drop what `server_collections` found, once the index that superseded them is published (a failure warns)."""
    for kind, rec in found:
        SERVERS[kind].drop_server_collection(rec)
