"""What the two stores that keep their rows outside the index folder share (milvus.py, qdrant.py): the folder
holds a small JSON record naming the collection and where it lives, and the client opens from it on first use.

    class MilvusStore(RecordedStore):
        KIND, RECORD = "milvus", "milvus.json"
        def _open(self, rec): ...   # a client on rec["collection"], checked to exist

`write` (each store's own) replaces the record once the new collection is complete and sets `_client`,
`_record` and `_ann` itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from llmkit.errors import ArtifactError


def read_record(folder: Path, name: str) -> dict | None:
    """The JSON record `name` in the store folder, None when there is none."""
    p = Path(folder) / name
    return json.loads(p.read_text()) if p.is_file() else None


class RecordedStore:
    KIND = ""  # the store's name in messages: "milvus", "qdrant"
    RECORD = ""  # the record's file name in the store folder

    def __init__(self, folder: Path, collection: str):
        self._library()  # a missing extra fails here, not at the first query
        self.folder = Path(folder)
        self.collection = collection
        self._client = None
        self._record: dict | None = None
        self._ann: bool | None = None

    def _library(self) -> None:
        """Import the client library, or raise MissingExtra naming the extra."""
        raise NotImplementedError

    def _open(self, rec: dict):
        """A client on the collection `rec` names; ArtifactError when it does not exist."""
        raise NotImplementedError

    @property
    def client(self):
        if self._client is None:
            rec = read_record(self.folder, self.RECORD)
            if rec is None:
                raise ArtifactError(f"{self.folder} holds no {self.KIND} collection (no {self.RECORD}) for "
                                    f"{self.collection!r}")
            self._client, self._record = self._open(rec), rec
        return self._client

    @property
    def name(self) -> str:
        """The collection's name where it lives: `<collection>__<hex>`."""
        self.client  # noqa: B018 -- opening reads the record
        return self._record["collection"]
