"""The page's JSON routes, under /ui/api/, and the page itself at /ui.

    GET /ui                       the page (open: it holds no data; it asks for a key when the API answers 401)
    GET /ui/static/{file}         its script and style, from the package
    GET /ui/api/info              what this server has: models, collections, guard policy, request log, drift
    GET /ui/api/series            the request log in windows (monitor.report.summarize): latency, tokens/s, guard hits
    GET /ui/api/drift             the drift monitor's tests since the page's server started
    GET /ui/api/runs              the runs folder's runs and stages (their manifests)
    GET /ui/api/runs/{run}/graph  one run's lineage graph
    GET /ui/api/registry          registry versions and aliases (MLflow); {"available": false} without it
    GET /ui/files/{path}          an eval report or figure from the runs folder

Every route but the page and its static files needs an API key once the server has keys, like /v1.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from llmkit.errors import LlmkitError
from llmkit.serve.auth import KeyStore
from llmkit.serve.errors import APIError
from llmkit.serve.state import ServerState
from llmkit.web import runs as runs_

STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
REGISTRY_TTL_S = 30.0  # MLflow is asked at most this often; a page polls more often than that


@dataclass
class Dashboard:
    """What the page shows: a running server's state (None under `llmkit dashboard`), a runs folder, a request
    log, a registry URI. Kept on `app.state.llmkit_web`."""

    state: ServerState | None = None
    runs: Path | None = None
    request_log: Path | None = None
    registry_uri: str | None = None
    keys: KeyStore = field(default_factory=KeyStore)
    drift: deque = field(default_factory=lambda: deque(maxlen=500))  # (unix time, DriftResult dict)
    _registry: tuple[float, dict] | None = None

    def on_drift(self, result) -> None:
        """The drift monitor's callback (from its thread): one point of the drift chart per test."""
        self.drift.append({"time": time.time(), **result.to_dict()})


def _web(request: Request) -> Dashboard:
    return request.app.state.llmkit_web


def authorize(request: Request) -> None:
    keys = _web(request).keys
    if keys and keys.identify(request.headers.get("authorization")) is None:
        raise APIError(401, "this dashboard needs an API key: send 'Authorization: Bearer <key>'",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


Authorized = Annotated[None, Depends(authorize)]
router = APIRouter(prefix="/ui", include_in_schema=False)


def _asset(name: str) -> bytes:
    return resources.files("llmkit.web").joinpath("static", name).read_bytes()


@router.get("")
@router.get("/")
async def page() -> HTMLResponse:
    return HTMLResponse(_asset("index.html"), headers={"Cache-Control": "no-cache"})


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC:
        raise APIError(404, f"no file {name}", code="not_found")
    return Response(_asset(name), media_type=STATIC[name], headers={"Cache-Control": "no-cache"})


def _rails(rails) -> list[dict]:
    return [{"rail": name, "action": getattr(rails, name).action} for name in type(rails).model_fields
            if getattr(rails, name) is not None]


@router.get("/api/info")
async def info(request: Request, _: Authorized) -> JSONResponse:
    web = _web(request)
    st = web.state
    body: dict = {"server": st is not None, "runs": str(web.runs) if web.runs else None,
                  "request_log": str(web.request_log) if web.request_log else None, "keys": bool(web.keys)}
    if st is not None:
        policy = st.guard.policy if st.guard is not None else None
        out_rails = policy.output if policy is not None else None
        body |= {
            "models": [{"id": i, "parent": e.parent} for i, e in st.models.entries.items()],
            "embedder": st.models.embedder_id,
            "collections": sorted(st.rag.indexes) if st.rag is not None else [],
            # the guard is the server's policy, applied to every request: a client cannot turn it off
            "guard": None if policy is None else {"input": _rails(policy.input), "output": _rails(policy.output)},
            "logprobs": not (out_rails is not None and (out_rails.pii or out_rails.secrets)),
            "drift": st.recorder is not None and st.recorder.drift is not None,
        }
    return JSONResponse(body)


@router.get("/api/series")
async def series(request: Request, _: Authorized, minutes: Annotated[float, Query(gt=0, le=60 * 24 * 30)] = 30,
                 window: Annotated[float, Query(gt=0)] | None = None) -> JSONResponse:
    """The last `minutes` of the request log in windows of `window` seconds (default: ~30 windows over the span,
    or ~20 over the part of it the log covers). `x0`: where the page's time axis starts."""
    from llmkit.monitor.report import summarize

    web = _web(request)
    if web.request_log is None:
        return JSONResponse({"log": None, "windows": [], "total": None, "rag_sources": [], "x0": None})
    recorder = web.state.recorder if web.state is not None else None

    def read() -> dict:
        if recorder is not None and recorder.log is not None:
            recorder.log.flush(2.0)  # what the server answered a moment ago is on disk before it is read
        now, span = time.time(), minutes * 60
        if not web.request_log.is_file():
            return {"windows": [], "total": None, "rag_sources": [], "x0": now - span}
        out = summarize(web.request_log, window or max(5.0, span / 30), since=now - span)
        first = out.total.start
        if window is None and out.total.requests and now - first < span / 3:
            # the log covers a small part of the span (a server that just started): finer windows over what it has
            out = summarize(web.request_log, max(2.0, (now - first) / 20), since=now - span)
        x0 = now - span if not out.total.requests or now - first >= span / 3 else first - out.window_s
        return {**out.to_dict(), "x0": x0}
    body = await asyncio.to_thread(read)
    return JSONResponse({"log": str(web.request_log), "now": time.time(), **body})


@router.get("/api/drift")
async def drift(request: Request, _: Authorized) -> JSONResponse:
    web = _web(request)
    mon = web.state.recorder.drift if web.state is not None and web.state.recorder is not None else None
    if mon is None:
        return JSONResponse({"enabled": False, "points": []})
    return JSONResponse({"enabled": True, "method": mon.method, "threshold": mon.threshold,
                         "reference": str(mon.reference_path), "pending": len(mon.pending),
                         "points": list(web.drift)})


@router.get("/api/runs")
async def runs(request: Request, _: Authorized) -> JSONResponse:
    web = _web(request)
    if web.runs is None:
        return JSONResponse({"root": None, "runs": []})
    return JSONResponse({"root": str(web.runs), "runs": await asyncio.to_thread(runs_.list_runs, web.runs)})


@router.get("/api/runs/{run}/graph")
async def run_graph(run: str, request: Request, _: Authorized) -> JSONResponse:
    web = _web(request)
    if web.runs is None:
        raise APIError(404, "this dashboard has no runs folder (--runs DIR)", code="not_found")
    try:
        return JSONResponse(await asyncio.to_thread(runs_.graph, web.runs, run))
    except LlmkitError as e:
        raise APIError(404, str(e), code="not_found") from None


@router.get("/api/registry")
async def registry(request: Request, _: Authorized) -> JSONResponse:
    web = _web(request)
    now = time.monotonic()
    if web._registry is None or now - web._registry[0] > REGISTRY_TTL_S:
        web._registry = (now, await asyncio.to_thread(_registry, web.registry_uri))
    return JSONResponse(web._registry[1])


def _registry(uri: str | None) -> dict:
    from llmkit.track.client import available, tracking_uri
    from llmkit.track.registry import list_versions

    if not available():
        return {"available": False, "why": "MLflow is not installed (pip install 'llmkit[track]')", "versions": []}
    try:
        return {"available": True, "uri": tracking_uri(uri), "versions": list_versions(uri)}
    except Exception as e:  # noqa: BLE001 -- an unreachable tracking server is shown on the page, not a 500
        return {"available": False, "why": f"{type(e).__name__}: {e}", "versions": []}


@router.get("/files/{rel:path}")
async def files(rel: str, request: Request, _: Authorized) -> FileResponse:
    web = _web(request)
    if web.runs is None:
        raise APIError(404, "this dashboard has no runs folder (--runs DIR)", code="not_found")
    try:
        return FileResponse(runs_.served_file(web.runs, rel))
    except LlmkitError as e:
        raise APIError(404, str(e), code="not_found") from None
