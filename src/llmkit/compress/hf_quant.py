"""Weight-only int8 / int4 exports for the transformers engine (optimum-quanto), measured against bf16.

    info = export(src_hf_dir, work / "reference", out_dir, "int4")   # bf16 reference + quanto export
    report = measure(work / "reference", out_dir, src_hf_dir, dataset, name="m.int4")

An export is an HF folder: `model.safetensors` (int8, or int4 packed two to a byte, with their scales), optimum-
quanto's `quanto_qmap.json` (which layer holds which type), config, tokenizer and chat template. It loads with
quanto's own `QuantizedModelForCausalLM.from_pretrained` (engines/hf.py `load_quantized`), so `llmkit chat OUT
--engine transformers` and `llmkit serve` run it, and so does plain optimum-quanto without llmkit.

- **int8**: every linear layer's weight as int8, one absmax scale per output row (quanto `qint8`).
- **int4**: every linear layer's weight as 4-bit integers with a scale and a shift per group of inputs (quanto
  `qint4`, min/max grid): groups of 128, or of the largest multiple of 32 that divides the width (96 for
  SmolLM2's 576-wide inputs); rows no wider than 128 get one pair per row.
The embedding (and the lm_head tied to it) and the norms stay bf16; activations are bf16, which quanto's int8
matmul wants on CPU (in fp32 it decoded at half the speed; README, Compress).

Why optimum-quanto and not torchao 0.18 (measured, README): torchao's CPU int4 layout (`Int4OpaqueTensor`) cannot
be written to safetensors, its `tile_packed_to_4d` layout does not convert on CPU, and its safetensors-able int4
(`IntxWeightOnlyConfig`) stores one byte per weight; its int8 saved and reloaded fine but decoded slower.
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

from llmkit.compress.report import N_CTX, EvalSet, compare, eval_set, per_row, run_eval
from llmkit.errors import MissingExtra

# llmkit's name → (quanto's qtype name, what the manifest records)
HF_TYPES = {
    "int8": ("qint8", "weight-only int8, per-output-row absmax scale; bf16 activations"),
    "int4": ("qint4", "weight-only int4, scale + shift per group of <= 128 inputs; bf16 activations"),
}


def _quanto():
    try:
        import optimum.quanto as quanto
    except ImportError:
        raise MissingExtra("--quantize int8/int4 needs optimum-quanto: pip install 'llmkit[quant]'") from None
    return quanto


def export(src: Path, reference: Path, out: Path, quantize: str) -> dict:
    """Write the bf16 reference (the report's baseline) to `reference` and the `quantize` export to `out`."""
    import importlib.metadata as md

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quanto = _quanto()
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    model.save_pretrained(reference)
    qtype, method = HF_TYPES[quantize]
    # lm_head stays float: it is the embedding when tied, and quantizing it would untie (and double) it
    qmodel = quanto.QuantizedModelForCausalLM.quantize(model, weights=getattr(quanto, qtype), exclude="lm_head")
    qmodel.save_pretrained(out)  # model.safetensors + quanto_qmap.json + config.json + generation_config.json
    (out / "README.md").unlink(missing_ok=True)  # huggingface_hub's empty model-card template
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    qmap = json.loads((out / "quanto_qmap.json").read_text())
    return {"seconds": round(time.perf_counter() - t0, 2), "method": method, "library": "optimum-quanto",
            "library_version": md.version("optimum-quanto"), "qtype": qtype, "quantized_layers": len(qmap),
            "activations": "bfloat16"}


def _nll(model, start: int, ids: list[int]):
    """(summed negative log-likelihood of ids[start:], target count, argmax at each target), as report._nll."""
    import torch

    logits = model(input_ids=torch.tensor([ids])).logits[0, start - 1:len(ids) - 1].double()  # (T, V)
    targets = torch.tensor(ids[start:])
    nll = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    return float(nll), len(targets), logits.argmax(dim=1).numpy()


def _greedy(model, eos: set[int], n_ctx: int, prompt: list[int], n: int) -> tuple[list[int], float]:
    """Greedy continuation of `prompt` with the KV cache (stops at an end token) and the seconds of the
    one-token decode steps, as report._greedy times llama.cpp."""
    import torch

    out = model(input_ids=torch.tensor([prompt]), use_cache=True)
    new, seconds = [], 0.0
    for _ in range(min(n, n_ctx - len(prompt))):
        tok = int(out.logits[0, -1].argmax())
        if tok in eos:
            break
        new.append(tok)
        t0 = time.perf_counter()
        out = model(input_ids=torch.tensor([[tok]]), cache=out.cache, use_cache=True)  # v5: `cache`, not past_key_values
        seconds += time.perf_counter() - t0
    return new, seconds


def _run(model, es: EvalSet, eos: set[int], n_ctx: int, gen_tokens: int, label: str, progress: bool) -> dict:
    import torch

    # one row per pass: stacking rows of equal length was exact but no faster (bf16, 77 val rows, 1 thread: 55.0 vs
    # 54.2 s), and a padded batch with an attention mask moved the perplexity in the 4th decimal
    score = per_row(partial(_nll, model))
    with torch.no_grad():  # not inference_mode: quanto's int4 refuses it (engines/hf.py)
        return run_eval(es, score, partial(_greedy, model, eos, n_ctx), gen_tokens, label, progress)


def _weights_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def measure(reference: Path, export_dir: Path, hf_dir: Path, dataset: Path | None = None, *, name: str,
            rows: int = 100, prompts: int = 8, gen_tokens: int = 48, threads: int = 1, samples: int = 2,
            progress: bool = False) -> dict:
    """Measure the export in `export_dir` against the bf16 `reference` folder, both loaded from disk and run in
    transformers on the rows and prompts report.py's GGUF measurement uses."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from llmkit.engines.hf import load_quantized

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(export_dir)
    config = json.loads((export_dir / "config.json").read_text())
    n_ctx = min(N_CTX, config.get("max_position_embeddings") or N_CTX)
    eos = GenerationConfig.from_pretrained(export_dir).eos_token_id
    eos = {tok.eos_token_id} | set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    # the tokenizer adds BOS only when the model asks for it, like llama.cpp's add_bos (SmolLM's does not)
    es = eval_set(lambda text: tok(text)["input_ids"], hf_dir, dataset, rows=rows, prompts=prompts, n_ctx=n_ctx)
    ref = AutoModelForCausalLM.from_pretrained(reference, dtype=torch.bfloat16).eval()
    r = _run(ref, es, eos, n_ctx, gen_tokens, "bf16", progress)
    del ref
    e = _run(load_quantized(export_dir), es, eos, n_ctx, gen_tokens, name, progress)
    return compare(r, e, es, tok.decode, file=name, size=_weights_size(export_dir),
                   reference_size=_weights_size(reference), reference="bf16 transformers", gen_tokens=gen_tokens,
                   threads=threads, samples=samples)

