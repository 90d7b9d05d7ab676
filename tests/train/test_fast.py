"""train/fast.py against the stock paths it replaces: same loss, same gradients, same adapters."""

import json

import pytest
import torch

from llmkit.config import DataConfig, TrainConfig
from llmkit.data import prepare
from llmkit.train import fast
from llmkit.train.sft import load_model, loss_sum, make_batches, tensors


@pytest.fixture(scope="module")
def batch(tiny_llama, tmp_path_factory):
    """Two packed rows of several examples each, the second right-padded: every case the segments must handle."""
    from transformers import AutoTokenizer

    from llmkit.train.sft import load_examples

    d = tmp_path_factory.mktemp("fastds")
    rows = [{"instruction": f"Question {i}: how do I reset router R{i}?", "output": f"Hold it {i} seconds."}
            for i in range(12)]
    (d / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare(DataConfig(train=str(d / "t.jsonl"), val_fraction=0.0, dedupe="none"), d / "data", model=str(tiny_llama),
            progress=False)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ex = load_examples(d / "data", "train", tok, "lora", 200)
    b = make_batches(ex[:5], TrainConfig(batch_size=2, max_length=200, packing=True), 0, tok.pad_token_id)[0]
    assert b["input_ids"].shape[0] == 2 and (b["position_ids"] == 0).sum() >= 5  # several sequences per row
    return b


def test_segments_split_at_position_restarts():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    assert fast.segments(pos) == [(0, 0, 3), (0, 3, 5), (0, 5, 6), (1, 0, 4), (1, 4, 6)]


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    s, n = loss_sum(model, tensors(batch))
    (s / n).backward()
    return float(s), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method,fuse", [("lora", False), ("lora", True), ("full", None)])
def test_fast_paths_give_the_stock_loss_and_gradients(tiny_llama, batch, method, fuse):
    cfg = TrainConfig(method=method, precision="fp32", lora={"r": 8, "alpha": 16})
    torch.manual_seed(0)
    model = load_model(cfg, tiny_llama)
    with torch.no_grad():  # peft starts lora_B at zero; give it weights so its gradient path is exercised
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    ref_loss, ref_grads = _loss_and_grads(model, batch)
    assert fast.use_packed_attention(model)
    layers = fast.use_fast_lora(model, fuse=fuse)
    assert layers == (14 if method == "lora" else 0)  # 7 projections x 2 layers; a full fine-tune has no LoRA
    loss, grads = _loss_and_grads(model, batch)
    assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss)
    for k, g in ref_grads.items():
        assert torch.allclose(grads[k], g, rtol=1e-4, atol=1e-6), (k, (grads[k] - g).abs().max())
    fast.restore_lora(model)
    fast.restore_attention(model)
    again, _ = _loss_and_grads(model, batch)
    assert abs(again - ref_loss) <= 1e-6 * abs(ref_loss)


def test_fast_lora_under_bf16_autocast(tiny_llama, batch):
    cfg = TrainConfig(method="lora", precision="bf16", lora={"r": 8, "alpha": 16})
    model = load_model(cfg, tiny_llama)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, _ = _loss_and_grads(model, batch)
        fast.use_fast_lora(model)
        fast.use_packed_attention(model)
        got, grads = _loss_and_grads(model, batch)
    assert abs(got - ref) <= 2e-2 * abs(ref)  # bf16 rounding differs between the two orders of operations
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads.values())


def test_fused_siblings_give_each_projection_its_own_output_in_any_order(tiny_llama):
    """q, k, v computed together on the first call; asked for in another order, or with another x, each
    projection still returns exactly its own x W^T + s x A^T B^T."""
    model = load_model(TrainConfig(method="lora", precision="fp32", lora={"r": 8, "alpha": 16}), tiny_llama)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    attn = fast.base_model(model).model.layers[0].self_attn
    x, other = torch.randn(2, 5, attn.q_proj.in_features), torch.randn(2, 5, attn.q_proj.in_features)
    want = {n: getattr(attn, n)(x) for n in ("q_proj", "k_proj", "v_proj")}  # peft's own forward
    fast.use_fast_lora(model, fuse=True)
    assert attn.q_proj._llmkit_group is attn.v_proj._llmkit_group and len(attn.k_proj._llmkit_group.members) == 3
    got = {"v_proj": attn.v_proj(x), "q_proj": attn.q_proj(x)}
    attn.q_proj(other)  # a call with another x in between
    got["k_proj"] = attn.k_proj(x)
    again = attn.k_proj(x)  # asked twice: computed again
    for n, w in want.items():
        assert torch.allclose(got[n], w, atol=1e-6), n
    assert torch.allclose(again, want["k_proj"], atol=1e-6)
    x = x.clone()
    for n in ("q_proj", "k_proj", "v_proj"):  # the usual order: each output handed over once, nothing kept
        assert torch.allclose(getattr(attn, n)(x), want[n], atol=1e-6)
    assert attn.q_proj._llmkit_group.x is None and attn.q_proj._llmkit_group.outs == [None] * 3
    fast.restore_lora(model)
    assert torch.allclose(attn.k_proj(x), want["k_proj"], atol=1e-6)  # the weights, now views, are unchanged


def test_disabled_adapter_and_fast_lora(tiny_llama, batch):
    """DPO's reference pass runs the base with the adapter switched off: the fast path must honour that."""
    model = load_model(TrainConfig(method="lora", precision="fp32"), tiny_llama)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
        fast.use_fast_lora(model)
        with model.disable_adapter():
            off, _ = loss_sum(model, tensors(batch))
        on, _ = loss_sum(model, tensors(batch))
        fast.restore_lora(model)
        with model.disable_adapter():
            stock_off, _ = loss_sum(model, tensors(batch))
    assert abs(float(off) - float(stock_off)) < 1e-5 * abs(float(stock_off)) and abs(float(on) - float(off)) > 1e-3


def _qkv(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, h, n, 16, generator=g).to(torch.bfloat16) for h in (4, 2, 2))  # GQA: 4 heads, 2 kv
    return q, k, v


def test_short_bf16_sequences_run_the_fp32_kernel_even_under_autocast():
    import torch.nn.functional as F

    q, k, v = _qkv(40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fast._causal(q, k, v, None, 0.0, fp32=True)
        bf16 = fast._causal(q, k, v, None, 0.0, fp32=False)
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, enable_gqa=True)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want.to(torch.bfloat16))  # fp32 inside, not recast
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True, enable_gqa=True)
    assert (got.double() - exact).abs().max() <= 1e-2 and (bf16.double() - exact).abs().max() <= 2e-2


def test_packed_attention_upcasts_only_sequences_up_to_the_limit(monkeypatch):
    """The fp32 kernel for segments of at most FP32_MAX_LEN tokens, bf16 for longer ones and on AMX CPUs."""
    calls = []
    real = fast._causal
    monkeypatch.setattr(fast, "_causal", lambda q, k, v, s, p, fp32: calls.append((q.shape[2], fp32)) or real(q, k, v, s, p, fp32))
    monkeypatch.setattr(fast, "FP32_MAX_LEN", 8)
    monkeypatch.setattr(fast, "_amx", lambda: False)
    q, k, v = _qkv(20)
    pos = torch.tensor([list(range(6)) + list(range(14))])
    module = torch.nn.Module().eval()
    out, _ = fast.packed_attention(module, q, k, v, None, position_ids=pos)
    assert out.shape == (1, 20, 4, 16) and calls == [(6, True), (14, False)]
    calls.clear()
    monkeypatch.setattr(fast, "_amx", lambda: True)
    fast.packed_attention(module, q, k, v, None, position_ids=pos)
    assert calls == [(14, False)]  # both in one bf16 group, padded to 14
    calls.clear()
    fast.packed_attention(module, q.float(), k.float(), v.float(), None, position_ids=pos)  # fp32 training
    assert calls == [(14, False)]


def _per_sequence(q, k, v, pos):
    """The reference: causal SDPA of each packed sequence on its own, in float64."""
    import torch.nn.functional as F

    outs = [F.scaled_dot_product_attention(q[r:r + 1, :, s:e].double(), k[r:r + 1, :, s:e].double(),
                                           v[r:r + 1, :, s:e].double(), is_causal=True, enable_gqa=True)
            for r, s, e in fast.segments(pos)]
    rows = [torch.cat([o for o, (r, _, _) in zip(outs, fast.segments(pos)) if r == b], dim=2) for b in range(q.shape[0])]
    return torch.cat(rows).transpose(1, 2)


@pytest.mark.parametrize("lengths", [[[5, 9, 7], [21]], [[3, 150, 40, 4], [100, 97]], [[300, 12], [200, 112]]])
def test_grouped_padded_attention_equals_each_sequence_alone(lengths, monkeypatch):
    """Sequences stacked and right-padded into groups give each sequence's own causal attention, forward and
    backward, whatever the mix of lengths (short ones share a group, long ones get their own)."""
    monkeypatch.setattr(fast, "_amx", lambda: False)
    T = max(sum(row) for row in lengths)
    pos = torch.tensor([[j for n in row for j in range(n)] + list(range(T - sum(row))) for row in lengths])
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(len(lengths), T, h, 16, generator=g).transpose(1, 2).requires_grad_() for h in (4, 2, 2))
    want = _per_sequence(q, k, v, pos)
    dy = torch.randn(want.shape, generator=g, dtype=want.dtype)
    (want * dy).sum().backward()
    ref = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    got, _ = fast.packed_attention(torch.nn.Module().train(), q, k, v, None, position_ids=pos)
    (got * dy.float()).sum().backward()
    assert (got.double() - want).abs().max() < 1e-5
    for x, r in zip((q, k, v), ref):
        assert (x.grad.double() - r).abs().max() < 1e-5
    groups = fast.plan(pos, upcast=False)
    assert sum(len(idx) for _, _, idx, _ in groups) < 1.3 * pos.numel() + fast.SHORT * len(groups)  # padding bounded
