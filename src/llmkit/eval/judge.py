"""LLM-as-judge: a rubric score of one reply, and a pairwise verdict between two, from any OpenAI-compatible
endpoint (`eval.judge_endpoint`, `--judge-endpoint`).

    {"type": "judge", "prompt": "How do I reset my R2?", "rubric": "Correct steps, polite.", "scale": "1-5"}
    {"type": "pairwise", "prompt": "How do I reset my R2?", "against": "Hold Reset for 10 s."}

judge: the target replies; the judge is shown the rubric, the question (the row's own prompt, never a prompt
template's wrapping, so templates are judged on equal terms), the reference if any and the reply, and answers a
number on the row's scale (1-5, or 0-10). The reply must be that number and nothing else (an optional
"Score:", "/5", brackets or a final period allowed): anything else is counted as `unparsed`, never guessed.

pairwise: the target's reply against `against` (a given reply), or two given replies (`reply_a` + `reply_b`:
the target is not asked), or, with neither, the baseline's reply to the same prompt (asked during the model's
pass, so both models are loaded then; the baseline's own record of that row is not judged again). The judge is
asked both orders (target first, then second) and answers A, B or tie. Both orders agree: that is the outcome;
they disagree: a tie, and the row counts in `position_disagreement` (the judge preferred a position, not a
reply); either order unparsed: `unparsed`, no outcome.

Per item 0/1 scores, so the metrics are means: TASK.judge_score (mean score on the scale, parsed items only),
TASK.win_rate / tie_rate / loss_rate and TASK.position_disagreement (over pairs with both orders parsed),
TASK.unparsed (share of judged items whose verdict could not be parsed).
"""

from __future__ import annotations

import re
import threading
from functools import partial

from llmkit.config import EvalConfig
from llmkit.engines import remote
from llmkit.errors import ConfigError
from llmkit.eval.tasks import SCALES, Task

SINGLE = ("Rate the reply to the question below by this rubric: {rubric}\n\n"
          "Question: {question}\n\n{reference}Reply: {reply}\n\n"
          "Give the reply a score from {lo} to {hi} ({hi} is best). Answer with the number only.")
PAIR = ("Two replies to the same question follow. Judge them by this rubric: {rubric}\n\n"
        "Question: {question}\n\nReply A: {a}\n\nReply B: {b}\n\n"
        "Which reply is better? Answer with one word: A, B, or tie.")
RUBRIC = "Which reply answers the question better: correct, helpful and clear."
JUDGE_TOKENS = 16  # room for "Score: 10/10" or "Tie.", not for an essay the parser would refuse anyway

_SCORE = re.compile(r"^(?:score\s*[:=]?\s*)?\[*\s*(\d{1,2})\s*\]*\s*(?:/\s*(\d{1,2}))?\s*\.?$", re.IGNORECASE)
_CHOICE = re.compile(r"^[\s\[\"'(*]*(?:reply\s+)?(a|b|tie)[\s\]\"')*.!]*$", re.IGNORECASE)


def scale_range(scale: str) -> tuple[int, int]:
    lo, hi = scale.split("-")
    return int(lo), int(hi)


def parse_score(reply: str, scale: str = "1-5") -> int | None:
    """The judge's score if the reply is a number on `scale` and nothing else ("4", "Score: 4", "4/5", "[[4]]"),
    else None."""
    m = _SCORE.match(reply.strip())
    if m is None:
        return None
    lo, hi = scale_range(scale)
    v = int(m.group(1))
    if m.group(2) is not None and int(m.group(2)) != hi:
        return None  # "4/10" on a 1-5 scale: not the scale we asked for
    return v if lo <= v <= hi else None


def parse_choice(reply: str) -> str | None:
    """"a", "b" or "tie" if that is the whole reply ("A", "Reply B.", "[[A]]", "tie"), else None."""
    m = _CHOICE.match(reply.strip())
    return None if m is None else m.group(1).lower()


def combine(first: str | None, second: str | None) -> dict[str, float]:
    """The target's outcome from two verdicts: `first` with the target's reply as A, `second` with it as B.
    Scores: unparsed always; win/tie/loss rates and position_disagreement only when both orders parsed."""
    if first is None or second is None:
        return {"unparsed": 1.0}
    flip = {"a": "b", "b": "a", "tie": "tie"}
    a, b = first, flip[second]  # both now say where the target's reply stands as if it were A
    outcome = {"a": "win", "b": "loss", "tie": "tie"}[a] if a == b else "tie"
    return {"unparsed": 0.0, "win_rate": float(outcome == "win"), "tie_rate": float(outcome == "tie"),
            "loss_rate": float(outcome == "loss"), "position_disagreement": float(a != b)}


class Judge:
    """The judge endpoint, connected on first use (a resumed eval with every item cached never connects)."""

    def __init__(self, endpoint: str, model: str | None = None, api_key: str | None = None):
        self.endpoint, self._model, self._key = endpoint.rstrip("/"), model, api_key
        self._client = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"{self.endpoint} ({self._model or 'its first model'})"

    def ask(self, content: str, max_tokens: int = JUDGE_TOKENS) -> str:
        with self._lock:
            if self._client is None:
                self._client = remote.client(self.endpoint, self._key, max_retries=2, timeout=600)
                self._model = self._model or remote.first_model(self._client)
        return remote.chat(self._client, self._model, content, max_tokens)


def _messages(row: dict) -> list[dict]:
    return row.get("messages") or [{"role": "user", "content": row["prompt"]}]


def _question(row: dict) -> str:
    """What the judge is shown as the question: the row's own prompt (a template may have wrapped `messages`)."""
    if "prompt" in row:
        return row["prompt"]
    return next(m["content"] for m in reversed(row["messages"]) if m["role"] == "user")


def score_single(judge: Judge, target, row: dict, max_tokens: int) -> dict:
    reply = target.generate(_messages(row), row.get("max_tokens", max_tokens))
    lo, hi = scale_range(row.get("scale", SCALES[0]))
    ref = f"Reference answer: {row['reference']}\n\n" if row.get("reference") else ""
    verdict = judge.ask(SINGLE.format(rubric=row["rubric"], question=_question(row), reference=ref, reply=reply,
                                      lo=lo, hi=hi))
    score = parse_score(verdict, row.get("scale", SCALES[0]))
    scores = {"unparsed": float(score is None), **({"judge_score": float(score)} if score is not None else {})}
    return {"reply": reply, "judge": judge.name, "verdicts": [verdict], "scores": scores}


def score_pair(judge: Judge, opponent, lock: threading.Lock, target, row: dict, max_tokens: int) -> dict:
    n = row.get("max_tokens", max_tokens)
    if "reply_a" in row:
        a, b, versus = row["reply_a"], row["reply_b"], "reply_b"
    else:
        if opponent is not None and target is opponent and "against" not in row:
            return {"opponent": True}  # the baseline is this row's opponent: judged in the model's record
        a = target.generate(_messages(row), n)
        if "against" in row:
            b, versus = row["against"], "against"
        else:
            with lock:  # an in-process baseline answers one request at a time
                b, versus = opponent.generate(_messages(row), n), "baseline"
    rubric, q = row.get("rubric", RUBRIC), _question(row)
    first = judge.ask(PAIR.format(rubric=rubric, question=q, a=a, b=b))
    second = judge.ask(PAIR.format(rubric=rubric, question=q, a=b, b=a))
    return {"reply": a, "versus": versus, "other_reply": b, "judge": judge.name, "verdicts": [first, second],
            "scores": combine(parse_choice(first), parse_choice(second))}


def bind(tasks: list[Task], cfg: EvalConfig, baseline=None) -> None:
    """Give every judge and pairwise item of `tasks` its scorer. ConfigError, naming the tasks, when they need
    a judge endpoint that is not set, or a baseline that is not given."""
    judged = [t.name for t in tasks if t.types & {"judge", "pairwise"}]
    if not judged:
        return
    problems = []
    if not cfg.judge_endpoint:
        problems.append(f"tasks {', '.join(judged)}: judge and pairwise rows need a judge: set eval.judge_endpoint "
                        "(--judge-endpoint URL, any OpenAI-compatible server)")
    versus = [t.name for t in tasks for i in t.items
              if i.type == "pairwise" and "reply_a" not in i.row and "against" not in i.row]
    if versus and baseline is None:
        problems.append(f"tasks {', '.join(sorted(set(versus)))}: pairwise rows without `against` or reply_a + "
                        "reply_b compare the model with the baseline, but no baseline is given (--baseline)")
    if problems:
        raise ConfigError(problems)
    judge = Judge(cfg.judge_endpoint, cfg.judge_model, cfg.judge_api_key)
    lock = threading.Lock()
    for t in tasks:
        for i in t.items:
            if i.type == "judge":
                i.score = partial(score_single, judge)
            elif i.type == "pairwise":
                i.score = partial(score_pair, judge, baseline, lock)
