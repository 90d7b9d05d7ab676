"""What the server records of each generation request: the request log (llmkit.monitor.store: SQLite or JSON
lines, written by a thread of its own) and the drift monitor's prompts (llmkit.monitor.live), with the feedback
clients send on an answer (`POST /v1/feedback`).

A request's record is a dict filled as the request goes (`new_record`; the guard adds the rails that fired and
`refused`, chat adds the RAG sources) and handed over when it ends (`finish`), however it ends. Texts are
scrubbed of PII and secrets before they reach the log (or the drift monitor's embeddings), whatever the policy's
own actions: the log never holds the raw personal data a request carried. Nothing here waits for a disk, a
scrubber or a model: `finish` puts the record on the writer's queue and the prompt on the drift monitor's, and
each of their threads scrubs what it keeps (a policy's Presidio rail takes tens of ms a text).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator

from llmkit.config import ServeConfig
from llmkit.guard import Guard, Policy
from llmkit.monitor.live import DriftMonitor
from llmkit.monitor.store import RequestLog, open_log
from llmkit.serve.metrics import Metrics
from llmkit.serve.models import Served
from llmkit.serve.protocol import new_id

log_ = logging.getLogger("llmkit.serve")

# what the request log scrubs when the server has no policy of its own (or one without pii/secrets rails)
LOG_SCRUB = Policy.model_validate({"input": {"pii": {}, "secrets": {}}})


class Recorder:
    """The request log and the drift monitor of one server (either may be off)."""

    def __init__(self, cfg: ServeConfig, guard: Guard | None, metrics: Metrics):
        self.metrics = metrics
        self.log: RequestLog | None = None
        self.drift: DriftMonitor | None = None
        if cfg.request_log:
            self.log = open_log(cfg.request_log, cfg.request_log_max_rows, cfg.request_log_max_days,
                                prepare=self.scrub_record)
        # the policy's own rails first (they may find names with Presidio), then the structured types always
        own = guard is not None and any(r.pii or r.secrets for r in (guard.policy.input, guard.policy.output))
        self.scrubbers = ([guard] if own else []) + [Guard(LOG_SCRUB)]
        if cfg.drift_reference:
            try:  # a bad reference fails the start: the log's writer thread must not outlive it
                self.drift = DriftMonitor(cfg.drift_reference, cfg.drift_method, cfg.drift_threshold,
                                          cfg.drift_window, cfg.drift_interval_s, on_result=self._drift_metrics,
                                          on_embeddings=self.log.embeddings if self.log is not None else None,
                                          prepare=self.scrub)
            except BaseException:
                self.close()
                raise

    def scrub(self, text: str) -> str:
        for g in self.scrubbers:
            text = g.scrub(text)
        return text

    def scrub_record(self, record: dict) -> dict:
        for key in ("input", "output"):
            if key in record:
                record[key] = [self.scrub(t) for t in record[key]]
        return record

    def write(self, record: dict) -> None:
        if self.log is not None:
            self.log.write(record)
        if self.drift is not None and record.get("input") and record.get("status") == 200:
            self.drift.add(record.get("request_id"), record["input"][-1])  # the last user turn: what is asked now

    def _drift_metrics(self, r) -> None:
        m = self.metrics
        m.drift_score.set(r.score)
        m.drift_p_value.set(r.p_value)
        m.drift_alert.set(1 if r.drifted else 0)
        m.drift_samples.set(r.n_recent)
        m.drift_prompts.set(r.n_seen or 0)

    def close(self) -> None:
        if self.drift is not None:
            self.drift.close()
        if self.log is not None:
            self.log.close()


# (`state`, `ctx` and `run` are serving's ServerState, Context and Run, which import this module)


def new_record(route: str, model: str, ctx, inputs: list[str], prefix: str, served: Served | None = None) -> dict:
    """The record of one request; its `request_id` is the response's `id` (feedback names it)."""
    rec = {"request_id": new_id(prefix), "route": route, "model": model,
           "client": hashlib.sha256(ctx.client.encode()).hexdigest()[:12], "input": inputs}
    if served is not None:
        # `version`: the registry version a served model carries (serving from the registry), else none
        rec |= {"adapter": served.adapter, "version": getattr(served, "version", None)}
    return rec


def finish(state, rec: dict, ctx, status: int = 200, run=None) -> None:
    """Hand the finished request's record to the log and the drift monitor (no-op when both are off)."""
    if state.recorder is None:
        return
    rec = {**rec, "time": time.time(), "status": status, "latency_s": round(time.perf_counter() - ctx.started, 4)}
    if run is not None and run.gens:
        u = run.usage()
        rec |= {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens}
        if run.ttft is not None:
            rec["ttft_s"] = round(run.ttft, 4)
    try:
        state.recorder.write(rec)
    except Exception:  # noqa: BLE001 -- a broken log must not fail the answer that was already made
        log_.exception("could not record the request")


async def recorded(body: AsyncIterator[str], state, rec: dict, ctx, run) -> AsyncIterator[str]:
    """A stream that hands over its record when it ends, however it ends."""
    try:
        async for line in body:
            yield line
    finally:
        finish(state, rec, ctx, 200, run)
