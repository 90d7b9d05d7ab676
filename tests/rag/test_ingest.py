"""Reading files: markdown sections, HTML text and headings, PDF pages; the directory walk and its refusals."""

import pytest
from rag_helpers import make_pdf, write_docs

from llmkit.errors import DataError
from llmkit.rag import ingest


def test_markdown_sections_follow_headings_but_not_code(tmp_path):
    p = tmp_path / "a.md"
    p.write_text("Intro line.\n\n# Title\n\nBody.\n\n```\n# not a heading\n```\n\n## Part two ##\n\nMore.\n")
    [page] = ingest.read(p)
    assert [(s.heading, page.text[s.start:s.end].split("\n")[0]) for s in page.sections] == [
        (None, "Intro line."), ("Title", "# Title"), ("Part two", "## Part two ##")]
    assert page.sections[-1].end == len(page.text) and page.number is None


def test_html_visible_text_blocks_and_headings(tmp_path):
    write_docs(tmp_path)
    [page] = ingest.read(tmp_path / "family.html")
    assert "hidden" not in page.text and "color" not in page.text
    assert [s.heading for s in page.sections] == ["Family", "Bedtime"]
    bedtime = page.sections[1]
    assert page.text[bedtime.start:bedtime.end].strip() == "Bedtime\n\nSet bedtime hours for each profile so its devices go offline at night."


def test_pdf_pages_and_a_corrupt_pdf(tmp_path):
    pages = ingest.read(make_pdf(tmp_path / "m.pdf", ["First page about routers.", "Second page about modems."]))
    assert [(p.number, p.text.strip()) for p in pages] == [(1, "First page about routers."), (2, "Second page about modems.")]
    (tmp_path / "bad.pdf").write_bytes(b"%PDF-1.4\nthis is not a pdf at all")
    with pytest.raises(DataError, match="PDF"):
        ingest.read(tmp_path / "bad.pdf")


def test_walk_include_exclude_and_names(tmp_path):
    docs = write_docs(tmp_path / "docs", {"a.md": "a", "drafts/b.md": "b", "sub/c.txt": "c", "d.png": "x"})
    files, refused = ingest.walk([docs], ["*.md", "*.txt"], ["drafts/*"])
    assert [f.source for f in files] == ["docs/a.md", "docs/sub/c.txt"] and refused == []
    one, _ = ingest.walk([docs / "a.md"], ["*.md"], [])
    assert [f.source for f in one] == ["a.md"]
    other = write_docs(tmp_path / "x" / "docs", {"a.md": "other"})
    with pytest.raises(DataError, match="both indexed as 'docs/a.md'"):
        ingest.walk([docs, other], ["*.md"], [])


def test_symlinks_out_of_the_sources_are_refused(tmp_path):
    secret = write_docs(tmp_path / "secret", {"key.txt": "password", "more/notes.md": "private"})
    docs = write_docs(tmp_path / "docs", {"ok.md": "fine"})
    (docs / "link.txt").symlink_to(secret / "key.txt")
    (docs / "dir").symlink_to(secret / "more")
    (docs / "inside.md").symlink_to(docs / "ok.md")  # a link that stays inside is fine
    files, refused = ingest.walk([docs], ["*.md", "*.txt"], [])
    assert [f.source for f in files] == ["docs/inside.md", "docs/ok.md"]
    assert sorted(r.source for r in refused) == ["docs/dir/", "docs/link.txt"]  # the linked folder is not entered
    assert all("outside the source folders" in r.reason for r in refused)
