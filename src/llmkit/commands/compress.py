"""`llmkit compress`: merge, quantize and export a model (GGUF or an int8/int4 folder), with its report."""

from __future__ import annotations

import argparse


def _compress(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llmkit.compress import compress, summary
    from llmkit.compress.report import format_table
    from llmkit.config import CompressConfig

    sizes = {k: v for k in ("eval_rows", "prompts", "gen_tokens") if (v := getattr(args, k)) is not None}
    cfg = CompressConfig(merge=args.merge, quantize=args.quantize, allow_pickle=args.unsafe_allow_pickle,
                         imatrix=args.imatrix, **sizes)
    r = compress(cfg, args.model, Path(args.out), adapter=args.adapter, dataset=Path(args.data) if args.data else None,
                 name=args.name, force=args.force, threads=args.threads)
    if r["status"] == "skipped":
        print(f"skipped: {args.out} already holds a finished export for these inputs and config (--force to redo)")
    print(format_table([r["metrics"]]))
    print(summary(r["metrics"]))
    engine = "" if r["gguf"] else " --engine transformers"
    print(f"model: {r['model']}  (chat with it: llmkit chat {args.out}{engine})")
    return 0


def add_parser(sub) -> None:
    z = sub.add_parser("compress", help="merge a LoRA adapter and export a GGUF (f16, q8_0, q4_0, q4_k, q4_gptq) or a "
                                        "transformers int8/int4 folder, with a report",
                       description="Export MODEL, in an artifact folder OUT, to a GGUF file that llama.cpp loads "
                                   "(--quantize f16, q8_0, q4_0, q4_k, q4_gptq) or to a weight-only int8/int4 HF folder that "
                                   "the transformers engine loads (--quantize int8, int4; optimum-quanto, "
                                   "`llmkit chat OUT --engine transformers`). MODEL may be a registry name, an HF "
                                   "folder, a .gguf, a train artifact or a PEFT adapter folder (merged into the base "
                                   "it names). The export is measured against its float reference (f16 GGUF in "
                                   "llama.cpp; bf16 in transformers): size on disk, perplexity (the dataset's val "
                                   "rows, or a fixed text), top-1 and greedy agreement, decode tok/s; printed as a "
                                   "table and kept in the manifest. Written atomically: a killed export leaves "
                                   "nothing under OUT.")
    z.add_argument("model", help="registry name, HF folder, .gguf, train artifact or PEFT adapter folder")
    z.add_argument("--adapter", help="a PEFT adapter folder to merge into MODEL (its recorded base must match MODEL)")
    z.add_argument("--merge", action=argparse.BooleanOptionalAction, default=True,
                   help="merge the adapter into its base before export (default; every export needs merged weights)")
    z.add_argument("--quantize", choices=["f16", "q8_0", "q4_0", "q4_k", "q4_gptq", "int8", "int4"], default="q8_0",
                   help="GGUF: f16, q8_0, or 4-bit q4_0 / q4_k (llama.cpp's rounding) or q4_gptq (an IQ4_NL file whose "
                        "matrices GPTQ fits to --data's train rows; needs --data) (default q8_0); transformers folder: int8 or int4 "
                        "(weight-only, optimum-quanto: pip install 'llmkit[quant]')")
    z.add_argument("--out", required=True, help="output artifact folder")
    z.add_argument("--name", help="file name stem of the .gguf, and the report's name for an int8/int4 export "
                                  "(default: the model's name or folder name)")
    z.add_argument("--data", help="dataset artifact folder (or .jsonl) whose val rows the perplexity is measured on; "
                                   "default: a fixed text")
    z.add_argument("--imatrix", action="store_true",
                   help="GGUF 4-bit: weight the rounding by an importance matrix from --data's train rows (off by "
                        "default; see README)")
    z.add_argument("--eval-rows", type=int, help="val rows for perplexity (default 100)")
    z.add_argument("--prompts", type=int, help="prompts for greedy agreement (default 8)")
    z.add_argument("--gen-tokens", type=int, help="greedy tokens per prompt (default 48)")
    z.add_argument("--unsafe-allow-pickle", action="store_true",
                   help="load pickle checkpoints (.bin/.pt); pickle can run code when loaded: only files you trust")
    z.add_argument("--threads", type=int, default=None, help="CPU threads (default: $LLMKIT_THREADS or cores)")
    z.add_argument("--force", action="store_true", help="export again even when a finished artifact matches")
    z.set_defaults(fn=_compress)
