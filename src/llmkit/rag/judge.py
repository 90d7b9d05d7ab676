"""Answer faithfulness: is what a model answers from the retrieved sources supported by them? An LLM judges.

For each question of an eval set: retrieve the top-k chunks, build the same prompt the server builds
(`answer.augment`), ask the answering model through any OpenAI-compatible endpoint (`llmkit serve` by default),
then ask the judge model — the same endpoint and model unless told otherwise — whether every statement of the
answer is supported by the sources, in one word. Faithfulness = yes / (yes + no); replies with neither word
are counted as `unparsed`, never guessed. Greedy decoding (temperature 0) for both, so a rerun gives the same.

The number is only as good as the judge: the bundled 135M model is a weak one; point `--judge-endpoint` at a
stronger model when one is reachable.
"""

from __future__ import annotations

import re
from pathlib import Path

from llmkit.engines import remote
from llmkit.rag.answer import augment
from llmkit.rag.evaluate import read_questions
from llmkit.rag.retrieve import open_index

JUDGE = ("Sources:\n\n{sources}\n\nAnswer: {answer}\n\n"
         "Is every statement in the answer supported by the sources above? Reply with one word: yes or no.")
_VERDICT = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def verdict(reply: str) -> bool | None:
    """True for yes, False for no (the first of the two words in the reply's first 60 characters), else None."""
    m = _VERDICT.search(reply[:60])
    return None if m is None else m.group(1).lower() == "yes"


# Module names, so a unit test can replace the endpoint (tests/rag/test_judge.py).
_client = remote.client
_chat = remote.chat


def faithfulness(index_dir: Path, questions: Path, endpoint: str, model: str, *, judge_endpoint: str | None = None,
                 judge_model: str | None = None, api_key: str | None = None, top_k: int = 4,
                 max_tokens: int = 128, progress: bool = True) -> dict:
    """{"faithfulness": share of judged answers found supported (None if none was judged), "judged", "unparsed",
    "questions", "answers": [{question, answer, judge, supported}]}."""
    from tqdm import tqdm

    idx = open_index(index_dir)
    rows = read_questions(questions)
    answerer = _client(endpoint, api_key)
    judge = answerer if judge_endpoint in (None, endpoint) else _client(judge_endpoint, api_key)
    out = []
    for row in tqdm(rows, desc="faithfulness", unit="question", disable=not progress):
        hits = idx.search(row["question"], top_k)
        prompt = augment([{"role": "user", "content": row["question"]}], hits)[-1]["content"]
        answer = _chat(answerer, model, prompt, max_tokens)
        sources = "\n\n".join(f"[{i}] {h.text}" for i, h in enumerate(hits, 1)) or "(none)"
        reply = _chat(judge, judge_model or model, JUDGE.format(sources=sources, answer=answer), 8)
        out.append({"question": row["question"], "answer": answer, "judge": reply, "supported": verdict(reply)})
    judged = [a for a in out if a["supported"] is not None]
    return {"faithfulness": round(sum(a["supported"] for a in judged) / len(judged), 4) if judged else None,
            "judged": len(judged), "unparsed": len(out) - len(judged), "questions": len(out), "answers": out}
