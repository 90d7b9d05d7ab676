"""Helpers for the compress tests: LoRA adapters on the tiny Llama, plain and as the train stage writes them."""

from __future__ import annotations

import json
from pathlib import Path

# small reports: the tiny models are fast, but llama.cpp runs on 1 thread beside other work
QUICK = {"eval_rows": 4, "prompts": 2, "gen_tokens": 8}
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base: Path, out: Path, *, safetensors: bool = True, seed: int = 0, **lora) -> Path:
    """A PEFT LoRA adapter on `base` with random (non-zero) A and B, so merging visibly changes the model.

    lora: LoraConfig fields over the defaults (r 4, alpha 8, all 7 projections), e.g. use_rslora=True."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    cfg = {"r": 4, "lora_alpha": 8, "target_modules": LINEAR, "init_lora_weights": False, **lora}
    peft = get_peft_model(model, LoraConfig(**cfg))
    peft.save_pretrained(out, safe_serialization=safetensors)
    meta = json.loads((out / "adapter_config.json").read_text())
    meta["base_model_name_or_path"] = str(base)  # as the train stage records it
    (out / "adapter_config.json").write_text(json.dumps(meta))
    return out


def make_train_artifact(base: Path, out: Path) -> Path:
    """An adapter folder as the train stage writes it: adapter, tokenizer, and a manifest recording the base."""
    from transformers import AutoTokenizer

    from llmkit import artifacts

    with artifacts.build("model", out, {"train": "test"}, {"base": artifacts.input_ref(base)}) as b:
        make_adapter(base, b.tmp)
        AutoTokenizer.from_pretrained(base).save_pretrained(b.tmp)
        b.outputs = {"format": "peft-adapter", "base": str(base)}
    return out


def llama_logits(gguf: Path, ids: list[int]):
    """(T, V) logits of every position of `ids` from llama.cpp, on one thread."""
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=256, n_threads=1, n_threads_batch=1, logits_all=True, verbose=False)
    llm.eval(ids)
    out = np.array(llm.scores[:len(ids)])
    llm.close()
    return out


def hf_logits(model, ids: list[int]):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()
