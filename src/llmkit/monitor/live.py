"""The drift monitor of a running server: the prompts it gets, tested against the training data's every
`interval_s`, in a thread of its own. A request only appends its prompt to a deque (`add`, O(1)); embedding
and the test run in the monitor's thread, never on a request's path.

The last `window` prompts' embeddings are kept in memory (a ring); each is computed once, when its prompt
arrives, and handed to the request log (`embeddings` table of a SQLite log) so `llmkit monitor` reuses it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from llmkit.monitor import drift

log = logging.getLogger("llmkit.monitor")


class DriftMonitor:
    def __init__(self, reference: str | Path, method: drift.Method = drift.DEFAULT_METHOD,
                 threshold: float | None = None, window: int = 1000, interval_s: float = 30.0,
                 max_reference: int = 1000, on_result: Callable[[drift.DriftResult], None] | None = None,
                 on_embeddings: Callable[[list[str], np.ndarray], None] | None = None,
                 prepare: Callable[[str], str] | None = None):
        # read (and so check) the reference now: a bad path fails the server's start, not a thread later
        self.reference_path, self.max_reference = Path(reference), max_reference
        self._texts = drift.reference_prompts(reference, max_reference)
        self.method, self.window, self.interval_s = method, window, interval_s
        self.threshold = drift.THRESHOLDS[method] if threshold is None else threshold
        self.on_result, self.on_embeddings = on_result, on_embeddings
        self.prepare = prepare or (lambda t: t)  # the server's scrubbing, here on the monitor's thread
        self.pending: deque[tuple[str | None, str]] = deque(maxlen=window)  # (request id, prompt) not embedded yet
        self.recent: deque[np.ndarray] = deque(maxlen=window)
        self.result: drift.DriftResult | None = None
        self._reference: np.ndarray | None = None
        self._seen = 0  # prompts embedded so far; a test runs only when new ones came
        self._tested_at = -1
        self._lock = threading.Lock()  # one check at a time (the thread's, or a caller's `check`)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="llmkit-drift", daemon=True)
        self._thread.start()

    def add(self, request_id: str | None, prompt: str) -> None:
        if prompt and prompt.strip():
            self.pending.append((request_id, prompt))

    def check(self) -> drift.DriftResult | None:
        """Embed what is pending and test the recent window now (the thread does this every interval_s)."""
        with self._lock:
            if self._reference is None:
                self._reference = drift.reference_embeddings(self.reference_path, self.max_reference)
            batch = []
            while self.pending:
                batch.append(self.pending.popleft())
            if batch:
                vecs = drift.embed([self.prepare(t) for _, t in batch])
                self.recent.extend(vecs)
                self._seen += len(batch)
                if self.on_embeddings is not None:
                    self.on_embeddings([rid for rid, _ in batch], vecs)
            if len(self.recent) >= drift.MIN_SAMPLES and self._seen != self._tested_at:
                r = drift.two_sample(self.method, self._reference, np.stack(self.recent))
                r.threshold, r.drifted = self.threshold, bool(r.score >= self.threshold and r.p_value < drift.ALPHA)
                r.n_seen = self._seen
                self.result, self._tested_at = r, self._seen
                if self.on_result is not None:
                    self.on_result(r)
            return self.result

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            t0 = time.perf_counter()
            try:
                self.check()
            except Exception:  # noqa: BLE001 -- drift is an observer: a failure is logged, serving goes on
                log.exception("the drift check failed")
            log.debug("drift check took %.2f s", time.perf_counter() - t0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)
