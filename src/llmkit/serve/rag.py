"""Retrieval-augmented chat: a chat request that names a collection is answered from that collection's chunks.

    {"model": "tiny", "messages": [...], "rag": {"collection": "nimbus", "top_k": 4, "source": "docs/*.md"}}

The last user message is the query. Its top-k chunks go into a system message as numbered sources,

    [1] source: docs/r2-router.md — Factory reset
    <the chunk's text>

with the instruction to answer from them and cite them as [n]; sources that do not fit the model's context
(with room for max_tokens) are left out, lowest-ranked first. The response carries them in a top-level
`citations` list (`response.model_extra["citations"]` in the openai client), each marked `cited` when an answer
refers to its number. A stream sends them in its first chunk (`cited` unknown yet: null).

Collections are index folders made by `llmkit rag index` or a recipe's rag stage (`llmkit serve --rag DIR`; a
folder of collections, like a `--store`, serves each). Retrieval runs on one thread of its own, so the event loop
never blocks, and the embedder loads there at startup.
"""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from llmkit import artifacts
from llmkit.errors import ConfigError
from llmkit.rag import Hit, Index
from llmkit.rag.answer import augment  # noqa: F401 -- the serving path builds rag prompts through here
from llmkit.serve import protocol as p
from llmkit.serve.errors import APIError


def _folders(spec: str) -> list[Path]:
    """An index folder, or a folder whose subfolders are index folders (a `--store`)."""
    p_ = Path(spec).expanduser()
    if (p_ / artifacts.MANIFEST).is_file():
        return [p_]
    found = sorted(q for q in p_.iterdir() if (q / artifacts.MANIFEST).is_file()) if p_.is_dir() else []
    if not found:
        raise ConfigError([f"--rag {spec}: not a rag index (no {artifacts.MANIFEST}) nor a folder of them; "
                           "make one with `llmkit rag index`"])
    return found


class Collections:
    def __init__(self, specs: list[str]):
        self.indexes: dict[str, Index] = {}
        problems = []
        for spec in specs:
            for folder in _folders(spec):
                idx = Index(folder)
                if idx.collection in self.indexes:
                    problems.append(f"two --rag indexes are both collection {idx.collection!r}: "
                                    f"{self.indexes[idx.collection].folder} and {folder}")
                self.indexes[idx.collection] = idx
        if problems:
            raise ConfigError(problems)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="llmkit-rag")
        for idx in self.indexes.values():  # load the embedder(s) now, not on the first request
            self.pool.submit(lambda i=idx: i.model)

    async def search(self, opts: p.RagOptions, query: str) -> list[Hit]:
        idx = self.indexes.get(opts.collection)
        if idx is None:
            have = ", ".join(sorted(self.indexes)) or "none"
            raise APIError(404, f"the collection '{opts.collection}' does not exist; this server has: {have}",
                           param="rag.collection", code="collection_not_found")
        where = {"source": opts.source} if opts.source else None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: idx.search(query, opts.top_k, where))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def query_of(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m["role"] == "user" and m["content"].strip():
            return m["content"]
    raise APIError(400, "a rag request needs a user message to search for", param="messages")


def citations(hits: list[Hit], answers: list[str] | None) -> list[p.Citation]:
    """Every source given to the model; `cited` when an answer names its number (None: not known yet)."""
    cited: set[int] = set()
    for text in answers or []:
        cited |= {int(n) for group in re.findall(r"\[(\d+(?:\s*,\s*\d+)*)\]", text) for n in group.split(",")}
    return [p.Citation(index=i, source=h.source, page=h.page, heading=h.heading, text=h.text, start=h.start,
                       end=h.end, score=h.score, cited=None if answers is None else i in cited)
            for i, h in enumerate(hits, 1)]
