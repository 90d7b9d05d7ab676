"""The rows of a collection: one Arrow schema that every store (store.py's LanceStore, qdrant.py's QdrantStore,
milvus.py's MilvusStore) writes and reads, here below them so that no store imports the registry that imports it."""

from __future__ import annotations

import pyarrow as pa


def schema(dim: int) -> pa.Schema:
    return pa.schema([
        ("id", pa.string()),        # "<source>#<n>": n counts the file's chunks from 0
        ("source", pa.string()),
        ("page", pa.int32()),       # null for formats without pages
        ("heading", pa.string()),
        ("start", pa.int32()),
        ("end", pa.int32()),
        ("text", pa.string()),
        ("vector", pa.list_(pa.float32(), dim)),
    ])
