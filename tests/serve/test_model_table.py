"""The model table: ids → engine and adapter; adapters loaded on first use, least recently used unloaded."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from serve_helpers import MODEL, running

from llmkit.config import ServeConfig
from llmkit.engines.hf import TransformersEngine
from llmkit.models import ModelRef
from llmkit.serve import load_state
from llmkit.serve.auth import KeyStore
from llmkit.serve.errors import APIError
from llmkit.serve.models import ModelTable


class FakeEngine:
    name = "fake"
    model = ModelRef("base", "hf", Path("."), "local")

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def load_adapter(self, name: str, ref: ModelRef) -> None:
        self.calls.append(("load", name))

    def unload_adapter(self, name: str) -> None:
        self.calls.append(("unload", name))

    def close(self) -> None:
        pass


def table_with(n_adapters: int, max_adapters: int) -> tuple[ModelTable, FakeEngine]:
    table, engine = ModelTable(max_adapters), FakeEngine()
    table.add_base("base", engine, 2048)
    for i in range(n_adapters):
        table.add_adapter(f"a{i}", ModelRef(f"a{i}", "adapter", engine.model.path, "local", base="base"), "base")
    return table, engine


async def settle(table: ModelTable) -> None:
    """Wait for the trim that `release` scheduled, if any."""
    if table._pending is not None:
        await table._pending


def test_adapters_load_on_first_use_and_lru_unloads():
    async def go():
        table, engine = table_with(3, max_adapters=2)
        for name in ("a0", "a1", "a0", "a2"):  # a1 is now the least recently used
            table.release(await table.acquire(name))
        await settle(table)
        assert engine.calls == [("load", "a0"), ("load", "a1"), ("load", "a2"), ("unload", "a1")]
        assert table.loaded_adapters() == ["a0", "a2"]
        assert (await table.acquire("base")).adapter is None

    asyncio.run(go())


def test_an_adapter_in_use_is_never_unloaded():
    async def go():
        table, engine = table_with(2, max_adapters=1)
        a0 = await table.acquire("a0")  # still running
        table.release(await table.acquire("a1"))
        await settle(table)
        assert ("unload", "a0") not in engine.calls and table.loaded_adapters() == ["a0"]
        table.release(a0)

    asyncio.run(go())


def test_unknown_model_and_engine_without_adapters():
    async def go():
        table, _engine = table_with(1, 4)
        del FakeEngine.load_adapter  # an engine of the older Protocol
        try:
            with pytest.raises(APIError) as e:
                await table.acquire("a0")
            assert e.value.status == 400 and "does not serve adapters" in e.value.message
        finally:
            FakeEngine.load_adapter = lambda self, name, ref: self.calls.append(("load", name))
        with pytest.raises(APIError) as e:
            await table.acquire("nope")
        assert e.value.status == 404 and e.value.code == "model_not_found"

    asyncio.run(go())


def make_adapter(base, out):
    """A small random LoRA adapter on the tiny model, saved as the train stage saves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                          LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": str(base)}))
    return out


def test_adapter_served_by_its_base_engine(tiny_llama, tmp_path):
    adapter = make_adapter(tiny_llama, tmp_path / "adapter")
    cfg = ServeConfig(engine="transformers", threads=1, n_ctx=256, embedder=None)
    state = load_state(cfg, [f"{MODEL}={tiny_llama}", f"support={adapter}"], keys=KeyStore())
    assert state.models.entries["support"].slot is state.models.entries[MODEL].slot  # one engine
    with running(state) as srv:
        cards = {m["id"]: m for m in httpx.get(f"{srv.url}/v1/models").json()["data"]}
        assert cards["support"]["parent"] == MODEL and cards[MODEL]["parent"] is None
        body = {"model": "support", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        r = httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=60)
        if hasattr(TransformersEngine, "load_adapter"):
            assert r.status_code == 200, r.text
            assert state.models.loaded_adapters() == ["support"]
        else:  # until the engine learns load_adapter: a clear 400, not a crash
            assert r.status_code == 400 and "does not serve adapters" in r.json()["error"]["message"]
