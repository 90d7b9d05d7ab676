"""The built-in `rag` task: `llmkit rag eval`'s metrics as a task of the suite, on the same target as the rest.

    eval: {tasks: [rag], rag_index: runs/support-assistant/rag, rag_questions: examples/support/rag_questions.jsonl}

One item per question of `rag_questions` (rag/evaluate.py's format: {question, source, heading?}). Each item
retrieves the top `rag_top_k` chunks (hybrid), scores retrieval (recall@k: a relevant chunk is among them, 0/1;
mrr: 1 / rank of the first relevant one, 0 if none), has the target answer from them with the server's own rag
prompt (rag/answer.py), and asks a judge whether every statement of the answer is supported by the sources
(rag/judge.py's question and its yes/no parse: faithfulness 1/0; neither word: `unparsed`, never guessed). The
judge is `eval.judge_endpoint` when set, else the target judges its own answer, as `llmkit rag eval` does by
default. Retrieval does not depend on the model, so recall@k and MRR are the same for model and baseline;
faithfulness is the model's.
"""

from __future__ import annotations

import threading
from pathlib import Path

from llmkit.config import EvalConfig
from llmkit.errors import DataError
from llmkit.eval.judge import Judge
from llmkit.eval.tasks import Item, Task

VERDICT_TOKENS = 8  # rag/judge.py asks the same one-word question with the same budget


class _Retriever:
    """The index, opened on first use and searched one query at a time (an endpoint eval asks from threads)."""

    def __init__(self, folder: Path):
        self.folder, self._idx, self._lock = folder, None, threading.Lock()

    def search(self, question: str, k: int):
        from llmkit.rag import open_index

        with self._lock:
            if self._idx is None:
                self._idx = open_index(self.folder)
            return self._idx.search(question, k, mode="hybrid")


def _score(retriever: _Retriever, judge: Judge | None, k: int, target, row: dict, max_tokens: int) -> dict:
    from llmkit.rag.answer import augment
    from llmkit.rag.evaluate import relevant
    from llmkit.rag.judge import JUDGE, verdict

    hits = retriever.search(row["question"], k)
    first = next((h.rank for h in hits if relevant(h, row)), None)
    answer = target.generate(augment([{"role": "user", "content": row["question"]}], hits), max_tokens)
    sources = "\n\n".join(f"[{i}] {h.text}" for i, h in enumerate(hits, 1)) or "(none)"
    ask = JUDGE.format(sources=sources, answer=answer)
    said = (judge.ask(ask, VERDICT_TOKENS) if judge is not None
            else target.generate([{"role": "user", "content": ask}], VERDICT_TOKENS))
    supported = verdict(said)
    scores = {f"recall@{k}": float(first is not None), "mrr": 1.0 / first if first else 0.0,
              "unparsed": float(supported is None)}
    if supported is not None:
        scores["faithfulness"] = float(supported)
    return {"question": row["question"], "sources": [h.source for h in hits], "first_relevant": first,
            "reply": answer, "judge": judge.name if judge else "the target itself", "verdicts": [said],
            "scores": scores}


def rag_task(cfg: EvalConfig, dataset: Path | None = None) -> list[Task]:
    """The `rag` task of `cfg` (rag_index, rag_questions, rag_top_k; paths as given, from the working folder)."""
    from functools import partial

    from llmkit.rag.evaluate import read_questions

    missing = [f"eval.{k}" for k in ("rag_index", "rag_questions") if not getattr(cfg, k)]
    if missing:
        raise DataError(f"the built-in rag task needs {' and '.join(missing)} (--rag-index DIR, --rag-questions "
                        "FILE): an index folder from `llmkit rag index` and a JSONL of {question, source, heading?}")
    index, questions = Path(cfg.rag_index).expanduser(), Path(cfg.rag_questions).expanduser()
    if not (index / "manifest.json").is_file():
        raise DataError(f"eval.rag_index: {index} is not an index folder (no manifest.json; build one with "
                        "`llmkit rag index`)")
    if not questions.is_file():
        raise DataError(f"eval.rag_questions: {questions}: no such file")
    judge = Judge(cfg.judge_endpoint, cfg.judge_model, cfg.judge_api_key) if cfg.judge_endpoint else None
    score = partial(_score, _Retriever(index), judge, cfg.rag_top_k)
    rows = read_questions(questions)[: cfg.limit] if cfg.limit else read_questions(questions)
    items = [Item(str(n), "rag", {"type": "rag", **row}, score) for n, row in enumerate(rows, 1)]
    return [Task("rag", str(questions), items, inputs=[str(index)])]  # the index's fingerprint: its manifest
