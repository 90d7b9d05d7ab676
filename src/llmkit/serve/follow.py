"""Serving from the registry: a model served as `registry:NAME@ALIAS` follows its alias.

    llmkit serve --model registry:support@production --registry-poll-s 10

At start the alias is resolved once (to version V, whose files llmkit.track.registry finds or downloads) and the
server serves V under the id NAME. A background task asks MLflow every `registry_poll_s` seconds where the alias
points; when it moved, the new version is loaded in a thread beside the old one (the event loop keeps answering),
then swapped in between requests (ModelTable.swap): new requests go to the new engine, running ones finish on the
old one, which is closed after its last request. Clients change nothing: the id stays NAME; `/v1/models` shows
`llmkit_version`, responses' `system_fingerprint` ends in `-vN`, and the request log records `version`.

A version that fails to load leaves the old one serving; the error is logged, counted
(`llmkit_registry_load_failures`) and shown in /health, and that version is not tried again until the alias moves
on. MLflow being unreachable is logged once per outage and changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("llmkit.serve")


@dataclass
class Follower:
    """One served model that follows a registry alias."""

    id: str  # the id clients send
    name: str  # the registered model's name
    alias: str
    version: int  # the version served now
    load: Callable[[Path], tuple[Any, int]]  # a version's local files -> (engine, n_ctx); runs in a thread
    uri: str | None = None  # the tracking URI; None: $MLFLOW_TRACKING_URI or the embedded default
    failed: int | None = None  # the last version that failed to load (not retried while the alias stays there)
    error: str | None = None
    unreachable: bool = False  # MLflow did not answer the last poll

    @property
    def spec(self) -> str:
        return f"registry:{self.name}@{self.alias}"

    def status(self) -> dict:
        return {"spec": self.spec, "version": self.version, "failed_version": self.failed, "error": self.error,
                "registry_reachable": not self.unreachable}


def parse(spec: str) -> tuple[str, str | None, int | None]:
    """`registry:NAME@ALIAS` → (NAME, ALIAS, None); `registry:NAME/V` → (NAME, None, V); `registry:NAME` is
    @production. ConfigError on anything else."""
    from llmkit.errors import ConfigError
    from llmkit.track.registry import SPEC

    m = SPEC.match(spec)
    if not m:
        raise ConfigError([f"--model {spec!r}: expected registry:NAME@ALIAS or registry:NAME/VERSION"])
    if m["version"]:
        return m["name"], None, int(m["version"])
    return m["name"], m["alias"] or "production", None


def pin(name: str, alias: str | None, version: int | None, uri: str | None = None) -> tuple[int, Path]:
    """The version the alias points at now (or the one given) and its local files, resolved by that number so
    that an alias moving meanwhile cannot give files of another version."""
    from llmkit.track.registry import resolve
    from llmkit.track.registry import version as model_version

    v = version if version is not None else int(model_version(name, alias, uri).version)
    return v, resolve(f"registry:{name}/{v}", uri)


async def check(state, f: Follower) -> bool:
    """Poll the alias once; load and swap in a new version. True when the served version changed."""
    from llmkit.track.registry import alias_version

    m = state.metrics
    try:
        target = await asyncio.to_thread(alias_version, f.name, f.alias, f.uri)
    except Exception as e:  # noqa: BLE001 -- MLflow down: keep serving what is loaded, say so once per outage
        if not f.unreachable:
            log.warning("model %s: cannot reach the registry to follow %s (%s); still serving version %d",
                        f.id, f.spec, e, f.version)
        f.unreachable = True
        return False
    if f.unreachable:
        log.info("model %s: the registry answers again", f.id)
    f.unreachable = False
    if target is None or target == f.version or target == f.failed:
        return False
    old_v = f.version
    log.info("model %s: %s moved to version %d; loading it beside version %d", f.id, f.spec, target, old_v)
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(None, lambda: f.load(pin(f.name, None, target, f.uri)[1]))
    try:
        engine, n_ctx = await asyncio.shield(fut)  # shielded: a load under way finishes, and is closed, below
    except asyncio.CancelledError:
        fut.add_done_callback(_close_result)
        raise
    except Exception as e:  # noqa: BLE001 -- a bad version must not take the good one down
        f.failed, f.error = target, f"version {target}: {type(e).__name__}: {e}"
        m.registry_load_failures.labels(f.id).inc()
        log.error("model %s: could not load version %d of %s (%s: %s); still serving version %d", f.id, target,
                  f.name, type(e).__name__, e, old_v)
        return False
    if state.draining or state.closed:  # shutting down: nobody will be served by it
        await asyncio.to_thread(engine.close)
        return False
    state.models.swap(f.id, engine, n_ctx, version=target)  # no await before it: one step between two requests
    f.version, f.failed, f.error = target, None, None
    m.registry_switches.labels(f.id).inc()
    m.registry_version.labels(f.id).set(target)
    log.info("model %s: version %d → %d", f.id, old_v, target)
    return True


def _close_result(fut) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result()[0].close()


async def follow(state, poll_s: float) -> None:
    """Every `poll_s` seconds, check each follower (runs until cancelled at shutdown)."""
    while True:
        await asyncio.sleep(poll_s)
        for f in state.followers:
            try:
                await check(state, f)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 -- a bug here must not stop following (or serving)
                log.exception("model %s: following %s failed", f.id, f.spec)
