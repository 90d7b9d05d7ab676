"""Two exact speed-ups for training on packed sequences; the math is peft's and transformers', fewer passes.

1. `packed_attention`: attention per packed sequence. transformers builds a (B, 1, T, T) block-diagonal mask
   for packed rows, and SDPA then computes every (query, key) pair of the row and masks most of them away.
   Three 64-token rows packed into 196 positions need a third of that work, and causal attention of each row
   on its own needs half of that again. Measured on SmolLM2-135M (one thread): 0.97 s → 0.39 s of attention
   per three packed steps of ~250 tokens. Under bf16, each sequence of at most `FP32_MAX_LEN` tokens runs
   torch's flash kernel in fp32 on upcast q, k, v (the output cast back): on a 2-core AVX-512-bf16 EPYC without
   AMX, torch 2.13's bf16 flash kernel takes 2.6x as long for forward and backward of a 64-token sequence, 1.9x
   for 128, 1.15x for 256, 1.08x for 512, and is faster from 1024 up. Same values to bf16 rounding (the
   inputs are exact in fp32; the softmax is fp32 in both). Not on AMX CPUs, where the bf16 kernel was not
   measured against it.
2. `fast_lora`: a LoRA linear as one autograd function. peft computes base(x) + lora_B(lora_A(x)) * scaling
   as five ops, each a pass over the (N, out) output, and the backward as many again. Here the low-rank
   product is added by the GEMM itself, in place (`addmm_`: C += scaling * h @ B^T), and the same for the input
   gradient. Forward and gradients equal peft's to float rounding (tests/train/test_fast.py).

Both are used by the train loop only (`train.fast: true`, the default) and leave the model as peft and
transformers built it: the adapter saved is the same PEFT adapter.
"""

from __future__ import annotations

import types

from llmkit.models import cpu_flags
from llmkit.train.common import base_model

ATTENTION = "llmkit_packed"


# ---------------------------------------------------------------------------------------------------------
# attention per packed sequence


def segments(position_ids) -> list[tuple[int, int, int]]:
    """(row, start, end) of every sequence packed into a (B, T) batch: a sequence starts where positions restart.

    Right padding (positions 0.. again, see sft.collate) is a sequence of its own: it sees only itself.
    """
    out = []
    for row, pos in enumerate(position_ids.tolist()):
        starts = [i for i, p in enumerate(pos) if p == 0 or i == 0] + [len(pos)]
        out += [(row, s, e) for s, e in zip(starts, starts[1:])]
    return out


_SEGMENTS: list = [None, None]  # [position_ids tensor, its segments]: the last forward's


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention interface: query (B, H, T, D), key/value (B, H_kv, T, D) → ((B, T, H, D), None).

    Each packed sequence attends causally to itself only, as the block-diagonal mask would let it.
    """
    import torch

    position_ids = kwargs.get("position_ids")
    if position_ids is None or attention_mask is not None:
        raise RuntimeError("llmkit's packed attention needs position_ids and no attention mask (training only)")
    if _SEGMENTS[0] is not position_ids:  # every layer gets the same tensor: split it once per forward
        _SEGMENTS[:] = [position_ids, segments(position_ids)]
    segs = _SEGMENTS[1]
    p = dropout if module.training else 0.0
    upcast = query.dtype == torch.bfloat16 and query.device.type == "cpu" and not _amx()
    outs = [_causal(query[r:r + 1, :, s:e], key[r:r + 1, :, s:e], value[r:r + 1, :, s:e], scaling, p,
                    upcast and e - s <= FP32_MAX_LEN)  # (1, H, e-s, D)
            for r, s, e in segs]
    rows = [torch.cat([o for o, seg in zip(outs, segs) if seg[0] == b], dim=2) for b in range(query.shape[0])]
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None  # (B, T, H, D)


FP32_MAX_LEN = 512  # bf16 sequences up to this long run the fp32 flash kernel on CPU (module docstring)


def _causal(q, k, v, scaling, dropout: float, fp32: bool):
    """Causal SDPA of one sequence; with `fp32`, on fp32 copies of bf16 q, k, v, outside autocast, cast back."""
    import torch
    import torch.nn.functional as F

    if not fp32:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, dropout_p=dropout, enable_gqa=True)
    with torch.autocast("cpu", enabled=False):  # autocast would cast them back to bf16
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, scale=scaling,
                                             dropout_p=dropout, enable_gqa=True)
    return out.to(q.dtype)


def _amx() -> bool:
    return "amx_bf16" in cpu_flags()


def _no_mask(*args, **kwargs):
    return None  # packed_attention derives what each token may see from position_ids


def use_packed_attention(model) -> bool:
    """Switch a transformers model (or a peft model around one) to packed_attention; False where it cannot."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION, packed_attention)
    AttentionMaskInterface.register(ATTENTION, _no_mask)
    base = base_model(model)
    if base.config.model_type not in ("llama", "mistral", "qwen2", "qwen3"):  # decoders that pass position_ids on
        return False
    if base.config._attn_implementation != ATTENTION:
        base._llmkit_attention = base.config._attn_implementation
        base.set_attn_implementation(ATTENTION)
    return True


def restore_attention(model) -> None:
    """Back to the attention the model was loaded with (before saving it, or generating with it)."""
    base = base_model(model)
    if base.config._attn_implementation == ATTENTION:
        base.set_attn_implementation(base._llmkit_attention)


# ---------------------------------------------------------------------------------------------------------
# LoRA linear as one function


def _lora_function():
    import torch

    class LoRALinear(torch.autograd.Function):
        """y = x W^T + b + scaling * (x A^T) B^T, with the frozen W and b getting no gradient.

        x (N, in), W (out, in), A (r, in), B (out, r).
        """

        @staticmethod
        @torch.amp.custom_fwd(device_type="cpu")
        def forward(ctx, x, weight, bias, lora_a, lora_b, scaling):
            dt = weight.dtype if not torch.is_autocast_enabled("cpu") else torch.get_autocast_dtype("cpu")
            x2 = x.reshape(-1, x.shape[-1]).to(dt)  # (N, in)
            a, b = lora_a.to(dt), lora_b.to(dt)
            h = x2 @ a.t()  # (N, r)
            y = torch.addmm(bias.to(dt), x2, weight.to(dt).t()) if bias is not None else x2 @ weight.to(dt).t()
            y.addmm_(h, b.t(), alpha=scaling)  # (N, out): the low-rank term added by the GEMM, in place
            ctx.save_for_backward(x2, weight, a, b, h)
            ctx.scaling, ctx.shape = scaling, x.shape
            return y.reshape(*x.shape[:-1], y.shape[-1])

        @staticmethod
        @torch.amp.custom_bwd(device_type="cpu")
        def backward(ctx, dy):
            x2, weight, a, b, h = ctx.saved_tensors
            dy = dy.reshape(-1, dy.shape[-1]).to(x2.dtype)  # (N, out)
            s = ctx.scaling
            dh = (dy @ b) * s  # (N, r)
            d_b = (dy.t() @ h) * s  # (out, r)
            d_a = dh.t() @ x2  # (r, in)
            dx = None
            if ctx.needs_input_grad[0]:
                dx = (dy @ weight.to(x2.dtype)).addmm_(dh, a).reshape(ctx.shape)  # (N, in) → x's shape
            return dx, None, None, d_a, d_b, None

    return LoRALinear


_FN = None


def _fast_forward(self, x, *args, **kwargs):
    """peft LoRA Linear forward with one active, unmerged, plain adapter, through LoRALinear."""
    if self.disable_adapters or self.merged or len(self.active_adapters) != 1:
        return self._llmkit_peft_forward(x, *args, **kwargs)
    name = self.active_adapters[0]
    if name not in self.lora_A:
        return self._llmkit_peft_forward(x, *args, **kwargs)
    base = self.base_layer
    return _FN.apply(x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight,
                     self.scaling[name])


def use_fast_lora(model) -> int:
    """Route every plain LoRA Linear of a peft model through LoRALinear; returns how many layers.

    Left to peft: dropout > 0, DoRA, a quantized base (QLoRA), several adapters — anything but the plain case.
    """
    import torch
    from peft.tuners.lora import Linear as LoraLinear

    global _FN
    _FN = _FN or _lora_function()
    n = 0
    for m in model.modules():
        if not isinstance(m, LoraLinear) or type(m.base_layer) is not torch.nn.Linear:
            continue
        plain = all(isinstance(d, torch.nn.Identity) for d in m.lora_dropout.values()) and \
            not any(m.use_dora.values()) and len(m.lora_A) == 1
        if plain and not hasattr(m, "_llmkit_peft_forward"):
            m._llmkit_peft_forward = m.forward
            m.forward = types.MethodType(_fast_forward, m)
            n += 1
    return n


def restore_lora(model) -> None:
    for m in model.modules():
        if hasattr(m, "_llmkit_peft_forward"):
            m.forward = m._llmkit_peft_forward
            del m._llmkit_peft_forward
