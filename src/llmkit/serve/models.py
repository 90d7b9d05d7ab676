"""The served models: the ids clients put in `model` → (engine, LoRA adapter name or None).

Base models each have an engine. An adapter (a PEFT adapter folder given with `--model`) is served by its base's
engine: the table calls `engine.load_adapter(name, ref)` the first time a request names it, and
`engine.unload_adapter(name)` on the least recently used idle adapter once more than `max_adapters` are loaded.
The engine is never restarted. An adapter in use by a running request is never unloaded; the table goes over the
limit for a while instead and trims when that request ends.

Every call into an engine from the server (chat template, tokenizer, submit, adapter loading) runs on that
engine's own single thread (`EngineSlot.call`): the event loop never blocks on it, and the engine never sees two
server threads at once.

A base model can be replaced while it serves (`swap`: a registry model whose alias moved, serve/follow.py). A
request pins the engine it started on (`lease`) until it ends, so the swap only changes what new requests get:
running ones finish on the old engine, which is closed (in a thread of its own) once its last lease is released.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from llmkit.engines import Engine
from llmkit.models import ModelRef
from llmkit.serve.errors import APIError


def adapter_source(engine: Engine, ref: ModelRef):
    """What the engine loads for a PEFT adapter: the folder itself (transformers), or its llama.cpp adapter GGUF,
    converted once and cached by content (llamacpp: LoRA on an unmerged GGUF base)."""
    if engine.name != "llamacpp":
        return ref.path
    from llmkit.compress.lora_gguf import adapter_gguf

    return adapter_gguf(ref.path, base=engine.model.path)


@dataclass
class EngineSlot:
    """An engine, its context length and the one thread the server calls it on."""

    engine: Engine
    n_ctx: int
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="llmkit-engine"))
    users: int = 0  # requests holding a lease on this engine
    retired: bool = False  # swapped out: closed when the last lease is released
    closed: bool = False

    async def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        if getattr(self.engine, "remote", False):  # an upstream engine never blocks: its calls run inline, and its
            return fn(*args, **kw)  # requests run on this loop (engines/upstream.py), with no thread hand-off
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args, **kw))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.pool.shutdown(wait=True)
        self.engine.close()


@dataclass
class Served:
    id: str
    slot: EngineSlot
    ref: ModelRef
    adapter: str | None = None  # the adapter's name inside the engine; None for a base model
    parent: str | None = None  # an adapter's base model id
    created: int = field(default_factory=lambda: int(time.time()))
    version: int | None = None  # the registry version served (registry: specs), else None


class Lease:
    """One request's hold on the engine it started on; `release` is idempotent (every path of a request may call
    it, the first one counts)."""

    def __init__(self, table: ModelTable, served: Served):
        self.table, self.served, self.done = table, served, False
        served.slot.users += 1

    def release(self) -> None:
        if not self.done:
            self.done = True
            self.table._unpin(self.served.slot)


class ModelTable:
    def __init__(self, max_adapters: int = 4):
        self.max_adapters = max_adapters
        self.entries: dict[str, Served] = {}
        self.embedder_id: str | None = None
        self._loaded: OrderedDict[str, Served] = OrderedDict()  # adapters loaded, least recently used first
        self._users: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._pending: asyncio.Task | None = None  # a trim scheduled by release (kept so it is not collected)
        self._retired: list[EngineSlot] = []  # swapped-out engines, closed or closing
        self._closers: list[threading.Thread] = []

    def add_base(self, id: str, engine: Engine, n_ctx: int) -> Served:
        self._check_new(id)
        self.entries[id] = served = Served(id, EngineSlot(engine, n_ctx), engine.model)
        return served

    def add_adapter(self, id: str, ref: ModelRef, base_id: str) -> Served:
        self._check_new(id)
        base = self.entries[base_id]
        self.entries[id] = served = Served(id, base.slot, ref, adapter=id, parent=base_id)
        return served

    def _check_new(self, id: str) -> None:
        if id in self.entries or id == self.embedder_id:
            raise ValueError(f"two served models are both called '{id}'; name one with NAME=SPEC")

    def get(self, id: str) -> Served:
        if id in self.entries:
            return self.entries[id]
        if id == self.embedder_id:
            raise APIError(400, f"'{id}' is an embedding model: use /v1/embeddings", param="model",
                           code="model_not_supported")
        known = ", ".join(list(self.entries) + ([self.embedder_id] if self.embedder_id else []))
        raise APIError(404, f"the model '{id}' does not exist; this server serves: {known}", param="model",
                       code="model_not_found")

    def lease(self, id: str) -> Lease:
        """The served model `id` now, pinned to its engine until the lease is released (a swap does not close it)."""
        return Lease(self, self.get(id))

    def _unpin(self, slot: EngineSlot) -> None:
        slot.users -= 1
        if slot.retired and slot.users == 0:
            self._close_later(slot)

    def _close_later(self, slot: EngineSlot) -> None:
        """Close a retired engine in a thread: freeing a model's memory must not hold the event loop."""
        t = threading.Thread(target=slot.close, name="llmkit-engine-close", daemon=True)
        self._closers.append(t)
        t.start()

    def swap(self, id: str, engine: Engine, n_ctx: int, version: int | None = None) -> Served:
        """Serve base model `id` from `engine` from now on (call it on the event loop: the switch is one
        assignment between requests); returns what was served. The old engine is closed when its last request
        ends. Adapters on `id` move to the new engine and are loaded into it again on first use."""
        old = self.entries[id]
        new = Served(id, EngineSlot(engine, n_ctx), engine.model, created=old.created, version=version)
        self.entries[id] = new
        for key, s in list(self.entries.items()):
            if s.parent == id:
                self.entries[key] = dataclasses.replace(s, slot=new.slot)
                self._loaded.pop(key, None)
        old.slot.retired = True
        self._retired.append(old.slot)
        if old.slot.users == 0:
            self._close_later(old.slot)
        return old

    async def acquire(self, id: str | Served) -> Served:
        """The served model (by id, or as leased), with its adapter loaded and marked in use until `release`."""
        served = self.get(id) if isinstance(id, str) else id
        key = served.id
        if served.adapter is None:
            return served
        engine = served.slot.engine
        if not hasattr(engine, "load_adapter"):
            raise APIError(400, f"engine {engine.name} does not serve adapters (model '{key}'); merge it with "
                                "`llmkit compress` or serve it alone", param="model", code="model_not_supported")
        async with self._lock:  # one load at a time; a second request for the same adapter waits for the first
            loaded = self._loaded.get(key)
            if loaded is None or loaded.slot is not served.slot:  # not loaded, or loaded in an engine swapped out
                await served.slot.call(engine.load_adapter, served.adapter, adapter_source(engine, served.ref))
                self._loaded[key] = served
            self._loaded.move_to_end(key)
            self._users[key] = self._users.get(key, 0) + 1
            await self._trim()
        return served

    def release(self, served: Served) -> None:
        """Mark one use of the adapter finished (synchronous: it runs in cleanups that may not await)."""
        if served.adapter is None:
            return
        self._users[served.id] -= 1
        if len(self._loaded) > self.max_adapters:
            self._pending = asyncio.get_running_loop().create_task(self._trim_locked())

    async def _trim_locked(self) -> None:
        async with self._lock:
            await self._trim()

    async def _trim(self) -> None:
        idle = [k for k in self._loaded if not self._users.get(k)]  # least recently used first
        while len(self._loaded) > self.max_adapters and idle:
            victim = self._loaded.pop(idle.pop(0))
            await victim.slot.call(victim.slot.engine.unload_adapter, victim.adapter)

    def loaded_adapters(self) -> list[str]:
        return list(self._loaded)

    def slots(self) -> list[EngineSlot]:
        seen: dict[int, EngineSlot] = {}
        for s in self.entries.values():
            seen.setdefault(id(s.slot), s.slot)
        return list(seen.values())

    def close(self) -> None:
        for slot in self.slots() + self._retired:
            slot.close()  # idempotent: a retired one may be closed (or closing) already
        for t in self._closers:
            t.join()
