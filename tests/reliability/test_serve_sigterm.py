"""SIGTERM under load: a real `llmkit serve` process gets SIGTERM while streamed and non-streamed requests are in
flight. Every one of them finishes completely (streams end with [DONE], every choice has its finish_reason and
all its tokens), none is cut; a request that arrives during the drain gets a 503 `shutting_down`; once the
process is gone nothing listens; and it exits 0."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
from serve_fixtures import BENCH  # noqa: F401  (puts bench/ on sys.path)
from soak import ServerProc, stream_problem

N = 12  # concurrent requests: 6 streamed, 6 not; one generation slot, so most of them wait in the queue
MAX_TOKENS = 200  # with n=4: ~10k tokens queued, seconds of work at the signal


def body(i: int) -> dict:
    chat = i % 3 != 2
    b = {"model": "tiny", "max_tokens": MAX_TOKENS, "n": 4, "seed": i, "stream": i % 2 == 0}
    if b["stream"]:
        b["stream_options"] = {"include_usage": True}
    return {**b, "messages": [{"role": "user", "content": f"Tell me about routers, part {i}."}]} if chat else \
        {**b, "prompt": f"Routers, part {i}:"}


def check_complete(r: httpx.Response, b: dict) -> str | None:
    """None if the answer is whole: a 200, and every choice finished ('length' means all MAX_TOKENS came)."""
    if r.status_code != 200:
        return f"{r.status_code}: {r.text[:200]}"
    if b["stream"]:
        problem = stream_problem(r.text)
        if problem:
            return problem
        chunks = [json.loads(x[6:]) for x in r.text.splitlines() if x.startswith("data: {")]
        finished = {c["index"] for ch in chunks for c in ch["choices"] if c.get("finish_reason")}
        usage = chunks[-1].get("usage") or {}
    else:
        data = r.json()
        finished = {c["index"] for c in data["choices"] if c.get("finish_reason")}
        usage = data["usage"]
    if finished != {0, 1, 2, 3}:
        return f"choices finished: {sorted(finished)}"
    if not 4 <= usage.get("completion_tokens", 0) <= 4 * MAX_TOKENS:
        return f"usage: {usage}"
    return None


async def load_then_sigterm(srv: ServerProc) -> tuple[list, float, httpx.Response | Exception]:
    path = {True: "/v1/chat/completions", False: "/v1/completions"}
    bodies = [body(i) for i in range(N)]
    async with httpx.AsyncClient(base_url=srv.url, timeout=120, limits=httpx.Limits(max_connections=N + 2)) as client:

        async def one(b: dict):
            r = await client.post(path["messages" in b], json=b)
            await r.aread()
            return r, time.monotonic()

        tasks = [asyncio.create_task(one(b)) for b in bodies]
        deadline = time.monotonic() + 60
        while (await client.get("/health")).json()["inflight"] < N:  # every request admitted, none finished yet
            assert time.monotonic() < deadline and not any(t.done() for t in tasks), "requests did not pile up"
            await asyncio.sleep(0.01)
        signalled = time.monotonic()
        srv.proc.terminate()  # SIGTERM
        while (await client.get("/health")).status_code == 200:  # the signal lands in the server's loop
            assert time.monotonic() < signalled + 10, "no drain after SIGTERM"
            await asyncio.sleep(0.01)
        try:
            late = await client.post("/v1/chat/completions", json=bodies[0])  # during the drain
        except httpx.TransportError as e:  # already closed: refused as well
            late = e
        done = await asyncio.gather(*tasks)
    return [(b, r, t) for b, (r, t) in zip(bodies, done)], signalled, late


def test_sigterm_lets_every_in_flight_request_finish(tiny_gguf, tmp_path):
    srv = ServerProc.start([f"tiny={tiny_gguf}"], {"threads": 1, "n_ctx": 256, "embedder": "none",
                                                   "max_inflight": 1, "drain_timeout_s": 60}, tmp_path / "server.log")
    try:
        answers, signalled, late = asyncio.run(load_then_sigterm(srv))
        rc = srv.proc.wait(60)
        print(f"exited {time.monotonic() - signalled:.1f} s after SIGTERM")
    finally:
        srv.kill()
    log = (tmp_path / "server.log").read_text()
    problems = [f"request {i}: {p}" for i, (b, r, _) in enumerate(answers) if (p := check_complete(r, b))]
    assert problems == [], f"{problems}\n{log[-2000:]}"
    # they were in flight: most finished after the signal (one generation slot, so they ran one after another)
    assert sum(t > signalled for _, _, t in answers) >= N // 2
    if isinstance(late, httpx.Response):
        assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down", late.text
    assert rc == 0, log[-2000:]
    try:
        httpx.get(f"{srv.url}/health", timeout=2)
        raise AssertionError("the server still answers after it exited")
    except httpx.ConnectError:
        pass
