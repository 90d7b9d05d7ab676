"""1,000 requests at 16 at a time, 10% of them malformed: no answer is a 5xx, and the server still serves."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter

import httpx
import pytest
from serve_helpers import MODEL

CHAT = "/v1/chat/completions"


def requests(n: int = 1000, seed: int = 0) -> list[tuple[str, str, bytes | None, set[int]]]:
    """(method, path, body, the statuses that are right for it)."""
    rnd = random.Random(seed)
    msgs = [{"role": "user", "content": "Paris is the capital of"}]
    out = []
    for i in range(n):
        k = i % 20
        if k == 0:
            body, ok = b'{"model": "tiny", "messages": [', {400}  # broken JSON
        elif k == 1:
            body, ok = json.dumps({"model": MODEL, "messages": "hi", "temperature": "hot"}).encode(), {400}
        elif k == 2:
            body, ok = json.dumps({"messages": msgs} if rnd.random() < 0.5 else {"model": MODEL}).encode(), {400}
        elif k == 3:
            body, ok = b'{"model": "tiny", "prompt": "' + b"x" * (1 << 20) + b'"}', {413}
        elif k == 4:
            out.append(("GET", "/v1/models", None, {200}))
            continue
        elif k == 5:
            body, ok = json.dumps({"model": "nope", "messages": msgs}).encode(), {404}
        elif k == 6:
            body, ok = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "fox " * 300}]}).encode(), {400}
        elif k < 12:
            stream = k >= 10
            body = {"model": MODEL, "messages": msgs, "max_tokens": rnd.randint(1, 4), "stream": stream}
            body, ok = json.dumps(body).encode(), {200}
        else:
            body = {"model": MODEL, "prompt": "The quick brown", "max_tokens": rnd.randint(1, 4), "n": rnd.choice([1, 2])}
            body, ok = json.dumps(body).encode(), {200}
        path = "/v1/completions" if b'"prompt"' in body[:40] else CHAT
        out.append(("POST", path, body, ok))
    rnd.shuffle(out)
    return out


async def fire(url: str, todo, concurrency: int = 16) -> tuple[Counter, list[str]]:
    statuses: Counter = Counter()
    wrong: list[str] = []
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:

        async def one(method, path, body, ok) -> None:
            async with gate:
                try:
                    r = await client.request(method, path, content=body, headers={"content-type": "application/json"})
                    await r.aread()
                    status = r.status_code
                except httpx.TransportError as e:  # the server hung up: as bad as a 5xx
                    status, r = 599, None
                    wrong.append(f"{method} {path}: {e!r}")
            statuses[status] += 1
            if status not in ok:
                wrong.append(f"{method} {path} {(body or b'')[:60]!r}: {status} {r.text[:200] if r else ''}")
            if status == 200 and body and b'"stream": true' in body:
                assert r.text.rstrip().endswith("data: [DONE]")

        await asyncio.gather(*(one(*t) for t in todo))
    return statuses, wrong


@pytest.mark.parametrize("engine", ["llamacpp", "transformers"])
def test_thousand_requests_with_malformed_ones(make_server, engine):
    srv = make_server(engine=engine)
    statuses, wrong = asyncio.run(fire(srv.url, requests()))
    assert sum(statuses.values()) == 1000
    assert not [s for s in statuses if s >= 500], statuses
    assert not wrong, wrong[:10]
    assert srv.state.inflight == 0 and not srv.state.slots._sem.locked()
    r = srv.openai().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert srv.metric("llmkit_requests_total", route=CHAT, status="200") > 0
