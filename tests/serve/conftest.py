"""Fixtures of the serve tests: the shared server and servers of a test's own (see serve_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serve_helpers import Running, make_state, running

from llmkit.serve.auth import KeyStore


@pytest.fixture(scope="session")
def server(tiny_llama) -> Iterator[Running]:
    """The shared server: tiny model as 'tiny', the bundled MiniLM embedder, no keys, no rate limits."""
    with running(make_state(tiny_llama, embedder="all-minilm-l6-v2")) as r:
        yield r


@pytest.fixture
def make_server(tiny_llama, tiny_gguf):
    """Start a server of its own with config overrides (engine="llamacpp" serves the tiny GGUF); it is stopped
    at the end of the test."""
    with_servers: list = []

    def start(keys: KeyStore | None = None, **cfg) -> Running:
        model = tiny_gguf if cfg.get("engine") == "llamacpp" else tiny_llama
        cm = running(make_state(model, keys=keys, **cfg))
        with_servers.append(cm)
        return cm.__enter__()

    yield start
    for cm in reversed(with_servers):
        cm.__exit__(None, None, None)
