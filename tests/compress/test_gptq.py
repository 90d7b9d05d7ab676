"""GPTQ packed as GGUF Q4_0: the blocks are exactly the GPTQ weights, GPTQ beats round-to-nearest on the error it
minimises, and the calibrated export beats round-to-nearest Q4_0 on a tiny model trained on the data."""

import json

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, quants

from llmkit.compress.gguf import write_f16
from llmkit.compress.gptq import dequantize, gptq_4bit, gptq_matrix, pack_blocks, write_gptq
from llmkit.compress.quantize import tensor_types


def _problem(seed=0, rows=48, cols=128, tokens=512):
    g = torch.Generator().manual_seed(seed)
    # correlated inputs with a few loud columns, as real activations are: (tokens, cols)
    x = torch.randn(tokens, 16, generator=g) @ torch.randn(16, cols, generator=g)
    x += 0.3 * torch.randn(tokens, cols, generator=g)
    x[:, :4] *= 8
    w = torch.randn(rows, cols, generator=g) * 0.05
    return w, x


@pytest.mark.parametrize("qtype", ["q4_0", "iq4_nl"])
def test_packed_blocks_dequantize_to_exactly_the_gptq_weights(qtype):
    w, x = _problem()
    d, q = gptq_matrix(w, x.T @ x, qtype=qtype)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and d.shape == (48, 4)
    assert torch.equal(d, d.half().float())  # scales are f16 values, as the blocks store them
    raw = np.frombuffer(pack_blocks(d.numpy(), q.numpy()), dtype=np.uint8).reshape(48, -1)
    assert raw.shape == (48, 4 * 18)  # 4 blocks of (2-byte d + 16 bytes of nibbles) per row
    gg = GGMLQuantizationType[qtype.upper()]
    np.testing.assert_array_equal(quants.dequantize(raw, gg), dequantize(d, q, qtype).numpy())


@pytest.mark.parametrize("qtype", ["q4_0", "iq4_nl"])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_has_lower_output_error_than_round_to_nearest(qtype, act_order):
    w, x = _problem(seed=1)
    d, q = gptq_matrix(w, x.T @ x, qtype=qtype, act_order=act_order)
    gptq = dequantize(d, q, qtype)
    gg = GGMLQuantizationType.Q4_0  # gguf-py rounds only Q4_0 to nearest; IQ4_NL's finer grid must beat it too
    rtn = torch.from_numpy(quants.dequantize(quants.quantize(w.numpy(), gg), gg))
    err = {k: float(((w - v) @ x.T).norm()) for k, v in {"gptq": gptq, "rtn": rtn}.items()}
    assert err["gptq"] < 0.7 * err["rtn"], err
    assert float((w - gptq).abs().max()) < float(w.abs().max())  # still a quantization of w, not another matrix


def _trained(tiny_llama, tmp_path, texts):
    """The tiny model after a few steps on `texts`, so it has something a 4-bit export can lose."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for step in range(30):
        ids = tok(texts[step % len(texts)], return_tensors="pt", add_special_tokens=False)["input_ids"]
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(tmp_path / "trained")
    tok.save_pretrained(tmp_path / "trained")
    return tmp_path / "trained"


def test_calibrated_q4_0_file_has_lower_val_loss_than_round_to_nearest(tiny_llama, tmp_path):
    # Q4_0 only: llama.cpp's own IQ4_NL quantizer searches each block's scale, and on this tiny model its file
    # lands inside the perplexity noise (measured: 2.475, below f16's 2.505; GPTQ 2.516). IQ4_NL's GPTQ is
    # checked on the layer output error above; on the real model it is +5.3% against +28.8% (README, Compress).
    from llmkit.compress.quantize import quantize
    from llmkit.compress.report import calibration_texts, measure

    pairs = [(f"How do I reset router {i}?", f"Hold the button on router {i} for {i % 7 + 3} seconds.")
             for i in range(40)]
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:32]))
    (data / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[32:]))
    texts = calibration_texts(data, tiny_llama, 32)  # train rows only, with the chat template
    assert len(texts) == 32 and texts[0].startswith("<|im_start|>user\nHow do I reset router 0?")
    hf = _trained(tiny_llama, tmp_path, texts)
    f16, rtn, gptq = tmp_path / "m.f16.gguf", tmp_path / "m.rtn.gguf", tmp_path / "m.gptq.gguf"
    write_f16(hf, f16, name="m")
    same_types = {"ftype": "MOSTLY_Q4_0", "token_embd": "q8_0",
                  "overrides": {r"^blk\.\d+\.(attn|ffn)_.*\.weight$": "q4_0"}}
    quantize(f16, rtn, "q4_0", preset=same_types)
    blocks = gptq_4bit(hf, texts, "q4_0")
    write_gptq(f16, gptq, blocks, "q4_0", token_embd="q8_0")
    assert tensor_types(gptq) == tensor_types(rtn) == {"Q4_0": 14, "F32": 5, "Q8_0": 1}
    assert gptq.stat().st_size == rtn.stat().st_size
    for t in GGUFReader(str(gptq)).tensors:  # the file holds exactly the GPTQ blocks
        if t.name in blocks:
            assert t.data.tobytes() == blocks[t.name]
    r_rtn = measure(f16, rtn, hf, data, rows=8, prompts=0, threads=1)
    r_gptq = measure(f16, gptq, hf, data, rows=8, prompts=0, threads=1)
    # measured: f16 2.505, round-to-nearest 2.543 (+1.5%), GPTQ 2.498 (-0.3%)
    assert r_gptq["ppl"] < r_rtn["ppl"], (r_gptq["ppl"], r_rtn["ppl"], r_gptq["ppl_f16"])
    assert abs(r_gptq["ppl_increase_pct"]) < 0.5 * abs(r_rtn["ppl_increase_pct"])


def test_q4_gptq_through_the_stage_calibrates_on_train_rows_and_needs_them(tiny_llama, tmp_path):
    from llmkit.compress import compress
    from llmkit.config import CompressConfig
    from llmkit.errors import ConfigError

    cfg = CompressConfig(quantize="q4_gptq", eval_rows=4, prompts=1, gen_tokens=4, imatrix_rows=5)
    with pytest.raises(ConfigError, match="train rows"):  # refused before any slow work
        compress(cfg, str(tiny_llama), tmp_path / "none", threads=1, progress=False)
    assert not (tmp_path / "none").exists()
    data = tmp_path / "data"
    data.mkdir()
    row = {"messages": [{"role": "user", "content": "Where is the fox?"},
                        {"role": "assistant", "content": "The fox is in the forest."}]}
    (data / "train.jsonl").write_text((json.dumps(row) + "\n") * 9)
    (data / "val.jsonl").write_text(json.dumps(row) + "\n")
    r = compress(cfg, str(tiny_llama), tmp_path / "q", dataset=data, threads=1, progress=False)
    m = r["metrics"]
    assert r["gguf"].endswith("tiny-llama0.q4_gptq.gguf") or r["gguf"].endswith(".q4_gptq.gguf")
    assert m["calibration"] == "GPTQ from 5 train rows; output matrix weighted by their importance matrix"
    assert m["tensor_types"] == {"IQ4_NL": 14, "F32": 5, "Q5_0": 1}
    # the size share: 18 bytes per 32 decoder weights (4.5 bits), 22 per 32 for the embedding (5.5 bits)
    sizes = {t.name: (int(t.n_elements), int(t.n_bytes)) for t in GGUFReader(r["gguf"]).tensors}
    assert all(b * 32 == n * 18 for name, (n, b) in sizes.items() if name.startswith("blk.") and name.endswith(
        ("_q.weight", "_k.weight", "_v.weight", "_output.weight", "_gate.weight", "_up.weight", "_down.weight")))
    assert sizes["token_embd.weight"][1] * 32 == sizes["token_embd.weight"][0] * 22

