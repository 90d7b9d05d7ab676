"""Exports side by side: GGUF f16 / q8_0 / q4_0 / q4_k / q4_gptq and transformers int8 / int4 of the bundled
model (and of a train artifact when given), each measured against its own float reference (f16 GGUF in llama.cpp,
bf16 in transformers) by the compress stage itself; prints the report table.

    .venv/bin/python bench/compress.py [--data runs/support-assistant/data] [--adapter runs/support-assistant/train]
                                       [--types f16,q8_0,q4_0,q4_k,q4_gptq] [--eval-rows 100] [--threads 1] [--out DIR]

Every row is one `llmkit compress` run (`llmkit.compress.compress`), so the numbers are exactly what a user
gets: file size, perplexity of the export and of its f16 reference on the dataset's val rows (assistant reply
tokens; a fixed text without --data), top-1 agreement at those positions, greedy agreement on N prompts, and
batch-1 decode tok/s in llama.cpp (GGUF) or transformers (int8/int4: `--types int8,int4`, needs llmkit[quant]). Goals from the compression issue: a 4-bit file <= 30% of f16 with perplexity
+<= 5%; q8_0 perplexity +<= 0.5%.
Check `uptime` first: tok/s on a busy box lies (perplexity and agreement do not depend on load).
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from llmkit.compress import compress
from llmkit.compress.report import format_table
from llmkit.config import CompressConfig


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="base model (default: the bundled one)")
    ap.add_argument("--adapter", help="a train artifact / PEFT adapter folder: adds its merged exports")
    ap.add_argument("--data", help="dataset artifact whose val rows the perplexity is measured on")
    ap.add_argument("--types", help="default f16,q8_0,q4_0,q4_k, and q4_gptq with --data (it calibrates on the train rows)")
    ap.add_argument("--eval-rows", type=int, default=100)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--gen-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (1 stays steady on a busy box)")
    ap.add_argument("--json", help="also write every report (and the samples) to this file")
    ap.add_argument("--out", help="keep the export artifacts in this folder (default: a temporary one)")
    args = ap.parse_args()

    models = [args.model] + ([args.adapter] if args.adapter else [])
    data = Path(args.data) if args.data else None
    types = args.types or "f16,q8_0,q4_0,q4_k" + (",q4_gptq" if data else "")
    reports = []
    with tempfile.TemporaryDirectory(prefix="llmkit-bench-compress-") as tmp:
        root = Path(args.out or tmp)
        for i, model in enumerate(models):
            for q in types.split(","):
                cfg = CompressConfig(quantize=q, eval_rows=args.eval_rows, prompts=args.prompts,
                                     gen_tokens=args.gen_tokens)
                t0 = time.perf_counter()
                r = compress(cfg, model, root / f"{'base' if i == 0 else 'adapter'}-{q}", dataset=data,
                             threads=args.threads, progress=False)
                m = r["metrics"]
                m["model"], m["seconds"] = model, round(time.perf_counter() - t0, 1)
                kinds = m.get("tensor_types") or f"{m.get('quantized_layers')} layers {m.get('qtype')}"
                print(f"{model} {q}: {m['seconds']} s; types {kinds}", file=sys.stderr, flush=True)
                reports.append(m)
    for model in models:
        print(f"\n{model}")
        print(format_table([m for m in reports if m["model"] == model]))
    four = [m for m in reports if m["file"].endswith(("q4_0.gguf", "q4_k.gguf", "q4_gptq.gguf"))]
    q8 = [m for m in reports if m["file"].endswith("q8_0.gguf")]
    print("\ngoals: 4-bit <= 30% of f16 with ppl +<= 5%; q8_0 ppl +<= 0.5%")
    for m in four + q8:
        ok = (m["size_vs_f16"] <= 0.30 and m["ppl_increase_pct"] <= 5) if m in four else m["ppl_increase_pct"] <= 0.5
        print(f"  {m['model']} {m['file']}: {m['size_vs_f16']:.1%} of f16, ppl {m['ppl_increase_pct']:+.2f}% "
              f"-> {'met' if ok else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
