"""Batch generation over a prompts file (`llmkit generate`): in this process or on Ray actors, one engine each.

    generate(Path("prompts.jsonl"), Path("answers.jsonl"), BatchSpec(model="smollm2-135m-instruct"))

Input rows are `{"prompt": "..."}` (sent as one user turn through the model's chat template, or as it is with
`template=False`) or `{"messages": [{"role", "content"}, ...]}`; any other fields (an `id`) are copied to the
answer. Every row is checked before any model loads, and all bad rows are reported at once (file:line: field).

The output is JSON lines in input order, one per prompt: the input row plus `line`, `answer`, `finish_reason`,
the token counts and `key` (a hash of the prompt, model and generation settings). It is appended one whole line
per write and flushed, so a killed run leaves complete rows and at most one torn last line. A second run reads it
back, cuts a torn tail, skips the lines already answered with the same key, and refuses rows made with another
model or other settings (mixing them would make a file nobody can trust). A prompt the engine refuses (longer than
the context) gets a row with `error` instead of `answer`, in its place; it is final like an answer, since the same
prompt and settings fail the same way again (`generate` reports those lines and the CLI exits 1).

Workers (`workers` engines) each take chunks of `parallel` prompts, which the engine decodes together (llama.cpp's
continuous batching: a sequence's greedy output is the same in a batch as alone, engines/llamacpp.py); results
are buffered and written in input order as soon as the rows before them are done.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

from llmkit.engines.batch_worker import BatchSpec, EngineWorker
from llmkit.errors import DataError, LlmkitError
from llmkit.models import default_threads

__all__ = ["BatchSpec", "Row", "generate", "read_done", "read_prompts", "row_key"]

ROLES = ("system", "user", "assistant")
MAX_PROBLEMS = 20  # listed in one error; the count says how many more


@dataclass
class Row:
    line: int
    data: dict  # the input row as read


def read_prompts(path: Path) -> list[Row]:
    """Every row of a JSONL prompts file, or a DataError naming each bad row (file:line: field, expected)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows, problems = [], []
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                problems.append(f"{where}: not JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(obj, dict):
                problems.append(f"{where}: expected an object with `prompt` or `messages`, got {type(obj).__name__}")
                continue
            problems += [f"{where}: {p}" for p in _row_problems(obj)]
            rows.append(Row(n, obj))
    if problems:
        more = f"\n  ... and {len(problems) - MAX_PROBLEMS} more" if len(problems) > MAX_PROBLEMS else ""
        raise DataError(f"{path}: {len(problems)} problem{'s' * (len(problems) != 1)} in its rows\n"
                        + "\n".join(f"  - {p}" for p in problems[:MAX_PROBLEMS]) + more)
    if not rows:
        raise DataError(f"{path}: no prompts (expected JSON lines with `prompt` or `messages`)")
    return rows


def _row_problems(obj: dict) -> list[str]:
    has_p, has_m = "prompt" in obj, "messages" in obj
    if has_p == has_m:
        return ["expected exactly one of `prompt` (a string) or `messages` (a list of {role, content})"
                + (", got both" if has_p else ", got neither")]
    if has_p:
        p = obj["prompt"]
        return [] if isinstance(p, str) and p.strip() else [f"prompt: expected a non-empty string, got {p!r:.40}"]
    msgs = obj["messages"]
    if not isinstance(msgs, list) or not msgs:
        return [f"messages: expected a non-empty list of {{role, content}}, got {msgs!r:.40}"]
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            out.append(f"messages[{i}]: expected an object {{role, content}}, got {type(m).__name__}")
            continue
        if m.get("role") not in ROLES:
            out.append(f"messages[{i}].role: expected one of {', '.join(ROLES)}, got {m.get('role')!r}")
        if not isinstance(m.get("content"), str):
            out.append(f"messages[{i}].content: expected a string, got {type(m.get('content')).__name__}")
    if not out and msgs[-1]["role"] == "assistant":
        out.append(f"messages[{len(msgs) - 1}].role: the last message must not be the assistant's (it is what "
                   "gets generated)")
    return out


def row_key(row: Row, spec: BatchSpec) -> str:
    """What an answer depends on: the prompt, the model, the settings that change the text. Not where it ran."""
    what = {"in": row.data.get("messages", row.data.get("prompt")), "model": spec.model, "engine": spec.engine,
            "template": spec.template, "n_ctx": spec.n_ctx, "params": asdict(spec.params)}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def read_done(out: Path, keys: dict[int, str]) -> set[int]:
    """Lines already answered in `out` with the same key. A torn last line (a killed write) is cut off; a row
    made from another prompt, model or settings is an error (all such rows listed)."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):  # a write that was killed half-way: everything before it is whole
        with open(out, "r+b") as f:
            f.truncate(end)
    done, problems = set(), []
    for n, raw in enumerate(data[:end].splitlines(), 1):
        try:
            obj = json.loads(raw)
            line, key = obj["line"], obj["key"]
        except (json.JSONDecodeError, KeyError, TypeError):
            problems.append(f"{out}:{n}: not an answer row of `llmkit generate` (expected JSON with line and key)")
            continue
        if keys.get(line) != key:
            problems.append(f"{out}:{n}: line {line} was answered from another prompt, model or settings")
            continue
        done.add(line)
    if problems:
        raise DataError(f"{out}: cannot resume into it ({len(problems)} row(s) do not belong to this job); "
                        "delete it or choose another --out\n" + "\n".join(f"  - {p}" for p in problems[:MAX_PROBLEMS]))
    return done


class LocalPool:
    """`workers` engines in this process, each driven by its own thread (llama.cpp releases the GIL)."""

    def __init__(self, spec: BatchSpec):
        threads = spec.threads or max(1, default_threads() // spec.workers)
        self.workers = [EngineWorker(spec, threads) for _ in range(spec.workers)]
        self.pool = ThreadPoolExecutor(len(self.workers))
        self.nodes = ["local"]

    def submit(self, w: int, items) -> Future:
        return self.pool.submit(self.workers[w].run, items)

    def close(self) -> None:
        self.pool.shutdown()
        for w in self.workers:
            w.close()


def generate(inp: Path, out: Path, spec: BatchSpec, progress: bool = True,
             echo: Callable[[str], None] = print) -> dict:
    """Answer every prompt of `inp` into `out` (resuming it); returns counts, seconds and where it ran."""
    import time

    from tqdm import tqdm

    if spec.workers < 1 or spec.parallel < 1:
        raise LlmkitError(f"workers and parallel must be >= 1, got {spec.workers} and {spec.parallel}")
    rows = read_prompts(inp)
    keys = {r.line: row_key(r, spec) for r in rows}
    done = read_done(out, keys)
    todo = [r for r in rows if r.line not in done]
    stats = {"rows": len(rows), "skipped": len(rows) - len(todo), "answered": 0, "errors": 0,
             "backend": spec.backend, "workers": spec.workers}
    if not todo:
        echo(f"{out}: all {len(rows)} prompts already answered")
        return stats | {"seconds": 0.0, "nodes": 0}
    if done:
        echo(f"{out}: resuming: {len(done)} of {len(rows)} prompts already answered")
    t0 = time.perf_counter()
    if spec.backend == "ray":
        from llmkit.engines.ray_batch import RayPool

        pool = RayPool(spec)
    else:
        pool = LocalPool(spec)
    stats["startup_s"] = round(time.perf_counter() - t0, 3)  # engines loaded (and Ray joined, actors placed)
    chunks = [todo[i:i + spec.parallel] for i in range(0, len(todo), spec.parallel)]
    by_line = {r.line: r for r in todo}
    order = [r.line for r in todo]
    ready: dict[int, dict] = {}
    nxt = 0  # index into `order` of the next row to write
    inflight: dict[Future, int] = {}
    failed: list[str] = []
    depth = 2  # chunks queued per worker: the next one is there when the engine finishes the current
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "ab") as f, tqdm(total=len(todo), desc="generate", unit="prompt", disable=not progress) as bar:
            it = iter(chunks)
            for w in range(len(pool.workers)):
                for _ in range(depth):
                    if (c := next(it, None)) is not None:
                        inflight[pool.submit(w, [(r.line, r.data) for r in c])] = w
            while inflight:
                finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in finished:
                    w = inflight.pop(fut)
                    for res in fut.result():
                        ready[res["line"]] = res
                    bar.update(len(fut.result()))
                    if (c := next(it, None)) is not None:
                        inflight[pool.submit(w, [(r.line, r.data) for r in c])] = w
                # rows go out in input order: each as soon as every row before it is written
                while nxt < len(order) and order[nxt] in ready:
                    line = order[nxt]
                    res = ready.pop(line)
                    row = {"line": line, **by_line[line].data, **res, "key": keys[line]}
                    f.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")  # one write per whole row
                    stats["errors" if "error" in res else "answered"] += 1
                    if "error" in res:
                        failed.append(f"{inp}:{line}: {res['error']}")
                    nxt += 1
                f.flush()
            os.fsync(f.fileno())
    finally:
        stats["nodes"] = len(set(pool.nodes))
        pool.close()
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    for f in failed[:MAX_PROBLEMS]:
        echo(f"not answered: {f}")
    return stats
