"""GPTQ calibrated on the dataset's train rows, packed losslessly as GGUF 4-bit blocks (Q4_0 or IQ4_NL, 4.5 bits
per weight), for `compress.quantize: q4_gptq`.

    blocks = gptq_4bit(hf_dir, calibration_texts, "iq4_nl")  # {llama.cpp tensor name: GGUF bytes}
    write_gptq(f16, out, blocks, "iq4_nl", token_embd="q5_0")

GPTQ (Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers", ICLR 2023, arXiv:2210.17323; reference code IST-DASLab/gptq `gptq.py`) rounds a
weight matrix W (out, in) one input column at a time and spreads each column's rounding error over the columns
not yet rounded, weighted by the inverse Hessian of the layer's squared output error, H = 2·XᵀX/n, where X
(tokens, in) are the layer's inputs on calibration text. Round-to-nearest minimises the weight error; GPTQ
minimises the output error on the text the model is meant for, which keeps more of a fine-tune's small LoRA
delta than round-to-nearest 4-bit does (README, Compress).

Why our own ~150 lines and not a library: gptqmodel 7.7 requires torch >= 2.14.1 and llmcompressor 0.14 pins
transformers <= 5.17 (we pin torch 2.13 and transformers 5.24). The settings are the ones that make GPTQ's
output exactly a GGUF block type: symmetric, group size 32 along the input dimension, each group one block,
w = d·level[q] with q ∈ [0, 15] and d stored as f16 — Q4_0's levels are −8…7, IQ4_NL's the non-uniform
kvalues_iq4nl. The scale of a group is chosen when GPTQ reaches its first column, from the then-updated
weights, among a few candidates (by importance-weighted squared error), as llama.cpp's imatrix quantizers do;
with act_order the columns go by decreasing importance and the scales are fixed up front ("static groups").

Layers are calibrated in order: each decoder layer sees the previous layers' outputs after they were
quantized (the reference's sequential mode), so errors do not add up unseen.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from llmkit import artifacts
from llmkit.compress.gguf import gguf_name, permute
from llmkit.errors import UnsupportedModel

# The tied token embedding is a lookup table (no calibration inputs) and the output matmul at once; 4.5-bit for
# every decoder matrix plus Q5_0 (5.5 bits) here keeps SmolLM2-135M's file under 30% of f16 (README, Compress).
GPTQ_TOKEN_EMBD = "q5_0"
# What `compress.quantize: q4_gptq` writes for the decoder matrices. IQ4_NL: on the example adapter (64 train rows,
# 70 val rows, Q5_0 embedding, 29.9% of f16) GPTQ on its grid gave +5.3% perplexity, on Q4_0's +9.5%; rounded to
# nearest without GPTQ the same files gave +28.8% and +46.0% (README, Compress).
GPTQ_TYPE = "iq4_nl"
GROUP = 32  # one block: 32 weights of one row share one f16 scale
# The 16 levels a 4-bit index q stands for, w = d · GRIDS[t][q]. Both types store a block the same way (f16 d,
# then 16 bytes of nibbles); IQ4_NL's levels (llama.cpp's kvalues_iq4nl) are denser near zero, as weights are.
GRIDS = {"q4_0": tuple(range(-8, 8)),
         "iq4_nl": (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)}
# candidate scales: the group's largest-magnitude weight m lands on (a fraction of) the lowest or highest level
_FRACTIONS_LOW = (1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.82)
_FRACTIONS_HIGH = (1.0, 1.035, 1.07)


def _grid(qtype: str):
    import torch

    g = torch.tensor(GRIDS[qtype], dtype=torch.float32)
    return g, (g[1:] + g[:-1]) / 2  # levels, and the midpoints between neighbours


def _round(w, d, grid):
    """Indices q ∈ [0, 15] of the nearest level to w / d, for weights w (rows, k) at scales d (rows, 1)."""
    import torch

    levels, mids = grid
    x = torch.where(d == 0, torch.zeros_like(w), w / torch.where(d == 0, torch.ones_like(d), d))
    return torch.bucketize(x, mids)


def _scales(w, h, grid):
    """Per-row f16-exact scales (rows, 1) for a group w (rows, 32), minimising Σ h·(w − d·level)²."""
    import torch

    levels = grid[0]
    m = w.gather(1, w.abs().argmax(1, keepdim=True))  # (rows, 1) signed largest-magnitude weight
    cands = [levels[0] * f for f in _FRACTIONS_LOW] + [levels[-1] * f for f in _FRACTIONS_HIGH]
    best, best_err = None, None
    for c in cands:
        d = (m / c).half().float()  # the scale as the block stores it, so q is chosen against the stored value
        err = (h * (w - d * levels[_round(w, d, grid)]) ** 2).sum(1, keepdim=True)
        if best is None:
            best, best_err = d, err
        else:
            better = err < best_err
            best, best_err = torch.where(better, d, best), torch.where(better, err, best_err)
    return best


def gptq_matrix(W, H, *, qtype: str = "q4_0", damp: float = 0.01, block: int = 128, act_order: bool = False):
    """GPTQ of one matrix onto `qtype`'s grid. W: (out, in) float32; H: (in, in) Σ xᵀx over calibration tokens.

    act_order: round the columns by decreasing importance (diag H), with each 32-column group's scale fixed up
    front from the unquantized weights (the reference's "static groups", so each group stays one block).
    Returns (d, q): d (out, in/32) float32 scales (exact f16 values), q (out, in) uint8 in [0, 15];
    the quantized matrix is d[:, j // 32] · GRIDS[qtype][q[:, j]].
    """
    import torch

    rows, cols = W.shape
    assert block % GROUP == 0, "a block of 32 must not straddle two of GPTQ's lazy-update blocks"
    if cols % GROUP:
        raise UnsupportedModel(f"GPTQ to {qtype} needs rows that are a multiple of {GROUP} wide (got {cols})")
    grid = _grid(qtype)
    levels = grid[0]
    W = W.detach().clone().float()
    H = H.detach().clone().double()
    dead = torch.diag(H) == 0  # columns never active: their weights cannot matter, set them to zero
    H[dead, dead] = 1
    W[:, dead] = 0
    importance = torch.diag(H).float().clone()
    D = torch.zeros(rows, cols // GROUP)
    perm = torch.arange(cols)
    if act_order:
        for g in range(0, cols, GROUP):
            D[:, g // GROUP] = _scales(W[:, g:g + GROUP], importance[g:g + GROUP], grid)[:, 0]
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).float()
    Q = torch.zeros(rows, cols, dtype=torch.long)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1, Err1, Hinv1 = W[:, i1:i2].clone(), torch.zeros(rows, i2 - i1), Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if not act_order and col % GROUP == 0:  # a new block: its scale from the weights as updated so far
                D[:, col // GROUP] = _scales(W1[:, i:i + GROUP], importance[col:col + GROUP], grid)[:, 0]
            d = D[:, int(perm[col]) // GROUP]
            w = W1[:, i]
            q = _round(w[:, None], d[:, None], grid)[:, 0]
            Q[:, col] = q
            err = (w - d * levels[q]) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]  # spread the error over the columns to come
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    out = torch.empty_like(Q)
    out[:, perm] = Q
    return D, out.to(torch.uint8)


def dequantize(d, q, qtype: str):
    """The matrix (out, in) that scales d (out, in/32) and indices q (out, in) stand for."""
    return d.repeat_interleave(GROUP, 1) * _grid(qtype)[0][q.long()]


def pack_blocks(d, q) -> bytes:
    """GGUF Q4_0 / IQ4_NL bytes of scales d (rows, cols/32) and levels q (rows, cols): per block, d as f16, then 16 bytes
    whose low nibble is weight j and high nibble weight j + 16 (ggml's block_q4_0 and block_iq4_nl, as gguf-py read them)."""
    import numpy as np

    d, q = np.asarray(d, dtype=np.float16), np.asarray(q, dtype=np.uint8)
    rows, cols = q.shape
    q = q.reshape(rows * cols // GROUP, 2, GROUP // 2)
    nibbles = q[:, 0, :] | (q[:, 1, :] << np.uint8(4))  # (blocks, 16)
    return np.concatenate([d.reshape(-1, 1).view(np.uint8), nibbles], axis=1).tobytes()


def _texts_to_ids(tok, texts: list[str], n_ctx: int):
    return [tok(t, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :n_ctx] for t in texts if t]


class _Stop(Exception):
    pass


def _hessians(layer, linears: dict, inputs: list[tuple[tuple, dict]]) -> dict:
    """Σ xᵀx (in, in) of each Linear's inputs x (tokens, in) while `layer` runs on every calibration input."""
    import torch

    hess = {n: torch.zeros(m.in_features, m.in_features) for n, m in linears.items()}
    seen: dict[int, tuple] = {}  # q/k/v (and gate/up) read one input tensor: one xᵀx for all of them

    def add(name):
        def record(module, args):
            key = args[0].data_ptr()  # seen keeps the tensor alive, so no other input reuses its address
            if key not in seen:
                x = args[0].reshape(-1, args[0].shape[-1])
                seen[key] = (args[0], x.T @ x)
            hess[name] += seen[key][1]
        return record

    hooks = [m.register_forward_pre_hook(add(n)) for n, m in linears.items()]
    try:
        for args, kwargs in inputs:
            layer(*args, **kwargs)
            seen.clear()
    finally:
        for h in hooks:
            h.remove()
    return hess


def gptq_4bit(hf_dir: Path, texts: list[str], qtype: str = "q4_0", *, n_ctx: int = 1024, act_order: bool = False,
              progress: bool = False) -> dict[str, bytes]:
    """Every decoder matrix of the HF Llama folder, GPTQ-quantized on `texts` to `qtype` (q4_0 or iq4_nl):
    {llama.cpp name: the tensor's GGUF bytes}.

    texts: calibration text as the model reads it (chat template applied), never the rows a report measures on.
    The token embedding is not here: it is a lookup table, not a matmul over calibration inputs.
    """
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    cfg = model.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    samples = _texts_to_ids(tok, texts, n_ctx)
    if not samples:
        raise UnsupportedModel("GPTQ needs calibration text (the dataset's train rows); none was given")
    layers = model.model.layers
    inputs: list[tuple[tuple, dict]] = []  # what layer 0 receives for each sample: (args, kwargs)

    def catch(module, args, kwargs):
        inputs.append((args, kwargs))
        raise _Stop

    h = layers[0].register_forward_pre_hook(catch, with_kwargs=True)
    with torch.no_grad():
        for ids in samples:
            with contextlib.suppress(_Stop):
                model(input_ids=ids, use_cache=False)
    h.remove()

    out: dict[str, bytes] = {}
    bar = tqdm(total=len(layers), desc="GPTQ", unit="layer", disable=not progress, leave=False)
    with torch.no_grad():
        for li, layer in enumerate(layers):
            linears = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
            hess = _hessians(layer, linears, inputs)
            for n, m in linears.items():
                d, q = gptq_matrix(m.weight.data, hess[n], qtype=qtype, act_order=act_order)
                m.weight.data = dequantize(d, q, qtype).to(m.weight.dtype)
                name = gguf_name(f"model.layers.{li}.{n}.weight")
                d, q = d.numpy(), q.numpy()
                if name.endswith("attn_q.weight"):  # llama.cpp's row order for rope; rows quantize independently
                    d, q = permute(d, heads), permute(q, heads)
                elif name.endswith("attn_k.weight"):
                    d, q = permute(d, kv), permute(q, kv)
                out[name] = pack_blocks(d, q)
            # the next layer calibrates on this layer's outputs with its weights already quantized
            for k, (args, kwargs) in enumerate(inputs):
                y = layer(*args, **kwargs)
                inputs[k] = ((y[0] if isinstance(y, tuple) else y, *args[1:]), kwargs)
            bar.update(1)
    bar.close()
    return out


def write_gptq(f16: Path, out: Path, blocks: dict[str, bytes], qtype: str, *, token_embd: str,
               imatrix: dict | None = None, threads: int = 1) -> dict:
    """A GGUF of `f16` whose decoder matrices are `blocks` (from `gptq_4bit` with the same qtype), atomically.

    llama.cpp's quantizer writes the file (its metadata, layout, and `token_embd` at the given type); then each
    `qtype` tensor's bytes are replaced by the GPTQ blocks of the same size, in place, before the file is renamed.
    imatrix: {"token_embd.weight": mean x² per column of the output matmul's input} weights its rounding.
    """
    from gguf import GGMLQuantizationType, GGUFReader

    from llmkit.compress.quantize import quantize

    with artifacts.atomic_file(out, "gptq") as tmp:
        preset = {"ftype": f"MOSTLY_{qtype.upper()}", "token_embd": token_embd,
                  "overrides": {r"^blk\.\d+\.(attn|ffn)_.*\.weight$": qtype}}
        info = quantize(f16, tmp, qtype, threads=threads, preset=preset, imatrix=imatrix)
        want = GGMLQuantizationType[qtype.upper()]
        tensors = {t.name: t for t in GGUFReader(str(tmp)).tensors}
        missing = sorted(set(blocks) - set(tensors))
        wrong = sorted(n for n in blocks if n in tensors and tensors[n].tensor_type != want)
        left = sorted(n for n, t in tensors.items() if t.tensor_type == want and n not in blocks)
        if missing or wrong or left:
            raise UnsupportedModel(f"GPTQ blocks do not match the {qtype} file: missing {missing[:3]}, not {qtype} "
                                   f"{wrong[:3]}, {qtype} without GPTQ {left[:3]}")
        with open(tmp, "r+b") as f:
            for name, data in blocks.items():
                t = tensors[name]
                if len(data) != t.n_bytes:
                    raise UnsupportedModel(f"{name}: {len(data)} GPTQ bytes for a {t.n_bytes}-byte {qtype} tensor")
                f.seek(t.data_offset)
                f.write(data)
    return info
