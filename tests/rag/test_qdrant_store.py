"""The Qdrant store (rag/qdrant.py) in qdrant-client's local mode, checked against the embedded LanceStore on the
same rows: same rows back in the same order, same top-10 and cosine scores as lance's exact search, the sources
filter. Then the index stage with `store: qdrant` end to end, and its server path (a collection per index run,
the superseded one dropped, a failed run leaving the published one alone) against an in-memory client standing
in for the server."""

import json

import numpy as np
import pytest
from rag_helpers import assert_searches_as_lance, block_import, cfg, random_rows, write_docs

pytest.importorskip("qdrant_client")

from llmkit.rag import index, qdrant, retrieve  # noqa: E402
from llmkit.rag.qdrant import QdrantStore  # noqa: E402
from llmkit.rag.store import LanceStore  # noqa: E402

SOURCES = ["a.md", "b.md", "c.md", "d.md"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    rows, queries = random_rows(SOURCES)
    folder = tmp_path_factory.mktemp("stores")
    lance, qd = LanceStore(folder / "lance", "docs"), QdrantStore(folder / "qdrant", "docs")
    lance.write(rows, ann_min_rows=None)
    qd.write(rows, ann_min_rows=None)
    return rows, queries, lance, qd


def test_read_returns_the_same_rows_in_the_same_order(stores):
    rows, _, lance, qd = stores
    got, want = qd.read(), lance.read()
    assert got.schema == want.schema == rows.schema
    cols = [c for c in rows.column_names if c != "vector"]
    assert got.select(cols).to_pylist() == want.select(cols).to_pylist() == rows.select(cols).to_pylist()
    # qdrant re-normalizes for cosine: float32 rounding only
    np.testing.assert_allclose(np.array(got["vector"].to_pylist()), np.array(rows["vector"].to_pylist()), atol=1e-6)
    assert qd.read(["id", "page"]).to_pylist() == rows.select(["id", "page"]).to_pylist()
    assert not qd.has_ann  # local mode is exact


def test_search_and_sources_filter_agree_with_lance_exact_search(stores):
    _, queries, lance, qd = stores
    assert_searches_as_lance(qd, lance, queries, ["b.md", "d.md"])


def test_reopened_and_rewritten(stores, tmp_path):
    rows, queries, _, qd = stores
    again = QdrantStore(qd.folder, "docs")  # how retrieval opens it: the folder's record names the collection
    assert again.name == qd.name and again.search(queries[0], 3) == qd.search(queries[0], 3)
    s = QdrantStore(tmp_path / "q", "docs")
    s.write(rows.slice(0, 20))
    first = s.name
    s.write(rows.slice(20, 5))  # replaces: a new collection, the old one deleted
    assert s.name != first and s.read(["id"])["id"].to_pylist() == rows["id"].to_pylist()[20:25]
    assert [c.name for c in s.client.get_collections().collections] == [s.name]


def test_index_and_retrieve_with_qdrant(tmp_path):
    docs = write_docs(tmp_path / "docs")
    r = index(cfg(docs, store="qdrant"), tmp_path / "idx", progress=False)
    assert r["status"] == "ran" and r["metrics"]["files"] == 3
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["outputs"]["store"] == "qdrant" and manifest["outputs"]["ann"] is None
    record = json.loads((tmp_path / "idx" / "qdrant" / "qdrant.json").read_text())
    assert record["url"] is None and record["collection"].startswith("docs__")
    assert not (tmp_path / "idx" / "lance").exists()
    top = retrieve(tmp_path / "idx", "How long must I hold the reset button?")[0]
    assert (top.source, top.heading, top.rank) == ("docs/router.md", "Factory reset", 1) and "10 seconds" in top.text
    assert retrieve(tmp_path / "idx", "reset the router", top_k=10, where={"source": "*.txt"})[0].source == \
        "docs/modem.txt"

    # incremental: the unchanged files' rows come from the published local store (its client shared in-process
    # with the retrieval above)
    (docs / "modem.txt").write_text("The modem's serial number is on the box.\n")
    m = index(cfg(docs, store="qdrant"), tmp_path / "idx", progress=False)["metrics"]
    assert (m["unchanged_files"], m["embedded_files"]) == (2, 1)
    assert retrieve(tmp_path / "idx", "Where is the serial number?", top_k=1)[0].source == "docs/modem.txt"


# the in-memory stand-in says a server would use the payload index and search params; that is the point
@pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning",
                            "ignore:Local mode performs exact:UserWarning")
def test_server_path_collection_per_run_and_the_superseded_one_dropped(tmp_path, monkeypatch):
    from qdrant_client import QdrantClient

    server = QdrantClient(":memory:")  # stands in for a server: not in the index folder
    monkeypatch.setenv(qdrant.URL_ENV, "http://qdrant.test:6333")
    monkeypatch.setattr(qdrant, "_server", lambda url: server)
    names = lambda: sorted(c.name for c in server.get_collections().collections)  # noqa: E731

    docs = write_docs(tmp_path / "docs")
    index(cfg(docs, store="qdrant"), tmp_path / "idx", progress=False)
    first = json.loads((tmp_path / "idx" / "qdrant" / "qdrant.json").read_text())
    assert first["url"] == "http://qdrant.test:6333" and names() == [first["collection"]]
    assert sorted(p.name for p in (tmp_path / "idx" / "qdrant").iterdir()) == ["qdrant.json"]  # no data there

    # a run that fails after the new collection is written leaves the published index and its collection alone
    (docs / "modem.txt").write_text("The modem's serial number is on the box.\n")
    write = qdrant.QdrantStore.write
    monkeypatch.setattr(qdrant.QdrantStore, "write", _write_then_fail(write))
    with pytest.raises(RuntimeError, match="killed"):
        index(cfg(docs, store="qdrant"), tmp_path / "idx", progress=False)
    assert json.loads((tmp_path / "idx" / "qdrant" / "qdrant.json").read_text()) == first
    assert first["collection"] in names() and len(names()) == 2  # the orphan the docstring says is left behind
    assert retrieve(tmp_path / "idx", "Where is the MAC address?", top_k=1)[0].source == "docs/modem.txt"

    monkeypatch.setattr(qdrant.QdrantStore, "write", write)
    server.delete_collection(next(n for n in names() if n != first["collection"]))
    index(cfg(docs, store="qdrant"), tmp_path / "idx", progress=False)
    second = json.loads((tmp_path / "idx" / "qdrant" / "qdrant.json").read_text())
    assert second["collection"] != first["collection"] and names() == [second["collection"]]
    assert retrieve(tmp_path / "idx", "Where is the serial number?", top_k=1)[0].source == "docs/modem.txt"


def _write_then_fail(write):
    def failing(self, rows, ann_min_rows=None):
        write(self, rows, ann_min_rows)
        raise RuntimeError("killed after writing")
    return failing


def test_missing_client_is_a_missing_extra(monkeypatch):
    from llmkit.errors import MissingExtra

    block_import(monkeypatch, "qdrant_client")
    with pytest.raises(MissingExtra, match=r"pip install 'llmkit\[qdrant\]'"):
        QdrantStore("/nonexistent", "docs")
