"""Everything a running server holds, kept on `app.state.llmkit` so that routes, tests and the shutdown path
all see the same objects."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from llmkit.config import ServeConfig
from llmkit.guard import Guard
from llmkit.serve.auth import KeyStore
from llmkit.serve.embed import Embedder
from llmkit.serve.limits import RateLimiter, Slots
from llmkit.serve.metrics import Metrics
from llmkit.serve.models import ModelTable
from llmkit.serve.rag import Collections
from llmkit.serve.recording import Recorder


@dataclass
class ServerState:
    cfg: ServeConfig
    models: ModelTable
    embedder: Embedder | None = None
    keys: KeyStore = field(default_factory=KeyStore)
    metrics: Metrics = field(default_factory=Metrics)
    limiter: RateLimiter | None = None
    slots: Slots | None = None
    rag: Collections | None = None  # the collections chat requests may name (`--rag`)
    guard: Guard | None = None  # the policy's rails on every request and reply (`--guard`)
    recorder: Recorder | None = None  # the request log and the drift monitor (`--request-log`, `--drift-reference`)
    fingerprint: str | None = None  # system_fingerprint of responses: llmkit's version and the engine
    draining: bool = False  # set when shutdown began: new requests get 503, running ones finish
    inflight: int = 0
    closed: bool = False
    followers: list[Any] = field(default_factory=list)  # serve.follow.Follower: models that follow a registry alias
    _idle: asyncio.Event | None = None
    _follow: asyncio.Task | None = None

    def __post_init__(self) -> None:
        if self.limiter is None:
            self.limiter = RateLimiter(self.cfg.requests_per_minute, self.cfg.tokens_per_minute,
                                       on_limited=self.metrics.rate_limited.inc)
        if self.slots is None:
            self.slots = Slots(self.cfg.max_inflight, self.cfg.max_queue)
        if self.embedder is not None:
            self.models.embedder_id = self.embedder.id

    def start_following(self) -> None:
        """Start polling the registry for the followers' aliases (on the server's event loop)."""
        from llmkit.serve.follow import follow

        if self.followers and self.cfg.registry_poll_s > 0 and self._follow is None:
            self._follow = asyncio.get_running_loop().create_task(follow(self, self.cfg.registry_poll_s))

    async def stop_following(self) -> None:
        if self._follow is not None:
            self._follow.cancel()
            try:
                await self._follow
            except asyncio.CancelledError:
                pass
            self._follow = None

    def enter(self) -> None:
        self.inflight += 1
        self.metrics.inflight.inc()

    def leave(self) -> None:
        self.inflight -= 1
        self.metrics.inflight.dec()
        if self.inflight == 0 and self._idle is not None:
            self._idle.set()

    async def drain(self, timeout: float | None = None) -> bool:
        """Stop admitting requests and wait (at most `timeout` s) for the running ones; True if all finished."""
        self.draining = True
        if self.inflight == 0:
            return True
        self._idle = asyncio.Event()
        deadline = time.monotonic() + (self.cfg.drain_timeout_s if timeout is None else timeout)
        while self.inflight > 0:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return False
        return True

    def close(self) -> None:
        """Close the engines and the embedder (after `drain`). Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.models.close()
        if self.embedder is not None:
            self.embedder.close()
        if self.rag is not None:
            self.rag.close()
        if self.recorder is not None:
            self.recorder.close()
