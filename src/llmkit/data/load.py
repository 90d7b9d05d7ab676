"""Read rows from JSONL, JSON, CSV, Parquet, a saved HF dataset folder, or a hub dataset id — one at a time.

Every row comes with where it came from (`file`, `line`), so a bad row can be reported as `train.jsonl:12`.
JSONL and CSV are read line by line and Parquet batch by batch, so a 5 GB file needs little memory. A row
that cannot be parsed is yielded as a RawRow with `error` set, never skipped silently: the caller decides
(fail or write a rejects file) and the data card counts it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import DataError


@dataclass
class RawRow:
    file: str
    line: int  # 1-based line in the file (JSONL/CSV), element index + 1 (JSON array), row number (Parquet/HF)
    data: dict | None
    error: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def read_rows(source: str | Path) -> Iterator[RawRow]:
    """Rows of one source; the reader is chosen by suffix (or by folder layout / hub id)."""
    p = Path(source)
    if p.is_dir():
        yield from _read_hf_folder(p)
        return
    if not p.exists():
        if _is_hub_id(str(source)):
            yield from _read_hub(str(source))
            return
        raise DataError(f"{source}: no such file or folder")
    kind = SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise DataError(f"{p}: unknown data file type '{p.suffix}'; expected one of {', '.join(SUFFIXES)} "
                        "or a saved HF dataset folder")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: the file is empty")
    yield from {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}[kind](p)


def _is_hub_id(s: str) -> bool:
    import re

    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", s)) and Path(s).suffix.lower() not in SUFFIXES


def _decode(raw: bytes) -> tuple[str | None, str | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, f"invalid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"


def parse_jsonl_line(raw: bytes) -> tuple[dict | None, str | None]:
    """One JSONL line → (object, None), or (None, reason). A blank line gives (None, None): not a row."""
    text, err = _decode(raw)
    if err:
        return None, err
    assert text is not None
    text = text.rstrip("\r\n")  # else an error at the end of the line reports "column 1" of the next
    if not text.strip():
        return None, None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        truncated = e.msg.startswith(("Unterminated", "Expecting")) and e.pos >= len(text.rstrip()) - 1
        return None, f"{'truncated JSON' if truncated else 'invalid JSON'}: {e.msg} at column {e.colno}"
    if not isinstance(obj, dict):
        return None, f"expected a JSON object per line, got {type(obj).__name__}"
    return obj, None


def _read_jsonl(p: Path) -> Iterator[RawRow]:
    with open(p, "rb") as f:  # bytes, so one bad byte is one bad row rather than a crash of the whole file
        for n, raw in enumerate(f, 1):
            obj, err = parse_jsonl_line(raw)
            if obj is not None or err is not None:
                yield RawRow(str(p), n, obj, err)


def _read_json(p: Path) -> Iterator[RawRow]:
    # A JSON document has to be parsed whole; use JSONL for large data.
    raw = p.read_bytes()
    text, err = _decode(raw)
    if err:
        line = raw[: raw.find(b"\n", 0)].count(b"\n") + 1 if b"\n" in raw else 1
        raise DataError(f"{p}: {err}; line {line}")
    try:
        doc = json.loads(text)  # type: ignore[arg-type]
    except json.JSONDecodeError as e:
        raise DataError(f"{p}:{e.lineno}: invalid JSON: {e.msg} at column {e.colno}") from None
    if isinstance(doc, dict) and len(doc) == 1 and isinstance(next(iter(doc.values())), list):
        doc = next(iter(doc.values()))  # {"data": [...]} and similar wrappers
    if not isinstance(doc, list):
        raise DataError(f"{p}: expected a JSON array of objects (or JSONL), got {type(doc).__name__}")
    for i, obj in enumerate(doc, 1):
        if isinstance(obj, dict):
            yield RawRow(str(p), i, obj)
        else:
            yield RawRow(str(p), i, None, f"element {i}: expected an object, got {type(obj).__name__}")


def _read_csv(p: Path) -> Iterator[RawRow]:
    with open(p, "rb") as fb:
        head = fb.readline()
    text, err = _decode(head)
    if err:
        raise DataError(f"{p}:1: header: {err}")
    header = next(csv.reader([text or ""]))
    if not header or not any(h.strip() for h in header):
        raise DataError(f"{p}:1: the CSV has no header row")
    with open(p, "rb") as fb:
        fb.readline()
        line = 1
        for raw in fb:
            line += 1
            text, err = _decode(raw)
            if err:
                yield RawRow(str(p), line, None, err)
                continue
            if not text.strip():  # type: ignore[union-attr]
                continue
            # A quoted field may span lines: keep reading until the csv module has a complete record.
            start = line
            while text.count('"') % 2 == 1:  # type: ignore[union-attr]
                more = fb.readline()
                if not more:
                    break
                line += 1
                text += more.decode("utf-8", errors="replace")
            values = next(csv.reader(io.StringIO(text)))
            if len(values) != len(header):
                yield RawRow(str(p), start, None,
                             f"expected {len(header)} columns ({', '.join(header)}), got {len(values)}")
                continue
            yield RawRow(str(p), start, dict(zip(header, values)))


def _read_parquet(p: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(p)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{p}: not a readable Parquet file ({e})") from None
    n = 0
    for batch in f.iter_batches(batch_size=4096):
        for obj in batch.to_pylist():
            n += 1
            yield RawRow(str(p), n, obj)


def _read_hf_folder(p: Path) -> Iterator[RawRow]:
    if not ((p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file()):
        raise DataError(f"{p}: a folder must be an HF dataset saved with save_to_disk (no dataset_info.json)")
    from datasets import load_from_disk

    ds = load_from_disk(str(p))
    if hasattr(ds, "keys"):  # a DatasetDict: take the train split
        if "train" not in ds:
            raise DataError(f"{p}: dataset has splits {list(ds.keys())}; expected a 'train' split")
        ds = ds["train"]
    for i, obj in enumerate(ds, 1):
        yield RawRow(str(p), i, obj)


def _read_hub(repo_id: str) -> Iterator[RawRow]:
    from datasets import load_dataset

    try:
        ds = load_dataset(repo_id, split="train", streaming=True)
    except Exception as e:
        raise DataError(f"hub dataset '{repo_id}' could not be loaded: {e}") from None
    for i, obj in enumerate(ds, 1):
        yield RawRow(repo_id, i, obj)
