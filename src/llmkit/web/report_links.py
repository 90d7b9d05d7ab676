"""How the run report links to its sources: every path relative to the page's folder (so the run folder and its
report can be moved or zipped together), every number a link to the manifest or file it was read from."""

from __future__ import annotations

from html import escape
from pathlib import Path

from llmkit.eval.report import rel
from llmkit.eval.svg import fmt


class Page:
    """Where the page will be written (links are relative to its folder) and how numbers link to their source."""

    def __init__(self, out: Path):
        self.dir = out.parent.resolve()

    def href(self, path: Path) -> str:
        return rel(path, self.dir)

    def num(self, v, source: Path, key: str = "", digits: int = 4) -> str:
        """A number linked to the file it came from; its tooltip names the field."""
        if v is None or isinstance(v, (dict, list)):
            return "–"
        text = fmt(v, digits) if isinstance(v, (int, float)) else escape(str(v))
        where = self.href(source)
        return f'<a class="n" href="{escape(where)}" title="{escape(where)}{": " + escape(key) if key else ""}">{text}</a>'
