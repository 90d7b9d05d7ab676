"""PEFT LoRA adapter folder → llama.cpp's LoRA adapter GGUF, so one llama.cpp process serves many adapters on one
base GGUF without merging any of them.

    path = adapter_gguf(Path("runs/x/train"), base=Path("base.gguf"))   # converted once, cached by content
    export_lora_gguf(Path("runs/x/train"), Path("x.lora.gguf"))        # or to a file of your choosing

    llm = Llama(model_path="base.gguf", lora_path=str(path))           # llama-cpp-python, high level
    # low level (llama-cpp-python 0.3.36): load once per model, attach per context with a scale
    lora = llama_cpp.llama_adapter_lora_init(model, str(path).encode())
    llama_cpp.llama_set_adapters_lora(ctx, (llama_cpp.llama_adapter_lora_p_ctypes * 1)(lora), 1,
                                      (ctypes.c_float * 1)(1.0))

The file is what llama.cpp's `convert_lora_to_gguf.py` writes (we write it ourselves with PyPI gguf's GGUFWriter,
because that script runs only with llama.cpp's vendored gguf-py) and what `src/llama-adapter.cpp` checks:
`general.type = "adapter"`, `general.architecture` equal to the base's, `adapter.type = "lora"`,
`adapter.lora.alpha` (f32), and for every adapted weight `W` (llama.cpp name, e.g. `blk.0.attn_q.weight`) the pair
`W.lora_a` (numpy (r, in), ggml ne [in, r]) and `W.lora_b` (numpy (out, r), ggml ne [r, out]).

Scale: llama.cpp computes `W·x + s · alpha / r · B·(A·x)` with r = lora_b's ne[0] and s the scale given when the
adapter is attached (1.0 by default); an alpha of 0 means "no alpha/r factor". PEFT computes `lora_alpha / r`
(or `lora_alpha / sqrt(r)` with `use_rslora`), per module when `rank_pattern`/`alpha_pattern` are set. We write
one alpha that makes llama.cpp's factor equal PEFT's for the default rank (alpha · sqrt(r) under rsLoRA) and fold
any module whose rank or alpha differs into its lora_b, so every module gets exactly PEFT's scaling at s = 1.

q/k rows: llama.cpp's Llama weights have the rows of attn_q/attn_k permuted for its rope kernel (gguf.permute);
`B·A` must land in the same rows, so lora_b of q_proj/k_proj gets the same permutation (lora_a is untouched).
The head counts come from the base (its GGUF metadata or config.json).

Refused, with the file and the reason: DoRA, LoRA on the embeddings or lm_head, `modules_to_save`, trainable
tokens, LoRA biases, aLoRA and the other LoRA variants whose forward is not `W·x + scale·B·A·x`, pickle-only
adapters (loading pickle can run code), and architectures other than the Llama family.

Tensors are written as f32 by default: an adapter is small next to its base (SmolLM2-135M, r 16, all 7
projections: 4.9 M parameters, 19.5 MB), f32 keeps it bit-exact with the PEFT file and keeps llama.cpp's LoRA
matmuls in f32. `dtype="f16"` halves the file; for a real model the rounding (~5e-4 relative per element) is far
below the base's own quantization error, but on the tiny test models it would blur the exactness check.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Literal

from llmkit.compress.gguf import (
    SUPPORTED_ARCHITECTURES,
    atomic_write,
    gguf_name,
    permute,
    read_config,
    safetensors_shapes,
)
from llmkit.compress.merge import PICKLE_SUFFIXES
from llmkit.errors import UnsupportedModel

__all__ = ["FORMAT_VERSION", "adapter_gguf", "check_adapter_config", "export_lora_gguf"]

FORMAT_VERSION = "1"  # bump when the written file changes, so cached conversions are rebuilt
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"

# adapter_config.json fields whose forward pass llama.cpp's LoRA cannot compute; refused when set (truthy)
_REFUSED = {
    "use_dora": "DoRA (use_dora) rescales each weight column by a learned magnitude; llama.cpp applies plain "
                "LoRA only. Merge it instead: llmkit compress ADAPTER",
    "modules_to_save": "modules_to_save replaces whole modules (often embed_tokens/lm_head), which a llama.cpp "
                       "LoRA adapter cannot carry; merge it instead: llmkit compress ADAPTER",
    "trainable_token_indices": "trainable tokens change embedding rows, which a llama.cpp LoRA adapter cannot "
                               "carry; merge it instead",
    "lora_bias": "LoRA biases (lora_bias) are not part of llama.cpp's LoRA format",
    "fan_in_fan_out": "fan_in_fan_out (GPT-2 Conv1D layout) is not a Llama layout",
    "alora_invocation_tokens": "activated LoRA (aLoRA) is not supported by this exporter yet",
    "layer_replication": "layer_replication changes the model's layer stack",
    "use_qalora": "QA-LoRA pools the input before lora_A; llama.cpp does not",
    "velora_config": "VeLoRA changes the LoRA forward pass",
    "monteclora_config": "MonteCLoRA changes the LoRA forward pass",
    "use_bdlora": "block-diagonal LoRA (use_bdlora) is not supported",
    "target_parameters": "LoRA on raw parameters (target_parameters, e.g. MoE experts) is not supported",
    "megatron_config": "Megatron-parallel LoRA layers are not supported",
}
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


def _read_adapter_config(adapter_dir: Path) -> dict:
    path = adapter_dir / CONFIG
    if not path.is_file():
        raise UnsupportedModel(f"{adapter_dir}: not a PEFT adapter folder (expected {CONFIG})")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UnsupportedModel(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise UnsupportedModel(f"{path}: expected a JSON object")
    return cfg


def check_adapter_config(cfg: dict, path: Path) -> None:
    """Refuse what llama.cpp's LoRA cannot compute; every problem at once, naming the file."""
    problems = []
    if cfg.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type is {cfg.get('peft_type')!r}; only LORA adapters can run in llama.cpp")
    problems += [f"{field}: {why}" for field, why in _REFUSED.items() if cfg.get(field)]
    for field in ("r", "lora_alpha"):
        if not isinstance(cfg.get(field), (int, float)) or isinstance(cfg.get(field), bool) or cfg[field] <= 0:
            problems.append(f"{field}: expected a positive number, found {cfg.get(field)!r}")
    if problems:
        raise UnsupportedModel(f"{path}: this adapter cannot run as a llama.cpp LoRA adapter:\n"
                               + "\n".join(f"  - {p}" for p in problems))


def _weights(adapter_dir: Path) -> Path:
    """adapter_model.safetensors; a pickle-only or empty folder is an error naming what it found."""
    path = adapter_dir / WEIGHTS
    if path.is_file():
        return path
    pickles = sorted(p.name for p in adapter_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UnsupportedModel(
            f"{adapter_dir}: the adapter is a pickle checkpoint ({', '.join(pickles)}) and has no {WEIGHTS}; "
            "loading pickle can run arbitrary code, so it is not converted. Re-save it as safetensors "
            "(PeftModel.save_pretrained(dir, safe_serialization=True)) if you trust where it came from")
    other = sorted(p.name for p in adapter_dir.glob("*.safetensors"))
    found = f"found {', '.join(other)}" if other else "found no .safetensors file"
    raise UnsupportedModel(f"{adapter_dir}: expected the adapter's weights in {WEIGHTS}; {found}")


def _base_info(base: str | Path, adapter_dir: Path) -> dict:
    """{"architecture", "n_head", "n_head_kv"} of the base: what the adapter GGUF's content depends on."""
    from llmkit.models import gguf_metadata, resolve_model

    ref = resolve_model(str(base))
    if ref.kind == "gguf":
        kv, _ = gguf_metadata(ref.path)
        arch = kv.get("general.architecture")
        if arch not in SUPPORTED_ARCHITECTURES.values():
            raise UnsupportedModel(f"{ref.path}: GGUF architecture '{arch}' is not supported for LoRA adapters; "
                                   f"supported: {', '.join(SUPPORTED_ARCHITECTURES.values())}")
        heads = kv.get(f"{arch}.attention.head_count")
        if not heads:
            raise UnsupportedModel(f"{ref.path}: no {arch}.attention.head_count in the GGUF metadata")
        return {"architecture": arch, "n_head": int(heads),
                "n_head_kv": int(kv.get(f"{arch}.attention.head_count_kv") or heads)}
    if ref.kind == "hf":
        cfg, arch = read_config(ref.path)
        heads = cfg["num_attention_heads"]
        return {"architecture": arch, "n_head": heads, "n_head_kv": cfg.get("num_key_value_heads") or heads}
    raise UnsupportedModel(f"adapter {adapter_dir}: its base '{base}' is itself an adapter; give the base model")


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern/alpha_pattern lookup (peft.utils.other.get_pattern_key): the first key that matches the
    end of the module name, e.g. 'q_proj' or 'layers.0.self_attn.q_proj'."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _scaling(cfg: dict, module: str, r: int) -> float:
    """PEFT's scaling for one module: lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA."""
    alpha = _pattern_value(cfg.get("alpha_pattern"), module, cfg["lora_alpha"])
    return alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)


def _pairs(weights: Path) -> dict[str, tuple[str, str]]:
    """HF module name → (lora_A key, lora_B key), checked: every key a LoRA matrix of a Llama linear layer."""
    shapes = safetensors_shapes(weights)
    pairs: dict[str, dict[str, str]] = {}
    problems = []
    for key in shapes:
        m = _KEY.match(key)
        if m is None:
            why = ("DoRA magnitude" if "lora_magnitude_vector" in key else
                   "LoRA on the token embeddings" if "lora_embedding_" in key else
                   "a LoRA bias" if ".lora_B.bias" in key else "not a lora_A/lora_B weight")
            problems.append(f"{key}: {why}")
            continue
        module = m["module"]
        if module.split(".")[-1] in ("lm_head", "embed_tokens"):
            # with tied embeddings (SmolLM2) llama.cpp has no output weight of its own: token_embd serves both
            problems.append(f"{key}: LoRA on {module.split('.')[-1]} is not supported; merge it instead")
            continue
        try:
            gguf_name(f"{module}.weight")
        except UnsupportedModel:
            problems.append(f"{key}: {module} has no llama.cpp counterpart in the Llama family")
            continue
        pairs.setdefault(module, {})[m["ab"]] = key
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            problems.append(f"{module}: has lora_{next(iter(ab))} but no lora_{'B' if 'A' in ab else 'A'}")
            continue
        a, b = shapes[ab["A"]], shapes[ab["B"]]
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            problems.append(f"{module}: lora_A {a} and lora_B {b} do not make a rank-r pair ((r, in) and (out, r))")
    if not pairs and not problems:
        problems.append("no LoRA weights")
    if problems:
        more = f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""
        raise UnsupportedModel(f"{weights}: cannot be written as a llama.cpp LoRA adapter:\n"
                               + "\n".join(f"  - {p}" for p in problems[:8]) + more)
    return {module: (ab["A"], ab["B"]) for module, ab in pairs.items()}


def _order(module: str) -> tuple:
    """Sort key: layers in numeric order (2 before 10)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in module.split("."))


def export_lora_gguf(adapter_dir: Path, out: Path, *, base: str | Path | None = None,
                     dtype: Literal["f32", "f16"] = "f32") -> Path:
    """Write the PEFT LoRA adapter in `adapter_dir` as a llama.cpp LoRA adapter GGUF at `out`, atomically.

    base: the base model (GGUF, HF folder, registry name or hub id) whose architecture and head counts the file
    must match; default: the adapter's `base_model_name_or_path`. A server passes the GGUF it serves.
    Returns `out`.
    """
    import gguf
    import numpy as np
    import torch
    from safetensors import safe_open

    adapter_dir, out = Path(adapter_dir), Path(out)
    cfg = _read_adapter_config(adapter_dir)
    check_adapter_config(cfg, adapter_dir / CONFIG)
    weights = _weights(adapter_dir)
    pairs = _pairs(weights)
    info = _base_info(_base_spec(cfg, adapter_dir, base), adapter_dir)
    heads = {"attn_q": info["n_head"], "attn_k": info["n_head_kv"]}
    np_dtype = {"f32": np.float32, "f16": np.float16}[dtype]
    # one alpha for the file: PEFT's scaling for the default rank, as llama.cpp's alpha / r
    alpha = _scaling(cfg, "", cfg["r"]) * cfg["r"]

    w = gguf.GGUFWriter(None, info["architecture"])
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    w.add_name(adapter_dir.resolve().name)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    with safe_open(str(weights), framework="pt") as st:  # "pt": numpy cannot read bf16 safetensors
        for module in sorted(pairs, key=_order):
            key_a, key_b = pairs[module]
            a = st.get_tensor(key_a).to(torch.float32).numpy()  # (r, in)
            b = st.get_tensor(key_b).to(torch.float32).numpy()  # (out, r)
            r = a.shape[0]
            fold = _scaling(cfg, module, r) * r / alpha  # 1.0 unless rank_pattern/alpha_pattern/rsLoRA differ
            if fold != 1.0:
                b = b * np.float32(fold)
            name = gguf_name(f"{module}.weight")  # model.layers.0.self_attn.q_proj.weight → blk.0.attn_q.weight
            kind = name.split(".")[-2]
            if kind in heads:
                if b.shape[0] % (2 * heads[kind]):
                    raise UnsupportedModel(f"{weights}: {key_b} has {b.shape[0]} rows, not a multiple of 2 × "
                                           f"{heads[kind]} heads of the base; is it the right base?")
                b = permute(b, heads[kind])
            # GGUFWriter takes numpy (row-major) shapes and writes them reversed, as ggml's ne[]
            w.add_tensor(f"{name}.lora_a", np.ascontiguousarray(a, dtype=np_dtype))
            w.add_tensor(f"{name}.lora_b", np.ascontiguousarray(b, dtype=np_dtype))
    with atomic_write(w, out):
        w.write_tensors_to_file()
    return out


def _base_spec(cfg: dict, adapter_dir: Path, base: str | Path | None) -> str | Path:
    if base is not None:
        return base
    spec = cfg.get("base_model_name_or_path")
    if not spec:
        raise UnsupportedModel(f"{adapter_dir / CONFIG}: no base_model_name_or_path; pass base= (the base GGUF)")
    return spec


def adapter_gguf(adapter_dir: Path, *, base: str | Path | None = None, dtype: Literal["f32", "f16"] = "f32") -> Path:
    """The llama.cpp LoRA GGUF of a PEFT adapter folder, converted once and cached under
    `$LLMKIT_HOME/lora-gguf/`, keyed by the content of adapter_config.json and the weights, the base's
    architecture and head counts, the dtype and FORMAT_VERSION: a second call with the same adapter is a hit."""
    from llmkit.artifacts import sha256_file
    from llmkit.models import home

    adapter_dir = Path(adapter_dir)
    cfg = _read_adapter_config(adapter_dir)
    check_adapter_config(cfg, adapter_dir / CONFIG)
    weights = _weights(adapter_dir)
    info = _base_info(_base_spec(cfg, adapter_dir, base), adapter_dir)
    h = hashlib.sha256()
    for part in (FORMAT_VERSION, dtype, json.dumps(info, sort_keys=True), (adapter_dir / CONFIG).read_bytes(),
                 sha256_file(weights)):
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    cached = home() / "lora-gguf" / f"{h.hexdigest()[:24]}.{dtype}.gguf"
    if cached.is_file():
        return cached
    return export_lora_gguf(adapter_dir, cached, base=base, dtype=dtype)
