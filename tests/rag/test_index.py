"""The index stage and retrieval on tiny documents with the real MiniLM: ranking, BM25 + dense fusion, filters,
failures, incremental re-index and a crash mid-way."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from rag_helpers import cfg, make_pdf, write_docs

from llmkit.errors import DataError
from llmkit.rag import index, retrieve
from llmkit.rag.retrieve import open_index
from llmkit.rag.store import LanceStore


def rows_of(out):
    """The index's rows sorted by id, vectors apart, to compare two indexes."""
    t = LanceStore(out / "lance", "docs").read().to_pylist()
    t.sort(key=lambda r: r["id"])
    return [{k: v for k, v in r.items() if k != "vector"} for r in t], np.array([r["vector"] for r in t])


def assert_same_index(a, b):
    ra, va = rows_of(a)
    rb, vb = rows_of(b)
    assert ra == rb
    np.testing.assert_allclose(va, vb, atol=1e-5)
    assert json.loads((a / "bm25" / "ids.json").read_text()) == json.loads((b / "bm25" / "ids.json").read_text())


def test_index_and_the_right_chunk_first(tmp_path):
    docs = write_docs(tmp_path / "docs")
    r = index(cfg(docs), tmp_path / "idx", progress=False)
    m = r["metrics"]
    assert r["status"] == "ran" and m["files"] == 3 and m["chunks"] >= 5 and m["failed_files"] == 0
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert set(manifest["inputs"]) == {"docs/router.md", "docs/modem.txt", "docs/family.html"}
    assert all(len(v["sha256"]) == 64 for v in manifest["inputs"].values())
    hits = retrieve(tmp_path / "idx", "How long must I hold the reset button?")
    top = hits[0]
    assert (top.source, top.heading, top.page, top.rank) == ("docs/router.md", "Factory reset", None, 1)
    assert "10 seconds" in top.text and (tmp_path / "docs/router.md").read_text()[top.start:top.end] == top.text
    assert retrieve(tmp_path / "idx", "Where is the MAC address?", top_k=1)[0].source == "docs/modem.txt"
    assert retrieve(tmp_path / "idx", "bedtime for kids", top_k=1)[0].heading == "Bedtime"
    assert index(cfg(docs), tmp_path / "idx", progress=False)["status"] == "skipped"


def test_bm25_rescues_an_exact_code_that_dense_misses_and_rrf_orders_by_ranks(tmp_path):
    # five chunks are about router error codes; the code asked for is only in an off-topic chunk, so the
    # embedder ranks it last while BM25 ranks it first on the exact token
    docs = {f"err{i}.md": f"# Error {c}\n\nError code {c} on the router means the WAN cable is loose. Reconnect it "
                          "and restart." for i, c in enumerate(["E-1042", "E-2210", "E-3307", "E-5519", "E-6620"])}
    docs["shipping.md"] = ("# Shipping\n\nOrders ship within two days from our warehouse. Returns use form E-7731 "
                           "and a prepaid label; refunds take a week.")
    write_docs(tmp_path / "docs", docs)
    index(cfg(tmp_path / "docs"), tmp_path / "idx", progress=False)
    q = "What does error code E-7731 mean on the router?"
    dense = retrieve(tmp_path / "idx", q, top_k=4, mode="dense")
    bm25 = retrieve(tmp_path / "idx", q, top_k=4, mode="bm25")
    hybrid = retrieve(tmp_path / "idx", q, top_k=6)
    assert "docs/shipping.md" not in [h.source for h in dense] and bm25[0].source == "docs/shipping.md"
    rescued = next(h for h in hybrid if h.source == "docs/shipping.md")
    assert (rescued.dense_rank, rescued.bm25_rank) == (6, 1) and rescued.rank <= 4  # into the default top 4
    for h in hybrid:  # RRF: 1/(60 + rank) summed over the lists that have the chunk, sorted by it
        want = sum(1 / (60 + r) for r in (h.dense_rank, h.bm25_rank) if r is not None)
        assert h.score == pytest.approx(want, abs=1e-6)
    assert [h.score for h in hybrid] == sorted((h.score for h in hybrid), reverse=True)
    assert [h.rank for h in hybrid] == list(range(1, 7))


def test_source_filter(tmp_path):
    write_docs(tmp_path / "docs")
    index(cfg(tmp_path / "docs"), tmp_path / "idx", progress=False)
    hits = retrieve(tmp_path / "idx", "reset the router", top_k=10, where={"source": "*.txt"})
    assert hits and {h.source for h in hits} == {"docs/modem.txt"}
    assert retrieve(tmp_path / "idx", "reset", where={"source": "nothing/*"}) == []
    with pytest.raises(DataError, match="unknown filter"):
        retrieve(tmp_path / "idx", "reset", where={"page": 1})


def test_a_corrupt_pdf_is_reported_and_the_rest_indexed(tmp_path):
    docs = write_docs(tmp_path / "docs")
    make_pdf(docs / "manual.pdf", ["The range extender repeats the signal.", "Pair it with the WPS button."])
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4\nnot really")
    r = index(cfg(docs), tmp_path / "idx", progress=False)
    assert [(f["source"], "PDF" in f["reason"]) for f in r["failed"]] == [("docs/broken.pdf", True)]
    assert r["metrics"]["files"] == 4
    hit = retrieve(tmp_path / "idx", "How do I pair the extender with WPS?", top_k=1)[0]
    assert (hit.source, hit.page) == ("docs/manual.pdf", 2)
    with pytest.raises(DataError, match=r"broken\.pdf: not a readable PDF"):
        index(cfg(docs, on_error="fail"), tmp_path / "idx2", progress=False)


def _change(docs):
    (docs / "router.md").write_text((docs / "router.md").read_text().replace("10 seconds", "15 seconds"))
    (docs / "modem.txt").unlink()
    (docs / "new.md").write_text("# Warranty\n\nThe warranty lasts two years from the date of purchase.\n")


def test_incremental_reindex_equals_a_clean_index(tmp_path):
    docs = write_docs(tmp_path / "docs")
    index(cfg(docs), tmp_path / "idx", progress=False)
    _change(docs)
    m = index(cfg(docs), tmp_path / "idx", progress=False)["metrics"]
    assert (m["embedded_files"], m["unchanged_files"], m["removed_files"], m["files"]) == (2, 1, 1, 3)
    index(cfg(docs), tmp_path / "clean", progress=False)
    assert_same_index(tmp_path / "idx", tmp_path / "clean")
    assert "15 seconds" in retrieve(tmp_path / "idx", "hold the reset button", top_k=1)[0].text


def test_a_killed_index_run_leaves_the_old_index_and_a_rerun_completes(tmp_path):
    docs = write_docs(tmp_path / "docs")
    index(cfg(docs, batch_size=1), tmp_path / "idx", progress=False)
    before = (tmp_path / "idx" / "manifest.json").read_text()
    _change(docs)
    code = ("import sys; from pathlib import Path; from llmkit.config import RagConfig; from llmkit.rag import index; "
            "index(RagConfig(sources=[sys.argv[1]], batch_size=1), Path(sys.argv[2]), progress=False)")
    env = {**os.environ, "LLMKIT_TEST_KILL_AT": "embed.batch:2", "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.run([sys.executable, "-c", code, str(docs), str(tmp_path / "idx")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr  # SIGKILLed after 2 of the changed files' chunks were embedded
    assert (tmp_path / "idx" / "manifest.json").read_text() == before
    assert list(tmp_path.glob(".idx.tmp-*"))  # the half-built index, beside the real one
    assert "10 seconds" in retrieve(tmp_path / "idx", "hold the reset button", top_k=1)[0].text
    r = index(cfg(docs, batch_size=1), tmp_path / "idx", progress=False)
    assert r["status"] == "ran" and not list(tmp_path.glob(".idx.*"))
    index(cfg(docs, batch_size=1), tmp_path / "clean", progress=False)
    assert_same_index(tmp_path / "idx", tmp_path / "clean")
    assert "15 seconds" in retrieve(tmp_path / "idx", "hold the reset button", top_k=1)[0].text


def test_errors(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        index(cfg(tmp_path / "nope"), tmp_path / "idx", progress=False)
    write_docs(tmp_path / "img", {"a.png": "x"})
    with pytest.raises(DataError, match="nothing to index"):
        index(cfg(tmp_path / "img"), tmp_path / "idx", progress=False)
    write_docs(tmp_path / "docs")
    from llmkit.errors import ConfigError

    with pytest.raises(ConfigError, match="chunk_tokens: 300 is more than"):
        index(cfg(tmp_path / "docs", chunk_tokens=300), tmp_path / "idx", progress=False)
    shutil.rmtree(tmp_path / "docs")
    from llmkit.errors import ArtifactError

    with pytest.raises(ArtifactError, match="not a rag index"):
        open_index(tmp_path / "docs")
