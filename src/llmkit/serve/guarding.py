"""The guard policy on the serving path, and the request log.

Requests: every user message (chat) or prompt (completions) goes through the input rails before anything is
tokenized. A block is a 400 `content_filter` whose message names the rail and its score; redactions change
what the model sees. Replies: each choice goes through the output rails, whole (non-streaming) or as it
streams (`OutputStream`: text goes out once no finding can still be cut in half, and a block rail stops the
generation and sends `policy.refusal`). A blocked reply ends with finish_reason `content_filter`, as OpenAI's do.

Every rail that fires is counted in /metrics (`llmkit_guard_hits_total{side,rail,action}`) and listed in the
request's record (serve/recording.py), with `refused` set when the client gets a refusal instead of an answer.
"""

from __future__ import annotations

import asyncio

from llmkit.engines import Piece
from llmkit.guard import Guard, Hit, Verdict
from llmkit.serve.errors import APIError


def record(state, log: dict, side: str, hits: list[Hit]) -> None:
    """The rails that fired: counted in /metrics and listed in the request's log record."""
    for h in hits:
        if h.fired:
            state.metrics.guard_hits.labels(side, h.rail, h.action).inc()
            log.setdefault("guard", []).append({"side": side, "rail": h.rail, "action": h.action, "score": h.score,
                                                **({"threshold": h.threshold} if h.threshold is not None else {})})


async def check_input(state, texts: list[tuple[str, str]], log: dict) -> list[str]:
    """(param, text) of each user text → the texts after redaction; a 400 when a block rail fires."""
    guard: Guard = state.guard
    out = []
    for param, text in texts:
        v: Verdict = await asyncio.to_thread(guard.check, "input", text)
        state.metrics.guard_seconds.labels("input").observe(v.seconds)
        record(state, log, "input", v.hits)
        hit = v.blocking
        if hit is not None:
            log["refused"] = True
            # the score and the threshold it crossed, and every other classifier's, so that the operator (and a
            # client who reports the error) can see why, and whether `action: flag` or a threshold would help
            score = f" (score {hit.score:.4f} >= threshold {hit.threshold:.4f})" if hit.threshold is not None else ""
            detail = ", ".join(f"{k}: {val}" for k, val in hit.detail.items())
            others = "; ".join(f"{h.rail} {h.score:.4f} (threshold {h.threshold:.4f})" for h in v.hits
                               if h.threshold is not None and h is not hit)
            raise APIError(400, f"the request was blocked by the guard rail '{hit.rail}'{score}"
                                f"{f' ({detail})' if detail else ''}{f'; other scores: {others}' if others else ''}",
                           param=param, code="content_filter")
        out.append(v.text)
    return out


class Replies:
    """The output rails over one request's choices."""

    def __init__(self, state, n: int, log: dict):
        self.state, self.log = state, log
        self.guard: Guard = state.guard
        self.streams = [self.guard.stream() for _ in range(n)]

    def whole(self, text: str) -> tuple[str, bool]:
        """(text to send, blocked) for a finished reply."""
        v = self.guard.check("output", text)
        self.state.metrics.guard_seconds.labels("output").observe(v.seconds)
        record(self.state, self.log, "output", v.hits)
        if v.blocked:
            self.log["refused"] = True
        return (self.guard.policy.refusal, True) if v.blocked else (v.text, False)

    def feed(self, i: int, delta: str) -> str:
        return self.streams[i].feed(delta)

    def close(self, i: int) -> str:
        s = self.streams[i]
        tail = s.close()
        record(self.state, self.log, "output", s.verdict().hits)
        return tail

    def stopped(self, i: int) -> bool:
        return self.streams[i].stopped is not None


class GuardedStream:
    """A streamed run's text through the output rails (or straight through with no guard): `step` turns an
    event into (text to send, finish_reason or None), stops a choice's generation when a block rail fires,
    and keeps what was sent for the request log."""

    def __init__(self, run, replies: Replies | None, log: dict):
        self.run, self.replies, self.log = run, replies, log
        self.sent = log["output"] = [""] * len(run.gens)

    def step(self, i: int, piece: Piece | None) -> tuple[str, str | None]:
        r = self.replies
        if piece is None:
            text = r.close(i) if r is not None else ""
            finish = "content_filter" if r is not None and r.stopped(i) else self.run.finish_reason(i)
            if finish == "content_filter":
                self.log["refused"] = True
        elif r is None:
            text, finish = piece.text, None
        elif r.stopped(i):
            return "", None  # the generation was cancelled; its last tokens still arrive
        else:
            text, finish = r.feed(i, piece.text), None
            if r.stopped(i):
                self.run.gens[i].cancel()
        self.sent[i] += text
        return text, finish


def refuse_logprobs(state, wants_logprobs: bool) -> None:
    """Logprobs carry each token's text: with redacting output rails they would hand out what was redacted."""
    rails = state.guard.policy.output if state.guard is not None else None
    if wants_logprobs and rails is not None and (rails.pii or rails.secrets):
        raise APIError(400, "logprobs are not available on this server: its output rails redact text, and logprobs "
                            "would carry the tokens they removed", param="logprobs", code="unsupported_parameter")
