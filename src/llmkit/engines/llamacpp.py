"""llama.cpp engine (GGUF) with continuous batching, through llama-cpp-python's low-level bindings.

llama-cpp-python's own `Llama` API (and its server) decodes one sequence at a time. Decode on CPU is bound by
memory bandwidth: every step streams all the weights once, whether it advances one sequence or sixteen. So
this engine keeps up to `parallel` sequences in one llama.cpp context and advances all of them with a single
`llama_decode` per step (FACTS.md: 107–122 tok/s for one sequence, 193–235 aggregate for 8–16):

    scheduler thread, forever:
        admit queued requests into free slots (reusing a slot's cached prompt prefix when it shares one)
        one batch = the next token of every decoding sequence + prompt chunks of the ones still prefilling
        llama_decode(batch)
        for every sequence that got logits: sample (llama.cpp's sampler chain, grammar included), detokenize,
        check stop strings / end token / max_tokens, hand the piece to its Generation, free finished slots

A request that asks for its prompt's logprobs (`GenParams.prompt_logprobs`, the completions API's echo) has its
whole prompt computed (no cached prefix) with the logits flag set on every prompt row of the batch; every other
request keeps the usual single logits row per sequence, so the common path costs exactly what it did.

Requests join and leave between steps. Each slot is a llama.cpp sequence with its own KV stream
(`kv_unified=False`): a sequence's output is the same as when it runs alone (with a unified cache greedy
output drifted from batch-1 after ~14 tokens, FACTS.md), at the price of `n_ctx` being per slot.

With `speculative="prompt_lookup"` a sequence that decodes alone also feeds draft tokens found earlier in its own
prompt + reply and keeps those its sampler agrees with (engines/speculative.py): one decode of a few rows gives
several tokens when the reply copies its sources. In a batch of several decoding sequences it drafts nothing:
there the step is no longer bound by streaming the weights, and draft rows would take compute from the others.

LoRA adapters (llama.cpp's GGUF adapter format) are set per context, not per sequence, so a step decodes one
group per adapter in use, switching the context's adapter set between them. A slot's cached prefix is only
reused by a request for the same adapter.
"""

from __future__ import annotations

import codecs
import ctypes
import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmkit.engines.base import Generation, GenParams, Piece, UnsupportedFeature, default_threads
from llmkit.engines.speculative import SPECULATIVE, Drafter
from llmkit.errors import LlmkitError, MissingExtra, UnsupportedModel
from llmkit.models import ModelRef
from llmkit.models import cpu_flags as _cpu_flags


@dataclass
class _Request:
    tokens: list[int]
    params: GenParams
    gen: Generation
    adapter: str | None
    grammar: str | None


@dataclass
class _Slot:
    seq: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV is in this sequence's stream
    adapter: str | None = None
    req: _Request | None = None
    todo: list[int] = field(default_factory=list)  # prompt tokens still to prefill
    sampler: object = None
    decoder: object = None
    held: str = ""  # text held back: it might be the start of a stop string
    n_out: int = 0
    pending: int = -1  # the token sampled last step, fed to the model this step
    scored: tuple[int, int, int] = (0, 0, 0)  # prompt rows scored in this batch: (first batch row, position, count)
    batch_index: int = -1  # where this slot's logits are in the current batch, -1 if none
    drafter: Drafter | None = None  # prompt-lookup drafting (speculative="prompt_lookup")
    draft: list[int] = field(default_factory=list)  # draft tokens fed after `pending` in this batch

    @property
    def busy(self) -> bool:
        return self.req is not None


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def grammar_for(response_format: dict | None) -> str | None:
    """GBNF for OpenAI's response_format: any JSON object, or JSON matching the given schema."""
    if not response_format or response_format.get("type", "text") == "text":
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    kind = response_format.get("type")
    if kind == "json_object":
        return JSON_GBNF
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise UnsupportedFeature("response_format.json_schema.schema must be a JSON Schema object")
        try:
            return json_schema_to_gbnf(json.dumps(schema))
        except Exception as e:  # the converter raises plain exceptions on schema features it lacks
            raise UnsupportedFeature(f"response_format.json_schema.schema: cannot be enforced: {e}") from None
    raise UnsupportedFeature(f"response_format.type must be text, json_object or json_schema, got {kind!r}")


# ggml's names of the x86 instruction sets a CPU build can use, and the /proc/cpuinfo flag of each
_X86 = {"AVX2": "avx2", "FMA": "fma", "F16C": "f16c", "AVX_VNNI": "avx_vnni", "AVX512": "avx512f",
        "AVX512_VBMI": "avx512vbmi", "AVX512_VNNI": "avx512_vnni", "AVX512_BF16": "avx512_bf16",
        "AMX_INT8": "amx_int8"}


def cpu_kernels(system_info: str | None = None, cpu_flags: set[str] | None = None) -> dict:
    """Which instruction sets the loaded llama.cpp CPU backend uses, and which this CPU has that it does not.

    From `llama_print_system_info()` ("CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | ... | REPACK = 1 |") and the CPU's
    flags (/proc/cpuinfo; none elsewhere). A `GGML_NATIVE=OFF` wheel (our setup, README "CPU kernels") reports
    AVX2/FMA/F16C on every x86 box, so an AVX-512 or AMX CPU shows them as unused."""
    if system_info is None:
        try:
            import llama_cpp
        except ImportError:
            return {}
        system_info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    if cpu_flags is None:
        cpu_flags = _cpu_flags()
    cpu = system_info.split("CPU :", 1)[1] if "CPU :" in system_info else system_info
    on = [k.strip() for k, _, v in (f.partition("=") for f in cpu.split("|")) if v.strip() == "1"]
    unused = [name for name, flag in _X86.items() if flag in cpu_flags and name not in on]
    return {"uses": on, "unused": unused}


def cpu_kernels_line(info: dict | None = None) -> str:
    """`cpu_kernels()` in one line, for `llmkit models show` and the server's startup log."""
    info = cpu_kernels() if info is None else info
    if not info:
        return "llama-cpp-python is not installed"
    line = " ".join(info["uses"]) or "none reported"
    if info["unused"]:
        line += f"; this CPU also has {' '.join(info['unused'])}, unused by this build (README: CPU kernels)"
    return line


def new_context(lc, model, *, n_ctx: int, n_seq: int, n_batch: int, threads: int, flash_attn: bool | None = None):
    """A llama.cpp context of `n_seq` sequences × `n_ctx` tokens each (low-level API), shared by this engine and
    the compress report's scorer. `kv_unified=False`: a stream per sequence, so a sequence rounds the same in a
    batch as alone (FACTS). `flash_attn` None keeps llama.cpp's default. The model is freed if it fails."""
    p = lc.llama_context_default_params()
    p.n_ctx = n_ctx * n_seq
    p.n_batch = p.n_ubatch = n_batch
    p.n_seq_max = n_seq
    p.n_threads = p.n_threads_batch = threads
    p.kv_unified = False
    if flash_attn is not None:
        p.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
    p.no_perf = True
    ctx = lc.llama_init_from_model(model, p)
    if not ctx:
        lc.llama_model_free(model)
        raise LlmkitError(f"llama.cpp could not create a context of {n_seq} × {n_ctx} tokens (out of memory?)")
    return ctx


class LlamaCppEngine:
    name = "llamacpp"

    def __init__(self, model: ModelRef, n_ctx: int = 4096, n_threads: int | None = None, seed: int = 0,
                 parallel: int = 1, n_batch: int = 512, speculative: str = "off", draft_tokens: int = 8,
                 draft_ngram: int = 3):
        """`n_ctx` is per sequence; `parallel` sequences decode together (the KV cache is parallel × n_ctx).
        `speculative="prompt_lookup"`: a sequence decoding alone drafts up to `draft_tokens` tokens that followed
        its last `draft_ngram`-gram (or shorter) earlier in the sequence, verified by the model (speculative.py)."""
        if speculative not in SPECULATIVE:
            raise LlmkitError(f"speculative must be one of {', '.join(SPECULATIVE)}, got {speculative!r}")
        if draft_tokens < 1 or draft_ngram < 1:
            raise LlmkitError(f"draft_tokens and draft_ngram must be ≥ 1, got {draft_tokens} and {draft_ngram}")
        self.speculative, self.draft_tokens, self.draft_ngram = speculative, draft_tokens, draft_ngram
        if model.kind == "quantized":
            raise UnsupportedModel(
                f"the llamacpp engine runs GGUF files; '{model.name}' is a transformers int8/int4 export "
                "(optimum-quanto). Use --engine transformers, or export its float source to GGUF with "
                "`llmkit compress --quantize q8_0|q4_k`."
            )
        if model.kind != "gguf":
            what = "a PEFT adapter" if model.kind == "adapter" else "an HF folder"
            raise UnsupportedModel(
                f"the llamacpp engine runs GGUF files; '{model.name}' is {what}. "
                "Use --engine transformers, or export it to GGUF with `llmkit compress`."
            )
        try:
            import llama_cpp as lc
            from llama_cpp import _logger
        except ImportError:
            raise MissingExtra("llama-cpp-python is not installed: pip install llama-cpp-python") from None
        _logger.set_verbose(False)
        self._lc = lc
        self.model = model
        self.seed = seed
        self.parallel = parallel
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        threads = n_threads or default_threads()
        lc.llama_backend_init()
        mparams = lc.llama_model_default_params()
        self._model = lc.llama_model_load_from_file(str(model.path).encode(), mparams)
        if not self._model:
            raise UnsupportedModel(f"llama.cpp could not load {model.path} (not a GGUF model it supports)")
        self._vocab = lc.llama_model_get_vocab(self._model)
        self.n_vocab = lc.llama_vocab_n_tokens(self._vocab)
        self._ctx = new_context(lc, self._model, n_ctx=n_ctx, n_seq=parallel, n_batch=n_batch, threads=threads)
        self._mem = lc.llama_get_memory(self._ctx)
        self._batch = lc.llama_batch_init(n_batch, 0, 1)
        self._piece_buf = ctypes.create_string_buffer(256)
        template = lc.llama_model_chat_template(self._model, None)
        self.chat_template = template.decode() if template else None
        self._bos = self._token_text(lc.llama_vocab_bos(self._vocab))
        self._eos = self._token_text(lc.llama_vocab_eos(self._vocab))
        self._slots = [_Slot(seq=i) for i in range(parallel)]
        self._adapters: dict[str, object] = {}  # name → llama_adapter_lora pointer
        self._active_adapter: str | None = None
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards adapter loading against the scheduler's use of them
        self._closed = False
        # counters for /metrics and the tests: prompt tokens computed vs. served from a slot's cached prefix
        # and draft tokens fed vs. accepted (speculative decoding)
        self.stats = {"prompt_tokens_computed": 0, "prompt_tokens_reused": 0, "decode_calls": 0, "max_batch_seqs": 0,
                      "draft_tokens": 0, "draft_accepted": 0}
        self._thread = threading.Thread(target=self._run, daemon=True, name="llmkit-llamacpp")
        self._thread.start()

    # -- the Engine Protocol --
    def format_chat(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        if not self.chat_template:
            raise UnsupportedModel(f"{self.model.name} has no chat template; use /v1/completions")
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        # transformers' rendering environment: tool templates use `tojson` with indent and `{% break %}`
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = lambda x, indent=None, separators=None, sort_keys=False: json.dumps(
            x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)
        extra = {"tools": tools} if tools else {}
        return env.from_string(self.chat_template).render(messages=messages, add_generation_prompt=True,
                                                          bos_token=self._bos, eos_token=self._eos, **extra)

    def tokenize(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        buf = (self._lc.llama_token * (len(data) + 8))()
        n = self._lc.llama_tokenize(self._vocab, data, len(data), buf, len(buf), False, True)
        if n < 0:
            raise LlmkitError(f"llama.cpp could not tokenize {len(data)} bytes")
        return list(buf[:n])

    def detokenize(self, tokens: list[int]) -> str:
        buf = ctypes.create_string_buffer(256)  # its own: the scheduler thread uses _piece_buf meanwhile
        out = b""
        for t in tokens:
            n = self._lc.llama_token_to_piece(self._vocab, t, buf, len(buf), 0, True)
            out += buf.raw[:n] if n > 0 else b""
        return out.decode("utf-8", errors="replace")

    def submit(self, prompt: str | list[int], params: GenParams, adapter: str | None = None) -> Generation:
        if self._closed:
            raise LlmkitError("the engine is shut down")
        if adapter is not None and adapter not in self._adapters:
            raise UnsupportedFeature(f"adapter '{adapter}' is not loaded")
        tokens = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        if not tokens:
            raise LlmkitError("the prompt is empty")
        if not all(0 <= t < self.n_vocab for t in tokens):
            raise LlmkitError(f"the prompt has token ids outside the vocabulary (0 to {self.n_vocab - 1})")
        if len(tokens) + params.max_tokens > self.n_ctx:
            raise LlmkitError(f"prompt ({len(tokens)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                              f"context of {self.n_ctx} tokens")
        req = _Request(tokens, params, Generation(prompt_tokens=len(tokens)), adapter,
                       grammar_for(params.response_format))
        self._queue.put(req)
        return req.gen

    def chat(self, messages: list[dict], params: GenParams) -> Iterator[str]:
        for piece in self.submit(self.format_chat(messages), params):
            if piece.text:
                yield piece.text

    def complete(self, prompt: str, params: GenParams) -> Iterator[str]:
        for piece in self.submit(prompt, params):
            if piece.text:
                yield piece.text

    def load_adapter(self, name: str, path: Path, scale: float = 1.0) -> None:
        """Load a LoRA adapter in llama.cpp's GGUF adapter format (see compress.lora_gguf) onto the base."""
        with self._lock:
            if name in self._adapters:
                return
            ptr = self._lc.llama_adapter_lora_init(self._model, str(path).encode())
            if not ptr:
                raise UnsupportedModel(f"llama.cpp could not load the LoRA adapter {path} for {self.model.name}")
            self._adapters[name] = (ptr, scale)

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            if name in self._adapters and not any(s.busy and s.adapter == name for s in self._slots):
                ptr, _ = self._adapters.pop(name)
                if self._active_adapter == name:
                    self._set_adapter(None)
                for s in self._slots:  # their cached KV was computed with this adapter
                    if s.adapter == name:
                        s.cached, s.adapter = [], None
                self._lc.llama_adapter_lora_free(ptr)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=30)
        lc = self._lc
        lc.llama_batch_free(self._batch)
        lc.llama_free(self._ctx)
        lc.llama_model_free(self._model)

    # -- the scheduler (its own thread; everything below touches llama.cpp state only from there) --
    def _run(self) -> None:
        waiting: list[_Request] = []
        while True:
            busy = any(s.busy for s in self._slots)
            try:  # block only when there is nothing to do
                item = self._queue.get(block=not busy and not waiting)
                while True:
                    if item is None:
                        self._fail_all(waiting, "the engine is shutting down")
                        return
                    waiting.append(item)
                    item = self._queue.get_nowait()
            except queue.Empty:
                pass
            waiting = self._admit(waiting)
            try:
                self._step()
            except Exception as e:  # a llama.cpp failure ends the requests in flight, not the engine
                for s in self._slots:
                    if s.busy:
                        self._finish(s, "error", e)

    def _fail_all(self, waiting: list[_Request], why: str) -> None:
        for r in waiting:
            r.gen.close("error", LlmkitError(why))
        for s in self._slots:
            if s.busy:
                self._finish(s, "cancelled")

    def _admit(self, waiting: list[_Request]) -> list[_Request]:
        rest = []
        for req in waiting:
            if req.gen.cancelled.is_set():
                req.gen.close("cancelled")
                continue
            free = [s for s in self._slots if not s.busy]
            if not free:
                rest.append(req)
                continue
            # the free slot whose cached tokens share the longest prefix with this prompt (same adapter)
            slot = max(free, key=lambda s: _common_prefix(s.cached, req.tokens) if s.adapter == req.adapter else -1)
            keep = _common_prefix(slot.cached, req.tokens) if slot.adapter == req.adapter else 0
            keep = min(keep, len(req.tokens) - 1)  # at least one prompt token must run to get logits
            if req.params.prompt_logprobs is not None:  # every prompt position's logits are needed: none cached
                keep = 0
                first = req.tokens[0]  # nothing precedes it: no logprob (OpenAI and vLLM send null)
                req.gen.prompt_logprobs = [Piece(self._token_text(first), token=first, token_text=self._token_text(first))]
            try:  # a request that cannot start (llama.cpp refused its grammar) fails alone, the engine goes on
                sampler = self._sampler(req)
            except Exception as e:
                req.gen.close("error", e)
                continue
            self._lc.llama_memory_seq_rm(self._mem, slot.seq, keep, -1)
            slot.cached = req.tokens[:keep]
            slot.todo = req.tokens[keep:]
            self.stats["prompt_tokens_reused"] += keep
            self.stats["prompt_tokens_computed"] += len(slot.todo)
            slot.adapter, slot.req = req.adapter, req
            slot.sampler = sampler
            slot.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            slot.held, slot.n_out = "", 0
            slot.drafter = (Drafter(self.draft_tokens, self.draft_ngram) if self.speculative == "prompt_lookup"
                            else None)
        return rest

    def _sampler(self, req: _Request):
        lc, p = self._lc, req.params
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if req.grammar:
            g = lc.llama_sampler_init_grammar(self._vocab, req.grammar.encode(), b"root")
            if not g:
                lc.llama_sampler_free(chain)
                raise UnsupportedFeature("llama.cpp rejected the grammar made from response_format")
            lc.llama_sampler_chain_add(chain, g)
        if p.temperature <= 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        else:
            if p.top_p < 1.0:
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(p.top_p, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(p.temperature))
            seed = p.seed if p.seed is not None else (self.seed + int(time.time_ns() & 0x7FFFFFFF))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _set_adapter(self, name: str | None) -> None:
        lc = self._lc
        if name is None:
            lc.llama_set_adapters_lora(self._ctx, None, 0, None)
        else:
            ptr, scale = self._adapters[name]
            lc.llama_set_adapters_lora(self._ctx, (lc.llama_adapter_lora_p_ctypes * 1)(ptr), 1,
                                       (ctypes.c_float * 1)(scale))
        self._active_adapter = name

    def _step(self) -> None:
        for s in self._slots:  # a client that went away frees its slot before the next decode
            if s.busy and s.req.gen.cancelled.is_set():
                self._finish(s, "cancelled")
        active = [s for s in self._slots if s.busy]
        if not active:
            return
        with self._lock:
            for adapter in dict.fromkeys(s.adapter for s in active):  # one decode per adapter in use
                if adapter != self._active_adapter:
                    self._set_adapter(adapter)
                self._decode_group([s for s in active if s.adapter == adapter])

    def _decode_group(self, slots: list[_Slot]) -> None:
        lc, b = self._lc, self._batch
        n = 0
        # decoding sequences first: one token each (plus drafts when one decodes alone); then prompt chunks in the
        # room that is left
        decoding = sum(1 for s in slots if not s.todo)
        for s in sorted(slots, key=lambda s: bool(s.todo)):
            s.batch_index = -1
            s.scored = (0, 0, 0)
            s.draft = []
            room = self.n_batch - n
            if room <= 0:
                break
            if not s.todo and s.drafter is not None and decoding == 1:
                # at most the tokens still allowed after `pending`'s successor, and what fits in the batch
                limit = min(room - 1, s.req.params.max_tokens - s.n_out - 1)
                s.draft = s.drafter.propose(s.cached + [s.pending], limit)
            chunk = s.todo[:room] if s.todo else [s.pending, *s.draft]
            score = bool(s.todo) and s.req.params.prompt_logprobs is not None  # logits for every prompt row
            if score:
                s.scored = (n, len(s.cached), len(chunk))
            for j, tok in enumerate(chunk):
                b.token[n] = tok
                b.pos[n] = len(s.cached) + j
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = s.seq
                b.logits[n] = score
                n += 1
            s.cached.extend(chunk)  # (a slice of the request's tokens, owned by the slot)
            if s.todo:
                s.todo = s.todo[len(chunk):]
            if s.draft:  # every row's logits: row i checks draft i (and the last row gives one more token)
                for i in range(n - len(chunk), n):
                    b.logits[i] = 1
                s.batch_index = n - len(chunk)
            elif not s.todo:  # the last prompt token, or a generated one: its logits pick the next token
                b.logits[n - 1] = 1
                s.batch_index = n - 1
        if n == 0:
            return
        b.n_tokens = n
        self.stats["decode_calls"] += 1
        self.stats["max_batch_seqs"] = max(self.stats["max_batch_seqs"], len(slots))
        rc = lc.llama_decode(self._ctx, b)
        if rc != 0:
            raise LlmkitError(f"llama_decode failed ({rc}): the KV cache is full or the batch is invalid")
        for s in slots:
            if s.scored[2]:
                self._score_prompt(s)
            if s.draft:
                self._verify(s)
            elif s.batch_index >= 0:
                self._emit(s, s.batch_index)

    def _verify(self, s: _Slot) -> None:
        """Sample row by row, as `_emit` would step by step, while each sample equals the next draft token; then
        drop the rejected drafts' KV, so the slot's cache holds exactly the tokens it has emitted and fed."""
        draft, drafter, first = s.draft, s.drafter, s.batch_index
        accepted = 0
        for i in range(len(draft) + 1):
            token = self._emit(s, first + i)
            if token is None or i == len(draft) or token != draft[i]:
                break
            accepted += 1
        rejected = len(draft) - accepted
        if rejected:
            self._lc.llama_memory_seq_rm(self._mem, s.seq, len(s.cached) - rejected, -1)
            del s.cached[-rejected:]
        drafter.update(len(draft), accepted)
        self.stats["draft_tokens"] += len(draft)
        self.stats["draft_accepted"] += accepted
        s.draft = []

    def _logprob(self, idx: int, token: int, k: int) -> tuple[float, list[tuple[str, float]] | None]:
        """log p(token) under batch row `idx`'s logits, and the k most likely tokens' (None when k is 0)."""
        logits = np.ctypeslib.as_array(self._lc.llama_get_logits_ith(self._ctx, idx), shape=(self.n_vocab,))
        m = logits.max()
        logz = m + np.log(np.exp(logits - m).sum())
        top = None
        if k > 0:
            best = np.argpartition(-logits, k)[:k]
            best = best[np.argsort(-logits[best])]
            top = [(self._token_text(int(t)), float(logits[t] - logz)) for t in best]
        return float(logits[token] - logz), top

    def _score_prompt(self, s: _Slot) -> None:
        """The logprobs of the prompt tokens that this batch's rows predict: the row at position i scores token i+1
        (the last prompt row's logits pick the first new token instead, in `_emit`)."""
        row, pos, count = s.scored
        tokens, k = s.req.tokens, s.req.params.prompt_logprobs
        for j in range(count):
            if pos + j + 1 < len(tokens):
                token = tokens[pos + j + 1]
                logprob, top = self._logprob(row + j, token, k)
                text = self._token_text(token)
                s.req.gen.prompt_logprobs.append(Piece(text, token=token, logprob=logprob, top_logprobs=top,
                                                       token_text=text))

    def _emit(self, s: _Slot, idx: int) -> int | None:
        """Sample the next token from batch row `idx` and hand out its text; the token, or None if it ended the
        generation."""
        lc, req = self._lc, s.req
        p = req.params
        if p.max_tokens == 0:  # only the prompt was wanted (scored in `_score_prompt`)
            self._finish(s, "length")
            return None
        token = lc.llama_sampler_sample(s.sampler, self._ctx, idx)
        logprob = top = None
        if p.logprobs is not None:
            logprob, top = self._logprob(idx, token, p.logprobs)
        s.n_out += 1
        req.gen.completion_tokens = s.n_out
        if lc.llama_vocab_is_eog(self._vocab, token):  # like OpenAI, the end token is not part of the reply
            self._flush(s, None, None, None, final=True)
            self._finish(s, "stop")
            return None
        s.pending = token
        text = s.decoder.decode(self._token_bytes(token))
        stopped = self._flush(s, token, logprob, top, new=text)
        if stopped:
            self._finish(s, "stop")
            return None
        if s.n_out >= p.max_tokens:
            self._flush(s, None, None, None, final=True)
            self._finish(s, "length")
            return None
        return token

    def _flush(self, s: _Slot, token, logprob, top, new: str = "", final: bool = False) -> bool:
        """Hand out the text that can no longer be part of a stop string; True when a stop string matched."""
        held = s.held + new
        stops = s.req.params.stop
        cut = min((i for i in (held.find(x) for x in stops if x) if i >= 0), default=-1)
        if cut >= 0:
            out, s.held = held[:cut], ""
        elif final or not stops:
            out, s.held = held, ""
        else:  # keep the longest tail that a stop string starts with
            keep = max((k for x in stops for k in range(1, min(len(x), len(held)) + 1) if held.endswith(x[:k])),
                       default=0)
            out, s.held = held[: len(held) - keep], held[len(held) - keep:]
        if token is not None or out:
            text = self._token_text(token) if logprob is not None else None  # only logprobs show a token's text
            s.req.gen.put(Piece(out, token=token, logprob=logprob, top_logprobs=top, token_text=text))
        return cut >= 0

    def _finish(self, s: _Slot, reason: str, error: BaseException | None = None) -> None:
        req = s.req
        if s.sampler is not None:
            self._lc.llama_sampler_free(s.sampler)
        if error is not None:  # after a failed decode the sequence's KV is unknown: start it afresh
            self._lc.llama_memory_seq_rm(self._mem, s.seq, 0, -1)
            s.cached = []
        s.req, s.sampler, s.todo, s.held, s.batch_index = None, None, [], "", -1
        req.gen.close(reason, error)

    def _token_bytes(self, token: int) -> bytes:
        n = self._lc.llama_token_to_piece(self._vocab, token, self._piece_buf, len(self._piece_buf), 0, False)
        return self._piece_buf.raw[:n] if n > 0 else b""

    def _token_text(self, token: int) -> str:
        n = self._lc.llama_token_to_piece(self._vocab, token, self._piece_buf, len(self._piece_buf), 0, True)
        return self._piece_buf.raw[:n].decode("utf-8", errors="replace") if n > 0 else ""
