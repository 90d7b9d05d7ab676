"""The data stage: raw files → a training-ready dataset artifact with a data card.

    result = prepare(DataConfig(train="train.jsonl"), out=Path("runs/x/data"))

Rows stream through: read → normalize to DESIGN.md's rows (messages / preference / text) → clean text →
scrub PII → exact and near dedupe → measure tokens with the target model's chat template → split → write.
Memory stays flat in the file size: only 16-byte row digests (and MinHash signatures with `dedupe: near`)
are kept. Every input row is accounted for in the data card: kept for train, kept for val, or dropped with a
reason. Under `on_error: fail` any invalid row stops the stage (after reading the rest, so all bad rows are
listed at once); under `skip` invalid rows go to `rejects.jsonl` with their file, line and reason.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmkit import artifacts
from llmkit.config import DataConfig
from llmkit.data import card as cards
from llmkit.data.clean import NearDedupe, exact_key, normalize_text
from llmkit.data.formats import FORMATS, RowError, asks, detect, expected_fields, kind_of, normalize, texts, with_texts
from llmkit.data.load import RawRow, read_rows
from llmkit.errors import DataError

BATCH = 512  # rows tokenized together: batching makes the fast tokenizer ~5x faster than row by row
SHOW_ERRORS = 20


@dataclass
class PrepareResult:
    out: Path
    status: str  # "ran" | "skipped"
    card: dict


def _tokenizer(model: str):
    from transformers import AutoTokenizer

    from llmkit.models import hf_folder, resolve_model

    return AutoTokenizer.from_pretrained(hf_folder(resolve_model(model)))


def _token_lengths(tok, rows: list[dict]) -> list[int]:
    """Tokens each row will take in training: chat template applied for conversations."""
    if not rows:
        return []
    if "messages" in rows[0]:
        strs = [tok.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    elif "chosen" in rows[0]:
        # the longer of the two completions decides whether the pair fits
        strs = [r["prompt"] + "\n" + max(r["chosen"], r["rejected"], key=len) for r in rows]
    else:
        strs = [r["text"] for r in rows]
    return [len(ids) for ids in tok(strs, add_special_tokens=False)["input_ids"]]


def _is_val(key: bytes, seed: int, fraction: float) -> bool:
    """Content-based split: the same row lands on the same side whatever the file order."""
    h = int.from_bytes(hashlib.blake2b(key, digest_size=8, key=seed.to_bytes(8, "little", signed=True)).digest(), "little")
    return h / 2**64 < fraction


class _Run:
    """The state of one prepare: counters, dedupe sets, output files."""

    def __init__(self, cfg: DataConfig, tok, folder: Path, context_len: int):
        self.cfg, self.tok, self.folder, self.context_len = cfg, tok, folder, context_len
        self.rows_in = 0
        self.dropped: Counter = Counter()
        self.invalid: Counter = Counter()
        self.errors: list[str] = []
        self.pii: Counter = Counter()
        self.formats: dict[str, str] = {}
        self.kind: str | None = None
        self.seen: set[bytes] = set()
        self.near = NearDedupe(cfg.near_threshold) if cfg.dedupe == "near" else None
        self.lengths: list[int] = []
        self.out = {"train": open(folder / "train.jsonl", "w"), "val": open(folder / "val.jsonl", "w")}
        self.kept = Counter()
        self.rejects = open(folder / "rejects.jsonl", "w") if cfg.on_error == "skip" else None
        self.scrubber = None
        if cfg.pii != "off":
            from llmkit.guard.pii import PiiScrubber

            self.scrubber = PiiScrubber(cfg.pii_mode)

    def reject(self, raw: RawRow, reason: str, category: str) -> None:
        self.invalid[category] += 1
        self.dropped["invalid"] += 1
        msg = f"{raw.where}: {reason}"
        if len(self.errors) < SHOW_ERRORS:
            self.errors.append(msg)
        if self.rejects:
            self.rejects.write(json.dumps({"file": raw.file, "line": raw.line, "reason": reason,
                                           "row": raw.data}, ensure_ascii=False, default=str) + "\n")

    def rows(self, source: Path | str, split: str | None) -> Iterator[tuple[dict, RawRow, str | None]]:
        """Valid normalized rows of one source (invalid ones are rejected on the way)."""
        fmt = None if self.cfg.format == "auto" else self.cfg.format
        for raw in read_rows(source):
            self.rows_in += 1
            if raw.error:
                self.reject(raw, raw.error, raw.error.split(":")[0].split(" (")[0])
                continue
            assert raw.data is not None
            if fmt is None:
                fmt = detect(raw.data)
                if fmt is None:
                    self.reject(raw, f"cannot tell the row format from its fields {sorted(raw.data)}; expected one "
                                     f"of: {'; '.join(f'{f} ({expected_fields(f)})' for f in FORMATS)}", "unknown format")
                    continue
                self.formats[Path(str(source)).name] = fmt
                if self.kind and kind_of(fmt) != self.kind:
                    raise DataError(f"{raw.where}: format '{fmt}' makes {kind_of(fmt)} rows, but earlier input made "
                                    f"{self.kind} rows; one dataset holds one kind")
                self.kind = kind_of(fmt)
            try:
                row = normalize(raw.data, fmt)
            except RowError as e:
                self.reject(raw, f"{e} (format '{fmt}')", e.problem.split(" (")[0].split(":")[0])
                continue
            yield row, raw, split

    def keep(self, batch: list[tuple[dict, RawRow, str | None]]) -> None:
        """Clean, scrub, dedupe, measure and write one batch of valid rows."""
        survivors = []
        for row, raw, split in batch:
            row = with_texts(row, [normalize_text(t) if t else t for t in texts(row)])
            if self.scrubber is not None:
                scrubbed, found = zip(*(self.scrubber.redact(t) for t in texts(row)))
                total = sum(found, Counter())
                self.pii.update(total)
                if total and self.cfg.pii == "drop":
                    self.dropped["pii"] += 1
                    continue
                row = with_texts(row, list(scrubbed))
            key = exact_key(row)
            if self.cfg.dedupe != "none":
                if key in self.seen:
                    self.dropped["exact_duplicate"] += 1
                    continue
                self.seen.add(key)
            if self.near is not None and self.near.seen(asks(row)):
                self.dropped["near_duplicate"] += 1
                continue
            survivors.append((row, raw, split, key))
        for (row, raw, split, key), n in zip(survivors, _token_lengths(self.tok, [s[0] for s in survivors])):
            if n > self.context_len:
                self.reject(raw, f"too long for the model: {n} tokens > context length {self.context_len}", "too long for the model")
                continue
            if n > self.cfg.max_tokens:
                self.dropped["over_max_tokens"] += 1
                continue
            side = split or ("val" if _is_val(key, self.cfg.seed, self.cfg.val_fraction) else "train")
            self.out[side].write(json.dumps(row, ensure_ascii=False) + "\n")
            self.kept[side] += 1
            self.lengths.append(n)

    def close(self) -> None:
        for f in [*self.out.values(), self.rejects]:
            if f:
                f.close()


def _batches(it: Iterator, n: int) -> Iterator[list]:
    batch = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def prepare(cfg: DataConfig, out: Path, *, base_dir: Path = Path("."), model: str = "smollm2-135m-instruct",
            force: bool = False, progress: bool = True) -> PrepareResult:
    """Run the data stage into the artifact folder `out` (skipped when a finished one matches)."""
    from tqdm import tqdm

    def resolve(p: str) -> Path | str:
        q = Path(p).expanduser()
        q = q if q.is_absolute() else base_dir / q
        return q if q.exists() else p  # a hub dataset id stays a string

    sources = {"train": resolve(cfg.train)} | ({"val": resolve(cfg.val)} if cfg.val else {})
    inputs = {}
    for name, src in sources.items():
        if isinstance(src, Path):
            inputs[name] = artifacts.input_ref(src)
        else:
            inputs[name] = {"path": src, "sha256": artifacts.sha256_json({"hub": src})}
    config = {"data": cfg.model_dump(exclude={"train", "val"}), "model": model}
    fp = artifacts.fingerprint("dataset", config, inputs)
    if not force and (m := artifacts.finished(out, fp)):
        return PrepareResult(Path(out), "skipped", m["metrics"])

    tok = _tokenizer(model)
    context_len = int(getattr(tok, "model_max_length", 0) or 0)
    if not 0 < context_len < 10**7:  # tokenizers without a limit report 1e30
        from transformers import AutoConfig

        context_len = AutoConfig.from_pretrained(tok.name_or_path).max_position_embeddings

    with artifacts.build("dataset", out, config, inputs) as b:
        run = _Run(cfg, tok, b.tmp, context_len)
        try:
            for name, src in sources.items():
                rows = run.rows(src, split="val" if name == "val" else None)
                with tqdm(desc=f"prepare {Path(str(src)).name}", unit=" rows", disable=not progress, leave=False) as bar:
                    for batch in _batches(rows, BATCH):
                        run.keep(batch)
                        bar.update(len(batch))
        finally:
            run.close()
        if run.errors and cfg.on_error == "fail":
            more = run.dropped["invalid"] - len(run.errors)
            raise DataError(f"{run.dropped['invalid']} invalid row(s) (on_error: fail; use on_error: skip to write "
                            f"them to rejects.jsonl and go on):\n  " + "\n  ".join(run.errors)
                            + (f"\n  … and {more} more" if more > 0 else ""))
        if run.kept["train"] == 0:
            raise DataError(f"{cfg.train}: no usable rows left ({run.rows_in} read; dropped: "
                            f"{dict(run.dropped) or 'none'})")
        lengths = np.asarray(run.lengths, dtype=np.int32)
        cards.plot_lengths(lengths, cfg.max_tokens, b.tmp / "token_lengths.png")
        outputs = {f.name: artifacts.sha256_file(f) for f in sorted(b.tmp.glob("*.jsonl"))}
        card = {
            "name": b.out.parent.name, "kind": run.kind, "formats": run.formats, "rows_in": run.rows_in,
            "rows_out": {"train": run.kept["train"], "val": run.kept["val"]},
            "dropped": {k: run.dropped[k] for k in ("invalid", "exact_duplicate", "near_duplicate", "pii",
                                                    "over_max_tokens")},
            "invalid_reasons": dict(run.invalid), "pii": cfg.pii, "pii_found": dict(run.pii),
            "tokens": cards.length_stats(lengths),
            "inputs": {Path(v["path"]).name: v["sha256"] for v in inputs.values()}, "outputs": outputs,
        }
        cards.write_card(card, b.tmp)
        b.outputs = {"train": "train.jsonl", "val": "val.jsonl", "kind": run.kind}
        b.metrics = card
    return PrepareResult(Path(out), "ran", card)
