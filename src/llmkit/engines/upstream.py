"""The `openai` engine: generation by one or more OpenAI-compatible upstream servers (vLLM, llama.cpp's server,
another llmkit), so that llmkit's server — keys, limits, guards, RAG, metrics, request log — stands in front of
them as a gateway.

    engine = OpenAIEngine(["http://10.0.0.5:8000/v1", "http://10.0.0.6:8000/v1"])   # two replicas of one model
    gen = engine.submit(engine.format_chat([{"role": "user", "content": "Hi"}]), GenParams(max_tokens=16))

How a request runs:
- The chat template is the upstream's: `format_chat` returns a `ChatPrompt`, a str that carries the messages
  themselves, and `submit` sends them to /v1/chat/completions; a plain text prompt goes to /v1/completions.
- Every upstream request streams (httpx, async, on the engine's own event-loop thread); each SSE chunk's text
  becomes one Piece as it arrives, so a streaming client gets the upstream's tokens one by one.
- The server's byte relay (`relay`, serve/relay.py) sends with aiohttp instead: its parser is C, and a streamed
  request through it cost 0.22-0.25 ms of CPU against httpx's 0.77-0.79 (the same local SSE server, 800 requests
  each, uvloop); the gateway's whole CPU per relayed request is ~4 ms (bench/gateway.py).
- Replicas: the one with the fewest outstanding requests takes the next (ties go round-robin). A replica whose
  connection fails is marked down at once; a health check (GET /v1/models every `health_s`) brings it back.
- Retries: a request whose connection failed, or that got a 502/503/504, before anything reached the caller is
  sent to another replica. "Anything reached the caller": for a streaming request, the first text piece; for a
  non-streaming one (`GenParams.streamed` False) nothing is shown until the end, so its pieces are held back and
  a replica dying mid-generation costs a retry, not a failed request. A streamed request that fails after its
  first piece cannot be retried (the client already has part of an answer): it ends with a 502.
- Errors: an upstream 4xx is passed on with its status and message (UpstreamError); unreachable upstreams are a
  502 and upstreams answering 5xx a 503, each naming the upstream URL.
- Usage: the upstream's own counts when it reports them in the stream (`stream_options.include_usage`: vLLM,
  llmkit); otherwise completion tokens are the streamed chunks (one token each on vLLM and llama.cpp's server)
  and prompt tokens are unknown (0).

There is no local tokenizer: the server skips its context-length check for this engine and lets the upstream
(which knows its context) refuse; token-id prompts and logprobs are refused (UnsupportedFeature).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.engines.base import Generation, GenParams, Piece, UnsupportedFeature, UpstreamError
from llmkit.errors import LlmkitError, MissingExtra
from llmkit.models import ModelRef

log = logging.getLogger("llmkit.engines")

RETRY_STATUSES = {502, 503, 504}  # an upstream that is overloaded, draining or behind a dead proxy: try another
JSON = {"content-type": "application/json"}


def _relay_errors() -> tuple[type[BaseException], ...]:
    """What a failed relay connection raises (aiohttp's client errors, a connect timeout): the replica is down."""
    try:
        import aiohttp
    except ImportError:  # the relay is then refused where its session is made
        return (asyncio.TimeoutError,)
    return (aiohttp.ClientError, asyncio.TimeoutError)


RELAY_ERRORS = _relay_errors()
# in a relayed body (`OpenAIEngine.relay`), found without parsing: a chunk that carries text (chat or completions;
# not the empty content of a role chunk), and a usage object. JSON escapes quotes inside strings, so text that
# merely contains these words never matches.
TEXT = re.compile(rb'"(?:content|text)":\s*"(?!")')
USAGE = re.compile(rb'"usage":\s*\{')


class ChatPrompt(str):
    """`format_chat`'s result on this engine: the messages go to the upstream, whose own template applies. The
    string's value is their JSON (what the server's token budget and logs see); `messages` is what is sent."""

    messages: list[dict]
    tools: list[dict] | None

    def __new__(cls, messages: list[dict], tools: list[dict] | None = None) -> ChatPrompt:
        s = super().__new__(cls, json.dumps(messages, ensure_ascii=False))
        s.messages, s.tools = messages, tools
        return s


@dataclass
class Replica:
    url: str  # base URL, ending in /v1
    outstanding: int = 0  # requests sent to it and not finished
    up: bool = True
    served: int = 0  # requests it answered (tests and /health-style introspection)
    last_error: str | None = None


def parse_urls(spec: str) -> list[str]:
    """'http://a:1/v1,http://b:2/v1' → the base URLs, each ending in /v1 (added when missing)."""
    urls = []
    for u in (x.strip() for x in spec.split(",")):
        if not u.startswith(("http://", "https://")):
            raise LlmkitError(f"upstream '{u}' is not an http(s) URL; expected e.g. http://127.0.0.1:8001/v1")
        u = u.rstrip("/")
        urls.append(u if u.endswith("/v1") else u + "/v1")
    return urls


def _message(body: bytes, status: int) -> tuple[str, str | None, str | None]:
    """(message, code, param) of an upstream's error body: OpenAI's envelope, FastAPI's {"detail"}, or text."""
    try:
        obj = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:500] or f"HTTP {status}", None, None
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err), err.get("code"), err.get("param")
    if isinstance(obj, dict) and "detail" in obj:
        return json.dumps(obj["detail"])[:500], None, None
    return json.dumps(obj)[:500], None, None


@dataclass
class Relayed:
    """An upstream's answer to a request relayed as bytes (`OpenAIEngine.relay`): its status is known, `body`
    yields the rest (the upstream's bytes with the model id renamed). The counts fill in as `body` is read."""

    status: int
    media_type: str
    body: AsyncIterator[bytes] | None = None
    usage: dict = field(default_factory=dict)  # the upstream's usage, when it reported one
    text_chunks: int = 0  # chunks with text (the completion tokens when the upstream reports no usage)
    first_text: float | None = None  # time.perf_counter() when the first text was read from the upstream
    _close: object = None  # what `aclose` runs: the upstream response and the replica's outstanding count

    async def aclose(self) -> None:
        """Close the upstream request (whether or not `body` was read to the end or at all); idempotent."""
        close, self._close = self._close, None
        if close is not None:
            await close()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _lines(data: bytes) -> tuple[bytes, bytes]:
    """(the whole lines of `data`, the incomplete last one): renaming and counting work on whole SSE lines."""
    cut = data.rfind(b"\n") + 1
    return data[:cut], data[cut:]


class OpenAIEngine:
    name = "openai"
    remote = True  # no local tokenizer: the server leaves context checks to the upstream
    n_vocab = 0  # unknown here; token-id prompts are refused before they get to the engine
    chat_template = None
    n_ctx: int | None = None  # the upstream's context when it says (vLLM's max_model_len), else None

    def __init__(self, urls: list[str] | str, served_name: str | None = None, *, health_s: float = 5.0,
                 connect_timeout_s: float = 5.0, wait_s: float = 0.0, api_key: str | None = None,
                 process=None):
        try:
            import httpx
        except ImportError:
            raise MissingExtra("the openai upstream engine needs httpx: pip install httpx") from None
        self.replicas = [Replica(u) for u in (parse_urls(urls) if isinstance(urls, str) else urls)]
        self.health_s = health_s
        self._process = process  # a `vllm serve` this engine started (engines/vllm.py): stopped by close()
        key = api_key or os.environ.get("LLMKIT_UPSTREAM_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # no read timeout: the server's request_timeout_s cancels a generation that runs too long
        self._timeout = httpx.Timeout(None, connect=connect_timeout_s)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="llmkit-upstream", daemon=True)
        self._thread.start()
        self._rr = 0
        self._headers = headers
        # the server calls submit on its own event loop: the upstream request then runs as a task there, with a
        # client of that loop (httpx clients belong to one loop), so that no request crosses a thread (a hand-off
        # between threads waits for the GIL: ~0.5 ms each, several per request). Other callers (chat, eval:
        # plain threads) use the engine's own loop thread and its client.
        self._clients: dict[asyncio.AbstractEventLoop, object] = {}
        self._sessions: dict[asyncio.AbstractEventLoop, object] = {}  # the relay's aiohttp sessions, per loop
        self._tasks: set[asyncio.Task] = set()
        self.retries = 0  # requests sent again to another replica after a failure there
        self._closed = False

        async def make_client():
            return self._new_client()

        self._client = self._call(make_client())
        try:
            self.upstream_model = self._discover(served_name, wait_s)
        except BaseException:
            self.close()
            raise
        self.model = ModelRef(served_name or self.upstream_model, "remote", Path(), "remote")
        # the upstream's model id as it appears in its JSON (with or without a space after the colon)
        self._model_re = re.compile(rb'"model":\s*' + re.escape(json.dumps(self.upstream_model).encode()))
        self._health = asyncio.run_coroutine_threadsafe(self._health_loop(), self._loop)

    def _new_client(self):
        import httpx

        return httpx.AsyncClient(headers=self._headers, timeout=self._timeout,
                                 limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))

    def _loop_session(self, loop: asyncio.AbstractEventLoop):
        """The relay's aiohttp session on `loop` (a session belongs to one loop), made on first use."""
        session = self._sessions.get(loop)
        if session is None:
            import aiohttp

            session = self._sessions[loop] = aiohttp.ClientSession(
                headers=self._headers, connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=None, connect=self._timeout.connect),
                auto_decompress=False)  # bytes pass through as the upstream sent them
        return session

    def _call(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- startup and health --------------------------------------------------------------------------------------

    async def _models(self, rep: Replica) -> list[dict]:
        r = await self._client.get(f"{rep.url}/models", timeout=self._timeout)
        r.raise_for_status()
        return r.json().get("data") or []

    def _discover(self, model: str | None, wait_s: float) -> str:
        """The upstream's model id to send (`model` if an upstream lists it, else the first it lists), asking every
        replica (for up to `wait_s` while none answers: a vLLM that is still loading)."""
        deadline = time.monotonic() + wait_s
        while True:
            listed: list[dict] = []
            for rep in self.replicas:
                try:
                    data = self._call(self._models(rep), timeout=30)
                    rep.up, rep.last_error = True, None
                    listed = listed or data
                except Exception as e:  # noqa: BLE001 -- a replica down at start is marked so, the others serve
                    rep.up, rep.last_error = False, f"{type(e).__name__}: {e}"
            if listed:
                break
            if self._process is not None and self._process.proc.poll() is not None:
                raise LlmkitError(f"the upstream process exited with code {self._process.proc.returncode}")
            if time.monotonic() > deadline:
                raise LlmkitError("no upstream answered GET /models: " + "; ".join(
                    f"{r.url}: {r.last_error}" for r in self.replicas))
            time.sleep(1.0)
        for rep in self.replicas:
            if not rep.up:
                log.warning("upstream %s is down at start (%s); it is tried again every %g s", rep.url,
                            rep.last_error, self.health_s)
        ids = [d.get("id") for d in listed]
        chosen = model if model in ids else ids[0]
        lengths = [d.get("max_model_len") for d in listed if d.get("id") == chosen]
        self.n_ctx = lengths[0] if lengths and isinstance(lengths[0], int) else None
        return chosen

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_s)
            for rep in self.replicas:
                try:
                    await self._models(rep)
                    if not rep.up:
                        log.warning("upstream %s is back", rep.url)
                    rep.up, rep.last_error = True, None
                except Exception as e:  # noqa: BLE001 -- any failure means: send it nothing until it answers
                    self._down(rep, e)

    def _down(self, rep: Replica, e: BaseException) -> None:
        if rep.up:
            log.warning("upstream %s is down: %s: %s", rep.url, type(e).__name__, e)
        rep.up, rep.last_error = False, f"{type(e).__name__}: {e}"

    def _pick(self, tried: set[int]) -> Replica | None:
        """The replica with the fewest outstanding requests among those up and not tried yet (ties: round-robin);
        when every untried one is marked down, one of them anyway (it may be back before its health check)."""
        left = [i for i in range(len(self.replicas)) if i not in tried]
        if not left:
            return None
        up = [i for i in left if self.replicas[i].up] or left
        self._rr += 1
        n = len(self.replicas)
        best = min(up, key=lambda i: (self.replicas[i].outstanding, (i - self._rr) % n))
        tried.add(best)
        return self.replicas[best]

    # -- generation ----------------------------------------------------------------------------------------------

    def submit(self, prompt: str | list[int], params: GenParams, adapter: str | None = None) -> Generation:
        if adapter is not None:
            raise UnsupportedFeature("the openai upstream engine serves no local adapters; serve the adapter on the "
                                     "upstream (vLLM: --lora-modules NAME=PATH) and name it: --model NAME=URL")
        if isinstance(prompt, list):
            raise UnsupportedFeature("token-id prompts need the model's tokenizer, which lives on the upstream; "
                                     "send text")
        if params.logprobs is not None or params.prompt_logprobs is not None:
            raise UnsupportedFeature("logprobs are not passed through the openai upstream engine")
        body: dict = {"model": self.upstream_model, "max_tokens": params.max_tokens,
                      "temperature": params.temperature, "top_p": params.top_p, "stream": True,
                      "stream_options": {"include_usage": True}}
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = params.stop
        if params.response_format is not None:
            body["response_format"] = params.response_format
        if isinstance(prompt, ChatPrompt):
            path, body["messages"] = "/chat/completions", prompt.messages
            if prompt.tools:
                body["tools"] = prompt.tools
        else:
            path, body["prompt"] = "/completions", prompt
        gen = Generation()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or loop is self._loop:
            asyncio.run_coroutine_threadsafe(self._run(gen, path, body, params.streamed, self._client), self._loop)
        else:
            task = loop.create_task(self._run(gen, path, body, params.streamed, self._loop_client(loop)))
            self._tasks.add(task)  # held until done: the loop keeps only a weak reference to its tasks
            task.add_done_callback(self._tasks.discard)
        return gen

    def _loop_client(self, loop: asyncio.AbstractEventLoop):
        """The httpx client of `loop` (httpx clients belong to one loop), made on first use."""
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = self._new_client()
        return client

    async def _run(self, gen: Generation, path: str, body: dict, streamed: bool, client) -> None:
        try:
            await self._generate(gen, path, body, streamed, client)
        except Exception as e:  # noqa: BLE001 -- whatever happens, the generation ends and its consumer hears why
            if gen.finish_reason is None:
                gen.close("error", e)

    async def _generate(self, gen: Generation, path: str, body: dict, streamed: bool, client) -> None:
        import httpx

        tried: set[int] = set()
        failures: list[str] = []
        statuses: list[int] = []
        chat = path == "/chat/completions"
        while (rep := self._pick(tried)) is not None:
            held: list[Piece] = []  # pieces not yet handed to the caller (all of them when not streamed)
            shown = 0
            finish, usage, chunks = "stop", None, 0
            rep.outstanding += 1
            try:
                async with client.stream("POST", rep.url + path, json=body) as r:
                    if r.status_code >= 400:
                        message, code, param = _message(await r.aread(), r.status_code)
                        if r.status_code in RETRY_STATUSES:
                            statuses.append(r.status_code)
                            failures.append(f"{rep.url} answered {r.status_code}: {message}")
                            self.retries += 1
                            continue
                        status = r.status_code if r.status_code < 500 else 502
                        gen.close("error", UpstreamError(status, f"upstream {rep.url}: {message}", code=code,
                                                         param=param))
                        return
                    async for line in r.aiter_lines():
                        if gen.cancelled.is_set():  # leaving the block closes the connection: the upstream stops
                            gen.close("cancelled")
                            return
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":  # read on to the end all the same: a response left unread closes
                            continue  # its connection, and a new one costs a connect per request
                        obj = json.loads(data)
                        if "error" in obj:  # an error after the upstream's headers: the same envelope, in the stream
                            message, code, param = _message(data.encode(), 502)
                            raise UpstreamError(502, f"upstream {rep.url} failed mid-stream: {message}", code=code)
                        usage = obj.get("usage") or usage
                        for ch in obj.get("choices") or []:
                            text = (ch.get("delta") or {}).get("content") if chat else ch.get("text")
                            if text:
                                chunks += 1
                                held.append(Piece(text))
                            if ch.get("finish_reason"):
                                finish = "length" if ch["finish_reason"] == "length" else "stop"
                        if streamed and held:
                            for piece in held:
                                gen.put(piece)
                            shown += len(held)
                            held.clear()
            except httpx.TransportError as e:
                self._down(rep, e)
                failures.append(f"{rep.url}: {type(e).__name__}: {e}")
                if shown:  # part of the answer is out: the rest cannot come from another replica
                    gen.close("error", UpstreamError(502, f"upstream {rep.url} failed mid-stream ({type(e).__name__}"
                                                          f": {e}); the reply is incomplete",
                                                     code="upstream_failed"))
                    return
                self.retries += 1
                continue
            finally:
                rep.outstanding -= 1
            rep.served += 1
            for piece in held:
                gen.put(piece)
            gen.prompt_tokens = (usage or {}).get("prompt_tokens") or 0
            gen.completion_tokens = (usage or {}).get("completion_tokens") or chunks
            gen.close(finish)
            return
        if statuses and len(statuses) == len(failures):  # every replica answered, each with a 5xx
            raise UpstreamError(503, "every upstream is unavailable: " + "; ".join(failures),
                                code="upstream_unavailable")
        raise UpstreamError(502, "no upstream could be reached: " + "; ".join(failures), code="upstream_unreachable")

    # -- relaying bytes -----------------------------------------------------------------------------------------

    async def relay(self, path: str, body: dict, name: str) -> Relayed:
        """Send an OpenAI request body as it came (`model` set to the upstream's id) to /v1`path` on a replica, and
        hand back the upstream's answer as bytes, with its model id renamed to `name`: nothing is parsed or
        re-encoded but the usage chunk. The server relays this way when nothing of its own needs the text (no
        guard, RAG or request log: serve/relay.py). Runs on the caller's event loop.

        Replicas and retries as in `submit`: a request is sent to another replica while nothing reached the caller
        — for a stream, until the upstream's first chunk with text (the chunks before it are held back); for a
        plain request, until the whole body is read. Raises UpstreamError as `submit`'s generations end (a 4xx
        passed on, 502 unreachable, 503 all 5xx). A stream that fails after its first text ends with an `error`
        event. A streamed request always asks the upstream for usage (the server's token counts and limits use
        it); the usage chunk is passed on only when the client asked for it too."""
        session = self._loop_session(asyncio.get_running_loop())
        stream = body.get("stream") is True
        asked = stream and isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage")
        body = {**body, "model": self.upstream_model}
        if stream:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        payload = json.dumps(body, ensure_ascii=False).encode()
        renamed = b'"model":' + json.dumps(name, ensure_ascii=False).encode()
        tried: set[int] = set()
        failures: list[str] = []
        statuses: list[int] = []
        while (rep := self._pick(tried)) is not None:
            rep.outstanding += 1
            r, handed = None, False
            try:
                r = await session.post(rep.url + path, data=payload, headers=JSON)
                if r.status >= 400:
                    message, code, param = _message(await r.read(), r.status)
                    if r.status in RETRY_STATUSES:
                        statuses.append(r.status)
                        failures.append(f"{rep.url} answered {r.status}: {message}")
                        self.retries += 1
                        continue
                    raise UpstreamError(r.status if r.status < 500 else 502, f"upstream {rep.url}: {message}",
                                        code=code, param=param)
                out = Relayed(200, "text/event-stream" if stream else "application/json")
                if not stream:
                    data = await r.read()
                    try:
                        obj = json.loads(data)
                    except ValueError:  # not JSON: passed on as it came
                        obj = None
                    if isinstance(obj, dict):
                        obj["model"] = name
                        out.usage = obj.get("usage") or {}
                        out.text_chunks = len(obj.get("choices") or [])
                        out.first_text = time.perf_counter() if out.text_chunks else None
                        data = json.dumps(obj, ensure_ascii=False).encode()
                    rep.served += 1
                    out.body = _once(data)
                    return out
                held, rest, chunks = [], b"", r.content.iter_any()
                while out.first_text is None:  # held back until the first text: up to there, a failure is retried
                    chunk = await anext(chunks, None)
                    if chunk is None:
                        break
                    part, rest = _lines(rest + chunk)
                    if part:
                        held.append(self._scan(out, part, renamed, not asked))
                out.body = self._relay_rest(out, rep, chunks, held, rest, renamed, not asked)

                async def release(rep: Replica = rep, r=r) -> None:
                    rep.outstanding -= 1
                    r.release()  # back to the pool when read to the end, else its connection is closed

                out._close = release
                handed = True  # `out` now owns the response and the replica's count
                return out
            except RELAY_ERRORS as e:
                self._down(rep, e)
                failures.append(f"{rep.url}: {type(e).__name__}: {e}")
                self.retries += 1
                continue
            finally:
                if not handed:
                    rep.outstanding -= 1
                    if r is not None:
                        r.release()
        if statuses and len(statuses) == len(failures):
            raise UpstreamError(503, "every upstream is unavailable: " + "; ".join(failures),
                                code="upstream_unavailable")
        raise UpstreamError(502, "no upstream could be reached: " + "; ".join(failures), code="upstream_unreachable")

    async def _relay_rest(self, out: Relayed, rep: Replica, chunks, held: list[bytes], rest: bytes,
                          renamed: bytes, drop_usage: bool) -> AsyncIterator[bytes]:
        if held:  # one write to the client, not one per chunk read (each is a send syscall and a wake-up there)
            yield b"".join(held)
        try:
            async for chunk in chunks:
                part, rest = _lines(rest + chunk)
                if part:
                    yield self._scan(out, part, renamed, drop_usage)
        except RELAY_ERRORS as e:
            self._down(rep, e)
            err = UpstreamError(502, f"upstream {rep.url} failed mid-stream ({type(e).__name__}: {e}); the reply "
                                     "is incomplete", code="upstream_failed")
            envelope = {"error": {"message": str(err), "type": err.type, "param": None, "code": err.code}}
            yield b"data: " + json.dumps(envelope).encode() + b"\n\ndata: [DONE]\n\n"
            return
        if rest:
            yield self._scan(out, rest, renamed, drop_usage)
        rep.served += 1

    def _scan(self, out: Relayed, part: bytes, renamed: bytes, drop_usage: bool) -> bytes:
        """Count the text chunks of `part` (whole SSE lines), read a usage chunk (dropped when the client did not
        ask for it), and rename the model."""
        n = len(TEXT.findall(part))
        if n:
            out.text_chunks += n
            if out.first_text is None:
                out.first_text = time.perf_counter()
        if USAGE.search(part):
            lines = part.split(b"\n")
            for i, line in enumerate(lines):
                if line.startswith(b"data:") and USAGE.search(line):
                    try:
                        obj = json.loads(line[5:])
                    except ValueError:
                        continue
                    out.usage = obj.get("usage") or out.usage
                    if drop_usage and not obj.get("choices"):
                        lines[i] = b""  # a blank line more ends no event: clients skip it
            part = b"\n".join(lines)
        return self._model_re.sub(lambda m: renamed, part)

    # -- the rest of the Engine Protocol -------------------------------------------------------------------------

    def format_chat(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        return ChatPrompt(messages, tools)

    def chat(self, messages: list[dict], params: GenParams) -> Iterator[str]:
        for piece in self.submit(self.format_chat(messages), params):
            yield piece.text

    def complete(self, prompt: str, params: GenParams) -> Iterator[str]:
        for piece in self.submit(prompt, params):
            yield piece.text

    def tokenize(self, text: str) -> list[int]:
        raise UnsupportedFeature("the openai upstream engine has no local tokenizer")

    def detokenize(self, tokens: list[int]) -> str:
        raise UnsupportedFeature("the openai upstream engine has no local tokenizer")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if getattr(self, "_health", None) is not None:
            self._health.cancel()
        if getattr(self, "_client", None) is not None:
            try:
                self._call(self._client.aclose(), timeout=10)
            except Exception:  # noqa: BLE001 -- closing: connections the upstream already dropped may fail to close
                pass
        for t in list(self._tasks):
            try:
                t.get_loop().call_soon_threadsafe(t.cancel)
            except RuntimeError:  # its loop is closed: the task went with it
                pass
        for loop, c in [*self._clients.items(), *self._sessions.items()]:  # the server's loop: close there, without
            # waiting (it may be this one); httpx's and aiohttp's clients both close with a coroutine
            closing = c.aclose if hasattr(c, "aclose") else c.close
            try:
                loop.call_soon_threadsafe(lambda closing=closing, loop=loop: loop.create_task(closing()))
            except RuntimeError:  # a loop already closed took its connections with it
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if self._process is not None:
            self._process.stop()
