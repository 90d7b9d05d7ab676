"""Small documents for the rag tests, written by each test, and a minimal PDF writer (no PDF library needed)."""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pyarrow as pa

from llmkit.config import RagConfig
from llmkit.rag.schema import schema

DOCS = {
    "router.md": "# Router guide\n\nThe router connects your home to the internet.\n\n"
                 "## Factory reset\n\nHold the Reset button with a paperclip for 10 seconds until the light blinks "
                 "red, then wait two minutes for the router to restart.\n\n"
                 "## Lights\n\nSolid white means connected. Amber means the WAN cable has no internet.\n",
    "modem.txt": "The modem plugs into the cable line. Its MAC address is printed on the label underneath; "
                 "your provider needs it before the modem works.\n",
    "family.html": "<html><head><style>p {color: red}</style></head><body><h1>Family</h1>"
                   "<h2>Bedtime</h2><p>Set bedtime hours for each profile so its devices go offline at night.</p>"
                   "<script>var x = 'hidden';</script></body></html>",
}


def write_docs(folder: Path, docs: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (DOCS if docs is None else docs).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def make_pdf(path: Path, pages: list[str]) -> Path:
    """A valid PDF with one line of Helvetica text per page (enough for pypdf's text extraction)."""
    n = len(pages)
    objs = ["<< /Type /Catalog /Pages 2 0 R >>",
            "<< /Type /Pages /Kids [" + " ".join(f"{3 + 2 * i} 0 R" for i in range(n)) + f"] /Count {n} >>"]
    font = 3 + 2 * n
    for i, text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objs.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
                    f"/Resources << /Font << /F1 {font} 0 R >> >> >>")
        objs.append(f"<< /Length {len(stream)} >>\nstream\n{stream.decode()}\nendstream")
    objs.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out, offsets = b"%PDF-1.4\n", []
    for i, obj in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{obj}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(out)
    return path


def cfg(*sources: Path, **kw) -> RagConfig:
    return RagConfig(sources=[str(s) for s in sources], **kw)


def random_rows(sources: list[str], n=160, dim=384, seed=0) -> tuple[pa.Table, np.ndarray]:
    """`n` rows of unit random vectors spread over `sources` (some pages and headings null), and 8 unit queries:
    what the store tests compare stores on."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    src = [sources[i] for i in rng.integers(0, len(sources), n)]
    rows = pa.Table.from_pylist(
        [{"id": f"{s}#{i}", "source": s, "page": i % 5 if i % 3 else None, "heading": f"h{i % 7}" if i % 2 else None,
          "start": 10 * i, "end": 10 * i + 9, "text": f"chunk {i} of {s}", "vector": v.tolist()}
         for i, (s, v) in enumerate(zip(src, x))], schema=schema(dim))
    q = rng.normal(size=(8, dim)).astype(np.float32)
    return rows, q / np.linalg.norm(q, axis=1, keepdims=True)


def block_import(monkeypatch, prefix: str) -> None:
    """Make every import of `prefix` (and its submodules) fail, as when the package is not installed."""
    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **kw: (_ for _ in ()).throw(ImportError(name))
                        if name.startswith(prefix) else real(name, *a, **kw))


def assert_searches_as_lance(store, lance, queries, only: list[str]) -> None:
    """A server store answers as LanceStore's exact search on the same rows: the same ids in order and scores
    within 1e-4, with and without a sources filter (only `only`'s files; none, or an unknown file: nothing)."""
    for q in queries:
        got, want = store.search(q, 10), lance.search(q, 10)
        assert [i for i, _ in got] == [i for i, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-4)
    for q in queries[:3]:
        got = store.search(q, 10, only)
        assert len(got) == 10 and {i.split("#")[0] for i, _ in got} <= set(only)
        assert [i for i, _ in got] == [i for i, _ in lance.search(q, 10, only)]
    assert store.search(queries[0], 10, []) == []
    assert store.search(queries[0], 10, ["nowhere.md"]) == []
