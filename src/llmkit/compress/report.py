"""Quality and size report of an export, measured against its float reference, both run the same way.

    r = measure(reference=Path("m.f16.gguf"), export=Path("m.q4_k.gguf"), hf_dir=folder, dataset=data_dir)
    print(format_table([r]))

A GGUF export and its f16 reference are both run in llama-cpp-python (`measure` here; perplexity scored by
scoring.py, logits at the targets only and the shared prefix once; `_nll` below is its one-row reference); a
transformers export (int8/int4, hf_quant.py) and its bf16 reference are both run in transformers, on the same
rows and with the same loss (`compare` and `run_eval` are shared):
- **perplexity** on the dataset artifact's `val.jsonl` (rows rendered with the model's chat template; the
  loss is taken on the assistant reply tokens, the part the model was tuned to write), or on a fixed text
  when there is no dataset (every token after the first);
- **top-1 agreement**: at how many of those positions the export's most likely token is the reference's;
- **greedy agreement**: on N prompts, whether the export's greedy continuation is token-for-token the
  reference's, and the mean share of the continuation that matches before they first differ;
- **decode tok/s**: greedy batch-1 decoding (only the one-token steps after the prompt are timed; in llama.cpp
  the Python eval loop adds ~3 ms/token, FACTS.md), with the same thread count for both models.
Plus the file sizes. Nothing here is estimated: every number comes from running the two models from disk.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from llmkit.errors import DataError, MissingExtra

# Used when there is no dataset. Our own text, plain English with a few numbers, so a broken tokenizer or
# quantization shows up as a jump in perplexity.
FIXED_TEXT = (
    "The village library opens at nine in the morning and closes at six in the evening. On Saturdays it "
    "closes at one, and on Sundays it stays shut. Members may borrow up to 12 books at a time for three "
    "weeks; a book that comes back late costs 20 cents a day. The reading room on the first floor is quiet, "
    "with long oak tables and lamps that were bought in 1978. Children have their own corner, where stories "
    "are read aloud every Wednesday afternoon.\n\n"
    "To renew a book, bring it to the desk or call the library before the due date. Lost cards can be "
    "replaced for two dollars. The library also lends tools: a ladder, a drill and a sewing machine, each "
    "for one week. Volunteers help older readers with the computers on Tuesday mornings, and anyone may ask "
    "them how to send an email, print a letter or find a recipe."
)
FIXED_PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for a good night's sleep.",
    "Explain what a router does in one sentence.",
    "Write a short poem about the sea.",
    "How many legs does a spider have?",
    "What should I pack for a weekend hike?",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
]
N_CTX = 1024  # tokens per evaluated row (at most the model's trained context); longer rows are cut


@dataclass
class EvalSet:
    source: str  # what the perplexity was measured on, for the report
    sequences: list[tuple[int, list[int]]] = field(default_factory=list)  # (first target position, token ids)
    prompts: list[list[int]] = field(default_factory=list)
    prompt_texts: list[str] = field(default_factory=list)


def dataset_rows(dataset: Path | None, limit: int, split: str = "val") -> tuple[list[dict], str]:
    """Conversation or text rows of a dataset artifact's `{split}.jsonl` (a .jsonl file is the val split)."""
    if dataset is None or (split != "val" and not dataset.is_dir()):
        return [], ""
    path = dataset / f"{split}.jsonl" if dataset.is_dir() else dataset
    if not path.is_file():
        raise DataError(f"{dataset}: no {split}.jsonl (give a dataset artifact folder, or a .jsonl for the val rows)")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if len(rows) >= limit:
                break
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if "messages" in row or "text" in row:
                rows.append(row)
    return rows, str(path)


def _tokenize(llm, text: str) -> list[int]:
    # add_bos=True adds BOS only when the model's metadata asks for it (SmolLM's does not)
    return llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)


def eval_set(tokenize: Callable[[str], list[int]], hf_dir: Path, dataset: Path | None, *, rows: int, prompts: int,
             n_ctx: int = N_CTX) -> EvalSet:
    """Token sequences for perplexity and prompts for greedy agreement, cut by the engine's own `tokenize`
    (text with special-token markup → ids, BOS added when the model asks for it)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    templated = bool(tok.chat_template)
    data, path = dataset_rows(dataset, rows)
    es = EvalSet(source="fixed text")
    for row in data:
        msgs = row.get("messages")
        if msgs and templated and msgs[-1]["role"] == "assistant":
            prompt = tok.apply_chat_template(msgs[:-1], add_generation_prompt=True, tokenize=False)
            full = tokenize(tok.apply_chat_template(msgs, tokenize=False))[:n_ctx]
            head = tokenize(prompt)
            if full[:len(head)] == head and len(head) < len(full):
                es.sequences.append((len(head), full))
                if len(es.prompts) < prompts:
                    es.prompts.append(head)
                    es.prompt_texts.append(msgs[-2]["content"] if len(msgs) > 1 else prompt)
                continue
        text = tok.apply_chat_template(msgs, tokenize=False) if msgs and templated else row.get("text") or ""
        ids = tokenize(text)[:n_ctx]
        if len(ids) > 1:
            es.sequences.append((1, ids))
    if es.sequences:
        n = sum(len(ids) - s for s, ids in es.sequences)
        es.source = f"{path}: {len(es.sequences)} rows, {n} target tokens"
    else:
        ids = tokenize(FIXED_TEXT)[:n_ctx]
        es.sequences = [(1, ids)]
        es.source = f"fixed text ({len(ids) - 1} target tokens; no dataset given)"
    for text in FIXED_PROMPTS:
        if len(es.prompts) >= prompts:
            break
        msgs = [{"role": "user", "content": text}]
        es.prompts.append(tokenize(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
                                   if templated else text))
        es.prompt_texts.append(text)
    return es


def calibration_texts(dataset: Path, hf_dir: Path, rows: int) -> list[str]:
    """The dataset's train rows as the model reads them (chat template applied), for the importance matrix."""
    from transformers import AutoTokenizer

    if not (dataset / "train.jsonl").is_file():
        return []
    tok = AutoTokenizer.from_pretrained(hf_dir)
    data, _ = dataset_rows(dataset, rows, "train")
    return [tok.apply_chat_template(r["messages"], tokenize=False) if r.get("messages") and tok.chat_template
            else r.get("text") or "" for r in data]


def _load(path: Path, threads: int, n_ctx: int):
    try:
        from llama_cpp import Llama
    except ImportError:
        raise MissingExtra("llama-cpp-python is not installed: pip install llama-cpp-python") from None
    return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=512, n_threads=threads, n_threads_batch=threads,
                 logits_all=True, verbose=False)


def _nll(llm, start: int, ids: list[int]):
    """(summed negative log-likelihood of ids[start:], target count, argmax at each target)."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    logits = np.asarray(llm.scores[start - 1:len(ids) - 1], dtype=np.float64)  # (T, V): row t predicts ids[t+1]
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    targets = np.asarray(ids[start:])
    nll = lse - logits[np.arange(len(targets)), targets]
    return float(nll.sum()), len(targets), logits.argmax(axis=1)


def _greedy(llm, prompt: list[int], n: int) -> tuple[list[int], float]:
    """Greedy continuation of `prompt` (up to n tokens, stops at end of generation) and the decode seconds."""
    import numpy as np

    llm.reset()
    llm.eval(prompt)
    # llm.scores has one row per position of the context asked for, while llm.n_ctx() may be larger (llama.cpp
    # rounds a small context up to 256): evaluating past the last row fails, so that is where decoding stops.
    out, seconds = [], 0.0
    while len(out) < n and llm.n_tokens < len(llm.scores):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if tok == llm.token_eos():
            break
        out.append(tok)
        t0 = time.perf_counter()
        llm.eval([tok])
        seconds += time.perf_counter() - t0
    return out, seconds


def per_row(nll_fn: Callable) -> Callable:
    """A scorer of many rows from `nll_fn(start, ids)` of one: the reference path, one row per forward pass."""
    def score(seqs: list[tuple[int, list[int]]], advance: Callable[[int], object] = lambda n: None) -> list:
        out = []
        for start, ids in seqs:
            out.append(nll_fn(start, ids))
            advance(1)
        return out
    return score


def run_eval(es: EvalSet, score_fn: Callable, greedy_fn: Callable, gen_tokens: int, label: str, progress: bool) -> dict:
    """Perplexity, argmaxes and greedy continuations of one model: `score_fn(sequences, advance)` → per row
    (summed NLL of ids[start:], count, argmax per target), calling advance(rows done) as it goes (`per_row`
    of a one-row `_nll`, or a batched scorer such as scoring.LlamaScorer.score); `greedy_fn(prompt, n)` → (new
    ids, decode seconds)."""
    from tqdm import tqdm

    with tqdm(total=len(es.sequences), desc=f"perplexity {label}", unit="row", disable=not progress,
              leave=False) as bar:
        rows = score_fn(es.sequences, bar.update)
    nll, count = 0.0, 0
    for s, n, _ in rows:  # summed in row order, as before batching
        nll, count = nll + s, count + n
    tops = [top for _, _, top in rows]
    outs, decoded, seconds = [], 0, 0.0
    for p in tqdm(es.prompts, desc=f"greedy {label}", unit="prompt", disable=not progress, leave=False):
        ids, s = greedy_fn(p, gen_tokens)
        outs.append(ids)
        decoded, seconds = decoded + len(ids), seconds + s
    return {"ppl": math.exp(nll / max(1, count)), "targets": count, "tops": tops, "outs": outs,
            "tok_s": decoded / seconds if seconds else None}


def _prefix_share(a: list[int], b: list[int]) -> float:
    n = max(len(a), len(b))
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return 1.0 if n == 0 else same / n


def measure(reference: Path, export: Path, hf_dir: Path, dataset: Path | None = None, *, rows: int = 100,
            prompts: int = 8, gen_tokens: int = 48, threads: int = 1, samples: int = 2, progress: bool = False,
            batched: bool = True) -> dict:
    """Measure the GGUF `export` against its f16 `reference` (the same file when the export is f16).

    batched: perplexity with scoring.LlamaScorer (logits at the targets only, the rows' shared prefix once);
    False: the reference path, one row per `Llama.eval` (`_nll`); both give the same report (tests/compress).
    """
    same_file = Path(reference).resolve() == Path(export).resolve()
    trained = json.loads((hf_dir / "config.json").read_text()).get("max_position_embeddings") or N_CTX
    n_ctx = min(N_CTX, trained)
    ref = _load(reference, threads, n_ctx)
    es = eval_set(partial(_tokenize, ref), hf_dir, dataset, rows=rows, prompts=prompts, n_ctx=n_ctx)

    def run(llm, path: Path, label: str) -> dict:
        if not batched:
            return run_eval(es, per_row(partial(_nll, llm)), partial(_greedy, llm), gen_tokens, label, progress)
        from llmkit.compress.scoring import N_SEQ, LlamaScorer

        with LlamaScorer(path, threads, n_ctx, n_seq=min(N_SEQ, len(es.sequences))) as scorer:
            return run_eval(es, scorer.score, partial(_greedy, llm), gen_tokens, label, progress)

    r = run(ref, reference, "f16")
    if same_file:
        e = r
    else:
        exp = _load(export, threads, n_ctx)
        e = run(exp, export, Path(export).name)
        exp.close()
    report = compare(r, e, es, lambda ids: ref.detokenize(ids).decode("utf-8", "replace"), file=Path(export).name,
                     size=Path(export).stat().st_size, reference_size=Path(reference).stat().st_size,
                     reference="f16 GGUF", gen_tokens=gen_tokens, threads=threads, samples=samples)
    ref.close()
    return report


def compare(r: dict, e: dict, es: EvalSet, detokenize: Callable[[list[int]], str], *, file: str, size: int,
            reference_size: int, reference: str, gen_tokens: int, threads: int, samples: int) -> dict:
    """The report of export run `e` against reference run `r` (both from `run_eval` on the same EvalSet)."""
    import numpy as np

    agree = sum(int((a == b).sum()) for a, b in zip(r["tops"], e["tops"])) / max(1, sum(len(a) for a in r["tops"]))
    texts = [(q, detokenize(a), detokenize(b)) for q, a, b in zip(es.prompt_texts, r["outs"], e["outs"])]
    return {
        "file": file,
        "size_bytes": size,
        "size_mb": round(size / 1e6, 1),
        "reference_size_bytes": reference_size,
        "reference": reference,  # the `*_f16` keys hold this reference's figures (f16 GGUF, or bf16 transformers)
        "size_vs_f16": round(size / reference_size, 4),
        "eval": es.source,
        "ppl_f16": round(r["ppl"], 4),
        "ppl": round(e["ppl"], 4),
        "ppl_increase_pct": round(100 * (e["ppl"] / r["ppl"] - 1), 3),
        "top1_agreement": round(float(agree), 4),
        "greedy_same": sum(a == b for a, b in zip(r["outs"], e["outs"])),
        "greedy_prompts": len(es.prompts),
        "greedy_prefix_agreement": round(float(np.mean([_prefix_share(a, b) for a, b in zip(r["outs"], e["outs"])]))
                                         if es.prompts else 1.0, 4),
        "gen_tokens": gen_tokens,
        "decode_tok_s": round(e["tok_s"], 1) if e["tok_s"] else None,
        "decode_tok_s_f16": round(r["tok_s"], 1) if r["tok_s"] else None,
        "threads": threads,
        "samples": [{"prompt": q, "f16": a, "export": b} for q, a, b in texts[:samples]],
    }


COLUMNS = [  # (header, report key, format)
    ("file", "file", "{}"),
    ("size MB", "size_mb", "{:.1f}"),
    ("vs ref", "size_vs_f16", "{:.1%}"),
    ("ppl ref", "ppl_f16", "{:.3f}"),
    ("ppl", "ppl", "{:.3f}"),
    ("Δppl", "ppl_increase_pct", "{:+.2f}%"),
    ("top-1 agree", "top1_agreement", "{:.1%}"),
    ("greedy same", None, ""),
    ("decode tok/s", "decode_tok_s", "{:.1f}"),
]


def format_table(reports: list[dict]) -> str:
    """The report as a plain-text table, one row per export, with what the perplexity was measured on."""
    def cell(r: dict, key: str | None, fmt: str) -> str:
        if key is None:
            return f"{r['greedy_same']}/{r['greedy_prompts']} ({r['greedy_prefix_agreement']:.0%})"
        return "-" if r.get(key) is None else fmt.format(r[key])

    rows = [[h for h, _, _ in COLUMNS]] + [[cell(r, k, f) for _, k, f in COLUMNS] for r in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = sorted({r["eval"] for r in reports})
    threads = sorted({r["threads"] for r in reports})
    refs = sorted({r.get("reference", "f16 GGUF") for r in reports})
    lines.append(f"reference: {', '.join(refs)}; perplexity on {'; '.join(notes)}; greedy: same tokens for "
                 f"{reports[0]['gen_tokens']} steps (mean matching prefix); decode on {'/'.join(map(str, threads))} "
                 "thread(s)" if reports else "")
    return "\n".join(lines)
