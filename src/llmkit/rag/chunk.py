"""Chunking: the sections of a page cut into pieces of at most `chunk_tokens` of the embedder's tokenizer.

A chunk never crosses a heading: each section is cut on its own. Within a section, a window of `chunk_tokens`
(less the heading's tokens, since the heading is embedded with every chunk of its section) ends at the last
paragraph break in its second half, else the last sentence or line end, else mid-text; the next window starts
`chunk_overlap` tokens before that end, so a fact cut in two is whole in one of the two chunks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmkit.rag.ingest import Page


@dataclass
class Chunk:
    text: str
    page: int | None
    heading: str | None
    start: int  # character span in the page's text
    end: int

    def embed_text(self) -> str:
        """What is embedded and searched: the heading gives a chunk its topic."""
        return f"{self.heading}\n{self.text}" if self.heading else self.text


_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"[.!?:;]\s|\n")


def chunk_pages(pages: list[Page], tokenizer, chunk_tokens: int, overlap: int) -> list[Chunk]:
    out: list[Chunk] = []
    for page in pages:
        for sec in page.sections:
            budget = chunk_tokens
            if sec.heading:  # "heading\n" is embedded too; keep at least half the window for the text
                budget = max(chunk_tokens // 2, chunk_tokens - len(_offsets(tokenizer, sec.heading)) - 1)
            for a, b in _windows(page.text, sec.start, sec.end, tokenizer, budget, min(overlap, budget // 2)):
                out.append(Chunk(page.text[a:b], page.number, sec.heading, a, b))
    return out


def _offsets(tokenizer, text: str) -> list[tuple[int, int]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False)
    return [tuple(x) for x in enc["offset_mapping"]]


def _windows(text: str, start: int, end: int, tokenizer, size: int, overlap: int) -> list[tuple[int, int]]:
    """Character spans (in `text`) of the chunks of text[start:end], whitespace trimmed, empty ones dropped."""
    span = text[start:end]
    offs = [(a + start, b + start) for a, b in _offsets(tokenizer, span)]
    if not offs:
        return []
    out: list[tuple[int, int]] = []
    i, n = 0, len(offs)
    while i < n:
        j = min(i + size, n)  # tokens [i, j)
        if j < n:
            j = _break(text, offs, i, j)
        a, b = offs[i][0], offs[j - 1][1]
        out.append((a, b))
        if j >= n:
            break
        i = max(j - overlap, i + 1)
        # start the overlap at a word: a sub-word token (no space before it) belongs to the word before
        while i < j and i > 0 and offs[i][0] == offs[i - 1][1]:
            i += 1
    return [(a, b) for a, b in (_trim(text, a, b) for a, b in out) if b > a]


def _break(text: str, offs: list[tuple[int, int]], i: int, j: int) -> int:
    """The token index to end a window [i, j) at: after the last paragraph break in its second half, else the
    last sentence/line end there, else j."""
    lo = i + (j - i) // 2
    for pattern in (_PARAGRAPH, _SENTENCE):
        for k in range(j - 1, lo, -1):  # gap between token k-1 and token k
            gap = text[offs[k - 1][1] - 1:offs[k][0] + 1] if offs[k - 1][1] > 0 else text[:offs[k][0] + 1]
            if pattern.search(gap):
                return k
    return j


def _trim(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b
