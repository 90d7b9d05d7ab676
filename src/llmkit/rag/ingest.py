"""Documents in: walk the source folders, refuse what lies outside them, read .md/.txt/.html/.pdf into text.

A document becomes one or more `Page`s (a PDF page each; one for the other formats), each with its plain text
and its `Section`s: spans of that text under one heading. Chunk offsets (`start`, `end`) count characters in a
page's text: the file itself for .md and .txt, the extracted text for .html and .pdf.

A file that cannot be read becomes a `Failed` with its path and why; the caller decides whether that stops the
stage (`on_error: fail`) or is reported while the rest is indexed (`skip`).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from llmkit.errors import DataError


@dataclass
class Section:
    heading: str | None
    start: int  # character span in the page's text
    end: int


@dataclass
class Page:
    text: str
    number: int | None = None  # 1-based for PDFs; None for formats without pages
    sections: list[Section] = field(default_factory=list)


@dataclass
class SourceFile:
    """A file to index: its name in the index (`source`: the source folder's name / path below it) and path."""

    source: str
    path: Path


@dataclass
class Failed:
    source: str
    path: str
    reason: str


def _matches(rel: str, globs: list[str]) -> bool:
    # `*.md` matches at any depth (as .gitignore does for a pattern without '/'); `drafts/*` from the root
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, g) or ("/" not in g and fnmatch.fnmatch(name, g)) for g in globs)


def walk(sources: list[Path], include: list[str], exclude: list[str]) -> tuple[list[SourceFile], list[Failed]]:
    """The files under `sources` that match `include` and not `exclude`, sorted by their index name.

    A path that resolves outside every source root (a symlink to /etc, `..` tricks) is refused and reported:
    indexing must never read what the user did not point at. Two files with the same index name (two source
    folders both called `docs`) are an error: a citation must name one file.
    """
    roots = [s.resolve() for s in sources]
    files: dict[str, SourceFile] = {}
    refused: list[Failed] = []
    for given, root in zip(sources, roots):
        if not root.exists():
            raise DataError(f"rag source {given}: no such file or folder")
        candidates = [(root.name, Path(given))] if root.is_file() else _tree(Path(given), roots, refused, root.name)
        for rel, p in candidates:
            name = rel if root.is_file() else f"{root.name}/{rel}"
            if not _matches(rel, include) or _matches(rel, exclude):
                continue
            real = p.resolve()
            if not _inside(real, roots):
                refused.append(Failed(name, str(p), f"resolves to {real}, outside the source folders (symlink escape)"))
                continue
            if not real.is_file():
                continue
            if name in files and files[name].path.resolve() != real:
                raise DataError(f"two files are both indexed as {name!r}: {files[name].path} and {p}; "
                                "rename one of the source folders")
            files[name] = SourceFile(name, p)
    return [files[k] for k in sorted(files)], refused


def _inside(real: Path, roots: list[Path]) -> bool:
    return any(real == r or real.is_relative_to(r) for r in roots)


def _tree(top: Path, roots: list[Path], refused: list[Failed], prefix: str) -> list[tuple[str, Path]]:
    """(path below `top`, path) of every file, sorted. Linked folders are followed when they stay inside the
    roots (each real folder once: no loops) and refused when they lead out."""
    out, seen = [], set()
    for folder, dirs, names in os.walk(top, followlinks=True):
        here = Path(folder)
        real = here.resolve()
        if real in seen or not _inside(real, roots):
            if not _inside(real, roots):
                rel = here.relative_to(top).as_posix()
                refused.append(Failed(f"{prefix}/{rel}/", str(here), f"resolves to {real}, outside the source "
                                      "folders (symlink escape)"))
            dirs[:] = []
            continue
        seen.add(real)
        out += [((here / n).relative_to(top).as_posix(), here / n) for n in names]
    return sorted(out)


# ---------------------------------------------------------------------------------------------------------
# Readers: one per format, each returns the pages of a file


_MD_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
_FENCE = re.compile(r"^(```|~~~)", re.M)


def read_markdown(path: Path) -> list[Page]:
    text = _read_text(path)
    # headings inside fenced code blocks are code, not headings
    fenced: list[tuple[int, int]] = []
    marks = [m.start() for m in _FENCE.finditer(text)]
    for a, b in zip(marks[::2], marks[1::2] + [len(text)] * (len(marks) % 2)):
        fenced.append((a, b))
    heads = [(m.start(), m.group(2).strip()) for m in _MD_HEADING.finditer(text)
             if not any(a <= m.start() < b for a, b in fenced)]
    return [Page(text, None, _sections(len(text), heads))]


def read_text(path: Path) -> list[Page]:
    text = _read_text(path)
    return [Page(text, None, [Section(None, 0, len(text))])]


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text (byte {e.start})") from None


def _sections(n: int, heads: list[tuple[int, str]]) -> list[Section]:
    """Spans between headings; the heading line belongs to its own section (text before the first: no heading)."""
    out = []
    if not heads or heads[0][0] > 0:
        out.append(Section(None, 0, heads[0][0] if heads else n))
    for i, (pos, title) in enumerate(heads):
        out.append(Section(title, pos, heads[i + 1][0] if i + 1 < len(heads) else n))
    return [s for s in out if s.end > s.start]


class _HTMLText(HTMLParser):
    """Visible text of an HTML page, block elements as paragraphs, <h1>–<h6> as section headings."""

    BLOCKS = {"p", "div", "li", "ul", "ol", "tr", "table", "section", "article", "br", "pre", "blockquote",
              "dd", "dt", "header", "footer", "main", "td", "th"}
    HIDDEN = {"script", "style", "head", "title", "noscript", "template", "svg"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.size = 0
        self.hidden = 0
        self.heading: list[str] | None = None
        self.heads: list[tuple[int, str]] = []

    def _emit(self, s: str) -> None:
        self.parts.append(s)
        self.size += len(s)

    def _break(self) -> None:
        if self.parts and not self.parts[-1].endswith("\n\n"):
            self._emit("\n\n" if not self.parts[-1].endswith("\n") else "\n")

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._break()
            self.heading = []
            self.heads.append((self.size, ""))
        elif tag in self.BLOCKS:
            self._break()

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif re.fullmatch(r"h[1-6]", tag) and self.heading is not None:
            self.heads[-1] = (self.heads[-1][0], " ".join("".join(self.heading).split()))
            self.heading = None
            self._break()
        elif tag in self.BLOCKS:
            self._break()

    def handle_data(self, data: str) -> None:
        if self.hidden:
            return
        text = re.sub(r"\s+", " ", data)
        if not text.strip() and (not self.parts or self.parts[-1].endswith((" ", "\n"))):
            return
        if self.parts and self.parts[-1].endswith("\n"):
            text = text.lstrip()
        if self.heading is not None:
            self.heading.append(text)
        self._emit(text)


def read_html(path: Path) -> list[Page]:
    parser = _HTMLText()
    parser.feed(_read_text(path))
    parser.close()
    text = "".join(parser.parts)
    return [Page(text, None, _sections(len(text), [(a, t) for a, t in parser.heads if t]))]


def read_pdf(path: Path) -> list[Page]:
    try:
        import pypdf
    except ImportError:
        from llmkit.errors import MissingExtra

        raise MissingExtra("reading .pdf needs pypdf: pip install pypdf") from None
    try:
        reader = pypdf.PdfReader(str(path), strict=False)
        pages = [Page(page.extract_text() or "", i + 1) for i, page in enumerate(reader.pages)]
    except Exception as e:  # noqa: BLE001 -- pypdf raises many types for a broken file; all mean "cannot read it"
        raise DataError(f"not a readable PDF ({type(e).__name__}: {e})") from None
    for page in pages:
        page.sections = [Section(None, 0, len(page.text))]
    if not any(p.text.strip() for p in pages):
        raise DataError(f"no text in {len(pages)} page(s): a scanned PDF needs OCR first")
    return pages


# Ordered by suffix; the first match wins, and a miss says what is supported.
READERS: dict[str, Callable[[Path], list[Page]]] = {
    ".md": read_markdown, ".markdown": read_markdown, ".txt": read_text,
    ".html": read_html, ".htm": read_html, ".pdf": read_pdf,
}


def read(path: Path) -> list[Page]:
    """The pages of one file; DataError says why one cannot be read."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"no reader for {path.suffix or 'files without a suffix'} (supported: {', '.join(READERS)})")
    try:
        return reader(path)
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror or e}") from None
