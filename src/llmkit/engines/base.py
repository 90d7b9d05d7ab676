"""What every engine shares: generation parameters, the streamed pieces, the Engine Protocol.

Below engines/__init__ (the registry) and the engines themselves, which all import it; nothing here imports an
engine, so there is no circle between the registry and what it loads.
"""

from __future__ import annotations

import asyncio
import queue
import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from llmkit.errors import LlmkitError
from llmkit.models import ModelRef, default_threads  # noqa: F401  (re-exported: the engines' callers import it here)


@dataclass
class GenParams:
    max_tokens: int = 256  # 0: generate nothing (with prompt_logprobs: only score the prompt)
    temperature: float = 0.0  # 0 = greedy: reproducible, and what the agreement tests compare
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None  # None: none; 0: the sampled token's; k: also the k most likely tokens'
    # the prompt's own tokens scored too (vLLM's `prompt_logprobs`; /v1/completions' echo + logprobs): None: not
    # computed (the fast path); k: each prompt token's logprob and the k most likely tokens at its position
    prompt_logprobs: int | None = None
    response_format: dict | None = None  # OpenAI's {"type": "json_object"} or {"type": "json_schema", ...}
    # False: the caller shows nothing until the generation ends (a non-streaming request), so an engine that can
    # (the openai upstream engine) may start it again on another replica after a failure mid-way
    streamed: bool = True


def template_uses_tools(template: str | None) -> bool:
    """Whether a chat template renders a `tools` list (Hermes, Qwen 2.5, Llama 3.1 ones do; plain ChatML ones such
    as SmolLM2's do not), by jinja's own parse of the variables it reads."""
    if not template:
        return False
    from jinja2 import TemplateSyntaxError, meta
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        ast = ImmutableSandboxedEnvironment(extensions=[loopcontrols]).parse(template)
    except TemplateSyntaxError:  # tags of transformers' own ({% generation %}): the variable by name, then
        return re.search(r"\btools\b", template) is not None
    return "tools" in meta.find_undeclared_variables(ast)


class UnsupportedFeature(LlmkitError):
    """The engine cannot honour a request parameter (e.g. constrained decoding on transformers)."""


class UpstreamError(LlmkitError):
    """An upstream server (the openai engine) refused or failed a request: its 4xx passed on with its message,
    or 502 (unreachable, failed mid-stream) / 503 (every replica answered 5xx), naming the upstream."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.http_status, self.code, self.param = status, code, param
        self.type = "invalid_request_error" if status < 500 else "server_error"


@dataclass
class Piece:
    """One step of a generation: the text it adds (may be empty while a UTF-8 character or a possible stop
    string is held back) and, when asked for, the sampled token's log-probability and the top alternatives."""

    text: str
    token: int | None = None
    logprob: float | None = None
    top_logprobs: list[tuple[str, float]] | None = None
    token_text: str | None = None  # the sampled token's own text (`text` may hold part of it back)


_END = object()


class Generation:
    """A running request. Iterate it (plain `for` in a thread, `async for` in the server) for `Piece`s;
    `cancel()` stops it at the next step (a client that disconnected). After the last piece, `finish_reason`
    is "stop" (end token or stop string), "length" (max_tokens) or "cancelled", and the token counts are final.
    With `GenParams.prompt_logprobs`, `prompt_logprobs` then holds one Piece per prompt token (the first one's
    logprob is None: nothing precedes it), set by the engine before it closes the generation.

    Engines produce into it from their own thread with `put` and `close`; it is the only object that crosses
    from an engine's thread into the server's event loop.
    """

    def __init__(self, prompt_tokens: int = 0):
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.prompt_logprobs: list[Piece] | None = None
        self.error: BaseException | None = None
        self.cancelled = threading.Event()
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    # -- producer side (engine thread) --
    def put(self, piece: Piece) -> None:
        self._q.put(piece)
        self._notify()

    def close(self, finish_reason: str, error: BaseException | None = None) -> None:
        self.finish_reason = finish_reason
        self.error = error
        self._q.put(_END)
        self._notify()

    def _notify(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
                self.cancelled.set()

    # -- consumer side --
    def cancel(self) -> None:
        self.cancelled.set()

    def __iter__(self) -> Iterator[Piece]:
        while (item := self._q.get()) is not _END:
            yield item
        if self.error is not None:
            raise self.error

    async def __aiter__(self) -> AsyncIterator[Piece]:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()  # set after _wake: the producer checks both
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                await self._wake.wait()
                self._wake.clear()
                continue
            if item is _END:
                break
            yield item
        if self.error is not None:
            raise self.error

    def text(self) -> str:
        """Block until done and return the whole text (tests, batch jobs)."""
        return "".join(p.text for p in self)


class Engine(Protocol):
    name: str
    model: ModelRef
    n_vocab: int  # token ids run from 0 to n_vocab - 1
    chat_template: str | None  # the jinja source of the model's chat template, None if it has none

    def format_chat(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        """The prompt text the model's chat template makes of `messages`, ending with the assistant's header.
        `tools` (OpenAI's function tools) go to the template's `tools` variable, for templates that use it."""
        ...

    def submit(self, prompt: str | list[int], params: GenParams, adapter: str | None = None) -> Generation:
        """Start generating from `prompt`, text (special-token text is parsed) or token ids, and return at once. Engines that batch
        run many submitted generations together; others queue them. `adapter` names a loaded LoRA adapter.
        Raises UnsupportedFeature for parameters the engine cannot honour, before anything starts."""
        ...

    def chat(self, messages: list[dict], params: GenParams) -> Iterator[str]:
        """Apply the model's chat template and stream the reply's text pieces."""
        ...

    def complete(self, prompt: str, params: GenParams) -> Iterator[str]:
        """Stream a raw continuation of `prompt` (no template)."""
        ...

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, with no BOS added; special-token text such as `<|im_end|>` maps to its id."""
        ...

    def detokenize(self, tokens: list[int]) -> str:
        """The text of token ids (special tokens written out), the inverse of `tokenize`."""
        ...

    def close(self) -> None: ...


