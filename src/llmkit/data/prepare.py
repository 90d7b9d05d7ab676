"""The data stage: raw files → a training-ready dataset artifact with a data card.

    result = prepare(DataConfig(train="train.jsonl"), out=Path("runs/x/data"))

Rows stream through two halves:

1. per-row transforms, with no shared state (`RowTransform`): parse → normalize to DESIGN.md's rows
   (messages / preference / text) → clean text → scrub PII → count tokens with the model's chat template.
   In-process by default; with `backend: ray` the same code runs in Ray Data tasks over shards of the file.
2. the in-order part, on the driver (`_Accounting`): exact and near dedupe, length limits, the seeded
   split, writing, and the data card.

Memory stays flat in the file size: only 16-byte row digests (and MinHash signatures with `dedupe: near`)
are kept. Every input row is accounted for in the data card: kept for train, kept for val, or dropped with a
reason. Under `on_error: fail` any invalid row stops the stage (after reading the rest, so all bad rows are
listed at once); under `skip` invalid rows go to `rejects.jsonl` with their file, line and reason.
"""

from __future__ import annotations

import hashlib
import json
from array import array
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
from llmkit.data.item import Item
from llmkit.data.load import RawRow, read_rows
from llmkit.errors import DataError

BATCH = 512  # rows tokenized together: batching makes the fast tokenizer several times faster than row by row
SHOW_ERRORS = 20


@dataclass
class PrepareResult:
    out: Path
    status: str  # "ran" | "skipped"
    card: dict


def _chat_renderer(tok):
    """The tokenizer's chat template, compiled once and rendered directly.

    `apply_chat_template` re-normalizes messages and rebuilds the context on every call: ~230 µs per row here,
    half the stage's time. Rendering the compiled template with the same variables gives the same string
    (tests/data/test_prepare.py checks it) at ~100 µs.
    """
    from transformers.utils.chat_template_utils import _compile_jinja_template

    template = _compile_jinja_template(tok.chat_template)
    special = {k: v for k, v in tok.special_tokens_map.items() if isinstance(v, str)}
    return lambda messages: template.render(messages=messages, add_generation_prompt=False, tools=None,
                                            documents=None, **special)


class _PolicyScrubber:
    """The guard policy's input pii/secrets rails over training text: `redact` rails redact, `block` rails drop
    the row, `flag` rails only count (the data card lists what was found either way)."""

    def __init__(self, guard) -> None:
        self.guard = guard
        self.blocked = False  # whether the last text redacted had a finding of a `block` rail

    def redact(self, text: str) -> tuple[str, Counter]:
        text, hits = self.guard.redact("input", text)
        self.blocked = any(h.fired and h.action == "block" for h in hits)
        return text, Counter({k: v for h in hits for k, v in h.detail.items()})


class RowTransform:
    """Per-row work: normalize, clean, scrub, count tokens. Picklable; loads its tokenizer on first use."""

    def __init__(self, cfg: DataConfig, tokenizer_dir: str, guard: dict | None = None):
        self.cfg, self.tokenizer_dir, self.guard = cfg, tokenizer_dir, guard
        self._tok = self._render = self._scrubber = None
        self._cda = None

    def __getstate__(self) -> dict:
        return {"cfg": self.cfg, "tokenizer_dir": self.tokenizer_dir, "guard": self.guard}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["cfg"], state["tokenizer_dir"], state.get("guard"))

    def _setup(self) -> None:
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        self._render = _chat_renderer(self._tok) if self._tok.chat_template else None
        if self.guard:
            from llmkit.guard import Guard, Policy

            self._scrubber = _PolicyScrubber(Guard(Policy.model_validate({"input": self.guard})))
        elif self.cfg.pii != "off":
            from llmkit.guard.pii import PiiScrubber

            self._scrubber = PiiScrubber(self.cfg.pii_mode)
        if self.cfg.augment == "counterfactual":
            from llmkit.data.augment import Counterfactual

            self._cda = Counterfactual()

    def token_lengths(self, rows: list[dict]) -> list[int]:
        """Tokens each row will take in training: chat template applied for conversations."""
        if not rows:
            return []
        if "messages" in rows[0]:
            strs = [self._render(r["messages"]) for r in rows]  # type: ignore[misc]
        elif "chosen" in rows[0]:
            # the longer of the two completions decides whether the pair fits
            strs = [r["prompt"] + "\n" + max(r["chosen"], r["rejected"], key=len) for r in rows]
        else:
            strs = [r["text"] for r in rows]
        # Lengths only: the Rust tokenizer without offsets (encode_batch_fast) and without transformers' per-row
        # conversion to Python dicts, ~2x faster than `tok(strs)`.
        backend = self._tok.backend_tokenizer  # type: ignore[attr-defined]
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [len(e.ids) for e in encode(strs, add_special_tokens=False)]

    def __call__(self, raws: list[RawRow], fmt: str) -> list[Item]:
        if self._tok is None:
            self._setup()
        items, rows, twins = [], [], []
        for raw in raws:
            it = Item(raw.file, raw.line, raw=raw.data)
            items.append(it)
            if raw.error:
                it.error, it.category = raw.error, raw.error.split(":")[0].split(" (")[0]
                continue
            assert raw.data is not None
            try:
                row = normalize(raw.data, fmt)
            except RowError as e:
                it.error, it.category = f"{e} (format '{fmt}')", e.problem.split(" (")[0].split(":")[0]
                continue
            row = with_texts(row, [normalize_text(t) if t else t for t in texts(row)])
            if self._scrubber is not None:
                scrubbed, found, blocked = [], [], False
                for t in texts(row):
                    text, counts = self._scrubber.redact(t)
                    scrubbed.append(text)
                    found.append(counts)
                    blocked |= bool(self.guard) and self._scrubber.blocked
                it.pii = dict(sum(found, Counter()))
                it.drop = bool(it.pii) and (self.cfg.pii == "drop" if self.guard is None else blocked)
                row = with_texts(row, list(scrubbed))
            it.row = json.dumps(row, ensure_ascii=False)
            it.key = exact_key(it.row)
            it.ask = asks(row) if self.cfg.dedupe == "near" else ""
            rows.append(row)
            if self._cda is not None:  # after scrubbing: a copy never brings back what was redacted
                for swapped in self._cda.variants(texts(row)):
                    twin = with_texts(row, swapped)
                    it.twins.append(json.dumps(twin, ensure_ascii=False))
                    twins.append((it, twin))
        valid = [it for it in items if it.row is not None]
        for it, n in zip(valid, self.token_lengths(rows)):
            it.tokens = n
        for (it, _), n in zip(twins, self.token_lengths([t for _, t in twins])):
            it.twin_tokens.append(n)
        return items


def _is_val(key: bytes, seed: int, fraction: float) -> bool:
    """Content-based split: the same row lands on the same side whatever the file order."""
    h = int.from_bytes(hashlib.blake2b(key, digest_size=8, key=seed.to_bytes(8, "little", signed=True)).digest(), "little")
    return h / 2**64 < fraction


class _Accounting:
    """The in-order half: counters, dedupe, limits, split, output files."""

    def __init__(self, cfg: DataConfig, folder: Path, context_len: int):
        self.cfg, self.context_len = cfg, context_len
        self.rows_in = 0
        self.dropped: Counter = Counter()
        self.invalid: Counter = Counter()
        self.errors: list[str] = []
        self.pii: Counter = Counter()
        self.seen: set[bytes] = set()
        self.near = NearDedupe(cfg.near_threshold, ngram=cfg.near_ngram) if cfg.dedupe == "near" else None
        self.lengths = array("I")  # 4 bytes a row: the memory that grows with the input is this and `seen`
        self.kept: Counter = Counter()
        self.augmented = 0  # counterfactual copies written to train
        self.twins: set[bytes] = set()  # their digests
        self.out = {"train": open(folder / "train.jsonl", "w"), "val": open(folder / "val.jsonl", "w")}
        self.rejects = open(folder / "rejects.jsonl", "w") if cfg.on_error == "skip" else None

    def reject(self, it: Item, reason: str, category: str) -> None:
        self.invalid[category] += 1
        self.dropped["invalid"] += 1
        if len(self.errors) < SHOW_ERRORS:
            self.errors.append(f"{it.file}:{it.line}: {reason}")
        if self.rejects:
            self.rejects.write(json.dumps({"file": it.file, "line": it.line, "reason": reason, "row": it.raw},
                                          ensure_ascii=False, default=str) + "\n")

    def accept(self, it: Item, split: str | None) -> None:
        self.rows_in += 1
        if it.row is None:
            self.reject(it, it.error or "invalid", it.category or "invalid")
            return
        self.pii.update(it.pii)
        if it.drop:
            self.dropped["pii"] += 1
            return
        if self.cfg.dedupe != "none":
            if it.key in self.seen:
                self.dropped["exact_duplicate"] += 1
                return
            self.seen.add(it.key)
        if self.near is not None and self.near.seen(it.ask):
            self.dropped["near_duplicate"] += 1
            return
        if it.tokens > self.context_len:
            self.reject(it, f"too long for the model: {it.tokens} tokens > context length {self.context_len}",
                        "too long for the model")
            return
        if it.tokens > self.cfg.max_tokens:
            self.dropped["over_max_tokens"] += 1
            return
        side = split or ("val" if _is_val(it.key, self.cfg.seed, self.cfg.val_fraction) else "train")
        self.out[side].write(it.row + "\n")
        self.kept[side] += 1
        self.lengths.append(it.tokens)
        if side == "train":  # val stays the held-out rows as they are
            for twin, tokens in zip(it.twins, it.twin_tokens):
                self._add_twin(twin, tokens)

    def _add_twin(self, twin: str, tokens: int) -> None:
        """A counterfactual copy goes right after its row, unless that text was already written (an input row
        read earlier, or another copy) or is too long for the limits. Copies are kept apart from `seen`: a later
        input row is never dropped as a duplicate of a made-up one."""
        key = exact_key(twin)
        if key in self.seen or key in self.twins or tokens > min(self.cfg.max_tokens, self.context_len):
            return
        self.twins.add(key)
        self.out["train"].write(twin + "\n")
        self.kept["train"] += 1
        self.augmented += 1
        self.lengths.append(tokens)

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


def detect_format(source: Path | str, cfg: DataConfig) -> str | None:
    """The configured format, or the one the first parseable row of `source` has (None: none found)."""
    if cfg.format != "auto":
        return cfg.format
    first = None
    for n, raw in enumerate(r for r in read_rows(source) if r.data is not None):
        first = first or raw
        if fmt := detect(raw.data):  # type: ignore[arg-type]
            return fmt
        if n >= 1000:
            break
    if first is None:
        return None
    raise DataError(f"{first.where}: cannot tell the row format from its fields {sorted(first.data or {})}; expected "
                    f"one of: {'; '.join(f'{f} ({expected_fields(f)})' for f in FORMATS)} (or set data.format)")


_worker: tuple | None = None  # (transform, fmt) in a worker process


def _init_worker(transform: RowTransform, fmt: str) -> None:
    import os

    # each worker is one of `workers` processes on the cores already; the tokenizer's own thread pool would
    # only make them fight for the same cores
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    global _worker
    _worker = (transform, fmt)


def _work(batch) -> list[Item]:
    from llmkit.data.load import parse_jsonl_line

    transform, fmt = _worker  # type: ignore[misc]
    if isinstance(batch, tuple):  # (path, [(line, bytes), ...]): JSONL is parsed in the worker too
        path, lines = batch
        batch = []
        for n, raw in lines:
            obj, err = parse_jsonl_line(raw)
            if obj is not None or err is not None:
                batch.append(RawRow(path, n, obj, err))
    return transform(batch, fmt)


def _jsonl_line_batches(path: Path) -> Iterator[tuple[str, list[tuple[int, bytes]]]]:
    with open(path, "rb") as f:
        yield from ((str(path), b) for b in _batches(enumerate(f, 1), BATCH))


def _local_items(source: Path | str, fmt: str, transform: RowTransform, workers: int) -> Iterator[list[Item]]:
    if workers <= 1:
        for batch in _batches(read_rows(source), BATCH):
            yield transform(batch, fmt)
        return
    import multiprocessing as mp

    p = Path(str(source))
    if p.is_file() and p.suffix.lower() in (".jsonl", ".ndjson"):
        if p.stat().st_size == 0:
            raise DataError(f"{p}: the file is empty")
        batches: Iterator = _jsonl_line_batches(p)
    else:
        batches = _batches(read_rows(source), BATCH)
    # fork: workers start with the modules already imported; imap keeps file order for the in-order half
    with mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(transform, fmt)) as pool:
        yield from pool.imap(_work, batches, chunksize=2)


def _auto_workers(cfg: DataConfig, sources: dict) -> int:
    import os

    if cfg.workers:
        return cfg.workers
    size = sum(Path(str(s)).stat().st_size for s in sources.values() if Path(str(s)).is_file())
    # below a few MB, starting processes costs more than it saves
    return min(os.cpu_count() or 1, 8) if size >= 4 << 20 else 1


def prepare(cfg: DataConfig, out: Path, *, base_dir: Path = Path("."), model: str = "smollm2-135m-instruct",
            model_artifact: Path | None = None, force: bool = False, progress: bool = True,
            guard: dict | None = None) -> PrepareResult:
    """Run the data stage into the artifact folder `out` (skipped when a finished one matches).

    `guard`: the pii/secrets rails of a guard policy's input side (`guard.policy.data_rails`); given, they scrub
    the training text as they scrub requests (redact, block = drop the row, flag = count), in place of `cfg.pii`.

    The model's tokenizer and chat template decide token lengths, so the model is an input too: the model
    stage's artifact when the pipeline has one (`model_artifact`, for lineage), else the weights' own hash.
    """
    from tqdm import tqdm

    from llmkit.models import hf_folder, resolve_model

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
    ref = resolve_model(model)
    inputs["model"] = artifacts.input_ref(model_artifact if model_artifact else ref.path)
    # the backend changes where the work runs, not what comes out: it is not part of the fingerprint
    # augment: none is left out of the fingerprint, so datasets made before the option existed stay finished
    skip = {"train", "val", "backend", "ray_address", "workers"} | ({"augment"} if cfg.augment == "none" else set())
    config = {"data": cfg.model_dump(exclude=skip), "model": model}
    if guard:
        config["guard"] = guard
    fp = artifacts.fingerprint("dataset", config, inputs)
    if not force and (m := artifacts.finished(out, fp)):
        return PrepareResult(Path(out), "skipped", m["metrics"])

    tokenizer_dir = str(hf_folder(ref, progress=progress))
    from transformers import AutoConfig

    context_len = AutoConfig.from_pretrained(tokenizer_dir).max_position_embeddings
    transform = RowTransform(cfg, tokenizer_dir, guard)
    formats: dict[str, str] = {}
    kind = None
    for src in sources.values():
        fmt = detect_format(src, cfg)
        if fmt is None:
            continue  # no parseable row: every row will be rejected below with its own reason
        formats[Path(str(src)).name] = fmt
        if kind and kind_of(fmt) != kind:
            raise DataError(f"{src}: format '{fmt}' makes {kind_of(fmt)} rows, but {cfg.train} makes {kind} rows; "
                            "one dataset holds one kind")
        kind = kind_of(fmt)

    workers = _auto_workers(cfg, sources)
    with artifacts.build("dataset", out, config, inputs) as b:
        acc = _Accounting(cfg, b.tmp, context_len)
        try:
            for name, src in sources.items():
                fmt = formats.get(Path(str(src)).name, "text")
                if cfg.backend == "ray":
                    from llmkit.data.ray_backend import ray_items

                    chunks = ray_items(src, fmt, transform, cfg.ray_address)
                else:
                    chunks = _local_items(src, fmt, transform, workers)
                with tqdm(desc=f"prepare {Path(str(src)).name}", unit=" rows", disable=not progress, leave=False) as bar:
                    for items in chunks:
                        for it in items:
                            acc.accept(it, "val" if name == "val" else None)
                        bar.update(len(items))
        finally:
            acc.close()
        if acc.errors and cfg.on_error == "fail":
            more = acc.dropped["invalid"] - len(acc.errors)
            raise DataError(f"{acc.dropped['invalid']} invalid row(s) (on_error: fail; use on_error: skip to write "
                            f"them to rejects.jsonl and go on):\n  " + "\n  ".join(acc.errors)
                            + (f"\n  … and {more} more" if more > 0 else ""))
        if acc.kept["train"] == 0:
            raise DataError(f"{cfg.train}: no usable rows left ({acc.rows_in} read; dropped: "
                            f"{dict(acc.dropped) or 'none'})")
        lengths = np.asarray(acc.lengths, dtype=np.int32)
        cards.plot_lengths(lengths, cfg.max_tokens, b.tmp / "token_lengths.png")
        outputs = {f.name: artifacts.sha256_file(f) for f in sorted(b.tmp.glob("*.jsonl"))}
        card = {
            "name": b.out.parent.name, "kind": kind, "formats": formats, "rows_in": acc.rows_in,
            "rows_out": {"train": acc.kept["train"], "val": acc.kept["val"]},
            "dropped": {k: acc.dropped[k] for k in ("invalid", "exact_duplicate", "near_duplicate", "pii",
                                                    "over_max_tokens")},
            "augmented": {"counterfactual": acc.augmented} if cfg.augment == "counterfactual" else {},
            "invalid_reasons": dict(acc.invalid), "pii": "guard policy" if guard else cfg.pii, "pii_found": dict(acc.pii),
            "tokens": cards.length_stats(lengths),
            "inputs": {Path(v["path"]).name: v["sha256"] for k, v in inputs.items() if k != "model"}, "outputs": outputs,
        }
        cards.write_card(card, b.tmp)
        b.outputs = {"train": "train.jsonl", "val": "val.jsonl", "kind": kind}
        b.metrics = card
    return PrepareResult(Path(out), "ran", card)
