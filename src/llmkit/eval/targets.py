"""What an eval asks questions of: a model in this process (through llmkit's engines) or any OpenAI-compatible
endpoint. Both answer the same two questions, so a task is scored the same way on either:

    generate(messages, max_tokens) -> str                    greedy reply (temperature 0)
    loglikelihood(context, continuation) -> (sum, tokens)     log P(continuation | context) in nats, summed

and, where it pays, several at once: `loglikelihood_many` (ModelTarget: packed forward passes) and
`generate_many` (ModelTarget on transformers: one batched `generate`; llama.cpp already batches the requests
of its `concurrency` threads, an endpoint its in-flight requests).

Log-likelihoods split context and continuation as lm-evaluation-harness does: trailing spaces of the context
move to the continuation, the whole text is tokenized once and the continuation is its tokens past the
context's own tokens (in process), or past the context's characters (an endpoint, which returns each token's
text offset: /v1/completions with echo, logprobs and max_tokens 0, as vLLM and `llmkit serve` answer it).
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Protocol

from llmkit import artifacts
from llmkit.engines import GenParams, load_engine
from llmkit.errors import LlmkitError, MissingExtra, UnsupportedModel
from llmkit.eval.packing import packed_loglikelihoods
from llmkit.models import ModelRef, resolve_model


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
    """A model loaded in this process: HF folders and PEFT adapters on transformers, GGUF on llama.cpp.

    On llama.cpp, `PARALLEL` sequences decode in one batch (engines/llamacpp.py), so the eval runs that many items
    at once (`concurrency`); transformers runs one request at a time, so there it is 1. `generate_engine`
    llamacpp moves only the replies to llama.cpp (a PEFT adapter as a llama.cpp LoRA on its base's GGUF, an HF
    folder converted from a GGUF on that GGUF) while log-likelihoods stay on `engine`."""

    PARALLEL = 8  # llama.cpp sequences decoded together: 3.5-4x one sequence's tokens/s on 2 cores (FACTS.md)
    # generate items the runner hands to generate_many at once on transformers: a decode step's cost is mostly
    # per-step overhead, so 12 replies of 96 tokens (the example's) took 9.5 s in one batch against 17-18 s as 8 + 4
    GEN_BATCH = 16
    N_CTX = 2048  # tokens per llama.cpp sequence (`llmkit serve`'s default): KV cache PARALLEL x N_CTX

    def __init__(self, spec: str, engine: str = "auto", threads: int | None = None, generate_engine: str = "auto"):
        self.model = resolve_model(spec)
        self.name = spec
        self.engine_name = engine if engine != "auto" else ("llamacpp" if self.model.kind == "gguf" else "transformers")
        self.generate_engine = self.engine_name if generate_engine == "auto" else generate_engine
        self.concurrency = self.PARALLEL if self.generate_engine == "llamacpp" else 1
        # transformers answers one request at a time, so the runner batches its generate items (generate_many);
        # on llama.cpp the `concurrency` threads' requests share the engine's batches already
        self.generate_batch = self.GEN_BATCH if self.generate_engine == "transformers" else 1
        self._threads = threads
        self._engines: dict[str, object] = {}
        self._adapter: dict[str, str | None] = {}  # engine name -> the LoRA adapter name requests carry there
        # one lock per engine: the eval's worker threads load it once, and on transformers take turns (its
        # tokenizer and the forward passes of loglikelihood_many run in the caller's thread; HF's Rust tokenizer
        # refuses two threads at once). llama.cpp's submit only queues: its scheduler thread batches.
        self._locks = {"transformers": threading.RLock(), "llamacpp": threading.RLock()}

    def _load(self, name: str):
        """The engine `name`, loaded on first use: a resumed eval whose items are all cached never loads it."""
        with self._locks[name]:
            if name not in self._engines:
                opts = {"n_threads": self._threads} if self._threads else {}
                if name == "llamacpp":
                    model, adapter = _on_gguf(self.model)
                    engine = load_engine(name, model, parallel=self.PARALLEL, n_ctx=self.N_CTX, **opts)
                    if adapter is not None:
                        from llmkit.compress.lora_gguf import adapter_gguf

                        engine.load_adapter("eval", adapter_gguf(adapter, base=model.path))
                    self._adapter[name] = "eval" if adapter is not None else None
                else:
                    engine = load_engine(name, self.model, **opts)
                    self._adapter[name] = None
                self._engines[name] = engine
            return self._engines[name]

    @property
    def engine(self):
        """The engine that scores (log-likelihoods, chat templates)."""
        return self._load(self.engine_name)

    def _turn(self, name: str):
        """Held while using engine `name` from this thread: transformers one caller at a time, llama.cpp free."""
        return self._locks[name] if name == "transformers" else contextlib.nullcontext()

    def ref(self) -> dict:
        ref = {**artifacts.input_ref(self.model.path), "engine": self.engine_name}
        return ref if self.generate_engine == self.engine_name else {**ref, "generate_engine": self.generate_engine}

    def chat_prompt(self, messages: list[dict]) -> str:
        engine = self.engine
        with self._turn(self.engine_name):
            return engine.format_chat(messages)

    def generate(self, messages: list[dict], max_tokens: int) -> str:
        name = self.generate_engine
        engine = self._load(name)
        with self._turn(name):
            gen = engine.submit(engine.format_chat(messages), GenParams(max_tokens=max_tokens, temperature=0.0),
                                adapter=self._adapter[name])
        return gen.text()  # waited for outside the turn: llama.cpp batches the requests of other threads meanwhile

    def generate_many(self, conversations: list[list[dict]], max_tokens: int) -> list[str]:
        """`generate` of each conversation, on transformers as one batched `generate` (one decode step advances
        every reply: ~4.8x the replies/s of one at a time for 8 on the 135M model, 2 threads); greedy replies
        equal one at a time up to float rounding (tests/eval/test_batched_generate.py)."""
        name = self.generate_engine
        engine = self._load(name)
        with self._turn(name):
            prompts = [engine.format_chat(m) for m in conversations]
            if name == "transformers":
                return engine.generate_many(prompts, GenParams(max_tokens=max_tokens, temperature=0.0))
            gens = [engine.submit(p, GenParams(max_tokens=max_tokens, temperature=0.0), adapter=self._adapter[name])
                    for p in prompts]
        return [g.text() for g in gens]

    def _encode(self, context: str, continuation: str) -> tuple[list[int], int]:
        """(the whole text's tokens, the index of the first continuation token), lm-eval's split."""
        context, continuation = _split(context, continuation)
        whole = self.engine.tokenize(context + continuation)
        start = max(len(self.engine.tokenize(context)) if context else 0, 1)  # the first token has no logprob
        if start >= len(whole):
            raise LlmkitError(f"nothing to score: {continuation!r} adds no token to its context")
        return whole, start

    def loglikelihood(self, context: str, continuation: str) -> tuple[float, int]:
        engine = self.engine
        with self._turn(self.engine_name):
            whole, start = self._encode(context, continuation)
            gen = engine.submit(whole, GenParams(max_tokens=0, prompt_logprobs=0), adapter=self._adapter[self.engine_name])
            gen.text()
        lps = [p.logprob for p in gen.prompt_logprobs or []]
        return float(sum(lps[start:])), len(whole) - start

    def loglikelihood_many(self, requests: list[tuple[str, str]]) -> list[tuple[float, int]]:
        """`loglikelihood` of each (context, continuation), computed together: on transformers packed into few
        forward passes, each shared context (a choice item's question) computed once (eval/packing.py);
        on llama.cpp all submitted at once, so the engine decodes them in one batch. Equal to asking one at a
        time up to float rounding (tests/eval/test_batched_scores.py checks 1e-4)."""
        engine = self.engine
        with self._turn(self.engine_name):
            encoded = [self._encode(c, x) for c, x in requests]
            if self.engine_name == "transformers":
                return packed_loglikelihoods(engine.lm, encoded, [c for c, _ in requests])
            gens = [engine.submit(whole, GenParams(max_tokens=0, prompt_logprobs=0), adapter=self._adapter[self.engine_name])
                    for whole, _ in encoded]
        out = []
        for gen, (whole, start) in zip(gens, encoded):
            gen.text()
            lps = [p.logprob for p in gen.prompt_logprobs or []]
            out.append((float(sum(lps[start:])), len(whole) - start))
        return out

    def close(self) -> None:
        for name in list(self._engines):
            self._engines.pop(name).close()


def _on_gguf(model: ModelRef) -> tuple[ModelRef, Path | None]:
    """What llama.cpp runs for `model`: (a GGUF, the PEFT adapter folder to apply as a LoRA on it, or None). A GGUF
    is itself; an HF folder that llmkit converted from a GGUF is that GGUF (its llmkit_source.json names it); an
    adapter runs on its base's GGUF, found the same way."""
    adapter = model.path if model.kind == "adapter" else None
    base = resolve_model(model.base) if model.kind == "adapter" else model
    if base.kind == "gguf":
        return base, adapter
    source = base.path / "llmkit_source.json" if base.kind == "hf" else None
    gguf = json.loads(source.read_text()).get("gguf") if source is not None and source.is_file() else None
    if gguf and Path(gguf).is_file():
        return resolve_model(gguf), adapter
    what = f"{model.name} is an adapter on {base.name}, which" if adapter else f"{model.name}"
    raise UnsupportedModel(f"the llamacpp engine runs GGUF files: {what} is not a GGUF nor converted from one; "
                           "export it with `llmkit compress --quantize q8_0`, or use the transformers engine")


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

