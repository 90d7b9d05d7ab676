"""HF Llama folder → f16 GGUF that llama.cpp loads: our own small writer over gguf-py's `GGUFWriter`.

    info = write_f16(hf_dir, Path("out/model.f16.gguf"), name="model", tokenizer_gguf=source_gguf)

Why our own writer: llama.cpp's `convert_hf_to_gguf.py` runs only with llama.cpp's vendored gguf-py, not
the PyPI `gguf` package (it fails with `LazyChunkedTensor`). For the Llama family the conversion is small
and we own it here: hyperparameters from config.json, tensors renamed to llama.cpp's names, q/k rows
permuted for llama.cpp's rope kernel, tokenizer metadata, the chat template.

Tokenizer metadata: when the model came from a GGUF (the bundled model, a train artifact on it, the HF cache
folder converted from it) its `tokenizer.*` key/value pairs are carried over exactly — token list, types,
merges, special ids, the pre-tokenizer name ("smollm") and the chat template — so llama.cpp tokenizes the
export as it did the source. An HF folder with no GGUF origin gets them built from its tokenizer.json
(byte-level BPE only; anything else is a clear error).

The writer produces f16 (1-D norm weights stay f32), which is also the "before" of the quality report;
quantize.py makes q8_0, q4_0 and q4_k from it. The file is written under a temporary name in the target's
folder and renamed into place, so a killed export never leaves a partial file under the real name.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from llmkit import artifacts
from llmkit.errors import UnsupportedModel
from llmkit.models import _LLAMA_TENSORS

# HF architecture (config.json "architectures") → GGUF architecture. The first match wins; a miss names these.
SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "llama"}

_HF_TO_GGUF = {hf.replace("{i}", "{}"): gg.replace("{i}", "{}") for gg, hf in _LLAMA_TENSORS.items()}


def gguf_name(hf_name: str) -> str:
    """HF Llama tensor name → llama.cpp's (`model.layers.3.mlp.up_proj.weight` → `blk.3.ffn_up.weight`)."""
    parts = hf_name.split(".")
    if len(parts) > 3 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        key = ".".join(["model", "layers", "{}", *parts[3:]])
        if key in _HF_TO_GGUF:
            return _HF_TO_GGUF[key].format(parts[2])
    elif hf_name in _HF_TO_GGUF:
        return _HF_TO_GGUF[hf_name]
    raise UnsupportedModel(f"tensor '{hf_name}' has no llama.cpp counterpart in the Llama GGUF exporter "
                           "(attention/MLP biases and extra modules are not supported)")


def permute(w, n_head: int):
    """HF → llama.cpp q/k row order; the inverse of `models._unpermute`.

    w: (n_head * head_dim, hidden). HF keeps each head's rotary halves as (n_head, 2, head_dim/2); llama.cpp's
    rope kernel wants them interleaved, (n_head, head_dim/2, 2).
    """
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_config(hf_dir: Path) -> tuple[dict, str]:
    """config.json and its GGUF architecture; an unsupported one is an error naming the supported ones."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    archs = cfg.get("architectures") or [cfg.get("model_type", "?")]
    arch = next((SUPPORTED_ARCHITECTURES[a] for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if arch is None:
        raise UnsupportedModel(f"{hf_dir}: architecture {', '.join(map(str, archs))} cannot be exported to GGUF; "
                               f"supported: {', '.join(SUPPORTED_ARCHITECTURES)} (the Llama family, e.g. SmolLM2)")
    return cfg, arch


def _rope(cfg: dict) -> tuple[float, str, float | None]:
    """(theta, scaling type, factor) from transformers 5's rope_parameters or the older rope_theta/rope_scaling."""
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind not in ("default", "linear"):
        raise UnsupportedModel(f"rope scaling '{kind}' is not supported by the GGUF exporter; "
                               "supported: default, linear")
    return float(theta), kind, params.get("factor")


def _add_hparams(w, cfg: dict) -> None:
    import gguf

    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or hidden // heads
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg.get("max_position_embeddings", 2048))
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(cfg.get("num_key_value_heads") or heads)
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_vocab_size(cfg["vocab_size"])
    w.add_rope_dimension_count(head_dim)
    if head_dim != hidden // heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    theta, kind, factor = _rope(cfg)
    w.add_rope_freq_base(theta)
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(factor))


# ---------------------------------------------------------------------------------------------------------
# tokenizer metadata


def gguf_origin(hf_dir: Path) -> Path | None:
    """The GGUF an HF folder came from, if any: the one `models.hf_folder` converted it from, or the base that a
    train artifact (a full fine-tune) records in its manifest."""
    src, manifest = hf_dir / "llmkit_source.json", hf_dir / "manifest.json"
    if src.is_file():
        p = Path(json.loads(src.read_text()).get("gguf", ""))
    elif manifest.is_file():
        p = Path(((json.loads(manifest.read_text()).get("inputs") or {}).get("base") or {}).get("path", ""))
    else:
        return None
    return p if p.suffix == ".gguf" and p.is_file() else None


def _tokenizer_from_gguf(w, source: Path, skip: tuple[str, ...] = ()) -> int:
    """Copy the `tokenizer.*` key/value pairs of `source` (not `skip`) with their GGUF types; return the token count."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(source))
    n_tokens = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.") or key in skip:
            continue
        vtype = GGUFValueType(field.types[0])
        sub = GGUFValueType(field.types[-1]) if vtype == GGUFValueType.ARRAY else None
        value = field.contents()
        w.add_key_value(key, value, vtype, sub_type=sub)
        if key == "tokenizer.ggml.tokens":
            n_tokens = len(value)
    if not n_tokens:
        raise UnsupportedModel(f"{source} has no tokenizer.ggml.tokens to carry over")
    return n_tokens


def _pre_tokenizer_name(pre: dict | None) -> str | None:
    """llama.cpp's name for a tokenizer.json pre-tokenizer it implements, else None.

    llama.cpp does not read tokenizer.json; it knows pre-tokenizers by name. We recognise the two that
    byte-level BPE models of this family use: GPT-2's regex split ("gpt2"), and the same after splitting
    digits one by one (SmolLM's, which llama.cpp calls "smollm").
    """
    def byte_level(p: dict) -> bool:
        return p.get("type") == "ByteLevel" and p.get("use_regex", True) and not p.get("add_prefix_space", False)

    if pre is None:
        return None
    if byte_level(pre):
        return "gpt2"
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if steps and len(steps) == 2 and steps[0].get("type") == "Digits" and steps[0].get("individual_digits") \
            and byte_level(steps[1]):
        return "smollm"
    return None


def _tokenizer_from_json(w, hf_dir: Path, with_template: bool = True) -> int:
    """Build llama.cpp's tokenizer metadata from a byte-level BPE tokenizer.json. Returns the token count."""
    import gguf
    from transformers import AutoTokenizer

    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        raise UnsupportedModel(f"{hf_dir}: no tokenizer.json and no GGUF origin, so there is no tokenizer to put in "
                               "the GGUF (sentencepiece tokenizer.model files are not supported)")
    spec = json.loads(path.read_text())
    model = spec.get("model") or {}
    pre = _pre_tokenizer_name(spec.get("pre_tokenizer"))
    if model.get("type") != "BPE" or pre is None:
        raise UnsupportedModel(
            f"{path}: only byte-level BPE tokenizers with a GPT-2 or SmolLM pre-tokenizer can be written to GGUF "
            f"(found model {model.get('type')!r}, pre-tokenizer {json.dumps(spec.get('pre_tokenizer'))[:120]}); "
            "export from the model's GGUF instead, whose tokenizer metadata is carried over")
    vocab = dict(model["vocab"])
    added = {t["content"]: t for t in spec.get("added_tokens", [])}
    for text, t in added.items():
        vocab[text] = t["id"]
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise UnsupportedModel(f"{path}: token ids are not contiguous from 0; llama.cpp needs a dense token list")
    tokens = [t for t, _ in by_id]
    types = [gguf.TokenType.CONTROL if t in added and added[t].get("special") else
             gguf.TokenType.USER_DEFINED if t in added else gguf.TokenType.NORMAL for t in tokens]
    tok = AutoTokenizer.from_pretrained(hf_dir)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([int(t) for t in types])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])])
    for add, tid in ((w.add_bos_token_id, tok.bos_token_id), (w.add_eos_token_id, tok.eos_token_id),
                     (w.add_unk_token_id, tok.unk_token_id), (w.add_pad_token_id, tok.pad_token_id)):
        if tid is not None:
            add(tid)
    w.add_add_bos_token(bool(getattr(tok, "add_bos_token", False)))
    if with_template and tok.chat_template:
        w.add_chat_template(tok.chat_template)
    return len(tokens)


def _chat_template(hf_dir: Path) -> str | None:
    """The HF folder's own chat template (a fine-tuned folder may carry its own), if it has one."""
    jinja = hf_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    cfg = hf_dir / "tokenizer_config.json"
    template = json.loads(cfg.read_text()).get("chat_template") if cfg.is_file() else None
    return template if isinstance(template, str) else None


# ---------------------------------------------------------------------------------------------------------
# tensors


def _weight_files(hf_dir: Path) -> list[Path]:
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        return sorted({hf_dir / f for f in json.loads(index.read_text())["weight_map"].values()})
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise UnsupportedModel(f"{hf_dir}: no .safetensors weights (pickle checkpoints are converted by the merge "
                               "step only with --unsafe-allow-pickle)")
    return files


def _skipped(name: str, tied: bool) -> bool:
    # tied: llama.cpp reuses token_embd for the output when output.weight is absent; inv_freq: from rope_theta
    return (name == "lm_head.weight" and tied) or name.endswith("rotary_emb.inv_freq")


def _tensors(hf_dir: Path, cfg: dict) -> Iterator[tuple[str, object]]:
    """(llama.cpp name, float32 numpy array) for every tensor, permuted, one at a time (bounded memory)."""
    import torch
    from safetensors import safe_open

    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    tied = cfg.get("tie_word_embeddings", True)
    for f in _weight_files(hf_dir):
        with safe_open(str(f), framework="pt") as st:  # "pt": numpy cannot read bf16 safetensors
            for name in st.keys():  # noqa: SIM118 (safe_open is not iterable)
                if _skipped(name, tied):
                    continue
                gname = gguf_name(name)
                a = st.get_tensor(name).to(torch.float32).numpy()
                if gname.endswith("attn_q.weight"):
                    a = permute(a, heads)
                elif gname.endswith("attn_k.weight"):
                    a = permute(a, kv)
                yield gname, a


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape, read from a safetensors header (no weights loaded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as st:
        return {k: tuple(st.get_slice(k).get_shape()) for k in st.keys()}  # noqa: SIM118 (not iterable)


def _tensor_shapes(hf_dir: Path, cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    tied = cfg.get("tie_word_embeddings", True)
    return [(gguf_name(name), shape) for f in _weight_files(hf_dir) for name, shape in safetensors_shapes(f).items()
            if not _skipped(name, tied)]


def write_f16(hf_dir: Path, out: Path, *, name: str, tokenizer_gguf: Path | None = None,
              progress: bool = False) -> dict:
    """Write `out` as an f16 GGUF (2-D weights f16, norms f32) of the HF Llama folder `hf_dir`, atomically."""
    import gguf
    import numpy as np
    from tqdm import tqdm

    t0 = time.perf_counter()
    cfg, arch = read_config(hf_dir)
    shapes = _tensor_shapes(hf_dir, cfg)  # before any writing: a bad tensor name fails fast
    w = gguf.GGUFWriter(None, arch)  # path given at write_header_to_file: the temporary file
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_hparams(w, cfg)
    template = _chat_template(hf_dir)  # the folder's own (a fine-tune may change it) wins over a carried-over one
    if tokenizer_gguf is not None:
        skip = ("tokenizer.chat_template",) if template is not None else ()
        n_tokens = _tokenizer_from_gguf(w, tokenizer_gguf, skip)
        tokenizer = f"carried over from {tokenizer_gguf.name}"
    else:
        n_tokens = _tokenizer_from_json(w, hf_dir, with_template=template is None)
        tokenizer = "built from tokenizer.json"
    if n_tokens != cfg["vocab_size"]:
        raise UnsupportedModel(f"{hf_dir}: the tokenizer has {n_tokens} tokens but the model's vocab_size is "
                               f"{cfg['vocab_size']}; llama.cpp needs them equal")
    if template is not None:
        w.add_chat_template(template)
    dtypes = {}
    for gname, shape in shapes:
        f16 = len(shape) == 2
        dtypes[gname] = np.float16 if f16 else np.float32
        # GGUFWriter takes numpy (row-major) shapes; it writes them reversed, as ggml's ne[] order
        w.add_tensor_info(gname, shape, np.dtype(dtypes[gname]), int(np.prod(shape)) * (2 if f16 else 4))
    with atomic_write(w, out):
        w.write_ti_data_to_file()
        bar = tqdm(total=len(shapes), desc=f"write {out.name}", unit="tensor", disable=not progress, leave=False)
        order = [g for g, _ in shapes]
        for i, (gname, a) in enumerate(_tensors(hf_dir, cfg), 1):
            assert gname == order[i - 1], (gname, order[i - 1])  # same order as the tensor infos
            w.write_tensor_data(np.ascontiguousarray(a, dtype=dtypes[gname]))
            bar.update(1)
            w.flush()
            artifacts.kill_point("gguf.tensor")  # tests: a tensor reached the file
        bar.close()
    return {"architecture": arch, "tensors": len(shapes), "tokenizer": tokenizer,
            "seconds": round(time.perf_counter() - t0, 2)}


@contextlib.contextmanager
def atomic_write(w, out: Path) -> Iterator[None]:
    """Write the GGUFWriter `w` to `out` atomically: header and key/values go to a temporary file beside `out`,
    the body writes the tensors, then the file is synced and renamed into place. On any error, or a killed
    process, nothing is left under `out`'s name."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        w.write_header_to_file(tmp)
        w.write_kv_data_to_file()
        yield
        _fsync_close(w)
        os.replace(tmp, out)
    finally:
        w.close()  # a no-op after _fsync_close; on an error, the temporary file's handle
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _fsync_close(w) -> None:
    for f in w.fout or []:
        f.flush()
        os.fsync(f.fileno())
    w.close()
