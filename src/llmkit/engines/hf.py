"""transformers engine: HF folders (and, through `hf_folder`, GGUFs converted to float weights), and the
weight-only int8/int4 exports of `llmkit compress --quantize int8|int4` (optimum-quanto, `load_quantized`).

Slower than llama.cpp on CPU (5–13 tok/s at batch 1, mostly Python overhead) but runs any transformers model,
and is the engine that sees PEFT adapters and fine-tuned folders before they are exported.

A request that wants logprobs (of its new tokens, or of its prompt's: the completions API's echo) runs through
`_scored`, a plain token-by-token loop on the KV cache whose first step is one forward pass over the prompt, so
every prompt position's logits come from the same pass; the others keep `generate` and its streamer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

from llmkit.engines.base import Generation, GenParams, Piece, UnsupportedFeature, default_threads
from llmkit.errors import LlmkitError, MissingExtra
from llmkit.models import ModelRef, hf_folder


def load_quantized(folder: Path):
    """A weight-only int8/int4 export: optimum-quanto's documented reload (its safetensors, `quanto_qmap.json`
    and `requantize`; a local folder, no hub). The float parts keep the dtype the export recorded (bf16).

    The result wraps the transformers model: calling it, `generate` and `config` reach the model underneath."""
    try:
        from optimum.quanto import QuantizedModelForCausalLM
    except ImportError:
        raise MissingExtra(f"{folder} is an optimum-quanto int8/int4 export: pip install 'llmkit[quant]'") from None
    qmodel = QuantizedModelForCausalLM.from_pretrained(str(folder))
    safe_int8_kernels(qmodel)
    return qmodel


# torch's CPU kernel behind quanto's bf16 x int8 matmul (`torch._weight_int8pack_mm`, aten/src/ATen/native/cpu/
# int8mm_kernel.cpp) reads with aligned SIMD loads and no tail loop. On AVX-512 CPUs (where torch dispatches to
# its AVX512 variant) it needs each activation row 32-byte aligned, each int8 weight row 16-byte aligned and the
# width a multiple of 16, and dies with SIGSEGV otherwise; its AVX2 variant needs 16-byte activation rows, width a
# multiple of 8, and loads weights unaligned. quanto checks only `in_features % 4`, and the int8 weights it
# reloads from safetensors sit in storage that is 8 mod 64 bytes aligned: the crash of `compress --quantize int8`
# and of its test on AVX-512/AMX boxes. Rows are `width` elements apart, so an aligned start and a width that is a
# multiple of 16 keep every row aligned.
_ALIGN = 64  # bytes: what torch's own CPU allocator gives every new tensor
_INT8_WIDTH = 16  # in_features that keep the AVX512 kernel's rows aligned and its k-loop (step 16) in bounds


def _aligned(t):
    """`t` (contiguous) itself, or a copy in new, aligned storage."""
    return t if t.data_ptr() % _ALIGN == 0 else t.clone()


def safe_int8_kernels(model) -> int:
    """Make every int8 linear layer of a quanto model safe for torch's CPU int8 kernel (see above): weights moved to
    aligned storage, activations that arrive misaligned copied (a 64-byte check per call; copies only when
    needed), and layers whose width the kernel cannot take sent through quanto's dequantizing matmul instead (fp32
    input: slower, never wrong). Returns how many layers were rerouted that way."""
    import torch

    rerouted = 0
    for module in model.modules():
        w = getattr(module, "weight", None)
        if type(w).__name__ != "WeightQBytesTensor" or w._data.dtype != torch.int8:
            continue
        w._data = _aligned(w._data)
        if module.in_features % _INT8_WIDTH:
            module.register_forward_pre_hook(lambda m, args: (args[0].float(), *args[1:]))
            rerouted += 1
        else:
            module.register_forward_pre_hook(lambda m, args: (_aligned(args[0].contiguous()), *args[1:]))
    return rerouted


def _sampling(params: GenParams) -> dict:
    """`generate`'s length and sampling arguments for `params` (greedy at temperature 0); seeds torch's RNG when
    the request has a seed."""
    if params.temperature <= 0:
        return {"max_new_tokens": params.max_tokens, "do_sample": False}
    if params.seed is not None:
        import torch

        torch.manual_seed(params.seed)
    return {"max_new_tokens": params.max_tokens, "do_sample": True, "temperature": params.temperature,
            "top_p": params.top_p}


class TransformersEngine:
    name = "transformers"

    def __init__(self, model: ModelRef, n_threads: int | None = None, dtype: str = "float32"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(n_threads or default_threads())
        self.model = model
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._jobs_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._adapters: set[str] = set()  # loaded through load_adapter (the server's multi-adapter path)
        # quanto's int4 weights unpack into new tensors on each call, which inference_mode refuses ("Cannot set
        # version_counter for inference tensor"); no_grad is what they need and costs nothing measurable here
        self._no_grad = torch.no_grad if model.kind == "quantized" else torch.inference_mode
        if model.kind == "quantized":
            self.lm = load_quantized(model.path)
            self.tokenizer = AutoTokenizer.from_pretrained(model.path)
            return
        if model.kind == "adapter":  # a PEFT adapter: load its base, then apply it
            from peft import PeftModel

            from llmkit.models import resolve_model

            assert model.base is not None
            folder = hf_folder(resolve_model(model.base))
            base = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
            self.lm = PeftModel.from_pretrained(base, str(model.path)).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(model.path if (model.path / "tokenizer.json").is_file() else folder)
            return
        folder = hf_folder(model)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.lm = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()

    def _generate(self, inputs: dict, params: GenParams, gen: Generation | None = None) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        prompt_len = inputs["input_ids"].shape[1]
        self._last_new_tokens, self._last_stopped = 0, False
        engine = self

        class Watch(StoppingCriteria):  # counts tokens and stops when the client went away
            def __call__(self, input_ids, scores, **kw):
                engine._last_new_tokens = input_ids.shape[1] - prompt_len
                cancelled = gen is not None and gen.cancelled.is_set()
                return torch.full((input_ids.shape[0],), cancelled, dtype=torch.bool)

        kwargs = dict(**inputs, **_sampling(params), streamer=streamer, pad_token_id=self.tokenizer.pad_token_id,
                      stopping_criteria=StoppingCriteriaList([Watch()]))
        if params.stop:
            kwargs.update(stop_strings=params.stop, tokenizer=self.tokenizer)
        error: list[BaseException] = []

        def work() -> None:
            try:
                with self._no_grad():
                    self.lm.generate(**kwargs)
            except BaseException as e:  # re-raised in the caller's thread below
                error.append(e)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        text = ""
        for piece in streamer:
            text += piece
            cut = min((text.find(s) for s in params.stop if s in text), default=-1)
            if cut >= 0:  # like OpenAI, the stop string itself is not returned
                self._last_stopped = True
                if gen is not None:
                    gen.cancelled.set()  # ends generate() at its next step
                yield piece[: max(0, len(piece) - (len(text) - cut))]
                break
            if piece:
                yield piece
        thread.join()
        if error:
            raise error[0]

    def generate_many(self, prompts: list[str], params: GenParams, adapter: str | None = None) -> list[str]:
        """The replies to several prompts from one batched `generate` (left-padded, attention-masked), in order:
        one decode step advances every row, so 8 greedy replies of the 135M model take 8.6 s instead of 40.8 one
        at a time (2 threads), the same replies on the example's prompts (tests/eval). For the eval, which calls
        it from one thread at a time; the server keeps its one-request worker (`submit`)."""
        import torch

        if not prompts:
            return []
        rows = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        width = max(map(len, rows))
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        with self._no_grad(), self._adapter_context(adapter):
            out = self.lm.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad, **_sampling(params))
        texts = [self.tokenizer.decode(row[width:], skip_special_tokens=True) for row in out]
        # like OpenAI (and `_generate`), a reply ends before its first stop string
        return [t[:min((t.find(s) for s in params.stop if s in t), default=len(t))] for t in texts]

    def chat(self, messages: list[dict], params: GenParams) -> Iterator[str]:
        inputs = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True)
        yield from self._generate(dict(inputs), params)

    # -- the server's interface: one request at a time on a worker thread, in arrival order --
    def format_chat(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=tools or None, add_generation_prompt=True,
                                                  tokenize=False)

    @property
    def chat_template(self) -> str | None:
        t = self.tokenizer.chat_template
        return t.get("tool_use", t.get("default")) if isinstance(t, dict) else t

    @property
    def n_vocab(self) -> int:
        return len(self.tokenizer)

    def submit(self, prompt: str | list[int], params: GenParams, adapter: str | None = None) -> Generation:
        import torch

        if params.response_format and params.response_format.get("type") != "text":
            raise UnsupportedFeature("response_format (constrained decoding) needs the llamacpp engine")
        if adapter is not None and adapter not in self._adapters:
            raise UnsupportedFeature(f"adapter '{adapter}' is not loaded")
        if isinstance(prompt, str):
            ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        else:
            if not prompt or not all(0 <= t < self.n_vocab for t in prompt):
                raise LlmkitError(f"the prompt must be token ids from 0 to {self.n_vocab - 1}")
            ids = {"input_ids": torch.tensor([prompt]), "attention_mask": torch.ones(1, len(prompt), dtype=torch.long)}
        gen = Generation(prompt_tokens=int(ids["input_ids"].shape[1]))
        with self._jobs_lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve_jobs, daemon=True, name="llmkit-hf")
                self._worker.start()
        self._jobs.put((dict(ids), params, gen, adapter))
        return gen

    def load_adapter(self, name: str, path) -> None:
        """Load a PEFT LoRA adapter folder beside the others on this base (PEFT's multi-adapter model)."""
        from peft import PeftModel

        if self.model.kind == "quantized":
            raise UnsupportedFeature(f"adapter '{name}': {self.model.name} is an int8/int4 export; serve adapters on "
                                     "its float base, or merge the adapter before quantizing (`llmkit compress`)")
        with self._jobs_lock:
            if name in self._adapters:
                return
            if isinstance(self.lm, PeftModel):
                self.lm.load_adapter(str(path), adapter_name=name)
            else:
                self.lm = PeftModel.from_pretrained(self.lm, str(path), adapter_name=name).eval()
            self._adapters.add(name)

    def unload_adapter(self, name: str) -> None:
        with self._jobs_lock:
            if name in self._adapters:
                self.lm.delete_adapter(name)
                self._adapters.discard(name)

    def _adapter_context(self, adapter: str | None):
        """Run with `adapter` active, or with every adapter off for the base (on the worker thread only)."""
        import contextlib

        if not self._adapters:
            return contextlib.nullcontext()
        if adapter is None:
            return self.lm.disable_adapter()
        self.lm.set_adapter(adapter)
        return contextlib.nullcontext()

    def _serve_jobs(self) -> None:
        while True:
            inputs, params, gen, adapter = self._jobs.get()
            if gen.cancelled.is_set():
                gen.close("cancelled")
                continue
            try:
                if params.logprobs is not None or params.prompt_logprobs is not None or params.max_tokens == 0:
                    with self._adapter_context(adapter):
                        gen.close(self._scored(inputs["input_ids"], params, gen))
                    continue
                reason = "length"
                with self._adapter_context(adapter):
                    for text in self._generate(inputs, params, gen):
                        gen.completion_tokens = self._last_new_tokens
                        gen.put(Piece(text))
                gen.completion_tokens = self._last_new_tokens
                if self._last_stopped:
                    reason = "stop"
                elif gen.cancelled.is_set():
                    reason = "cancelled"
                elif gen.completion_tokens < params.max_tokens:
                    reason = "stop"  # the end token
                gen.close(reason)
            except Exception as e:  # handed to the consumer, which re-raises it
                gen.close("error", e)

    def _scored(self, input_ids, params: GenParams, gen: Generation) -> str:
        """Generate with logprobs into `gen`, token by token; returns the finish reason. input_ids: (1, T)."""
        import torch

        tok = self.tokenizer
        eos = self.lm.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos if eos is not None else tok.eos_token_id])
        k = params.logprobs or 0

        def scored(logp, token: int, k: int) -> Piece:  # logp: (V,) log-probabilities
            text = tok.decode([token])
            top = None
            if k > 0:
                vals, idx = torch.topk(logp, k)
                top = [(tok.decode([int(i)]), float(v)) for v, i in zip(vals, idx)]
            return Piece(text, token=token, logprob=float(logp[token]), top_logprobs=top, token_text=text)

        with self._no_grad():
            out = self.lm(input_ids=input_ids, use_cache=True)
            logp = torch.log_softmax(out.logits[0].float(), dim=-1)  # (T, V): row t scores token t+1
            if params.prompt_logprobs is not None:
                ids = input_ids[0].tolist()
                first = tok.decode([ids[0]])
                gen.prompt_logprobs = [Piece(first, token=ids[0], token_text=first)] + [
                    scored(logp[t - 1], ids[t], params.prompt_logprobs) for t in range(1, len(ids))]
            if params.max_tokens == 0:
                return "length"
            rng = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
            past, last = out.cache, logp[-1]  # (the KV cache: `cache` in transformers 5.2x)
            new: list[int] = []
            sent = ""  # the text handed out so far; the rest of the decoded text is held back
            while not gen.cancelled.is_set():
                if params.temperature <= 0:
                    token = int(last.argmax())
                else:
                    probs = torch.softmax(last / params.temperature, dim=-1)
                    if params.top_p < 1.0:  # keep the smallest set of most likely tokens whose mass reaches top_p
                        sp, si = probs.sort(descending=True)
                        drop = sp.cumsum(0) - sp > params.top_p
                        probs[si[drop]] = 0
                    token = int(torch.multinomial(probs, 1, generator=rng))
                gen.completion_tokens = len(new) + 1
                if token in eos:  # like OpenAI, the end token is not part of the reply
                    self._flush_scored(gen, sent, tok.decode(new, skip_special_tokens=True), params.stop, final=True)
                    return "stop"
                new.append(token)
                piece = scored(last, token, k)
                text = tok.decode(new, skip_special_tokens=True)
                done = len(new) >= params.max_tokens
                out_text, stopped = self._flush_scored(gen, sent, text, params.stop, final=done, piece=piece)
                sent += out_text
                if stopped:
                    return "stop"
                if done:
                    return "length"
                out = self.lm(input_ids=torch.tensor([[token]]), cache=past, use_cache=True)
                past, last = out.cache, torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        return "cancelled"

    @staticmethod
    def _flush_scored(gen: Generation, sent: str, text: str, stops: list[str], final: bool,
                      piece: Piece | None = None) -> tuple[str, bool]:
        """Hand out the part of `text` past `sent` that can no longer be part of a stop string (or half a
        character); returns (what was handed out, whether a stop string matched)."""
        cut = min((i for i in (text.find(x) for x in stops if x) if i >= 0), default=-1)
        if cut >= 0:
            end = cut
        elif final:
            end = len(text)
        else:
            keep = max((j for x in stops for j in range(1, min(len(x), len(text)) + 1) if text.endswith(x[:j])),
                       default=0)
            end = len(text) - keep
            while end > len(sent) and text[end - 1] == "\ufffd":  # a character whose bytes are still coming
                end -= 1
        out = text[len(sent):max(end, len(sent))]
        if piece is not None:
            piece.text = out
            gen.put(piece)
        elif out:
            gen.put(Piece(out))
        return out, cut >= 0

    def complete(self, prompt: str, params: GenParams) -> Iterator[str]:
        yield from self._generate(dict(self.tokenizer(prompt, return_tensors="pt")), params)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def detokenize(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    def close(self) -> None:
        del self.lm
