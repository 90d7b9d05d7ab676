"""Real servers for the serve tests: uvicorn on a free loopback port in a background thread, serving the tiny
random Llama through the transformers engine, driven over HTTP (httpx and the official `openai` client).

Startup and shutdown are awaited by polling with a deadline, never by sleeping. (A module of its own, not
conftest.py, so that test files can import it by a name no other conftest shares.)
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from llmkit.config import ServeConfig
from llmkit.serve import load_state
from llmkit.serve.app import Server, build_app
from llmkit.serve.auth import KeyStore
from llmkit.serve.state import ServerState

MODEL = "tiny"


@dataclass
class Running:
    url: str
    state: ServerState
    server: Server
    thread: threading.Thread

    def openai(self, api_key: str = "none"):
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=60)

    def metric(self, name: str, **labels) -> float:
        """A sample's value from the server's own registry (0 when it has none yet)."""
        value = self.state.metrics.registry.get_sample_value(name, labels or None)
        return value or 0.0

    def stop(self, timeout: float = 30) -> None:
        self.server.begin_drain()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "server did not stop"


def wait_until(check, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@contextmanager
def running(state: ServerState) -> Iterator[Running]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    import uvicorn

    server = Server(uvicorn.Config(build_app(state), log_level="warning", timeout_graceful_shutdown=10), state)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(healthy, 30, "the server's /health")
    r = Running(url, state, server, thread)
    try:
        yield r
    finally:
        if thread.is_alive():
            r.stop()
        sock.close()


def make_state(tiny_model, embedder: str | None = None, keys: KeyStore | None = None, engine: str = "transformers",
               **cfg) -> ServerState:
    """The tiny model as 'tiny': its HF folder on transformers, or its GGUF on llamacpp."""
    config = ServeConfig(engine=engine, threads=1, n_ctx=256, embedder=embedder, **cfg)
    return load_state(config, [f"{MODEL}={tiny_model}"], keys=keys or KeyStore())


