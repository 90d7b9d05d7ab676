"""What an eval asks questions of: a model in this process (through llmkit's engines) or any OpenAI-compatible
endpoint. Both answer the same two questions, so a task is scored the same way on either:

    generate(messages, max_tokens) -> str                    greedy reply (temperature 0)
    loglikelihood(context, continuation) -> (sum, tokens)     log P(continuation | context) in nats, summed

Log-likelihoods split context and continuation as lm-evaluation-harness does: trailing spaces of the context
move to the continuation, the whole text is tokenized once and the continuation is its tokens past the
context's own tokens (in process), or past the context's characters (an endpoint, which returns each token's
text offset: /v1/completions with echo, logprobs and max_tokens 0, as vLLM and `llmkit serve` answer it).
"""

from __future__ import annotations

from typing import Protocol

from llmkit import artifacts
from llmkit.engines import GenParams, load_engine
from llmkit.errors import LlmkitError, MissingExtra
from llmkit.models import resolve_model


class Target(Protocol):
    name: str
    concurrency: int  # requests in flight at once

    def ref(self) -> dict:
        """The input record for the manifest: path and content hash (an endpoint: its URL and model id)."""
        ...

    def chat_prompt(self, messages: list[dict]) -> str:
        """The prompt text the model's chat template makes of `messages`, ending with the assistant's header."""
        ...

    def generate(self, messages: list[dict], max_tokens: int) -> str: ...

    def loglikelihood(self, context: str, continuation: str) -> tuple[float, int]: ...

    def close(self) -> None: ...


def _split(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's `_encode_pair`: the context's trailing spaces belong to the continuation."""
    n = len(context) - len(context.rstrip())
    return (context[:-n], context[-n:] + continuation) if n else (context, continuation)


class ModelTarget:
    """A model loaded in this process: HF folders and PEFT adapters on transformers, GGUF on llama.cpp."""

    concurrency = 1  # one engine; the transformers engine runs one request at a time anyway

    def __init__(self, spec: str, engine: str = "auto", threads: int | None = None):
        self.model = resolve_model(spec)
        self.name = spec
        self.engine_name = engine if engine != "auto" else ("llamacpp" if self.model.kind == "gguf" else "transformers")
        self._threads = threads
        self._engine = None

    @property
    def engine(self):
        """Loaded on first use: a resumed eval whose items are all cached never loads the model."""
        if self._engine is None:
            self._engine = load_engine(self.engine_name, self.model, **({"n_threads": self._threads} if self._threads else {}))
        return self._engine

    def ref(self) -> dict:
        return {**artifacts.input_ref(self.model.path), "engine": self.engine_name}

    def chat_prompt(self, messages: list[dict]) -> str:
        return self.engine.format_chat(messages)

    def generate(self, messages: list[dict], max_tokens: int) -> str:
        gen = self.engine.submit(self.engine.format_chat(messages), GenParams(max_tokens=max_tokens, temperature=0.0))
        return gen.text()

    def loglikelihood(self, context: str, continuation: str) -> tuple[float, int]:
        context, continuation = _split(context, continuation)
        whole = self.engine.tokenize(context + continuation)
        start = max(len(self.engine.tokenize(context)) if context else 0, 1)  # the first token has no logprob
        if start >= len(whole):
            raise LlmkitError(f"nothing to score: {continuation!r} adds no token to its context")
        gen = self.engine.submit(whole, GenParams(max_tokens=0, prompt_logprobs=0))
        gen.text()
        lps = [p.logprob for p in gen.prompt_logprobs or []]
        return float(sum(lps[start:])), len(whole) - start

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


class EndpointTarget:
    """Any OpenAI-compatible server: chat completions for replies, legacy completions with echo for scores."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, concurrency: int = 8):
        try:
            import openai
        except ImportError:
            raise MissingExtra("evaluating an endpoint uses the openai client: pip install 'llmkit[eval]'") from None
        self.url = url.rstrip("/")
        self.client = openai.OpenAI(base_url=self.url, api_key=api_key or "none", max_retries=2, timeout=600)
        self.concurrency = concurrency
        try:
            self.model = model or self.client.models.list().data[0].id
        except (openai.APIError, IndexError) as e:
            raise LlmkitError(f"{self.url}: cannot list its models (give --endpoint-model): {e}") from None
        self.name = f"{self.url} ({self.model})"

    def ref(self) -> dict:
        # a server's weights cannot be hashed from here: the record names it, and endpoint evals never skip
        return {"path": self.url, "model": self.model, "sha256": artifacts.sha256_json([self.url, self.model])}

    def chat_prompt(self, messages: list[dict]) -> str:
        raise LlmkitError(f"{self.url}: scoring a conversation needs the model's chat template, which an endpoint "
                          "does not expose; use text or prompt + completion perplexity rows, or evaluate the model "
                          "in process (--model)")

    def _call(self, fn, **kw):
        import openai

        try:
            return fn(model=self.model, temperature=0, **kw)
        except openai.APIError as e:
            raise LlmkitError(f"{self.url}: {e}") from None

    def generate(self, messages: list[dict], max_tokens: int) -> str:
        r = self._call(self.client.chat.completions.create, messages=messages, max_tokens=max_tokens)
        return r.choices[0].message.content or ""

    def loglikelihood(self, context: str, continuation: str) -> tuple[float, int]:
        context, continuation = _split(context, continuation)
        r = self._call(self.client.completions.create, prompt=context + continuation, max_tokens=0, echo=True,
                       logprobs=0)
        lp = r.choices[0].logprobs
        if lp is None or not lp.token_logprobs:
            raise LlmkitError(f"{self.url}: the endpoint sent no prompt logprobs (it must support echo with "
                              "logprobs and max_tokens 0, as vLLM and `llmkit serve` do)")
        picked = [v for i, (o, v) in enumerate(zip(lp.text_offset, lp.token_logprobs)) if i > 0 and o >= len(context)]
        if not picked:
            raise LlmkitError(f"nothing to score: {continuation!r} adds no token to its context")
        return float(sum(picked)), len(picked)

    def close(self) -> None:
        self.client.close()

