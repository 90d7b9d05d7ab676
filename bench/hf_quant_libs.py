"""Which library for weight-only int8/int4 in transformers on CPU: torchao vs optimum-quanto, side by side.

    .venv/bin/python bench/hf_quant_libs.py --model ~/.cache/llmkit/hf/<sha>-v1 --data runs/support-assistant/data \\
        [--rows 12] [--tokens 48] [--only quanto-int8-bf16,...]

Each candidate is quantized, saved to disk and reloaded from the folder (offline) before it is measured: size of
its *.safetensors, perplexity on the val rows' assistant replies against the fp32 model, top-1 agreement with
fp32 at those positions, and batch-1 greedy decode tok/s in `generate` (median of 3 rounds, run round-robin so
load drifts hit every candidate alike). A candidate that cannot be saved as safetensors or reloaded says why.
Needs optimum-quanto==0.2.7 (llmkit[quant]); torchao==0.18.0 (not an llmkit dependency) for its side; one thread.
The README's table (Compress) came from this on SmolLM2-135M; check `uptime` first, tok/s lies on a busy box.
"""

import argparse
import json
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch


def plain(dtype):
    from transformers import AutoModelForCausalLM

    def build(src, d):
        AutoModelForCausalLM.from_pretrained(src, dtype=dtype).save_pretrained(d)

    return build, lambda d: AutoModelForCausalLM.from_pretrained(d, dtype=dtype).eval()


def tao(config, dtype):
    from transformers import AutoModelForCausalLM, TorchAoConfig

    def build(src, d):
        m = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, quantization_config=TorchAoConfig(config()))
        m.save_pretrained(d)

    return build, lambda d: AutoModelForCausalLM.from_pretrained(d, dtype=dtype).eval()


def quanto(qtype, dtype, optimizer=None):
    import optimum.quanto as q
    from transformers import AutoModelForCausalLM

    from llmkit.engines.hf import load_quantized

    def build(src, d):
        m = AutoModelForCausalLM.from_pretrained(src, dtype=dtype)
        opt = getattr(q, optimizer)() if optimizer else None
        q.QuantizedModelForCausalLM.quantize(m, weights=getattr(q, qtype), exclude="lm_head", optimizer=opt
                                             ).save_pretrained(d)

    # reloaded as llmkit does (quanto's from_pretrained + engines/hf.safe_int8_kernels): quanto's own reload leaves
    # the int8 weights misaligned, and torch's AVX-512 int8 kernel then dies with SIGSEGV (README, Compress)
    return build, load_quantized


def candidates() -> dict:
    bf16, fp32 = torch.bfloat16, torch.float32
    quanto_side = {
        "quanto-int8-bf16": quanto("qint8", bf16),
        "quanto-int8-fp32": quanto("qint8", fp32),
        "quanto-int4-bf16": quanto("qint4", bf16),
        "quanto-int4-hqq-bf16": quanto("qint4", bf16, "HqqOptimizer"),
    }
    try:
        import torchao.quantization as Q
        from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig
    except ImportError:  # torchao is not an llmkit dependency: compare quanto's types alone
        return {"bf16": plain(bf16), **quanto_side}
    return {
        "bf16": plain(bf16),
        "torchao-int8-bf16": tao(Q.Int8WeightOnlyConfig, bf16),
        "torchao-int8-fp32": tao(Q.Int8WeightOnlyConfig, fp32),
        "torchao-int4-cpu-bf16": tao(lambda: PrototypeInt4WeightOnlyConfig(group_size=32), bf16),
        "torchao-int4-tile-bf16": tao(lambda: Q.Int4WeightOnlyConfig(group_size=64,
                                                                     int4_packing_format="tile_packed_to_4d"), bf16),
        "torchao-intx4-g32-fp32": tao(lambda: Q.IntxWeightOnlyConfig(weight_dtype=torch.int4,
                                                                      granularity=Q.PerGroup(32)), fp32),
        **quanto_side,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a float HF folder (e.g. the bundled model's hf_folder cache)")
    ap.add_argument("--data", required=True, help="dataset artifact with val.jsonl ({messages} rows)")
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--only", help="comma-separated candidate names")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    src = Path(args.model).expanduser()
    tok = AutoTokenizer.from_pretrained(src)
    seqs = []
    for line in (Path(args.data) / "val.jsonl").read_text().splitlines()[:args.rows]:
        msgs = json.loads(line)["messages"]
        head = tok(tok.apply_chat_template(msgs[:-1], add_generation_prompt=True, tokenize=False))["input_ids"]
        seqs.append((len(head), tok(tok.apply_chat_template(msgs, tokenize=False))["input_ids"]))
    prompt = tok.apply_chat_template([{"role": "user", "content": "Give me three tips for a good night's sleep."}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)

    @torch.no_grad()  # not inference_mode: quanto's int4 refuses it
    def quality(model):
        nll, n, tops = 0.0, 0, []
        for s, ids in seqs:
            logits = model(input_ids=torch.tensor([ids])).logits[0, s - 1:len(ids) - 1].double()
            nll += float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[s:]), reduction="sum"))
            n += len(ids) - s
            tops.append(logits.argmax(-1))
        return math.exp(nll / n), torch.cat(tops)

    ref_ppl, ref_top = quality(AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval())
    rows, loaded = [], {"fp32": AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()}
    rows.append({"name": "fp32", "size_mb": round(sum(f.stat().st_size for f in src.glob("*.safetensors")) / 1e6, 1),
                 "ppl": round(ref_ppl, 4)})
    cands = candidates()
    names = args.only.split(",") if args.only else list(cands)
    with tempfile.TemporaryDirectory(prefix="llmkit-bench-hfq-") as tmp:
        for name in names:
            build, load = cands[name]
            d = Path(tmp) / name
            try:
                build(src, d)
                model = load(d)
                ppl, top = quality(model)
            except Exception as e:  # a candidate that fails is a result, not a crash of the comparison
                rows.append({"name": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"})
                shutil.rmtree(d, ignore_errors=True)
                continue
            loaded[name] = model
            rows.append({"name": name, "size_mb": round(sum(f.stat().st_size for f in d.glob("*.safetensors")) / 1e6, 1),
                         "ppl": round(ppl, 4), "dppl_pct": round(100 * (ppl / ref_ppl - 1), 2),
                         "top1": round(float((top == ref_top).double().mean()), 4),
                         "weight": type(next(p for n_, p in model.named_parameters() if "mlp" in n_)).__name__})
        speed = {n: [] for n in loaded}
        with torch.no_grad():
            for m in loaded.values():
                m.generate(**prompt, max_new_tokens=4, do_sample=False)  # warm-up
            for _ in range(3):
                for n, m in loaded.items():
                    t0 = time.perf_counter()
                    m.generate(**prompt, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False)
                    speed[n].append(args.tokens / (time.perf_counter() - t0))
    for r in rows:
        if r["name"] in speed:
            r["tok_s"] = round(statistics.median(speed[r["name"]]), 2)
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
