"""Chunking by the embedder's tokens: within sections, at paragraph breaks, with overlap, exact offsets."""

from llmkit.rag.chunk import chunk_pages
from llmkit.rag.embed import load_embedder
from llmkit.rag.ingest import read


def _tok():
    return load_embedder("all-minilm-l6-v2").tokenizer


def test_chunks_stay_in_sections_fit_and_overlap(tmp_path):
    paras = [f"Paragraph {i} says the light number {i} blinks {'slowly ' * (8 + i % 5)}then stops." for i in range(12)]
    p = tmp_path / "a.md"
    p.write_text("# One\n\nShort section.\n\n# Two\n\n" + "\n\n".join(paras) + "\n")
    pages = read(p)
    tok = _tok()
    chunks = chunk_pages(pages, tok, chunk_tokens=64, overlap=16)
    text = pages[0].text
    assert chunks[0].heading == "One" and chunks[0].text == "# One\n\nShort section."
    two = [c for c in chunks if c.heading == "Two"]
    assert len(two) >= 3 and len(chunks) == len(two) + 1  # no chunk spans both sections
    for c in chunks:
        assert text[c.start:c.end] == c.text
        assert len(tok(c.embed_text(), add_special_tokens=False)["input_ids"]) <= 64
    for a, b in zip(two, two[1:]):
        assert b.start < a.end  # overlap: the next chunk begins inside the one before
        assert a.text.endswith(("then stops.", "\n# Two")) or a.end == len(text.rstrip())  # ends at a paragraph


def test_long_paragraph_without_breaks_is_cut_by_tokens(tmp_path):
    p = tmp_path / "b.txt"
    p.write_text(" ".join(f"word{i}" for i in range(400)))
    chunks = chunk_pages(read(p), _tok(), chunk_tokens=50, overlap=10)
    assert len(chunks) > 5 and chunks[0].start == 0 and chunks[-1].end == len(p.read_text())
    assert all(b.start < a.end for a, b in zip(chunks, chunks[1:]))
