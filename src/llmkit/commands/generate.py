"""`llmkit generate`: answer every prompt of a JSONL file, in this process or on Ray, resumably."""

from __future__ import annotations

import argparse
import json


def _generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llmkit.engines import GenParams
    from llmkit.engines.batch import BatchSpec, generate

    params = GenParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    spec = BatchSpec(model=args.model, engine=args.engine, backend=args.backend, workers=args.workers,
                     parallel=args.parallel, threads=args.threads, cpus_per_worker=args.cpus_per_worker,
                     n_ctx=args.n_ctx, template=not args.no_template, ray_address=args.ray_address, params=params)
    s = generate(Path(args.input), Path(args.out), spec, progress=not args.quiet)
    if s["answered"] or s["errors"]:
        where = f"{s['workers']} Ray actor(s) on {s['nodes']} node(s)" if s["backend"] == "ray" \
            else f"{s['workers']} engine(s) in this process"
        print(f"answered {s['answered']} prompts into {args.out} ({s['skipped']} already there, {s['errors']} "
              f"failed) in {s['seconds']:.1f} s on {where}")
    if args.json:
        print(json.dumps(s))
    return 1 if s["errors"] else 0


def add_parser(sub) -> None:
    g = sub.add_parser(
        "generate", help="answer a JSONL file of prompts (batch; local or Ray; resumable)",
        description="Answer every row of INPUT ({\"prompt\": ...} or {\"messages\": [...]}, other fields copied) "
                    "into OUT as JSON lines in input order (the row plus answer, finish_reason and token counts). "
                    "A second run resumes: rows already in OUT are skipped. Bad rows are all reported (file:line) "
                    "before any model loads. Greedy by default, so local and Ray runs give the same answers.")
    g.add_argument("--input", required=True, help="prompts, one JSON object per line")
    g.add_argument("--out", required=True, help="answers (JSON lines; appended to when resuming)")
    g.add_argument("--model", default="smollm2-135m-instruct",
                   help="registry name, .gguf file or HF folder; with --backend ray every node must have it "
                        "(default: smollm2-135m-instruct)")
    g.add_argument("--engine", choices=["auto", "llamacpp", "transformers"], default="auto",
                   help="auto: llamacpp for GGUF files, transformers for HF folders")
    g.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: engines in this process; ray: one engine per Ray actor (pip install "
                        "'llmkit[scale]')")
    g.add_argument("--workers", type=int, default=1, help="engines (local threads or Ray actors; default 1)")
    g.add_argument("--parallel", type=int, default=4,
                   help="prompts each engine decodes together (llamacpp batching; default 4)")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads per engine (default: cores / workers locally, --cpus-per-worker on Ray)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each Ray actor reserves (default 1)")
    g.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (host:port of `ray start --head`; default $RAY_ADDRESS, else a "
                        "local Ray)")
    g.add_argument("--n-ctx", type=int, default=2048, help="tokens per sequence, prompt + answer (default 2048)")
    g.add_argument("--max-tokens", type=int, default=256, help="answer length limit in tokens (default 256)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--seed", type=int, default=None, help="sampling seed")
    g.add_argument("--no-template", action="store_true",
                   help="send {\"prompt\"} rows as they are (a completion), not as a user turn of the chat template")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--json", action="store_true", help="print the run's counts and timing as JSON")
    g.set_defaults(fn=_generate)
