"""The dashboard and playground page: `/ui` on `llmkit serve`, and `llmkit dashboard` for the runs alone.

    app = build_app(load_state(cfg))            # serve/ builds the server's app ...
    mount(app, app.state.llmkit, runs="runs")   # ... and the serve command mounts the page on it

The page is plain HTML, CSS and JavaScript shipped in the package (web/static/, no CDN, no build step); its
charts are inline SVG drawn by the script. It reads the JSON routes of web/api.py and, for the playground, the
server's own OpenAI routes (/v1/models, /v1/chat/completions streamed, /v1/feedback), with the same API key.
serve/ never imports web/: the edge composes the two (DESIGN.md).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from llmkit.serve.auth import KeyStore
from llmkit.serve.state import ServerState
from llmkit.web.api import Dashboard, router


def mount(app: FastAPI, state: ServerState, runs: str | Path | None = None,
          registry_uri: str | None = None) -> Dashboard:
    """Add /ui and its JSON routes to a server's app (behind its keys); the drift monitor's tests feed its chart."""
    log = state.cfg.request_log
    web = Dashboard(state=state, runs=Path(runs).resolve() if runs else None, request_log=Path(log) if log else None,
                    registry_uri=registry_uri, keys=state.keys)
    mon = state.recorder.drift if state.recorder is not None else None
    if mon is not None:
        before = mon.on_result

        def both(result) -> None:  # the metrics' gauges first (the server's callback), then the chart's history
            if before is not None:
                before(result)
            web.on_drift(result)

        mon.on_result = both
    app.state.llmkit_web = web
    app.include_router(router)
    return web


def dashboard_app(runs: str | Path | None, request_log: str | Path | None = None, registry_uri: str | None = None,
                  keys: KeyStore | None = None) -> FastAPI:
    """`llmkit dashboard`: the runs, their lineage, the registry and (given a request log) its charts; no models."""
    from llmkit import __version__
    from llmkit.serve import errors

    app = FastAPI(title="llmkit dashboard", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    errors.install(app)
    app.state.llmkit_web = Dashboard(runs=Path(runs).resolve() if runs else None,
                                     request_log=Path(request_log) if request_log else None,
                                     registry_uri=registry_uri, keys=keys or KeyStore())
    app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/ui")

    return app


__all__ = ["Dashboard", "dashboard_app", "mount"]
