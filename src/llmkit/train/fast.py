"""Two exact speed-ups for training on packed sequences; the math is peft's and transformers', fewer passes.

1. `packed_attention`: attention per packed sequence. transformers builds a (B, 1, T, T) block-diagonal mask
   for packed rows, and SDPA then computes every (query, key) pair of the row and masks most of them away.
   Three 64-token rows packed into 196 positions need a third of that work, and causal attention of each row
   on its own needs half of that again. Measured on SmolLM2-135M (one thread): 0.97 s → 0.39 s of attention
   per three packed steps of ~250 tokens. The sequences go to SDPA stacked, right-padded to a common length,
   one call per group of similar lengths (`plan`). Under bf16, sequences of at most `FP32_MAX_LEN` tokens run
   torch's flash kernel in fp32 on upcast q, k, v (the output cast back): on a 2-core AVX-512-bf16 EPYC without
   AMX, torch 2.13's bf16 flash kernel takes 2.6x as long for forward and backward of a 64-token sequence, 1.9x
   for 128, 1.15x for 256, 1.08x for 512, and is faster from 1024 up. Same values to bf16 rounding (the
   inputs are exact in fp32; the softmax is fp32 in both). Not on AMX CPUs, where the bf16 kernel was not
   measured against it.
2. `fast_lora`: LoRA linears as one autograd function. peft computes base(x) + lora_B(lora_A(x)) * scaling
   as five ops, each a pass over the (N, out) output, and the backward as many again. Here the low-rank
   product is added by the GEMM itself, in place (`addmm_`: C += scaling * h @ B^T), and the same for the input
   gradient; with bf16 weights, the projections a module calls on the same x (q, k, v; gate, up) run as one,
   their frozen weights stacked into one GEMM. Forward and gradients equal peft's to float rounding
   (tests/train/test_fast.py).

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


_PLAN: list = [None, None, None]  # [position_ids, upcast, plan]: the last forward's (every layer gets the same tensor)


def plan(position_ids, upcast: bool) -> list[tuple]:
    """How packed_attention batches the sequences of a (B, T) batch: a list of (fp32, L, idx, inv).

    Sequences are sorted by length and stacked, each right-padded to its group's longest `L`, into one causal
    SDPA call per group: one call instead of one per sequence (fewer, larger kernels: measured 2.8 → 2.2 ms
    forward and backward for three ~65-token sequences of SmolLM2-135M's attention). Padding a causal sequence
    at its end changes none of its real outputs: a real query never sees a later key. The padding positions
    repeat the sequence's last token; their outputs are dropped. `idx` gathers the group's (n * L) rows from the
    (B * T) flat positions; `inv` gives, for every flat position in order, its row in the groups' outputs
    concatenated. A group takes the next (longer) sequence while the padding stays within a quarter of its
    real tokens or its longest sequence is at most SHORT tokens (kernel overhead dominates there). With
    `upcast`, sequences up to FP32_MAX_LEN run in fp32, longer ones in their own groups in bf16.
    """
    import torch

    T = position_ids.shape[1]
    seqs = sorted((e - s, r * T + s) for r, s, e in segments(position_ids))  # (length, flat start)
    groups: list[list] = []  # [fp32, L, real tokens, [(start, length)]]
    for n, start in seqs:
        fp32 = upcast and n <= FP32_MAX_LEN
        g = groups[-1] if groups else None
        if g and g[0] == fp32 and (n <= SHORT or n * (len(g[3]) + 1) <= 1.25 * (g[2] + n)):
            g[1], g[2] = n, g[2] + n
            g[3].append((start, n))
        else:
            groups.append([fp32, n, n, [(start, n)]])
    idxs, inv, row = [], [0] * position_ids.numel(), 0
    for _, L, _, members in groups:
        idx = []
        for start, n in members:
            idx += list(range(start, start + n)) + [start + n - 1] * (L - n)
            inv[start:start + n] = range(row, row + n)
            row += L
        idxs.append(torch.tensor(idx))
    inv_t = torch.tensor(inv)
    return [(g[0], g[1], idx, inv_t) for g, idx in zip(groups, idxs)]


SHORT = 128  # sequences up to this long share a group whatever the padding (see plan)


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention interface: query (B, H, T, D), key/value (B, H_kv, T, D) → ((B, T, H, D), None).

    Each packed sequence attends causally to itself only, as the block-diagonal mask would let it.
    """
    import torch

    position_ids = kwargs.get("position_ids")
    if position_ids is None or attention_mask is not None:
        raise RuntimeError("llmkit's packed attention needs position_ids and no attention mask (training only)")
    upcast = query.dtype == torch.bfloat16 and query.device.type == "cpu" and not _amx()
    if _PLAN[0] is not position_ids or _PLAN[1] != upcast:  # plan the batch once per forward
        _PLAN[:] = [position_ids, upcast, plan(position_ids, upcast)]
    B, H, T, D = query.shape
    flat = [x.transpose(1, 2).reshape(B * T, x.shape[1], D) for x in (query, key, value)]  # (B*T, heads, D)
    p = dropout if module.training else 0.0
    outs = []
    for fp32, L, idx, _ in _PLAN[2]:
        idx = idx.to(query.device)
        q, k, v = (x.index_select(0, idx).view(-1, L, x.shape[1], D).transpose(1, 2) for x in flat)  # (n, h, L, D)
        outs.append(_causal(q, k, v, scaling, p, fp32).transpose(1, 2).reshape(-1, H, D))  # (n*L, H, D)
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    return out.index_select(0, _PLAN[2][0][3].to(out.device)).view(B, T, H, D), None


FP32_MAX_LEN = 512  # bf16 sequences up to this long run the fp32 flash kernel on CPU (module docstring)


def _causal(q, k, v, scaling, dropout: float, fp32: bool):
    """Causal SDPA of a batch of sequences; with `fp32`, on fp32 copies of bf16 q, k, v, outside autocast, cast back."""
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
# LoRA linears as one function, siblings fused

# projections that their module calls one after another on the same x (attention; a gated MLP)
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _lora_function():
    import torch

    class LoRAGroup(torch.autograd.Function):
        """k LoRA linears that read the same x, as one: y_i = x W_i^T + b_i + s_i (x A_i^T) B_i^T, i < k.

        x (N, in); W (sum out_i, in) and b: the members' frozen weights and biases stacked (their own are views
        of these); A_i (r_i, in), B_i (out_i, r_i). Forward: three GEMMs for all k members (x W^T; x A^T with
        the A's stacked; the low-rank terms added by the GEMM itself, in place, with the s_i B_i on a block
        diagonal). Backward: the same, and in bf16 each B's gradient as (h_i^T dy_i)^T, which oneDNN runs ~2x
        faster than dy_i^T h_i at these shapes. One member (o_proj, down_proj; every one in fp32) is a group of one.
        """

        @staticmethod
        @torch.amp.custom_fwd(device_type="cpu")
        def forward(ctx, x, weight, bias, scalings, *ab):
            k = len(ab) // 2
            dt = weight.dtype if not torch.is_autocast_enabled("cpu") else torch.get_autocast_dtype("cpu")
            x2 = x.reshape(-1, x.shape[-1]).to(dt)  # (N, in)
            a = torch.cat([t.to(dt) for t in ab[:k]]) if k > 1 else ab[0].to(dt)  # (sum r, in)
            b = torch.block_diag(*((t * s).to(dt) for t, s in zip(ab[k:], scalings)))  # (sum out, sum r)
            h = x2 @ a.t()  # (N, sum r)
            w = weight.to(dt)
            y = torch.addmm(bias.to(dt), x2, w.t()) if bias is not None else x2 @ w.t()  # (N, sum out)
            y.addmm_(h, b.t())
            ctx.save_for_backward(x2, weight, a, b, h)
            ctx.sizes, ctx.ranks = [t.shape[0] for t in ab[k:]], [t.shape[0] for t in ab[:k]]
            ctx.scalings, ctx.shape = scalings, x.shape
            return tuple(t.view(*x.shape[:-1], t.shape[1]) for t in y.split(ctx.sizes, dim=1))

        @staticmethod
        @torch.amp.custom_bwd(device_type="cpu")
        def backward(ctx, *dys):
            x2, weight, a, b, h = ctx.saved_tensors
            n = x2.shape[0]
            dys = [d.reshape(n, -1).to(x2.dtype) if d is not None else x2.new_zeros(n, o)
                   for d, o in zip(dys, ctx.sizes)]
            dy = torch.cat(dys, dim=1) if len(dys) > 1 else dys[0]  # (N, sum out)
            dh = dy @ b  # (N, sum r): the scalings are in b
            d_a = (dh.t() @ x2).split(ctx.ranks)  # (r_i, in) each
            hs = h.split(ctx.ranks, dim=1)
            if x2.dtype == torch.bfloat16:  # oneDNN: ~2x faster this way round; MKL's fp32 GEMM: not (measured)
                d_b = [(hi.t() @ di).t() * s for hi, di, s in zip(hs, dys, ctx.scalings)]
            else:
                d_b = [(di.t() @ hi) * s for hi, di, s in zip(hs, dys, ctx.scalings)]
            dx = None
            if ctx.needs_input_grad[0]:
                dx = (dy @ weight.to(x2.dtype)).addmm_(dh, a).reshape(ctx.shape)  # (N, in) → x's shape
            return dx, None, None, None, *d_a, *d_b

    return LoRAGroup


_FN = None


class _Group:
    """LoRA linears (peft `lora.Linear`) of one module that it calls on the same x: the first member called
    computes every member's output through one LoRAGroup and keeps the others' until they are asked for with
    that same x. A call with another x, or asked twice, computes again: any order of calls gives each member
    its own output."""

    def __init__(self, members: list):
        import torch

        self.members = members
        bases = [m.base_layer for m in members]
        self.weight = torch.cat([b.weight.detach() for b in bases]) if len(bases) > 1 else bases[0].weight.detach()
        self.bias = None
        if any(b.bias is not None for b in bases):
            self.bias = torch.cat([b.bias.detach() if b.bias is not None else b.weight.new_zeros(b.out_features)
                                   for b in bases])
        o = 0
        for b in bases:  # the members' frozen weights become views of the stacked ones: no second copy
            n = b.weight.shape[0]
            b.weight.data = self.weight[o:o + n]
            if b.bias is not None:
                b.bias.data = self.bias[o:o + n]
            o += n
        self.x, self.outs = None, []

    def output(self, member, x):
        import torch

        i = self.members.index(member)
        if self.x is not x or self.outs[i] is None:
            name = member.active_adapters[0]
            if torch.compiler.is_compiling() and len(self.members) > 1:  # no state kept across calls in a graph
                return _alone(member, x)
            a = [m.lora_A[name].weight for m in self.members]
            b = [m.lora_B[name].weight for m in self.members]
            self.x, self.outs = x, list(_FN.apply(x, self.weight, self.bias, [m.scaling[name] for m in self.members],
                                                  *a, *b))
        out, self.outs[i] = self.outs[i], None
        if all(o is None for o in self.outs):
            self.x = None  # nothing kept beyond the module's forward
        return out


def _alone(m, x):
    """One member through LoRAGroup by itself (under torch.compile: the group's kept outputs are Python state)."""
    name = m.active_adapters[0]
    base = m.base_layer
    return _FN.apply(x, base.weight, base.bias, [m.scaling[name]], m.lora_A[name].weight, m.lora_B[name].weight)[0]


def _fast_forward(self, x, *args, **kwargs):
    """peft LoRA Linear forward with one active, unmerged, plain adapter, through its group's LoRAGroup."""
    group = self._llmkit_group
    if any(m.disable_adapters or m.merged or len(m.active_adapters) != 1 or m.active_adapters[0] not in m.lora_A
           for m in group.members):
        return self._llmkit_peft_forward(x, *args, **kwargs)
    return group.output(self, x)


def use_fast_lora(model, fuse: bool | None = None) -> int:
    """Route every plain LoRA Linear of a peft model through LoRAGroup; returns how many layers. Siblings
    (SIBLINGS) are fused with `fuse`, by default where the frozen weights are bf16: there oneDNN's GEMMs gained
    (+3% a step), while in fp32 MKL's lost 3% (measured on SmolLM2-135M, 2-core AVX-512 EPYC).

    Left to peft: dropout > 0, DoRA, a quantized base (QLoRA), several adapters — anything but the plain case.
    """
    import torch
    from peft.tuners.lora import Linear as LoraLinear

    global _FN
    _FN = _FN or _lora_function()
    n = stacked = 0
    for parent in model.modules():
        plain = {}
        for name, m in parent.named_children():
            if isinstance(m, LoraLinear) and type(m.base_layer) is torch.nn.Linear and len(m.lora_A) == 1 and \
                    all(isinstance(d, torch.nn.Identity) for d in m.lora_dropout.values()) and \
                    not any(m.use_dora.values()) and not hasattr(m, "_llmkit_peft_forward"):
                plain[name] = m
        bf16 = any(m.base_layer.weight.dtype == torch.bfloat16 for m in plain.values())
        fused = SIBLINGS if fuse or (fuse is None and bf16) else ()
        groups = [[plain.pop(k) for k in names if k in plain] for names in fused]
        groups = [g for g in groups if g] + [[m] for m in plain.values()]
        for members in groups:
            stacked += len(members) > 1
            group = _Group(members)
            for m in members:
                m._llmkit_peft_forward, m._llmkit_group = m.forward, group
                m.forward = types.MethodType(_fast_forward, m)
                n += 1
    if stacked:
        _trim()
    return n


def _trim() -> None:
    """Hand the freed weights back to the OS: glibc keeps the heap pages of the members' old weight tensors
    (freed when they became views of the stacked ones), which the run's peak RSS then counts: +0.13 GB for
    SmolLM2-135M, measured. Not glibc (macOS, musl): nothing to do."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def restore_lora(model) -> None:
    for m in model.modules():
        if hasattr(m, "_llmkit_peft_forward"):
            m.forward = m._llmkit_peft_forward
            del m._llmkit_peft_forward, m._llmkit_group
