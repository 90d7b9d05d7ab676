"""Qdrant behind the `Store` Protocol (store.py): a Qdrant server for scale-out when $LLMKIT_QDRANT_URL is set
(e.g. http://qdrant:6333), else qdrant-client's local mode in the index folder, which runs the same client API
in-process (what the tests use; no server here).

    rag: {store: qdrant}        # recipe; LLMKIT_QDRANT_URL=http://host:6333 sends the vectors to a server

Every write creates a new collection `<collection>__<12 hex of a uuid4>` and records its name (and the URL, or
null in local mode) in the folder as `qdrant.json`; readers open what that file names. The index stage writes
into a fresh temp folder that is renamed over the published one (artifacts.build), so on a server:
  - a killed index run never touches the collection the published index points to: it wrote a new one, and only
    the folder rename makes it the published one;
  - index.py drops the superseded collection once the new index is published (`drop_server_collection`); if
    that fails, a warning names it;
  - left behind on the server: the collection of a run killed after it began writing (named `<collection>__*`
    and recorded nowhere; delete it by hand), and the old one when the drop failed. A process still serving the
    old index (`llmkit serve` keeps its Index) loses that collection at the drop and must be restarted, as with
    lance, whose old folder is deleted.
A reader uses $LLMKIT_QDRANT_URL when set (the server may be reached under another address from the serving
host), else the URL recorded at write time.

Local mode keeps the data in the folder like lance. Its search is always exact (numpy over every point; qdrant-
client warns past 20,000 points), so `ann_min_rows` matters only on a server. It commits SQLite once per point
even inside a batch, so batching barely helps there: bench/rag_stores.py, 5,000 384-d rows on a 2-core box at
load ~5, wrote in 51 s (10 ms/point; 13 ms one point per upsert) against lancedb's 0.16 s, and searched at p50
24 ms against lancedb's 20 ms (exact both). Batches of BATCH are for a server. qdrant-client locks
the folder to one client: within a process the client is shared per collection (a weak map, released when the
last store using it goes), but two processes cannot open one local index at once — a running `llmkit serve`
blocks a re-index from reading the old rows (an ArtifactError says so; a server has no such limit).
"""

from __future__ import annotations

import os
import uuid
import warnings
import weakref
from pathlib import Path

import numpy as np
import pyarrow as pa

from llmkit.artifacts import write_json_atomic
from llmkit.errors import ArtifactError, MissingExtra
from llmkit.rag import recorded
from llmkit.rag.recorded import RecordedStore
from llmkit.rag.schema import schema

URL_ENV = "LLMKIT_QDRANT_URL"
RECORD = "qdrant.json"  # in the store folder: {"collection": name on the server or in the folder, "url": str | null}
BATCH = 256  # points per upsert request
PAGE = 1024  # points per scroll request when reading
POS = "_pos"  # payload key: the row's position, so `read` returns rows in the order written
_ID_NS = uuid.uuid5(uuid.NAMESPACE_URL, "llmkit.rag.chunk")  # point ids: uuid5 of the chunk id in this namespace

# local clients by collection name (unique per write): qdrant-client locks the folder to one client, so every
# store of one index in this process must share it
_LOCAL: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _qdrant():
    try:
        import qdrant_client
        from qdrant_client import models
    except ImportError:
        raise MissingExtra("the qdrant store needs qdrant-client: pip install 'llmkit[qdrant]'") from None
    return qdrant_client, models


def point_id(chunk_id: str) -> str:
    """Qdrant accepts only unsigned integers and UUIDs as point ids; the chunk id stays in the payload."""
    return str(uuid.uuid5(_ID_NS, chunk_id))


def _server(url: str):
    qdrant_client, _ = _qdrant()
    return qdrant_client.QdrantClient(url=url)


def _local(folder: Path, name: str | None):
    if name is not None and (client := _LOCAL.get(name)) is not None:
        return client
    qdrant_client, _ = _qdrant()
    try:
        client = qdrant_client.QdrantClient(path=str(folder))
    except RuntimeError as e:  # the folder lock: another process has this index open
        raise ArtifactError(f"cannot open the local qdrant store {folder}: {e} (stop the process that has it "
                            f"open, e.g. `llmkit serve`, or index into a server with ${URL_ENV})") from None
    if name is not None:
        _LOCAL[name] = client
    return client


def read_record(folder: Path) -> dict | None:
    return recorded.read_record(folder, RECORD)


def server_record(folder: Path) -> dict | None:
    """The record of the server collection the store in `folder` points to; None in local mode (its data goes
    with the folder)."""
    rec = read_record(folder)
    return rec if rec is not None and rec["url"] else None


def drop_server_collection(record: dict) -> None:
    """Delete the server collection `record` (from `read_record`) names; a failure is a warning naming it, since
    the new index is already published by then."""
    url = os.environ.get(URL_ENV) or record["url"]
    try:
        _server(url).delete_collection(record["collection"])
    except Exception as e:  # noqa: BLE001 -- reported, and the published index does not need it
        warnings.warn(f"could not delete the superseded qdrant collection {record['collection']!r} at {url}: {e}; "
                      "delete it by hand", stacklevel=2)


class QdrantStore(RecordedStore):
    """One collection in Qdrant (see the module docstring for where it lives). Cosine distance; each point's
    payload holds the row's columns but the vector, plus its position. Qdrant normalizes vectors for cosine, so
    `read` returns them re-normalized (they already are: differences ~1e-8, float32 rounding). Below
    `ann_min_rows` the collection is created without an HNSW graph (m=0) and searched exactly; at or above it a
    server builds HNSW (in the background, after the write returns) and queries set `hnsw_ef`."""

    EF = 128  # HNSW search breadth per query (server only): recall vs time, as LanceStore.EF
    ANN = "hnsw"  # index.py records this in the manifest when has_ann
    KIND, RECORD = "qdrant", RECORD  # RECORD: the module's, above

    def _library(self) -> None:
        _qdrant()

    def _open(self, rec: dict):
        url = rec["url"] and (os.environ.get(URL_ENV) or rec["url"])
        client = _server(url) if url else _local(self.folder, rec["collection"])
        if not client.collection_exists(rec["collection"]):
            raise ArtifactError(f"the qdrant collection {rec['collection']!r} that {self.folder / RECORD} "
                                f"names does not exist" + (f" on {url}" if url else ""))
        return client

    def write(self, rows: pa.Table, ann_min_rows: int | None = None) -> None:
        _, models = _qdrant()
        old = read_record(self.folder)
        old_client = self.client if old is not None else None  # opened before the record is replaced
        url = os.environ.get(URL_ENV) or None
        if url:
            client = _server(url)
        elif old is not None and old["url"] is None:
            client = old_client  # the folder's lock allows one client: the old collection's
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            client = _local(self.folder, None)
        name = f"{self.collection}__{uuid.uuid4().hex[:12]}"
        dim = rows.schema.field("vector").type.list_size
        ann = bool(url) and ann_min_rows is not None and rows.num_rows >= max(ann_min_rows, 1)
        client.create_collection(name, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
                                 hnsw_config=None if ann else models.HnswConfigDiff(m=0))
        if url:  # filtered search (the `sources` filter) wants a keyword index on the field
            client.create_payload_index(name, "source", models.PayloadSchemaType.KEYWORD)
        cols = [c for c in rows.column_names if c != "vector"]
        vectors = rows["vector"].combine_chunks().flatten().to_numpy().reshape(-1, dim)
        for start in range(0, rows.num_rows, BATCH):
            payloads = rows.slice(start, BATCH).select(cols).to_pylist()
            points = [models.PointStruct(id=point_id(p["id"]), vector=v.tolist(), payload={**p, POS: start + i})
                      for i, (p, v) in enumerate(zip(payloads, vectors[start:start + BATCH]))]
            client.upsert(name, points, wait=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.folder / RECORD, {"collection": name, "url": url})
        if not url:
            _LOCAL[name] = client
        self._client, self._record, self._ann = client, {"collection": name, "url": url}, ann
        if old is not None:
            old_client.delete_collection(old["collection"])

    @property
    def has_ann(self) -> bool:
        if self._ann is None:
            client = self.client
            self._ann = bool(self._record["url"]) and client.get_collection(self.name).config.hnsw_config.m > 0
        return self._ann

    def read(self, columns: list[str] | None = None) -> pa.Table:
        client, name = self.client, self.name
        dim = client.get_collection(name).config.params.vectors.size
        full = schema(dim)
        want = columns or full.names
        fields = [c for c in want if c != "vector"]
        points, offset = [], None
        while True:
            page, offset = client.scroll(name, limit=PAGE, offset=offset, with_payload=fields + [POS],
                                         with_vectors="vector" in want)
            points += page
            if offset is None:
                break
        points.sort(key=lambda p: p.payload[POS])
        data = {c: [p.payload.get(c) for p in points] for c in fields}
        if "vector" in want:
            flat = np.asarray([p.vector for p in points], dtype=np.float32).reshape(-1)
            data["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
        return pa.Table.from_pydict(data, schema=pa.schema([full.field(c) for c in want]))

    def search(self, vector: np.ndarray, k: int, sources: list[str] | None = None) -> list[tuple[str, float]]:
        if sources is not None and not sources:
            return []
        _, models = _qdrant()
        flt = None if sources is None else models.Filter(
            must=[models.FieldCondition(key="source", match=models.MatchAny(any=list(sources)))])
        client = self.client
        if not self._record["url"]:
            params = None  # local mode is always exact and warns at any search_params
        elif self.has_ann:
            params = models.SearchParams(hnsw_ef=max(self.EF, k))
        else:
            params = models.SearchParams(exact=True)
        res = client.query_points(self.name, query=np.asarray(vector, dtype=np.float32).tolist(), limit=k,
                                       query_filter=flt, search_params=params, with_payload=["id"])
        return [(p.payload["id"], float(p.score)) for p in res.points]
