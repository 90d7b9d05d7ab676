"""Merge a LoRA adapter into its base with peft's `merge_and_unload`, after checking that they belong together.

    check_recorded_base(adapter_dir, base_ref, name)      # refuses a foreign base, naming both
    check_shapes(adapter_dir, base_ref, base_hf_dir, name)
    merged_dir = merge(adapter_dir, base_hf_dir, work / "merged")

The check has two parts. The recorded hash: a train artifact's manifest records the content hash of the base
it was trained on (`inputs.base.sha256`); the base given now must hash the same (or, for an HF folder that
llmkit converted from a GGUF, its GGUF must). The shapes: every LoRA matrix must fit the base weight it
adapts (lora_A: (r, in_features), lora_B: (out_features, r)). A plain PEFT folder without a manifest gets
the shape check only.

Only safetensors are read. A pickle checkpoint (`adapter_model.bin`, `pytorch_model.bin`) can run code when
it is loaded, so it is refused unless the caller passes `allow_pickle=True` (the CLI's `--unsafe-allow-pickle`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from llmkit import artifacts
from llmkit.compress.gguf import safetensors_shapes
from llmkit.errors import UnsupportedModel
from llmkit.models import ModelRef

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def refuse_pickle(folder: Path, what: str, allow_pickle: bool) -> bool:
    """True when `folder` holds its weights only as pickle; an error unless `allow_pickle`."""
    if any(folder.glob("*.safetensors")):
        return False
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        raise UnsupportedModel(f"{folder}: {what} has no .safetensors weights")
    if not allow_pickle:
        raise UnsupportedModel(
            f"{folder}: {what} is a pickle checkpoint ({', '.join(pickles)}); loading pickle can run arbitrary "
            "code. Convert it to safetensors, or pass --unsafe-allow-pickle (compress.allow_pickle: true) if you "
            "trust where it came from")
    return True


def _recorded_base(adapter_dir: Path) -> dict | None:
    """The base input that the train artifact recorded ({path, sha256}), if the adapter is a train artifact."""
    if not (adapter_dir / artifacts.MANIFEST).is_file():
        return None
    return (artifacts.read_manifest(adapter_dir).get("inputs") or {}).get("base")


def _base_hashes(base: ModelRef, base_hf: Path | None) -> set[str]:
    """The hashes under which `base` may have been recorded: its own, and its GGUF origin's for a converted folder."""
    hashes = {artifacts.input_ref(base.path)["sha256"]}
    src = (base_hf or base.path) / "llmkit_source.json"
    if src.is_file():
        hashes.add(json.loads(src.read_text()).get("gguf_sha256", ""))
    return hashes


def _lora_shapes(adapter_dir: Path) -> dict[str, tuple[int, ...]]:
    path = adapter_dir / "adapter_model.safetensors"
    # a pickle adapter (allowed explicitly) has none: peft checks the shapes when it loads it
    return safetensors_shapes(path) if path.is_file() else {}


def _base_shapes(base_hf: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for f in sorted(base_hf.glob("*.safetensors")):
        shapes.update(safetensors_shapes(f))
    return shapes


def shape_mismatches(adapter_dir: Path, base_hf: Path) -> list[str]:
    """LoRA matrices that do not fit the base (missing module, wrong in/out features); empty when they all fit."""
    base = _base_shapes(base_hf)
    if not base:
        return []  # pickle base (allowed explicitly): transformers checks the shapes when peft loads the adapter
    problems = []
    for key, shape in _lora_shapes(adapter_dir).items():
        # base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight → model.layers.0.self_attn.q_proj.weight
        module, _, kind = key.removeprefix("base_model.model.").rpartition(".lora_")
        target = f"{module}.weight"
        if target not in base:
            problems.append(f"{key}: the base has no {target}")
        elif kind.startswith("A") and shape[1] != base[target][1]:
            problems.append(f"{key}: {shape} does not fit {target} {base[target]} (in_features)")
        elif kind.startswith("B") and shape[0] != base[target][0]:
            problems.append(f"{key}: {shape} does not fit {target} {base[target]} (out_features)")
    return problems


def check_recorded_base(adapter_dir: Path, base: ModelRef, recorded_name: str) -> None:
    """Refuse an adapter whose train artifact recorded another base (by content hash); name both."""
    recorded = _recorded_base(adapter_dir)
    if recorded and recorded.get("sha256") not in _base_hashes(base, None):
        raise UnsupportedModel(
            f"adapter {adapter_dir} was trained on '{recorded_name}' ({recorded.get('path')}, sha256 "
            f"{str(recorded.get('sha256'))[:12]}), not on the base given, '{base.name}' ({base.path}, sha256 "
            f"{artifacts.input_ref(base.path)['sha256'][:12]}); refusing to merge")


def check_shapes(adapter_dir: Path, base: ModelRef, base_hf: Path, recorded_name: str) -> None:
    """Refuse an adapter whose LoRA matrices do not fit the base's weights; name both."""
    if problems := shape_mismatches(adapter_dir, base_hf):
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UnsupportedModel(
            f"adapter {adapter_dir} (trained on '{recorded_name}') does not fit the base '{base.name}': "
            f"{'; '.join(problems[:3])}{more}")


def merge(adapter_dir: Path, base_hf: Path, out: Path, *, allow_pickle: bool = False) -> Path:
    """Write base + adapter, merged, as an HF folder (float32 safetensors + tokenizer) at `out`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_pickle = refuse_pickle(base_hf, "the base model", allow_pickle)
    refuse_pickle(adapter_dir, "the adapter", allow_pickle)
    model = AutoModelForCausalLM.from_pretrained(base_hf, dtype=torch.float32, use_safetensors=not base_pickle)
    model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    merged = model.merge_and_unload()  # W + (alpha / r) · B·A for every adapted linear, adapter layers removed
    shutil.rmtree(out, ignore_errors=True)
    merged.save_pretrained(out, safe_serialization=True)
    # the adapter folder's tokenizer when it has one (a train artifact saves it), else the base's
    tok_src = adapter_dir if (adapter_dir / "tokenizer.json").is_file() else base_hf
    AutoTokenizer.from_pretrained(tok_src).save_pretrained(out)
    return out


def to_safetensors(hf_dir: Path, out: Path) -> Path:
    """Re-save a pickle HF folder (already allowed by the caller) as safetensors, so the exporter reads no pickle."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, use_safetensors=False)
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(hf_dir).save_pretrained(out)
    return out
