"""f16 GGUF → q8_0 / q4_0 / q4_k with llama.cpp's own quantizer, optionally weighted by an importance matrix.

    imatrix = importance(hf_dir, calibration_texts)              # optional: 4-bit types keep what matters
    quantize(Path("m.f16.gguf"), Path("m.q4_k.gguf"), "q4_k", imatrix=imatrix)

Why llama.cpp's quantizer (`llama_model_quantize`, in llama-cpp-python) and not gguf-py's: gguf-py 0.19
quantizes only the 32-wide block types (Q4_0…Q8_0) and raises NotImplementedError for every K-quant, and
llama.cpp's quantizer is the reference for the types, per-tensor fallbacks and mixes that llama.cpp reads.

The importance matrix is llama.cpp's "imatrix": for every weight matrix, the mean squared input activation of
each input column, measured on calibration text. The quantizer then spends its rounding error where the
activations are small. llama.cpp computes it with its own `llama-imatrix` tool, which llama-cpp-python does not
ship; we measure the same statistic with forward hooks in transformers.
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from collections.abc import Iterator
from pathlib import Path

from llmkit import artifacts
from llmkit.compress.gguf import gguf_name
from llmkit.errors import MissingExtra, UnsupportedModel

# What each `compress.quantize` value means, as llama.cpp quantizer settings: the file type (llama.cpp's own
# per-tensor mix for it), and optionally the token embedding's type and per-tensor overrides {regex: type}.
# llama.cpp's own mixes won on the example adapter (SmolLM2-135M + LoRA, val perplexity on 70 rows against its
# f16 export; size as a share of f16): q8_0 53.5% +0.3%; q4_0 33.9% +44.8%; Q4_K_M 38.9% +8.9%. Tried and
# dropped: Q4_K_S 37.7% +16.8%; Q4_K_M with token_embd q5_0 35.0% +10.1%; IQ4_NL 34.0% +25.7%; Q4_1 for the
# 576-wide matrices 31.1% +254…731% (the base shipped as Q4_1, so its grid erases the LoRA delta); an importance
# matrix made Q4_K_M worse (+19.1%). SmolLM2's 576-wide rows cannot be K-quants (256-wide blocks), so
# llama.cpp falls back to Q5_0 for them (and Q8_0 for the tied embedding and Q6_K's attn_v).
# Every matrix at 4.5 bits + the embedding at Q5_0 is 29.9% of f16: rounded by llama.cpp that is +28.8% (IQ4_NL)
# or +46.0% (Q4_0) on the adapter; with GPTQ on 64 train rows (gptq.py, `q4_gptq`) +5.3% (IQ4_NL) or +9.5% (Q4_0).
# The Q5_0 embedding alone costs +1.2%.
QUANT_PRESETS: dict[str, dict] = {
    "q8_0": {"ftype": "MOSTLY_Q8_0"},
    "q4_0": {"ftype": "MOSTLY_Q4_0"},
    "q4_k": {"ftype": "MOSTLY_Q4_K_M"},
}


def _ggml(name: str) -> int:
    import llama_cpp

    return getattr(llama_cpp, f"GGML_TYPE_{name.upper()}")


@contextlib.contextmanager
def _llama_log() -> Iterator[list[str]]:
    """Collect llama.cpp's log lines (instead of printing its per-tensor chatter); restore the library's logger."""
    import llama_cpp
    from llama_cpp import _logger

    lines: list[str] = []
    callback = llama_cpp.llama_log_callback(lambda level, text, user: lines.append(text.decode("utf-8", "replace")))
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def quantize(f16: Path, out: Path, qtype: str, *, threads: int = 1, preset: dict | None = None,
             imatrix: dict | None = None, requantize: bool = False) -> dict:
    """Quantize an f16 GGUF to `qtype` with llama.cpp's quantizer, writing `out` atomically.

    preset: llama.cpp settings ({"ftype", "token_embd", "overrides"}); default QUANT_PRESETS[qtype].
    imatrix: {llama.cpp tensor name: float32 importance per input column}, from `importance`.
    requantize: accept a quantized source (each weight is dequantized, then quantized again).
    """
    try:
        import llama_cpp
        import numpy as np
    except ImportError:
        raise MissingExtra("llama-cpp-python is not installed: pip install llama-cpp-python") from None

    if qtype not in QUANT_PRESETS and preset is None:
        raise UnsupportedModel(f"unknown GGUF type '{qtype}'; supported: f16, {', '.join(QUANT_PRESETS)}")
    preset = preset or QUANT_PRESETS[qtype]
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.allow_requantize = requantize  # from an already quantized GGUF (serve's Q4_1 → Q8_0 for batching)
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{preset['ftype']}")
    if preset.get("token_embd"):
        params.token_embedding_type = _ggml(preset["token_embd"])
    # C arrays ended by a NULL name; `keep` holds them (and the numpy buffers) alive until the call returns
    keep: list = []
    overrides = preset.get("overrides") or {}
    if overrides:
        arr = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        for i, (pattern, t) in enumerate(overrides.items()):
            arr[i].pattern, arr[i].type = pattern.encode(), _ggml(t)
        params.tt_overrides = arr
        keep.append(arr)
    if imatrix:
        arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(imatrix.items()):
            v = np.ascontiguousarray(values, dtype=np.float32)
            keep.append(v)
            arr[i].name, arr[i].size = name.encode(), v.size
            arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        params.imatrix = arr
        keep.append(arr)
    t0 = time.perf_counter()
    with artifacts.atomic_file(out) as tmp, _llama_log() as log:
        rc = llama_cpp.llama_model_quantize(str(f16).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            tail = "".join(log)[-800:].strip()
            raise UnsupportedModel(f"llama.cpp could not quantize {f16} to {qtype}: {tail}")
    del keep
    return {"seconds": round(time.perf_counter() - t0, 2)}


def importance(hf_dir: Path, texts: list[str], *, progress: bool = False) -> dict:
    """llama.cpp's importance matrix, measured in transformers: {tensor name: mean x² per input column}.

    texts: calibration text (never the rows the report measures on). Each Linear's input x: (tokens, in_features).
    """
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    tied = bool(getattr(model.config, "tie_word_embeddings", True))
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def record(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1])  # (tokens, in_features)
            sums[name] = sums.get(name, 0) + (x * x).sum(0, dtype=torch.float64)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return record

    hooks = []
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            # a tied output matmul runs on token_embd in llama.cpp, so its statistics go under that name
            name = "token_embd.weight" if n == "lm_head" and tied else gguf_name(f"{n}.weight")
            hooks.append(m.register_forward_pre_hook(hook(name)))
    try:
        with torch.no_grad():
            for text in tqdm(texts, desc="importance matrix", unit="row", disable=not progress, leave=False):
                ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :1024]
                model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return {k: (sums[k] / counts[k]).float().numpy() for k in sums}


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each ggml type a GGUF holds (e.g. {"Q4_K": 90, "Q8_0": 31, "F32": 61})."""
    from collections import Counter

    from gguf import GGUFReader

    return dict(Counter(t.tensor_type.name for t in GGUFReader(str(path)).tensors).most_common())
