"""Admission limits: body size, per-client rate limits, and how many generations run and wait at once.

- Body size: `BodyLimit` reads the body (at most `max_body_bytes`, whatever Content-Length claims) before any
  parsing; a larger body is a 413 and is never buffered whole.
- Rate limits: two token buckets per client (the API key's hash, or the client IP when there are no keys):
  requests per minute, and tokens per minute, where a request reserves prompt + max_tokens at admission and is
  refunded what it did not use when it ends. An empty bucket is a 429 with Retry-After (seconds until enough
  refills).
- Concurrency: at most `max_inflight` generations are handed to the engines; up to `max_queue` more requests
  wait for a slot in arrival order; beyond that a request is a 503 at once (overloaded, retry later).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmkit.serve.errors import APIError, overloaded


class Bucket:
    """A token bucket: holds up to `capacity`, refills `capacity` per minute continuously."""

    def __init__(self, capacity: float, clock: Callable[[], float] = time.monotonic):
        self.capacity, self.level, self.clock = capacity, capacity, clock
        self.rate = capacity / 60.0  # per second
        self.stamp = clock()

    def _refill(self) -> None:
        t = self.clock()
        self.level = min(self.capacity, self.level + (t - self.stamp) * self.rate)
        self.stamp = t

    def take(self, n: float) -> float:
        """Take `n` and return 0, or take nothing and return the seconds until `n` will be there."""
        self._refill()
        if n <= self.level:
            self.level -= n
            return 0.0
        return (n - self.level) / self.rate

    def spend(self, n: float) -> None:
        """Take `n` even if that leaves the bucket below zero."""
        self._refill()
        self.level -= n

    def give(self, n: float) -> None:
        self._refill()
        self.level = min(self.capacity, self.level + n)


class RateLimiter:
    """Requests and tokens per minute per client. One event loop, so no locks: every method is synchronous."""

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None,
                 on_limited: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.monotonic):
        self.rpm, self.tpm, self.clock, self.on_limited = requests_per_minute, tokens_per_minute, clock, on_limited
        self._requests: dict[str, Bucket] = {}
        self._tokens: dict[str, Bucket] = {}

    def _limited(self, what: str, wait: float) -> APIError:
        self.on_limited()
        retry = max(1, math.ceil(wait))
        return APIError(429, f"rate limit reached: {what}; retry in {retry} s", code="rate_limit_exceeded",
                        headers={"Retry-After": str(retry)})

    def admit(self, client: str) -> None:
        """Count one request; raise 429 when the client's requests-per-minute bucket is empty."""
        if self.rpm is None:
            return
        bucket = self._requests.setdefault(client, Bucket(self.rpm, self.clock))
        wait = bucket.take(1)
        if wait:
            raise self._limited(f"{self.rpm} requests per minute", wait)

    def reserve(self, client: str, tokens: int) -> int:
        """Reserve `tokens` (prompt + max_tokens) against the client's tokens per minute; returns what was taken."""
        if self.tpm is None:
            return 0
        if tokens > self.tpm:
            self.on_limited()
            raise APIError(429, f"request too large: {tokens} tokens (prompt + max_tokens) is more than the "
                                f"{self.tpm} tokens per minute allowed; lower max_tokens", code="rate_limit_exceeded",
                           headers={"Retry-After": "60"})
        bucket = self._tokens.setdefault(client, Bucket(self.tpm, self.clock))
        wait = bucket.take(tokens)
        if wait:
            raise self._limited(f"{self.tpm} tokens per minute", wait)
        return tokens

    def charge(self, client: str, tokens: int) -> None:
        """Count tokens known only after the work (embeddings): the bucket may go below zero, and then the
        client's next requests wait until it refilled."""
        if self.tpm is not None and tokens > 0:
            bucket = self._tokens.setdefault(client, Bucket(self.tpm, self.clock))
            bucket.spend(tokens)

    def refund(self, client: str, tokens: int) -> None:
        """Give back the part of a reservation a request did not use (its max_tokens was not all generated)."""
        if tokens > 0 and client in self._tokens:
            self._tokens[client].give(tokens)


class Slots:
    """At most `inflight` holders at once, at most `queue` waiting; more is a 503 at once."""

    def __init__(self, inflight: int, queue: int):
        self._sem = asyncio.Semaphore(inflight)
        self.queue_limit = queue
        self.waiting = 0

    async def acquire(self) -> None:
        if self._sem.locked() and self.waiting >= self.queue_limit:
            raise overloaded(f"server overloaded: {self.waiting} requests already waiting; retry later")
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1

    def release(self) -> None:
        self._sem.release()


DRAIN_MAX = 64 << 20  # bytes of a refused body read and dropped so that the client gets its 413 (see _too_large)
DRAIN_TIMEOUT_S = 10.0


class BodyLimit:
    """ASGI middleware: read at most `limit` bytes of a request body before the app parses it; more is a 413.

    Checks Content-Length first (no reading at all), then counts while reading (chunked bodies, lying headers).
    The app then gets the body replayed, and later `receive` calls go to the client (disconnect detection).
    """

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(scope, receive, send, more=True)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await self._too_large(scope, receive, send, more=message.get("more_body", False))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, more: bool) -> None:
        """413. The rest of the body is read and dropped first (up to DRAIN_MAX bytes, DRAIN_TIMEOUT_S): a client
        still sending would otherwise see its connection reset instead of the answer, and a keep-alive connection
        with an unread body cannot carry the next request. Past either bound the answer closes the connection."""
        drained, close = 0, False
        while more:
            if drained > DRAIN_MAX:
                close = True
                break
            try:
                message = await asyncio.wait_for(receive(), DRAIN_TIMEOUT_S)
            except TimeoutError:
                close = True
                break
            if message["type"] == "http.disconnect":
                return  # the client left: nobody to answer
            drained += len(message.get("body", b""))
            more = message.get("more_body", False)
        err = APIError(413, f"request body is larger than {self.limit} bytes", code="request_too_large",
                       headers={"Connection": "close"} if close else None)
        await err.response()(scope, receive, send)
