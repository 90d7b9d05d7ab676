"""The `openai` engine: llmkit's server as a gateway in front of real upstreams — llmkit servers (separate
processes, so that one can be killed with SIGKILL) and llama-cpp-python's own server, all on the tiny GGUF."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import openai
import pytest
from serve_helpers import running, wait_until

from llmkit.config import ServeConfig
from llmkit.engines.upstream import OpenAIEngine, Replica, parse_urls
from llmkit.engines.vllm import vllm_command
from llmkit.serve import load_state
from llmkit.serve.auth import KeyStore, hash_key

SRC = str(Path(__file__).resolve().parents[2] / "src")
HI = [{"role": "user", "content": "Say hello to the gateway."}]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream:
    def __init__(self, cmd: list[str], port: int, log: Path):
        self.url, self.log = f"http://127.0.0.1:{port}/v1", log
        env = {**os.environ, "PYTHONPATH": SRC, "LLMKIT_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)  # noqa: SIM115

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"upstream exited: {self.log.read_text()[-2000:]}"
        try:
            return httpx.get(f"{self.url}/models", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def llmkit_upstream(gguf: Path, tmp: Path) -> Upstream:
    port = _port()
    return Upstream([sys.executable, "-m", "llmkit.cli", "serve", "--engine", "llamacpp", "--model", f"tiny={gguf}",
                     "--port", str(port), "--embedder", "none", "--no-ui", "--threads", "1", "--n-ctx", "256",
                     "--max-inflight", "4", "--log-level", "warning"], port, tmp / f"llmkit-{port}.log")


def llama_cpp_upstream(tmp: Path) -> Upstream:
    """llama-cpp-python's server on the bundled 135M model (the tiny random one's tokens decode to empty text)."""
    from llmkit.models import resolve_model

    gguf, port = resolve_model("smollm2-135m-instruct").path, _port()
    return Upstream([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "tiny-lcpp",
                     "--port", str(port), "--n_threads", "1", "--n_ctx", "512", "--verbose", "False",
                     # its default ends a streamed reply as soon as another request waits for its model lock, and
                     # GET /v1/models (the gateway's health check) does
                     "--interrupt_requests", "False"],
                    port, tmp / f"llama-cpp-{port}.log")


@pytest.fixture(scope="module")
def upstreams(tiny_gguf, tmp_path_factory):
    """Three llmkit servers on the tiny GGUF and llama-cpp-python's server on the bundled model, started together
    (the second llmkit one is killed by the last test)."""
    tmp = tmp_path_factory.mktemp("upstreams")
    ups = [llmkit_upstream(tiny_gguf, tmp) for _ in range(2)] + [llama_cpp_upstream(tmp)]
    try:
        for u in ups:
            wait_until(u.ready, 90, f"upstream {u.url}")
        yield ups
    finally:
        for u in ups:
            u.kill()


def gateway(models: list[str], keys: KeyStore | None = None, **cfg):
    return running(load_state(ServeConfig(engine="openai", embedder=None, **cfg), models, keys=keys or KeyStore()))


def test_streaming_passes_the_upstreams_tokens_one_by_one(upstreams):
    direct = openai.OpenAI(base_url=upstreams[0].url, api_key="none", max_retries=0)
    want = direct.chat.completions.create(model="tiny", messages=HI, max_tokens=12, temperature=0)
    with gateway([f"gw={upstreams[0].url}"]) as gw:
        c = gw.openai()
        chunks = [ch for ch in c.chat.completions.create(model="gw", messages=HI, max_tokens=12, temperature=0,
                                                          stream=True, stream_options={"include_usage": True})]
        texts = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
        assert len(texts) >= 3, texts  # token by token, not one block at the end
        assert "".join(texts) == want.choices[0].message.content
        assert chunks[-1].usage.completion_tokens == want.usage.completion_tokens
        assert chunks[-1].usage.prompt_tokens == want.usage.prompt_tokens  # the upstream's count, passed on
        whole = c.chat.completions.create(model="gw", messages=HI, max_tokens=12, temperature=0)
        assert whole.choices[0].message.content == want.choices[0].message.content
        assert whole.choices[0].finish_reason == want.choices[0].finish_reason
        # a raw completion goes to the upstream's /v1/completions
        raw = c.completions.create(model="gw", prompt="Once upon a time", max_tokens=6, temperature=0)
        assert raw.choices[0].text == direct.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6,
                                                                temperature=0).choices[0].text
        assert [m.id for m in c.models.list().data] == ["gw"]
        assert gw.metric("llmkit_requests_total", route="/v1/chat/completions", status="200") == 2


def test_llama_cpp_server_as_upstream(upstreams):
    lcpp = upstreams[2]
    with gateway([lcpp.url]) as gw:  # no NAME: the upstream's own model id
        c = gw.openai()
        assert [m.id for m in c.models.list().data] == ["tiny-lcpp"]
        chunks = list(c.chat.completions.create(model="tiny-lcpp", messages=HI, max_tokens=10, temperature=0,
                                                stream=True))
        texts = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
        assert len(texts) >= 3, chunks
        direct = openai.OpenAI(base_url=lcpp.url, api_key="none", max_retries=0)
        want = direct.chat.completions.create(model="tiny-lcpp", messages=HI, max_tokens=10, temperature=0)
        assert "".join(texts) == want.choices[0].message.content


def test_upstream_errors_in_the_openai_envelope(upstreams, make_server):
    spare = make_server(engine="llamacpp")  # an in-process upstream this test stops
    with gateway([f"gw={upstreams[0].url}", f"spare={spare.url}/v1"]) as gw:
        c = gw.openai()
        for stream in (False, True):  # an upstream 4xx: its status, code and message, also for a stream
            with pytest.raises(openai.BadRequestError) as e:
                c.chat.completions.create(model="gw", messages=HI, max_tokens=5000, stream=stream)
            assert e.value.body["code"] == "context_length_exceeded"
            assert upstreams[0].url in e.value.body["message"] and "maximum context length" in e.value.body["message"]
        spare.stop()
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model="spare", messages=HI, max_tokens=4)
        assert e.value.status_code == 502 and e.value.body["code"] == "upstream_unreachable"
        assert spare.url in e.value.body["message"]
        assert c.chat.completions.create(model="gw", messages=HI, max_tokens=4).choices[0].message.content is not None


def test_keys_and_guards_apply_at_the_gateway(upstreams, tmp_path):
    (tmp_path / "policy.yaml").write_text("input:\n  secrets: {action: block}\n")
    keys = KeyStore({hash_key("sk-gateway-test")})
    with gateway([f"gw={upstreams[0].url}"], keys=keys, guard=str(tmp_path / "policy.yaml")) as gw:
        with pytest.raises(openai.AuthenticationError):
            gw.openai().chat.completions.create(model="gw", messages=HI, max_tokens=4)
        c = gw.openai("sk-gateway-test")
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="gw", max_tokens=4, messages=[
                {"role": "user", "content": "my key is AKIAIOSFODNN7EXAMPLE, keep it"}])
        assert e.value.body["code"] == "content_filter"
        assert c.chat.completions.create(model="gw", messages=HI, max_tokens=4).choices[0].message.content is not None


def test_a_replica_killed_under_load_fails_no_request(upstreams):
    a, b = upstreams[0], upstreams[1]
    with gateway([f"gw={a.url},{b.url}"], max_inflight=16) as gw:
        engine: OpenAIEngine = gw.state.models.entries["gw"].slot.engine
        c = gw.openai()
        done, failed, lock = [], [], threading.Lock()
        todo = list(range(40))

        def client() -> None:
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop()
                try:
                    r = c.chat.completions.create(model="gw", max_tokens=24, temperature=0,
                                                  messages=[{"role": "user", "content": f"Count to {i}."}])
                    with lock:
                        done.append(r.choices[0].message.content)
                except Exception as e:  # noqa: BLE001 -- counted: the test asserts there are none
                    with lock:
                        failed.append(repr(e))

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        wait_until(lambda: len(done) >= 8, 60, "the first requests")
        assert all(r.served > 0 for r in engine.replicas)  # balanced: both replicas answered before the kill
        b.kill()  # SIGKILL while requests run on it
        for t in threads:
            t.join(120)
        assert failed == [] and len(done) == 40
        assert engine.replicas[0].up and not engine.replicas[1].up
        assert engine.retries >= 1  # the requests that were on (or sent to) the dead replica went to the other
        # a streaming request after the kill is served too (the dead replica is not tried first any more)
        stream = c.chat.completions.create(model="gw", messages=HI, max_tokens=6, stream=True)
        assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)


def test_least_outstanding_pick_and_round_robin_ties():
    engine = OpenAIEngine.__new__(OpenAIEngine)  # the picker alone, no upstream
    engine.replicas, engine._rr = [Replica("a"), Replica("b"), Replica("c")], 0
    engine.replicas[0].outstanding, engine.replicas[1].outstanding, engine.replicas[2].outstanding = 3, 1, 2
    assert engine._pick(set()).url == "b"
    engine.replicas[1].up = False  # down: only when nothing else is left
    tried: set[int] = set()
    assert [engine._pick(tried).url for _ in range(3)] == ["c", "a", "b"] and engine._pick(tried) is None
    for r in engine.replicas:
        r.outstanding, r.up = 0, True
    assert {engine._pick(set()).url for _ in range(6)} == {"a", "b", "c"}


def test_upstream_urls_and_the_vllm_command(tmp_path):
    assert parse_urls("http://a:1/v1, http://b:2/") == ["http://a:1/v1", "http://b:2/v1"]
    with pytest.raises(Exception, match="not an http"):
        parse_urls("a:1")
    cmd = vllm_command("/opt/vllm/bin/python", tmp_path / "hf", "smol", 8123, max_model_len=2048,
                       extra=["--dtype", "bfloat16"])
    assert cmd == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", str(tmp_path / "hf"),
                   "--served-model-name", "smol", "--host", "127.0.0.1", "--port", "8123", "--max-model-len", "2048",
                   "--dtype", "bfloat16"]
    from llmkit.errors import LlmkitError
    from llmkit.models import resolve_model

    with pytest.raises(LlmkitError, match="--vllm-python"):
        from llmkit.engines.vllm import start_vllm

        start_vllm(resolve_model("smollm2-135m-instruct"), python=None)


def test_rag_and_the_request_log_apply_at_the_gateway(upstreams, tmp_path):
    from llmkit.config import RagConfig
    from llmkit.monitor.store import read_log
    from llmkit.rag import index

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "router.md").write_text("# Router\n\n## Factory reset\n\nHold Reset for 10 seconds.\n")
    index(RagConfig(sources=[str(tmp_path / "docs")], collection="help"), tmp_path / "store" / "help", progress=False)
    with gateway([f"gw={upstreams[0].url}"], rag=[str(tmp_path / "store")],
                 request_log=str(tmp_path / "requests.db")) as gw:
        c = gw.openai()
        ask = [{"role": "user", "content": "How long do I hold reset?"}]
        plain = c.chat.completions.create(model="gw", messages=ask, max_tokens=4, temperature=0)
        r = c.chat.completions.create(model="gw", messages=ask, max_tokens=4, temperature=0,
                                      extra_body={"rag": {"collection": "help", "top_k": 1}})
        cite = r.model_extra["citations"][0]
        assert (cite["source"], cite["heading"]) == ("docs/router.md", "Factory reset")
        # the upstream got the source in its prompt: its own prompt token count (passed on) grew
        assert r.usage.prompt_tokens > plain.usage.prompt_tokens + 5
        gw.state.recorder.log.flush()
        rows = read_log(gw.state.recorder.log.path)[0]
        assert [x["model"] for x in rows] == ["gw", "gw"] and rows[-1]["rag"][0]["source"] == "docs/router.md"


def test_relay_equals_the_full_path_and_keeps_keys_limits_and_counts(upstreams):
    """A gateway with no guard, RAG or request log relays requests as bytes (serve/relay.py): the same replies as
    the full path (`upstream_full_path`), the model renamed, usage only when asked, keys, token limits, timeouts
    and the token counters all still applied."""
    keys = KeyStore({hash_key("sk-relay")})
    url = upstreams[0].url
    with gateway([f"gw={url}"], keys=keys, tokens_per_minute=500) as relay, \
            gateway([f"gw={url}"], keys=keys, upstream_full_path=True) as full:
        with pytest.raises(openai.AuthenticationError):
            relay.openai().chat.completions.create(model="gw", messages=HI, max_tokens=4)
        r, f = relay.openai("sk-relay"), full.openai("sk-relay")
        for c in (r, f):
            whole = c.chat.completions.create(model="gw", messages=HI, max_tokens=12, temperature=0)
            chunks = list(c.chat.completions.create(model="gw", messages=HI, max_tokens=12, temperature=0, stream=True))
            counted = list(c.chat.completions.create(model="gw", messages=HI, max_tokens=12, temperature=0,
                                                     stream=True, stream_options={"include_usage": True}))
            raw = c.completions.create(model="gw", prompt="Once upon a time", max_tokens=6, temperature=0)
            texts = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            assert {whole.model, raw.model} | {ch.model for ch in chunks + counted} == {"gw"}
            assert all(ch.usage is None for ch in chunks)  # not asked for: the upstream's usage chunk is dropped
            assert counted[-1].usage.completion_tokens == whole.usage.completion_tokens
            if c is r:
                want = (whole.choices[0].message.content, texts, raw.choices[0].text, whole.usage.completion_tokens)
            else:
                assert (whole.choices[0].message.content, texts, raw.choices[0].text,
                        whole.usage.completion_tokens) == want
        route = "/v1/chat/completions"
        assert relay.metric("llmkit_relayed_requests_total", route=route) == 3
        assert full.metric("llmkit_relayed_requests_total", route=route) == 0
        assert relay.metric("llmkit_requests_total", route=route, status="200") == 3
        assert relay.metric("llmkit_time_to_first_token_seconds_count", route=route) == 3
        # the counters hold the upstream's counts: 3 chats and one completion
        assert relay.metric("llmkit_completion_tokens_total") == 3 * want[3] + raw.usage.completion_tokens
        assert relay.metric("llmkit_completion_tokens_total") == full.metric("llmkit_completion_tokens_total")
        with pytest.raises(openai.RateLimitError):  # max_tokens over the tokens per minute: refused before the upstream
            r.chat.completions.create(model="gw", messages=HI, max_tokens=600)
        upstream_errors = relay.metric("llmkit_requests_total", route=route, status="400")
        with pytest.raises(openai.BadRequestError) as e:  # the upstream's own refusal, naming it
            r.chat.completions.create(model="gw", messages=HI, max_tokens=4, n=0)
        assert url in e.value.body["message"]
        assert relay.metric("llmkit_requests_total", route=route, status="400") == upstream_errors + 1
    with gateway([f"gw={url}"], request_timeout_s=0.001) as slow:
        with pytest.raises(openai.APIStatusError) as e:
            slow.openai().chat.completions.create(model="gw", messages=HI, max_tokens=4)
        assert e.value.status_code == 503 and e.value.body["code"] == "timeout"
        assert slow.metric("llmkit_cancelled_generations_total", reason="timeout") == 1


def test_relay_cancels_the_upstream_request_when_the_client_leaves(upstreams):
    up = upstreams[0]

    def upstream_cancelled() -> float:
        text = httpx.get(up.url.removesuffix("/v1") + "/metrics", timeout=5).text
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith('llmkit_cancelled_generations_total{reason="disconnect"}'))

    before = upstream_cancelled()
    with gateway([f"gw={up.url}"]) as gw:
        # greedy: the tiny model's reply is the same every run and longer than what is read before leaving
        # (sampled, it could end early, and a finished generation is not a cancelled one)
        body = {"model": "gw", "messages": HI, "max_tokens": 200, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": False}}
        with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=30) as resp:
            lines = resp.iter_lines()
            assert next(line for line in lines if '"content":"' in line and '"content":""' not in line)
        # leaving the block closed the connection mid-stream: the gateway closes its upstream request, and the
        # upstream (an llmkit server) counts a cancelled generation
        wait_until(lambda: upstream_cancelled() > before, 30, "the upstream to cancel the generation")
        assert gw.metric("llmkit_cancelled_generations_total", reason="disconnect") == 1
