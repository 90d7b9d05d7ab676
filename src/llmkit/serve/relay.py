"""The gateway's fast path: a generation request for a model served by an upstream (engines/upstream.py) is relayed
as bytes when nothing of llmkit's needs its text — no guard, no request log or drift monitor, no `rag` in the body.

The full path parses the body into pydantic models, renders the messages, runs the generation through `Run`
(queues, a task per choice) and encodes every chunk again; for an upstream that only adds work (bench/gateway.py:
~5.7 ms of the gateway's CPU per request). Here the body goes to the upstream as it came (`model` set to the
upstream's id) and the upstream's bytes come back with the model id renamed (`OpenAIEngine.relay`); the upstream
validates the request and answers its errors in OpenAI's envelope, which are passed on naming it.

What still applies: API keys and the requests-per-minute limit (`authorize`), the tokens-per-minute reservation
(max_tokens, default 1024, refunded from the upstream's usage), the generation slots (`--max-inflight`, queue),
draining and the request metrics (Gate, outside this), time to first token, token counters, `request_timeout_s`
and cancelling the upstream request when the client leaves. What differs from the full path: the upstream's own
response ids and fingerprint, and its own support of fields (logprobs, tools, n) instead of llmkit's checks.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmkit.engines import UpstreamError
from llmkit.serve.errors import APIError
from llmkit.serve.serving import DEFAULT_MAX_TOKENS
from llmkit.serve.state import ServerState

# the routes relayed, as Gate labels them (it reads scope["route"].path, as for a matched FastAPI route)
ROUTES = {path: SimpleNamespace(path=path) for path in ("/v1/chat/completions", "/v1/completions")}
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]


class Relay:
    """ASGI middleware, inside Gate and BodyLimit: relays what it can (module docstring), hands the rest, with its
    body replayed, to the app."""

    def __init__(self, app: ASGIApp, state: ServerState, authorize: Callable[[Request], Awaitable[str]]):
        self.app, self.state, self.authorize = app, state, authorize

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        st = self.state
        if (scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in ROUTES
                or st.guard is not None or st.recorder is not None or st.cfg.upstream_full_path):
            return await self.app(scope, receive, send)
        chunks = []
        while True:  # BodyLimit read it already: this is its replay, one message
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        served = (st.models.entries.get(body["model"]) if isinstance(body, dict) and isinstance(body.get("model"), str)
                  and "rag" not in body else None)
        if served is None or served.adapter is not None or not hasattr(served.slot.engine, "relay"):
            return await self.app(scope, replay, send)  # the full path: it validates, refuses, answers
        scope["route"] = ROUTES[scope["path"]]
        try:  # `receive`, not `replay`: its body was read, so its next message is the client leaving
            await self._relay(scope, receive, send, body, served)
        except APIError as e:
            await e.response()(scope, receive, send)

    async def _relay(self, scope: Scope, receive: Receive, send: Send, body: dict, served) -> None:
        st, route = self.state, scope["path"]
        started = scope.get("llmkit.started", time.perf_counter())
        client = await self.authorize(Request(scope, receive))
        st.metrics.relayed.labels(route).inc()
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        reserved = st.limiter.reserve(client, max_tokens if isinstance(max_tokens, int) else DEFAULT_MAX_TOKENS)
        lease = st.models.lease(served.id)
        out, sent = None, False
        gone = asyncio.ensure_future(receive())  # the body is read: what comes next is the client leaving
        try:
            await st.slots.acquire()
            try:
                async with asyncio.timeout(started + st.cfg.request_timeout_s - time.perf_counter()):
                    try:
                        out = await self._first(served.slot.engine.relay(route[3:], body, body["model"]), gone)
                    except UpstreamError as e:
                        raise APIError(e.http_status, str(e), code=e.code, param=e.param, type=e.type) from None
                    if out is None:  # the client left while the upstream had not answered yet
                        st.metrics.cancelled.labels("disconnect").inc()
                        return
                    headers = SSE_HEADERS if out.media_type == "text/event-stream" else [
                        (b"content-type", b"application/json")]
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    sent = True
                    async for part in out.body:
                        await send({"type": "http.response.body", "body": part, "more_body": True})
                        if gone.done():  # the client left: leaving the loop closes the upstream request
                            st.metrics.cancelled.labels("disconnect").inc()
                            return
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            except TimeoutError:
                st.metrics.cancelled.labels("timeout").inc()
                err = APIError(503, f"the request took longer than {st.cfg.request_timeout_s:g} s and was cancelled",
                               code="timeout", headers={"Retry-After": "1"})
                if not sent:
                    raise err from None
                data = json.dumps(err.body()).encode()
                await send({"type": "http.response.body", "body": b"data: " + data + b"\n\ndata: [DONE]\n\n",
                            "more_body": False})
            finally:
                st.slots.release()
        finally:
            gone.cancel()
            if out is not None:
                await out.body.aclose()
                await out.aclose()
            lease.release()
            if out is not None:
                if out.first_text is not None:
                    st.metrics.ttft.labels(route).observe(out.first_text - started)
                prompt = out.usage.get("prompt_tokens") or 0
                completion = out.usage.get("completion_tokens") or out.text_chunks
                st.metrics.prompt_tokens.inc(prompt)
                st.metrics.completion_tokens.inc(completion)
                st.limiter.refund(client, reserved - prompt - completion)
            else:
                st.limiter.refund(client, reserved)

    @staticmethod
    async def _first(relaying: Awaitable, gone: asyncio.Future):
        """The upstream's answer (`OpenAIEngine.relay`), or None when the client leaves first (then the upstream
        request is cancelled)."""
        task = asyncio.ensure_future(relaying)
        try:
            await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the request timed out (or the server stops): the upstream request goes too
            task.cancel()
            if task.done() and not task.cancelled() and task.exception() is None:
                await task.result().aclose()
            raise
        if task.done():
            return task.result()
        task.cancel()
        return None
