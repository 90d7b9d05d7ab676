"""Token buckets with a fake clock: refill, Retry-After, reservations refunded."""

from __future__ import annotations

import pytest

from llmkit.serve.errors import APIError
from llmkit.serve.limits import Bucket, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_bucket_refills_per_minute():
    clock = Clock()
    b = Bucket(60, clock)  # 1 a second
    assert b.take(60) == 0
    assert b.take(1) == pytest.approx(1.0)
    clock.t = 0.5
    assert b.take(1) == pytest.approx(0.5)
    clock.t = 1.0
    assert b.take(1) == 0
    clock.t = 1000
    b.take(0)
    assert b.level == 60  # never above capacity


def test_requests_per_minute_429_with_retry_after():
    limited = []
    clock = Clock()
    rl = RateLimiter(2, None, on_limited=lambda: limited.append(1), clock=clock)
    rl.admit("a")
    rl.admit("a")
    rl.admit("b")  # per client
    with pytest.raises(APIError) as e:
        rl.admit("a")
    assert e.value.status == 429 and e.value.headers["Retry-After"] == "30" and limited == [1]
    clock.t = 30
    rl.admit("a")


def test_tokens_reserved_then_refunded():
    clock = Clock()
    rl = RateLimiter(None, 100, clock=clock)
    assert rl.reserve("a", 80) == 80
    with pytest.raises(APIError):
        rl.reserve("a", 30)
    rl.refund("a", 50)  # the request used 30 of its 80
    assert rl.reserve("a", 30) == 30
    with pytest.raises(APIError, match="too large"):
        rl.reserve("a", 101)
    rl.charge("b", 150)  # counted after the work (embeddings): below zero, then wait
    with pytest.raises(APIError) as e:
        rl.reserve("b", 1)
    assert int(e.value.headers["Retry-After"]) == 31
