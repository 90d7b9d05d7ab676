"""GGUF export of the tiny Llama: every type loads in llama.cpp, f16 logits match transformers, the tokenizer
metadata is right (built from tokenizer.json, or carried over from a GGUF origin), bad input is refused, and
kill -9 during an export leaves nothing under the output name."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from lora_helpers import QUICK, hf_logits, llama_logits

from llmkit.compress import compress
from llmkit.compress.gguf import permute
from llmkit.compress.quantize import tensor_types
from llmkit.config import CompressConfig
from llmkit.engines import GenParams, load_engine
from llmkit.errors import UnsupportedModel
from llmkit.models import _unpermute, resolve_model

TEXT = "The quick brown fox jumps over the lazy dog. In 2024 there were 12 foxes."


def test_permute_is_the_inverse_of_the_importers_unpermute():
    w = np.arange(8 * 6 * 3, dtype=np.float32).reshape(8 * 6, 3)  # 8 heads of dim 6
    assert not np.array_equal(permute(w, 8), w)
    assert np.array_equal(_unpermute(permute(w, 8), 8), w)


# which tensor types each export must hold on the 256-wide model (2-D weights; norms stay F32)
EXPECTED = {"f16": {"F16"}, "q8_0": {"Q8_0"}, "q4_0": {"Q4_0"}, "q4_k": {"Q4_K"}}


@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_0", "q4_k"])
def test_every_type_exports_loads_and_chats_in_llama_cpp(tiny_wide, tmp_path, quant):
    out = tmp_path / "export"
    r = compress(CompressConfig(quantize=quant, **QUICK), str(tiny_wide), out, threads=1, progress=False)
    gguf = out / f"{tiny_wide.name}.{quant}.gguf"
    assert r["gguf"] == str(gguf) and sorted(p.name for p in out.iterdir()) == sorted([gguf.name, "manifest.json",
                                                                                       "report.md"])
    types = tensor_types(gguf)
    assert EXPECTED[quant] <= set(types) and types["F32"] == 5  # 2 layers x 2 norms + the output norm
    m = r["metrics"]
    assert m["size_bytes"] == gguf.stat().st_size
    if quant != "f16":
        assert m["size_vs_f16"] < {"q8_0": 0.6, "q4_0": 0.45, "q4_k": 0.45}[quant]
        # measured, not assumed: on this random model 4-bit keeps ~half the argmaxes; a broken export ~1/vocab
        assert m["top1_agreement"] > {"q8_0": 0.9, "q4_0": 0.25, "q4_k": 0.25}[quant]
    ref = resolve_model(str(out))  # the artifact folder resolves to its one .gguf
    assert ref.kind == "gguf" and ref.path == gguf
    engine = load_engine("llamacpp", ref, n_ctx=256, n_threads=1)
    reply = list(engine.chat([{"role": "user", "content": "Hi"}], GenParams(max_tokens=4)))
    engine.close()
    assert isinstance("".join(reply), str)


def test_f16_logits_match_transformers(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    r = compress(CompressConfig(quantize="f16", **QUICK), str(tiny_llama), tmp_path / "e", threads=1, progress=False)
    ids = AutoTokenizer.from_pretrained(tiny_llama)(TEXT)["input_ids"]
    hf = hf_logits(AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), ids)
    cpp = llama_logits(r["gguf"], ids)
    # f16 weights and llama.cpp's f16 dot products: close, not equal. A q/k row order or norm mix-up is off by ~1.
    assert np.abs(cpp - hf).max() < 0.02 * np.abs(hf).max()
    assert (cpp.argmax(-1) == hf.argmax(-1)).all()


def test_tokenizer_built_from_tokenizer_json_matches_transformers(tiny_llama, tmp_path):
    from conftest import CHATML
    from gguf import GGUFReader
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    r = compress(CompressConfig(quantize="q8_0", **QUICK), str(tiny_llama), tmp_path / "e", threads=1, progress=False)
    assert r["metrics"]["tokenizer"] == "built from tokenizer.json"
    fields = GGUFReader(r["gguf"]).fields
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert fields["tokenizer.chat_template"].contents() == CHATML
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    llm = Llama(model_path=r["gguf"], n_ctx=64, n_threads=1, vocab_only=True, verbose=False)
    for text in [TEXT, "Paris 1999: 3,141 foxes!", "<|im_start|>user\nhi<|im_end|>\n"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids


def test_tokenizer_metadata_is_carried_over_from_a_gguf_origin(tiny_gguf, tmp_path):
    from gguf import GGUFReader

    r = compress(CompressConfig(quantize="q4_0", **QUICK), str(tiny_gguf), tmp_path / "e", threads=1, progress=False)
    assert r["metrics"]["tokenizer"] == f"carried over from {tiny_gguf.name}"
    src, dst = GGUFReader(str(tiny_gguf)).fields, GGUFReader(r["gguf"]).fields
    keys = sorted(k for k in src if k.startswith("tokenizer."))
    assert "tokenizer.ggml.merges" in keys and "tokenizer.chat_template" in keys
    assert all(dst[k].contents() == src[k].contents() for k in keys)


def test_a_full_fine_tune_of_a_gguf_carries_its_bases_tokenizer_over(tiny_llama, tiny_gguf, tmp_path):
    from llmkit import artifacts

    # what the train stage writes for method full: an HF folder, and a manifest whose base input is the GGUF
    with artifacts.build("model", tmp_path / "full", {"train": "full"}, {"base": artifacts.input_ref(tiny_gguf)}) as b:
        shutil.copytree(tiny_llama, b.tmp, dirs_exist_ok=True)
    r = compress(CompressConfig(quantize="q8_0", **QUICK), str(tmp_path / "full"), tmp_path / "e", threads=1,
                 progress=False)
    assert r["metrics"]["tokenizer"] == f"carried over from {tiny_gguf.name}"


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    (tmp_path / "gpt2").mkdir()
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModel, match="GPT2LMHeadModel cannot be exported to GGUF; supported: LlamaForCausal"):
        compress(CompressConfig(), str(tmp_path / "gpt2"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_unknown_tokenizer_without_gguf_origin_is_a_clear_error(tiny_llama, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(tiny_llama, model)
    spec = json.loads((model / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Whitespace"}
    (model / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(UnsupportedModel, match="only byte-level BPE tokenizers"):
        compress(CompressConfig(), str(model), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def _cli(args, **env):
    return subprocess.run([sys.executable, "-m", "llmkit.cli", "compress", *args], check=False, capture_output=True,
                          text=True, env={**os.environ, "LLMKIT_THREADS": "1", **env}, timeout=600)


def _leftovers(out):
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_kill_9_during_export_leaves_nothing_under_the_name_and_a_rerun_completes(tiny_llama, tmp_path):
    out = tmp_path / "export"
    args = [str(tiny_llama), "--quantize", "f16", "--out", str(out), "--prompts", "1", "--gen-tokens", "4"]
    killed = _cli(args, LLMKIT_TEST_KILL_AT="gguf.tensor:5")
    assert killed.returncode == -9, killed.stderr  # SIGKILL with 5 of 20 tensors in the file
    assert not out.exists()
    partial = [p for p in (tmp_path / _leftovers(out)[0]).iterdir() if ".tmp-" in p.name]
    assert partial and partial[0].stat().st_size > 0  # it really died half-way through writing

    done = _cli(args)
    assert done.returncode == 0, done.stderr
    assert "ppl ref" in done.stdout and "reference: f16 GGUF" in done.stdout and "tiny-llama" in done.stdout
    assert _leftovers(out) == []  # the killed run's temp folder was swept
    gguf = out / f"{tiny_llama.name}.f16.gguf"
    assert sorted(p.name for p in out.iterdir()) == sorted([gguf.name, "manifest.json", "report.md"])
    digest = gguf.read_bytes()

    again = _cli([*args, "--force"], LLMKIT_TEST_KILL_AT="gguf.tensor:5")  # killed while replacing a finished export
    assert again.returncode == -9
    assert gguf.read_bytes() == digest and (out / "manifest.json").is_file()  # the finished one is untouched
    engine = load_engine("llamacpp", resolve_model(str(out)), n_ctx=128, n_threads=1)
    engine.close()
