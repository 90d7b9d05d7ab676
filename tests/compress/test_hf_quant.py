"""Weight-only int8 / int4 exports for the transformers engine (optimum-quanto): the folder's size, its reload, its
logits against the float model, the engine on it, the report, and the refusals."""

import json

import pytest
import torch
from lora_helpers import QUICK, hf_logits, make_adapter, make_train_artifact
from safetensors import safe_open

from llmkit.artifacts import read_manifest
from llmkit.compress import compress, summary
from llmkit.config import CompressConfig
from llmkit.engines import GenParams, load_engine
from llmkit.engines.hf import load_quantized, safe_int8_kernels
from llmkit.errors import ConfigError, UnsupportedModel
from llmkit.models import hf_folder, resolve_model

IDS = [5, 6, 7, 8, 9, 10, 11, 12, 40, 50, 60, 70, 80, 90, 100, 200]

# (bytes per linear weight, overhead allowed above it, max |Δlogit|, mean |Δlogit|) against the fp32 model.
# Measured on the tiny model (logits within ±2.1): bf16 alone moves them by up to 0.014; int8 by 0.039 at most,
# 0.007 on average; int4 (per row here: the rows are narrower than quanto's 128-wide groups) by 0.42 and 0.086.
# The bounds are ~2.5× those, and int8's sit below int4's measured error, so an int8 export that lost precision
# fails; another random model with the same shapes is off by more than 1 (checked below), so int4's are not vacuous.
# Overhead: a bf16 scale per row (int8), a scale and a shift per row (int4), and the safetensors header.
TYPES = {"int8": (1.0, 0.12, 0.1, 0.02), "int4": (0.5, 0.25, 0.8, 0.2)}


def _shapes(folder):
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: f.get_slice(k).get_shape() for k in f.keys()}


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_export_is_smaller_reloads_and_stays_close_to_the_float_model(quantize, tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    per_weight, overhead, max_diff, mean_diff = TYPES[quantize]
    r = compress(CompressConfig(quantize=quantize, **QUICK), str(tiny_llama), tmp_path / "q", threads=1,
                 progress=False)
    out = tmp_path / "q"
    assert r["status"] == "ran" and r["model"] == str(out) and r["gguf"] is None
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "quanto_qmap.json", "config.json", "tokenizer.json", "report.md"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)  # no pickle anywhere

    # size: linear weights at 1 (int8) or 1/2 (int4) byte, everything else (embedding, norms) bf16
    shapes = _shapes(tiny_llama)
    linear = sum(torch.Size(v).numel() for k, v in shapes.items() if k.endswith("proj.weight"))
    rest = sum(torch.Size(v).numel() for k, v in shapes.items() if not k.endswith("proj.weight"))
    size, fp32 = (out / "model.safetensors").stat().st_size, (tiny_llama / "model.safetensors").stat().st_size
    expected = linear * per_weight + rest * 2
    assert expected <= size <= expected * (1 + overhead), (size, expected)
    assert size / fp32 < (0.36 if quantize == "int8" else 0.27)  # fp32: 4 bytes for every weight

    # reload from disk: the linear layers hold quanto tensors, and the logits stay near the fp32 model's
    ref = resolve_model(str(out))
    assert ref.kind == "quantized"
    model = load_quantized(out)
    assert type(model.model.layers[0].mlp.down_proj.weight).__name__ == (
        "WeightQBytesTensor" if quantize == "int8" else "WeightQBitsTensor")
    diff = abs(hf_logits(model, IDS) - hf_logits(AutoModelForCausalLM.from_pretrained(tiny_llama), IDS))
    assert diff.max() < max_diff and diff.mean() < mean_diff, (diff.max(), diff.mean())

    # the report and the manifest
    m = r["metrics"]
    assert m["file"] == f"{tiny_llama.name}.{quantize}" and m["reference"] == "bf16 transformers"
    assert m["size_bytes"] == size and m["size_vs_f16"] < (0.7 if quantize == "int8" else 0.5)  # vs bf16
    assert m["eval"].startswith("fixed text") and m["greedy_prompts"] == 2 and m["decode_tok_s"] > 0
    assert m["ppl_f16"] > 1 and abs(m["ppl_increase_pct"]) < 5 and 0 <= m["top1_agreement"] <= 1
    assert "of bf16" in summary(m)
    outputs = read_manifest(out)["outputs"]
    assert outputs["format"] == "transformers" and outputs["library"] == "optimum-quanto"
    assert outputs["library_version"] == "0.2.7" and quantize in outputs["method"]
    assert read_manifest(out)["versions"]["optimum_quanto"] == "0.2.7"

    # the transformers engine serves it; llama.cpp refuses it by name
    engine = load_engine("transformers", ref, n_threads=1)
    pieces = list(engine.chat([{"role": "user", "content": "Paris is"}], GenParams(max_tokens=6)))
    gen = engine.submit(engine.format_chat([{"role": "user", "content": "Hi"}]), GenParams(max_tokens=4))
    assert pieces and gen.text() is not None and gen.completion_tokens == 4
    engine.close()
    with pytest.raises(UnsupportedModel, match="int8/int4 export"):
        load_engine("llamacpp", ref)


def _misaligned(t, offset_bytes):
    """A contiguous copy of `t` that starts `offset_bytes` past a 64-byte boundary (a view into a larger buffer)."""
    buf = torch.empty(t.numel() * t.element_size() + 64, dtype=torch.uint8)
    assert buf.data_ptr() % 64 == 0
    out = buf[offset_bytes:offset_bytes + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
    out.copy_(t)
    assert out.data_ptr() % 64 == offset_bytes
    return out


def test_int8_matmul_takes_misaligned_weights_activations_and_odd_widths():
    """The inputs that made torch 2.13's AVX-512 int8 kernel segfault (engines/hf.py, safe_int8_kernels): int8
    weights 8 bytes past a 64-byte boundary (as quanto reloads them), activations 16 bytes past one, and a layer 20
    wide (quanto accepts widths divisible by 4; the kernel reads rows 16 at a time). On AVX2 boxes the same inputs
    exercise the same routing; there the kernel loads weights unaligned, so none of them crashed before."""
    from optimum.quanto import freeze, qint8, quantize

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 20), torch.nn.Linear(20, 16))
    model = model.to(torch.bfloat16).eval()
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        ref = model.float()(x.float())
    model = model.to(torch.bfloat16)
    quantize(model, weights=qint8)
    freeze(model)
    for layer in model:
        layer.weight._data = _misaligned(layer.weight._data, 8)
    assert safe_int8_kernels(model) == 1  # the 20-wide layer goes through quanto's dequantizing matmul
    assert all(layer.weight._data.data_ptr() % 64 == 0 for layer in model)
    with torch.no_grad():
        y = model(_misaligned(x, 16)).float()
    assert (y - ref).abs().max() < 0.05 * ref.abs().max(), (y - ref).abs().max()  # int8 + bf16 rounding only


def test_int4_tolerance_is_tighter_than_another_model(tiny_llama, tmp_path):
    from conftest import build_tiny_llama
    from transformers import AutoModelForCausalLM

    other = build_tiny_llama(tmp_path / "other", seed=1)
    a, b = (hf_logits(AutoModelForCausalLM.from_pretrained(p), IDS) for p in (tiny_llama, other))
    assert abs(a - b).max() > 1.0 > TYPES["int4"][2]


def test_perplexity_is_taken_on_the_same_targets_as_the_gguf_report(tiny_llama, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"Where is fox {i}?"},
                          {"role": "assistant", "content": f"Fox {i} is in the forest near the river."}]}
            for i in range(3)]
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    g = compress(CompressConfig(quantize="f16", **QUICK), str(tiny_llama), tmp_path / "g", dataset=tmp_path,
                 threads=1, progress=False)["metrics"]
    h = compress(CompressConfig(quantize="int8", **QUICK), str(tiny_llama), tmp_path / "h", dataset=tmp_path,
                 threads=1, progress=False)["metrics"]
    # same rows, same reply tokens (tokenized by llama.cpp there, by transformers here), same prompts
    assert h["eval"] == g["eval"] and h["eval"].startswith(f"{tmp_path / 'val.jsonl'}: 3 rows, ")
    assert h["samples"][0]["prompt"] == g["samples"][0]["prompt"] == "Where is fox 0?"
    # bf16 in transformers and f16 in llama.cpp are the same model: their perplexities agree closely
    assert abs(h["ppl_f16"] / g["ppl_f16"] - 1) < 0.01, (h["ppl_f16"], g["ppl_f16"])


def test_a_merged_adapter_is_quantized_with_its_delta(tiny_llama, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = make_train_artifact(tiny_llama, tmp_path / "adapter")
    r = compress(CompressConfig(quantize="int8", **QUICK), str(adapter), tmp_path / "q", threads=1, progress=False)
    assert read_manifest(tmp_path / "q")["outputs"]["adapter"] == str(adapter)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), str(adapter)).merge_and_unload()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    q = hf_logits(load_quantized(tmp_path / "q"), IDS)
    assert abs(q - hf_logits(merged, IDS)).max() < TYPES["int8"][2]
    assert abs(q - hf_logits(base, IDS)).max() > 10 * TYPES["int8"][2]  # the adapter's delta is in there
    assert r["metrics"]["file"] == "adapter.int8"


def test_bad_input_is_refused_before_any_work(tiny_llama, tmp_path):
    adapter = make_adapter(tiny_llama, tmp_path / "adapter")
    with pytest.raises(ConfigError, match="compress.merge: false.*int4 export quantizes one set of weights"):
        compress(CompressConfig(quantize="int4", merge=False), str(adapter), tmp_path / "o", progress=False)
    with pytest.raises(ConfigError, match="compress.imatrix.*int4 is a transformers export"):
        compress(CompressConfig(quantize="int4", imatrix=True), str(tiny_llama), tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
    compress(CompressConfig(quantize="int8", **QUICK), str(tiny_llama), tmp_path / "q", threads=1, progress=False)
    with pytest.raises(UnsupportedModel, match="already an int8/int4 export"):
        compress(CompressConfig(quantize="q8_0"), str(tmp_path / "q"), tmp_path / "o", progress=False)
    with pytest.raises(UnsupportedModel, match="no float weights to train, merge or export"):
        hf_folder(resolve_model(str(tmp_path / "q")))


def test_cli_exports_int4_and_chat_runs_it(tiny_llama, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "q4"
    p = subprocess.run([sys.executable, "-m", "llmkit.cli", "compress", str(tiny_llama), "--quantize", "int4",
                        "--out", str(out), "--eval-rows", "2", "--prompts", "1", "--gen-tokens", "4", "--threads", "1"],
                       check=False, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "of bf16" in p.stdout and f"llmkit chat {out} --engine transformers" in p.stdout
    c = subprocess.run([sys.executable, "-m", "llmkit.cli", "chat", str(out), "--engine", "transformers",
                        "--prompt", "Hi", "--max-tokens", "4"], check=False, capture_output=True, text=True)
    assert c.returncode == 0, c.stderr
    bad = subprocess.run([sys.executable, "-m", "llmkit.cli", "chat", str(out), "--prompt", "Hi"], check=False,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.startswith("error: ") and "--engine transformers" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_server_serves_an_int8_export(tiny_llama, tmp_path):
    from serve_helpers import MODEL, make_state, running

    compress(CompressConfig(quantize="int8", **QUICK), str(tiny_llama), tmp_path / "q", threads=1, progress=False)
    with running(make_state(tmp_path / "q")) as server:
        r = server.openai().chat.completions.create(model=MODEL, max_tokens=5,
                                                    messages=[{"role": "user", "content": "Paris is"}])
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens > 0
