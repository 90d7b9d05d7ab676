"""Milvus behind the `Store` Protocol (store.py): a Milvus server at $LLMKIT_MILVUS_URI, through pymilvus's
MilvusClient. There is no embedded mode: without the URI the store refuses, naming the variable and the script.

    rag: {store: milvus}        # recipe; LLMKIT_MILVUS_URI=http://127.0.0.1:19530 names the server
    scripts/milvus.sh start DIR 19530    # a server here: milvus-lite's gRPC server (pure Python, faiss-cpu)

Like qdrant.py's server path: every write creates a new collection `<collection>__<12 hex of a uuid4>` (Milvus
names allow only letters, digits and `_`: the collection's `.` and `-` become `_`) and records its name and the
URI in the folder as `milvus.json`; readers open what that file names. The index stage writes into a fresh temp
folder that is renamed over the published one (artifacts.build), so:
  - a killed index run never touches the collection the published index points to: it wrote a new one, and only
    the folder rename makes it the published one;
  - index.py drops the superseded collection once the new index is published (`drop_server_collection`); if that
    fails, a warning names it;
  - left behind on the server: the collection of a run killed after it began writing (named `<collection>__*`
    and recorded nowhere; drop it by hand), and the old one when the drop failed. A process still serving the old
    index (`llmkit serve` keeps its Index) loses that collection at the drop and must be restarted.
A reader uses $LLMKIT_MILVUS_URI when set (the server may be reached under another address from the serving
host), else the URI recorded at write time.

Each row is one entity: the schema's columns as typed fields (`page` and `heading` nullable), its position `_pos`
(so `read` returns rows in the order written) and the vector. The collection is created with consistency level
Strong, so a search right after the write sees every row.
"""

from __future__ import annotations

import json
import os
import re
import uuid
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa

from llmkit.artifacts import write_json_atomic
from llmkit.errors import ArtifactError, MissingExtra
from llmkit.rag import recorded
from llmkit.rag.recorded import RecordedStore
from llmkit.rag.schema import schema

URI_ENV = "LLMKIT_MILVUS_URI"
RECORD = "milvus.json"  # in the store folder: {"collection": name on the server, "uri": str}
SCRIPT = "scripts/milvus.sh start DIR PORT"  # how to start a server here (milvus-lite)
BATCH = 512  # rows per insert request (a gRPC message: ~2 kB a row at 384-d with its text, far below 64 MB)
PAGE = 1024  # rows per query when reading (Milvus caps one query's window at 16,384)
POS = "_pos"  # the row's position
MAX_VARCHAR = 65_535  # Milvus's longest VARCHAR, in bytes: a chunk's text is ~1 kB


def _pymilvus():
    try:
        import pymilvus
    except ImportError:
        raise MissingExtra("the milvus store needs pymilvus: pip install 'llmkit[milvus]'") from None
    return pymilvus


def uri_from_env() -> str:
    uri = os.environ.get(URI_ENV)
    if not uri:
        raise ArtifactError(f"rag store milvus needs a Milvus server: set ${URI_ENV} (e.g. http://127.0.0.1:19530); "
                            f"`{SCRIPT}` starts one on this machine")
    return uri


def connect(uri: str, where: str = f"${URI_ENV}"):
    """A MilvusClient on `uri` (named by `where` in the error), or an ArtifactError saying how to start one."""
    pymilvus = _pymilvus()
    try:
        return pymilvus.MilvusClient(uri=uri)
    except pymilvus.MilvusException as e:
        raise ArtifactError(f"cannot reach the Milvus server at {uri} ({where}): {e.message}; is it running? "
                            f"`{SCRIPT}` starts one on this machine") from None


def check_server() -> None:
    """Raise now (MissingExtra, or ArtifactError naming the URI and the script) unless a server answers at
    $LLMKIT_MILVUS_URI: `llmkit run` calls this before any slow stage."""
    _pymilvus()
    connect(uri_from_env()).close()


def read_record(folder: Path) -> dict | None:
    return recorded.read_record(folder, RECORD)


def server_record(folder: Path) -> dict | None:
    """The record of the server collection the store in `folder` points to (every Milvus collection is on one)."""
    return read_record(folder)


def drop_server_collection(record: dict) -> None:
    """Drop the collection `record` (from `read_record`) names; a failure is a warning naming it, since the new
    index is already published by then."""
    uri = os.environ.get(URI_ENV) or record["uri"]
    try:
        client = connect(uri)
        client.drop_collection(record["collection"])
        client.close()
    except Exception as e:  # noqa: BLE001 -- reported, and the published index does not need it
        warnings.warn(f"could not drop the superseded milvus collection {record['collection']!r} at {uri}: {e}; "
                      "drop it by hand", stacklevel=2)


def collection_name(collection: str) -> str:
    """A new server-side name for `collection`: `<collection>__<hex>`, in the characters Milvus allows."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", collection)
    return f"{'_' if safe[0].isdigit() else ''}{safe}__{uuid.uuid4().hex[:12]}"


def _sources_filter(sources: list[str]) -> str:
    # a Milvus string literal is double-quoted with backslash escapes, as JSON's (milvus-lite 3.2.2 has no filter
    # templates, which would spare the quoting); other characters as they are
    return f"source in [{', '.join(json.dumps(s, ensure_ascii=False) for s in sources)}]"


class MilvusStore(RecordedStore):
    """One collection in a Milvus server (see the module docstring). Cosine metric; vectors are stored as given
    (Milvus normalizes for cosine only inside the search). Below `ann_min_rows` the vector index is FLAT (exact);
    at or above it HNSW, and queries set `ef`."""

    EF = 128  # HNSW search breadth per query: recall vs time, as LanceStore.EF
    M, EF_CONSTRUCTION = 16, 200  # HNSW graph degree and build breadth (Milvus's documented starting point)
    ANN = "hnsw"  # index.py records this in the manifest when has_ann
    KIND, RECORD = "milvus", RECORD  # RECORD: the module's, above

    def _library(self) -> None:
        _pymilvus()

    def _open(self, rec: dict):
        uri = os.environ.get(URI_ENV) or rec["uri"]
        client = connect(uri, f"${URI_ENV}" if os.environ.get(URI_ENV) else f"recorded in {self.folder / RECORD}")
        if not client.has_collection(rec["collection"]):
            raise ArtifactError(f"the milvus collection {rec['collection']!r} that {self.folder / RECORD} "
                                f"names does not exist on {uri}")
        # milvus-lite 3.2.2 comes back from a restart with its collections released
        from pymilvus.client.types import LoadState

        if client.get_load_state(rec["collection"])["state"] != LoadState.Loaded:
            client.load_collection(rec["collection"])
        return client

    def write(self, rows: pa.Table, ann_min_rows: int | None = None) -> None:
        from pymilvus import DataType

        uri = uri_from_env()
        client = connect(uri)
        old = read_record(self.folder)
        name = collection_name(self.collection)
        dim = rows.schema.field("vector").type.list_size
        ann = ann_min_rows is not None and rows.num_rows >= max(ann_min_rows, 1)

        fields = client.create_schema(auto_id=False, enable_dynamic_field=False)
        fields.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_VARCHAR)
        fields.add_field("source", DataType.VARCHAR, max_length=MAX_VARCHAR)
        fields.add_field("page", DataType.INT32, nullable=True)
        fields.add_field("heading", DataType.VARCHAR, max_length=MAX_VARCHAR, nullable=True)
        fields.add_field("start", DataType.INT32)
        fields.add_field("end", DataType.INT32)
        fields.add_field("text", DataType.VARCHAR, max_length=MAX_VARCHAR)
        fields.add_field(POS, DataType.INT64)
        fields.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        index = client.prepare_index_params()
        if ann:
            index.add_index("vector", index_type="HNSW", metric_type="COSINE",
                            params={"M": self.M, "efConstruction": self.EF_CONSTRUCTION})
        else:
            index.add_index("vector", index_type="FLAT", metric_type="COSINE")
        client.create_collection(name, schema=fields, index_params=index, consistency_level="Strong")

        cols = [c for c in rows.column_names if c != "vector"]
        vectors = rows["vector"].combine_chunks().flatten().to_numpy().reshape(-1, dim)
        for start in range(0, rows.num_rows, BATCH):
            batch = rows.slice(start, BATCH).select(cols).to_pylist()
            client.insert(name, [{**r, POS: start + i, "vector": v.tolist()}
                                 for i, (r, v) in enumerate(zip(batch, vectors[start:start + BATCH]))])
        # seal what was inserted: unflushed rows are searched apart from the index (in milvus-lite by a Python loop
        # over its memtable: 5,000 384-d rows at p50 304 ms a query unflushed, 14 ms flushed, on 2 cores at load ~7)
        client.flush(name)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.folder / RECORD, {"collection": name, "uri": uri})
        self._client, self._record, self._ann = client, {"collection": name, "uri": uri}, ann
        if old is not None:  # a store rewritten in place (the index stage always writes into a fresh folder)
            drop_server_collection(old)

    @property
    def has_ann(self) -> bool:
        if self._ann is None:
            self._ann = self.client.describe_index(self.name, "vector")["index_type"] == "HNSW"
        return self._ann

    def read(self, columns: list[str] | None = None) -> pa.Table:
        client, name = self.client, self.name
        dim = next(f["params"]["dim"] for f in client.describe_collection(name)["fields"] if f["name"] == "vector")
        full = schema(dim)
        want = columns or full.names
        rows, start = [], 0
        while True:  # positions are 0..n-1: a page per range of them, no offset (Milvus caps offset + limit)
            page = client.query(name, filter=f"{POS} >= {start} and {POS} < {start + PAGE}", limit=PAGE,
                                output_fields=want + [POS])
            if not page:
                break
            rows += page
            start += PAGE
        rows.sort(key=lambda r: r[POS])
        data = {c: [r[c] for r in rows] for c in want if c != "vector"}
        if "vector" in want:
            flat = np.asarray([r["vector"] for r in rows], dtype=np.float32).reshape(-1)
            data["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
        return pa.Table.from_pydict(data, schema=pa.schema([full.field(c) for c in want]))

    def search(self, vector: np.ndarray, k: int, sources: list[str] | None = None) -> list[tuple[str, float]]:
        if sources is not None and not sources:
            return []
        client, name = self.client, self.name
        params = {"metric_type": "COSINE", "params": {"ef": max(self.EF, k)} if self.has_ann else {}}
        hits = client.search(name, data=[np.asarray(vector, dtype=np.float32).tolist()], limit=k,
                             filter="" if sources is None else _sources_filter(sources),
                             output_fields=["id"], search_params=params)[0]
        return [(h["entity"]["id"], float(h["distance"])) for h in hits]
