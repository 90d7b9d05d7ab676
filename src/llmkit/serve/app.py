"""The HTTP layer: `build_app(state)` makes the FastAPI app; routes only translate HTTP to the serving classes.

    GET  /health                open; 503 while shutting down
    GET  /metrics               Prometheus text; open on loopback, else needs a key
    GET  /v1/models[/{id}]      base models, adapters, the embedder
    POST /v1/chat/completions   POST /v1/completions   POST /v1/embeddings
    POST /v1/feedback           a thumbs up/down on a response id, into the request log
    GET  /docs, /openapi.json   FastAPI's

Middleware, outermost first: `Gate` (503 while draining, in-flight count, request metrics), `BodyLimit` (413),
`Relay` (generation requests to an upstream relayed as bytes when no guard, RAG or request log needs their text).
Shutdown (`Server.begin_drain`, or SIGINT/SIGTERM under `llmkit serve`): new requests get 503, running ones
finish (at most `drain_timeout_s`), then uvicorn stops and the lifespan closes the engines.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import Annotated

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmkit import __version__
from llmkit.serve import errors
from llmkit.serve import protocol as p
from llmkit.serve.auth import is_loopback
from llmkit.serve.errors import APIError, log, overloaded
from llmkit.serve.limits import BodyLimit
from llmkit.serve.metrics import CONTENT_TYPE
from llmkit.serve.relay import Relay
from llmkit.serve.serving import Context, ServingChat, ServingCompletion, ServingEmbedding, ServingModels, Stream
from llmkit.serve.state import ServerState

UNCOUNTED = ("/health", "/metrics")  # not in-flight work: never refused while draining, never waited for


class Gate:
    """ASGI middleware: refuse new work while draining, count in-flight requests, time and count every answer."""

    def __init__(self, app: ASGIApp, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        st, t0 = self.state, time.perf_counter()
        scope["llmkit.started"] = t0
        counted = scope["path"] not in UNCOUNTED
        if counted and st.draining:
            st.metrics.requests.labels("draining", "503").inc()
            err = overloaded("the server is shutting down; retry on another replica or later", retry_after=5)
            err.code = "shutting_down"
            return await err.response()(scope, receive, send)
        status = None

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if counted:
            st.enter()
        try:
            await self.app(scope, receive, watch)
        except Exception:  # noqa: BLE001 -- a bug: logged once here, answered 500 without internals if nothing was sent yet
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if status is None:
                await errors.bug().response()(scope, receive, send)
            status = 500
        finally:
            if counted:
                st.leave()
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"  # the template, never the raw path (cardinality)
            st.metrics.requests.labels(label, str(status or 500)).inc()
            st.metrics.request_seconds.labels(label).observe(time.perf_counter() - t0)


class SSEResponse(StreamingResponse):
    """Server-sent events whose cleanup runs however the response ends: finished, failed, or the client gone
    before the stream even started (then the body iterator never runs, so its own `finally` would not)."""

    def __init__(self, stream: Stream):
        super().__init__(stream.body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._cleanup = stream.close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._cleanup()


def _state(request: Request) -> ServerState:
    return request.app.state.llmkit


async def authorize(request: Request) -> str:
    """The client's identity for rate limits (its key's hash, or its IP without keys); 401 on a bad key."""
    state = _state(request)
    if state.keys:
        who = state.keys.identify(request.headers.get("authorization"))
        if who is None:
            given = "authorization" in request.headers
            msg = ("Incorrect API key provided." if given else
                   "You didn't provide an API key: send the header 'Authorization: Bearer <key>'.")
            raise APIError(401, msg, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        client = "key:" + who.removeprefix("sha256:")[:16]
    else:
        client = "ip:" + (request.client.host if request.client else "unknown")
    state.limiter.admit(client)
    return client


Client = Annotated[str, Depends(authorize)]
# every status a /v1 route can answer besides 200, each in OpenAI's envelope (500: a bug, see Gate); declared so
# that the schema at /openapi.json is true (tests/reliability/test_serve_schema.py checks answers against it)
ERRORS = {s: {"model": p.ErrorResponse} for s in (400, 401, 404, 413, 429, 500, 503)}
# `stream: true` answers server-sent events: `data: <chunk JSON>` lines, then `data: [DONE]`
STREAMED = {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                  "description": "JSON, or with `stream: true` server-sent events ending with `data: [DONE]`"}}


def _ctx(request: Request, client: str, stream: bool) -> Context:
    started = request.scope.get("llmkit.started", time.perf_counter())
    # a stream learns of a disconnect from Starlette (which cancels it); a plain request polls for it
    return Context(client, None if stream else request.is_disconnected, started)


def _answer(result: Stream | BaseModel) -> Response:
    if isinstance(result, Stream):
        return SSEResponse(result)
    return JSONResponse(result.model_dump(mode="json"))


router = APIRouter()


@router.get("/health", response_model=p.Health, responses={503: {"model": p.Health, "description": "Shutting down"}})
async def health(request: Request) -> JSONResponse:
    state = _state(request)
    body = p.Health(status="draining" if state.draining else "ok", models=list(state.models.entries),
                    embedder=state.embedder.status() if state.embedder else None, inflight=state.inflight)
    if state.followers:  # serving from the registry: the versions served, and a version that failed to load
        body.registry = {f.id: f.status() for f in state.followers}
    return JSONResponse(body.model_dump(mode="json", exclude={"registry"} if body.registry is None else None), status_code=503 if state.draining else 200)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    state = _state(request)
    local = is_loopback(request.client.host if request.client else None)
    if not local and state.keys and state.keys.identify(request.headers.get("authorization")) is None:
        raise APIError(401, "/metrics needs an API key from outside this machine", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)


@router.get("/v1/models", response_model=p.ModelList, responses=ERRORS)
async def list_models(request: Request, client: Client) -> Response:
    return _answer(request.app.state.models.list())


@router.get("/v1/models/{model:path}", response_model=p.ModelCard, responses=ERRORS)
async def retrieve_model(model: str, request: Request, client: Client) -> Response:
    return _answer(request.app.state.models.retrieve(model))


@router.post("/v1/chat/completions", response_model=p.ChatCompletion, responses={**ERRORS, **STREAMED})
async def chat_completions(req: p.ChatCompletionRequest, request: Request, client: Client) -> Response:
    return _answer(await request.app.state.chat.create(req, _ctx(request, client, req.stream)))


@router.post("/v1/completions", response_model=p.Completion, responses={**ERRORS, **STREAMED})
async def completions(req: p.CompletionRequest, request: Request, client: Client) -> Response:
    return _answer(await request.app.state.completion.create(req, _ctx(request, client, req.stream)))


@router.post("/v1/embeddings", response_model=p.EmbeddingList, responses=ERRORS)
async def embeddings(req: p.EmbeddingRequest, request: Request, client: Client) -> Response:
    return _answer(await request.app.state.embedding.create(req, _ctx(request, client, False)))


@router.post("/v1/feedback", response_model=p.Feedback, responses=ERRORS)
async def feedback(req: p.FeedbackRequest, request: Request, client: Client) -> Response:
    state = _state(request)
    store = state.recorder.log if state.recorder is not None else None
    if store is None:
        raise APIError(400, "this server keeps no request log to store feedback in (start it with --request-log "
                            "FILE)", code="feedback_not_configured")
    rating = req.score()
    if not await asyncio.to_thread(store.feedback, req.request_id, rating, req.comment):
        raise APIError(404, f"no request with id '{req.request_id}' is in this server's request log",
                       param="request_id", code="request_not_found")
    state.metrics.feedback.labels("up" if rating > 0 else "down").inc()
    return _answer(p.Feedback(request_id=req.request_id, rating=rating, comment=req.comment))


@asynccontextmanager
async def lifespan(app: FastAPI):
    app.state.llmkit.start_following()
    yield
    state: ServerState = app.state.llmkit
    await state.stop_following()  # no new version is swapped in while the engines close
    await state.drain()  # usually done already by Server.begin_drain; a no-op then
    await asyncio.get_running_loop().run_in_executor(None, state.close)


def build_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="llmkit", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible API over llmkit's engines: chat, completions, embeddings.")
    app.state.llmkit = state
    app.state.chat = ServingChat(state)
    app.state.completion = ServingCompletion(state)
    app.state.embedding = ServingEmbedding(state)
    app.state.models = ServingModels(state)
    errors.install(app)
    app.include_router(router)
    app.openapi = _true_schema(app, state)
    app.add_middleware(Relay, state=state, authorize=authorize)  # innermost: the gateway's fast path (relay.py)
    app.add_middleware(BodyLimit, limit=state.cfg.max_body_bytes)
    app.add_middleware(Gate, state=state)  # added last: outermost
    return app


def _true_schema(app: FastAPI, state: ServerState):
    """FastAPI's OpenAPI schema made to say what the server does: no 422 (validation errors are OpenAI's 400s,
    see errors.py) and, when API keys are on, the bearer scheme on every route that needs one."""
    make = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = make()
        for path, ops in schema["paths"].items():
            for op in ops.values():
                op["responses"].pop("422", None)
                if state.keys and path.startswith("/v1/"):  # every /v1 route depends on `authorize`
                    op["security"] = [{"bearer": []}]
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        if state.keys:
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "an API key of this server"}}
        app.openapi_schema = schema
        return schema

    return openapi


class Server(uvicorn.Server):
    """uvicorn's server with a drain before it stops: the first SIGINT/SIGTERM (or `begin_drain`, from any
    thread) makes new requests 503 and lets running ones finish; a second signal stops at once, as uvicorn's."""

    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self.state = state
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig, frame) -> None:
        if self._drain is not None or self._loop is None:
            return super().handle_exit(sig, frame)
        self.begin_drain()

    def begin_drain(self) -> None:
        if self._loop is None:  # not serving yet
            self.should_exit = True
            return
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        if self._drain is not None:
            return
        self.state.draining = True

        async def drain() -> None:
            await self.state.drain()
            self.should_exit = True

        self._drain = asyncio.ensure_future(drain())
