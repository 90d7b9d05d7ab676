"""The Milvus store (rag/milvus.py) against a real Milvus server: milvus-lite's gRPC server, started and stopped
through scripts/milvus.sh on a free port, driven by pymilvus as any Milvus server would be.

Checked against the embedded LanceStore on the same rows (same rows back in the same order, same top-10 and
cosine scores as lance's exact search, the sources filter, an HNSW index when asked); then the index stage on the
example docs with `store: milvus` beside `store: lancedb` (same embedder, so the same vectors: the same dense hits
and scores), incremental re-indexing with the superseded collection dropped, the example recipe's rag section run
by `llmkit run` with only `store: milvus` added, and the errors when no server is named or none answers."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from rag_helpers import assert_searches_as_lance, block_import, random_rows

pytest.importorskip("milvus_lite", reason="milvus-lite (the server scripts/milvus.sh runs) is not installed: "
                                          "pip install 'llmkit[milvus]'")
pytest.importorskip("pymilvus", reason="pymilvus is not installed: pip install 'llmkit[milvus]'")

from llmkit.cli import main  # noqa: E402
from llmkit.config import RagConfig  # noqa: E402
from llmkit.errors import ArtifactError  # noqa: E402
from llmkit.rag import evaluate, index, milvus, open_index  # noqa: E402
from llmkit.rag.milvus import MilvusStore  # noqa: E402
from llmkit.rag.store import LanceStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "milvus.sh"
EXAMPLES = ROOT / "examples"
SOURCES = ["a.md", "b.md", 'c "quoted".md', "d-café.md"]  # the sources filter must quote these


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A milvus-lite server started by scripts/milvus.sh (its URI), stopped by it at the end."""
    folder = tmp_path_factory.mktemp("milvus")
    r = _script("start", str(folder), str(_free_port()))
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        uri = _script("uri", str(folder)).stdout.strip()
        assert r.stdout.startswith(f"milvus-lite on {uri}") and _script("status", str(folder)).returncode == 0
        yield uri
    finally:
        stop = _script("stop", str(folder))
        assert stop.returncode == 0 and stop.stdout.startswith("stopped"), stop.stdout + stop.stderr
        assert _script("status", str(folder)).returncode == 3


@pytest.fixture
def uri(server, monkeypatch):
    monkeypatch.setenv(milvus.URI_ENV, server)
    return server


def _names(uri: str) -> list[str]:
    from pymilvus import MilvusClient

    return sorted(MilvusClient(uri=uri).list_collections())


@pytest.fixture(scope="module")
def stores(server, tmp_path_factory):
    rows, queries = random_rows(SOURCES)
    folder = tmp_path_factory.mktemp("stores")
    lance = LanceStore(folder / "lance", "docs")
    lance.write(rows, ann_min_rows=None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(milvus.URI_ENV, server)
        mv = MilvusStore(folder / "milvus", "docs")
        mv.write(rows, ann_min_rows=None)
    return rows, queries, lance, mv


def test_read_returns_the_same_rows_in_the_same_order(stores):
    rows, _, lance, mv = stores
    got, want = mv.read(), lance.read()
    assert got.schema == want.schema == rows.schema
    assert got.to_pylist() == rows.to_pylist()  # vectors too: Milvus keeps them as given
    assert mv.read(["id", "page"]).to_pylist() == rows.select(["id", "page"]).to_pylist()
    assert not mv.has_ann and mv.name.startswith("docs__")


def test_search_and_sources_filter_agree_with_lance_exact_search(stores):
    _, queries, lance, mv = stores
    assert_searches_as_lance(mv, lance, queries, ["b.md", 'c "quoted".md', "d-café.md"])


def test_reopened_rewritten_and_hnsw(stores, uri, tmp_path):
    rows, queries, _, mv = stores
    again = MilvusStore(mv.folder, "docs")  # how retrieval opens it: the folder's record names the collection
    assert again.name == mv.name and again.search(queries[0], 3) == mv.search(queries[0], 3)
    s = MilvusStore(tmp_path / "m", "my-docs.v1")  # `-` and `.` are not allowed in Milvus names
    s.write(rows.slice(0, 20))
    first = s.name
    assert first.startswith("my_docs_v1__")
    s.write(rows.slice(20, 100), ann_min_rows=50)  # replaces: a new collection with HNSW, the old one dropped
    assert s.name != first and first not in _names(uri) and s.name in _names(uri)
    assert s.read(["id"])["id"].to_pylist() == rows["id"].to_pylist()[20:120]
    assert s.has_ann and MilvusStore(s.folder, "my-docs.v1").has_ann
    x = np.array(rows["vector"].to_pylist()[20:120], dtype=np.float32)
    assert [s.search(v, 1)[0][0] for v in x[:10]] == rows["id"].to_pylist()[20:30]  # each vector finds itself


def test_example_docs_agree_with_lancedb(uri, tmp_path):
    """Same docs, same embedder → same vectors: the dense hits and their scores match lance's exact search, and
    the fused (hybrid) answers are the same."""
    docs = EXAMPLES / "support" / "docs"
    r = index(RagConfig(sources=[str(docs)], collection="nimbus", store="milvus"), tmp_path / "mv", progress=False)
    index(RagConfig(sources=[str(docs)], collection="nimbus"), tmp_path / "lance", progress=False)
    assert r["status"] == "ran" and r["metrics"]["files"] == 5
    manifest = json.loads((tmp_path / "mv" / "manifest.json").read_text())
    assert manifest["outputs"]["store"] == "milvus" and manifest["outputs"]["ann"] is None
    record = json.loads((tmp_path / "mv" / "milvus" / "milvus.json").read_text())
    assert record["uri"] == uri and record["collection"] in _names(uri)
    assert sorted(p.name for p in (tmp_path / "mv" / "milvus").iterdir()) == ["milvus.json"]  # data on the server

    mv, lance = open_index(tmp_path / "mv"), open_index(tmp_path / "lance")
    questions = [json.loads(line) for line in (EXAMPLES / "support" / "rag_questions.jsonl").read_text().splitlines()]
    for q in questions:
        got, want = mv.search(q["question"], 4, mode="dense"), lance.search(q["question"], 4, mode="dense")
        assert [(h.source, h.start) for h in got] == [(h.source, h.start) for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-4)
        hybrid = mv.search(q["question"], 4)
        assert [h.to_dict() for h in hybrid] == [h.to_dict() for h in lance.search(q["question"], 4)]
    top = mv.search("How long do I hold the reset button on the R2 router?", 1, where={"source": "docs/r2*"})[0]
    assert (top.source, top.heading) == ("docs/r2-router.md", "Factory reset")


def test_reindex_is_incremental_and_drops_the_superseded_collection(uri, tmp_path):
    docs = shutil.copytree(EXAMPLES / "support" / "docs", tmp_path / "docs")
    cfg = RagConfig(sources=[str(docs)], collection="nimbus", store="milvus")
    index(cfg, tmp_path / "idx", progress=False)
    first = json.loads((tmp_path / "idx" / "milvus" / "milvus.json").read_text())["collection"]
    assert index(cfg, tmp_path / "idx", progress=False)["status"] == "skipped"

    (docs / "mini-modem.txt").write_text("The Mini modem's serial number is printed on its box.\n")
    m = index(cfg, tmp_path / "idx", progress=False)["metrics"]
    assert (m["unchanged_files"], m["embedded_files"], m["files"]) == (4, 1, 5)
    second = json.loads((tmp_path / "idx" / "milvus" / "milvus.json").read_text())["collection"]
    assert second != first and second in _names(uri) and first not in _names(uri)
    hit = open_index(tmp_path / "idx").search("Where is the serial number of the Mini modem?", 1)[0]
    assert hit.source == "docs/mini-modem.txt" and "serial number" in hit.text


def test_a_failed_run_leaves_the_published_index_and_its_collection(uri, tmp_path, monkeypatch):
    docs = shutil.copytree(EXAMPLES / "support" / "docs", tmp_path / "docs")
    cfg = RagConfig(sources=[str(docs)], collection="nimbus", store="milvus")
    index(cfg, tmp_path / "idx", progress=False)
    first = json.loads((tmp_path / "idx" / "milvus" / "milvus.json").read_text())
    (docs / "mini-modem.txt").write_text("The Mini modem's serial number is printed on its box.\n")
    before = set(_names(uri))
    write = MilvusStore.write

    def write_then_fail(self, rows, ann_min_rows=None):
        write(self, rows, ann_min_rows)
        raise RuntimeError("killed after writing")

    monkeypatch.setattr(MilvusStore, "write", write_then_fail)
    with pytest.raises(RuntimeError, match="killed"):
        index(cfg, tmp_path / "idx", progress=False)
    assert json.loads((tmp_path / "idx" / "milvus" / "milvus.json").read_text()) == first
    orphans = set(_names(uri)) - before
    assert first["collection"] in _names(uri) and len(orphans) == 1  # what the module docstring says is left
    assert next(iter(orphans)).startswith("nimbus__")
    hit = open_index(tmp_path / "idx").search("Where is the MAC address of the Mini modem?", 1)[0]
    assert hit.source == "docs/mini-modem.txt"


def test_an_index_survives_a_server_restart(tmp_path, monkeypatch):
    """A restarted milvus-lite has released its collections: the store loads the one it opens."""
    folder = tmp_path / "server"
    assert _script("start", str(folder), str(_free_port())).returncode == 0
    try:
        monkeypatch.setenv(milvus.URI_ENV, _script("uri", str(folder)).stdout.strip())
        rows, queries = random_rows(SOURCES, n=40)
        MilvusStore(tmp_path / "m", "docs").write(rows)
        want = MilvusStore(tmp_path / "m", "docs").search(queries[0], 5)
        assert _script("stop", str(folder)).returncode == 0
        assert _script("start", str(folder)).returncode == 0  # the same port and data, from DIR/port
        again = MilvusStore(tmp_path / "m", "docs")
        assert again.search(queries[0], 5) == want and again.read().to_pylist() == rows.to_pylist()
    finally:
        _script("stop", str(folder))


def test_the_example_recipes_rag_section_runs_on_milvus_by_configuration(uri, tmp_path, capsys):
    """`llmkit run` on a recipe whose rag section is the example recipe's with `store: milvus` added; the server
    is named by $LLMKIT_MILVUS_URI alone."""
    section = yaml.safe_load((EXAMPLES / "recipe.yaml").read_text())["rag"]
    section["sources"] = [str(EXAMPLES / s) for s in section["sources"]]  # the example's paths are relative to it
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "nimbus-rag", "out_dir": str(tmp_path / "runs"),
                                      "rag": {**section, "store": "milvus"}}))
    assert main(["run", str(recipe)]) == 0
    out = tmp_path / "runs" / "rag"
    assert json.loads((out / "manifest.json").read_text())["outputs"]["store"] == "milvus"
    assert "collection 'nimbus'" in capsys.readouterr().out
    # retrieval from the recipe's index, held to what tests/rag/test_cli_stage.py holds the lancedb one to
    r = evaluate(out, EXAMPLES / "support" / "rag_questions.jsonl", modes=("hybrid",))["hybrid"]
    assert r["questions"] == 20 and r["recall@4"] >= 0.95 and r["mrr"] >= 0.85


def test_no_server_named_or_none_answering_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv(milvus.URI_ENV, raising=False)
    cfg = RagConfig(sources=[str(EXAMPLES / "support" / "docs")], collection="nimbus", store="milvus")
    with pytest.raises(ArtifactError, match=r"LLMKIT_MILVUS_URI.*scripts/milvus\.sh start"):
        index(cfg, tmp_path / "idx", progress=False)
    dead = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv(milvus.URI_ENV, dead)
    with pytest.raises(ArtifactError, match=rf"cannot reach the Milvus server at {dead} .*scripts/milvus\.sh start"):
        milvus.check_server()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "out_dir": str(tmp_path / "runs"), "rag": cfg.model_dump()}))
    assert main(["run", str(recipe)]) == 1  # refused before any stage runs
    assert not (tmp_path / "runs").exists()


def test_missing_client_is_a_missing_extra(monkeypatch):
    from llmkit.errors import MissingExtra

    block_import(monkeypatch, "pymilvus")
    with pytest.raises(MissingExtra, match=r"pip install 'llmkit\[milvus\]'"):
        MilvusStore("/nonexistent", "docs")
