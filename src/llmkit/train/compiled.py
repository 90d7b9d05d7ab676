"""torch.compile of the training step's decoder layers (`train.compile`), and the fall-back when it fails.

Each decoder layer is compiled on its own (`nn.Module.compile`, in place: parameter names stay peft's, so the
adapter saved is the same). Parameters are graph inputs, so every layer reuses the first one's graphs: one
forward and one backward graph to build, not thirty. Inductor then fuses the elementwise work between the GEMMs
(RMSNorm, rotary, SiLU·mul, residual adds, the casts bf16 autocast inserts) into a few C++ loops. Attention per
packed sequence (fast.py) stays eager: its segments come from the batch's position ids, and a graph over them
would recompile for every packing. Shapes are dynamic (the packed length varies from batch to batch).

The compile runs in a warm-up step before training (a training forward and backward, and an eval forward when
there is a val split) inside the timed part of the run, so the reported tokens/s pay for it. When it fails (no
C++ compiler, an op inductor cannot lower) the run says so on stderr and in the manifest and trains eagerly.
"""

from __future__ import annotations

import shutil
import sys
import time

from llmkit.train.common import base_model

# `compile: auto` compiles when the run trains on at least this many real tokens: where the compile is repaid.
# Measured with this code (2-core AVX-512-bf16 EPYC, SmolLM2-135M LoRA, packed batch 1 of 256, fp32 short-sequence
# attention; 5 alternating rounds of 6 steps in one process): eager 281.6 real tok/s, compiled 300.7 (1.07x, i.e.
# 0.23 ms saved per token), against a compile of 54 s with an empty inductor cache (23-27 s with a warm one in
# /tmp/torchinductor_$USER): break-even ~240k tokens cold, ~105k warm. The cold figure, since a run cannot know.
AUTO_MIN_TOKENS = 240_000
AUTO_METHODS = ("lora", "full", "pretrain", "dpo")  # plain torch layers; not QLoRA's bitsandbytes ones


def wanted(setting: str, method: str, precision: str, tokens: int) -> tuple[bool, str]:
    """(compile?, why) for `train.compile` on this run: `tokens` is the real tokens the run will train on."""
    if setting != "auto":
        return setting == "on", setting
    if method not in AUTO_METHODS:
        return False, f"auto: off for method {method}"
    if precision != "bf16":  # measured only where bf16 is native; fp32 boxes keep today's path
        return False, "auto: off in fp32"
    if not cxx_compiler():
        return False, "auto: off, no C++ compiler for inductor"
    if tokens < AUTO_MIN_TOKENS:
        return False, f"auto: off, {tokens} real tokens < {AUTO_MIN_TOKENS} (the compile would not pay for itself)"
    return True, "auto: on"


def cxx_compiler() -> str | None:
    import os

    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++") or shutil.which("clang++")


def decoder_layers(model) -> list:
    base = base_model(model)
    inner = getattr(base, "model", base)
    return list(getattr(inner, "layers", []))


def compile_layers(model) -> int:
    """Compile every decoder layer in place; returns how many. Packed attention is kept out of the graphs."""
    import torch
    from transformers import AttentionInterface

    from llmkit.train import fast

    AttentionInterface.register(fast.ATTENTION, torch.compiler.disable(fast.packed_attention))
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def uncompile(model) -> None:
    from transformers import AttentionInterface

    from llmkit.train import fast

    AttentionInterface.register(fast.ATTENTION, fast.packed_attention)
    for layer in decoder_layers(model):
        layer._compiled_call_impl = None


def warm_up(model, step, train_batch: dict, val_step=None, val_batch: dict | None = None) -> dict:
    """Compile the layers and build the graphs the run needs: `step(batch)` runs a training forward and backward,
    `val_step(batch)` an eval forward. Gradients and the RNG state are left as they were (the warm-up step does
    not train). Returns {"compile": "on" | "failed", "compile_seconds", "compile_error"?}."""
    import torch

    t0 = time.perf_counter()
    rng = torch.get_rng_state()
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        compile_layers(model)
        step(train_batch)
        if val_step is not None and val_batch is not None:
            val_step(val_batch)
        status = {"compile": "on"}
    except Exception as e:  # torch._dynamo / inductor raise many types; any of them means: train eagerly
        uncompile(model)
        msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
        print(f"train.compile: torch.compile failed ({msg}); training without it", file=sys.stderr)
        status = {"compile": "failed", "compile_error": msg}
    finally:
        for p in params:
            p.grad = None
        torch.set_rng_state(rng)
    return {**status, "compile_seconds": round(time.perf_counter() - t0, 1)}
