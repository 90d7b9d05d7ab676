"""The compress stage's quality report, old (one row per `Llama.eval`) vs new (batched scorer), side by side.

    .venv/bin/python bench/compress_report.py --data runs/support-assistant/data --hf HF_FOLDER \\
        --reference m.f16.gguf --export m.q8_0.gguf [--threads 1] [--rounds 1] [--rows 100]

Each round runs `report.measure(..., batched=False)` and `measure(..., batched=True)` in turn (round-robin, so a
busy box slows both alike) on the same files and val rows, then checks that the two reports agree (perplexity to 4
decimals, top-1 and greedy agreement exactly) and prints the wall-clock ratio. Also times the perplexity alone
(both models) per side, since the greedy part (batch-1 decode, the report's tok/s) is the same code on both.
Prints `uptime` and the CPU's AVX flags: on a shared 2-core box timings move with the load of others.
"""

import argparse
import math
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from llmkit.compress import report as R
from llmkit.compress.scoring import N_SEQ, LlamaScorer, common_prefix

SAME = ("ppl", "ppl_f16", "top1_agreement", "greedy_same", "greedy_prefix_agreement", "eval")


def _sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


def _ppl_only(path: Path, es: R.EvalSet, threads: int, n_ctx: int, batched: bool,
              in_decode: list[float] | None = None) -> tuple[float, float]:
    """(perplexity, seconds) of one model's rows, load included; with `in_decode`, the batched scorer's seconds
    inside llama_decode are added to in_decode[0] (the floor of any scorer on these kernels)."""
    t0 = time.perf_counter()
    if batched:
        with LlamaScorer(path, threads, n_ctx, n_seq=min(N_SEQ, len(es.sequences))) as s:
            if in_decode is not None:
                decode = s._decode

                def timed(items, decode=decode):
                    t = time.perf_counter()
                    decode(items)
                    in_decode[0] += time.perf_counter() - t
                s._decode = timed
            rows = s.score(es.sequences)
    else:
        llm = R._load(path, threads, n_ctx)
        rows = R.per_row(partial(R._nll, llm))(es.sequences)
        llm.close()
    return math.exp(sum(r[0] for r in rows) / sum(r[1] for r in rows)), time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", required=True, help="the f16 GGUF")
    ap.add_argument("--export", required=True, help="the quantized GGUF (q8_0 in the example recipe)")
    ap.add_argument("--hf", required=True, help="the model's HF folder (tokenizer and chat template)")
    ap.add_argument("--data", required=True, help="dataset artifact folder (val.jsonl)")
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--ppl-only", action="store_true", help="time only the perplexity part (faster)")
    args = ap.parse_args()
    print("uptime:", _sh("uptime"))
    print("cpu flags:", " ".join(sorted(set(_sh("lscpu | grep -o 'avx512_bf16\\|avx2\\|amx_bf16'").split()))))
    print(f"threads {args.threads}, rows {args.rows}, rounds {args.rounds}", flush=True)
    ref, exp, hf, data = Path(args.reference), Path(args.export), Path(args.hf), Path(args.data)
    times: dict[str, list[float]] = {"old": [], "new": []}
    ppl_times: dict[str, list[float]] = {"old": [], "new": []}
    reports: dict[str, dict] = {}
    llm = R._load(ref, args.threads, R.N_CTX)
    es = R.eval_set(partial(R._tokenize, llm), hf, data, rows=args.rows, prompts=8)
    llm.close()
    print(f"{es.source}; shared prefix {common_prefix(es.sequences)} tokens", flush=True)
    in_decode = [0.0]
    for rnd in range(args.rounds):
        for side in (("old", "new") if rnd % 2 == 0 else ("new", "old")):
            batched = side == "new"
            total, ppls = 0.0, []
            for path in (ref, exp):
                p, s = _ppl_only(path, es, args.threads, R.N_CTX, batched, in_decode if batched else None)
                total += s
                ppls.append(round(p, 4))
            ppl_times[side].append(total)
            print(f"round {rnd} {side}: perplexity of both models {total:.1f} s (ppl {ppls})", flush=True)
            if args.ppl_only:
                continue
            t0 = time.perf_counter()
            reports[side] = R.measure(ref, exp, hf, data, rows=args.rows, threads=args.threads, batched=batched)
            times[side].append(time.perf_counter() - t0)
            print(f"round {rnd} {side}: whole report {times[side][-1]:.1f} s", flush=True)
    print("uptime:", _sh("uptime"))
    old, new = sum(ppl_times["old"]), sum(ppl_times["new"])
    print(f"perplexity (f16 + export): old {old / args.rounds:.1f} s, new {new / args.rounds:.1f} s, "
          f"{old / new:.2f}x; of new, {in_decode[0] / args.rounds:.1f} s inside llama_decode (the rows' forward "
          "passes: no exact scorer on these kernels goes below it)")
    if not args.ppl_only:
        old, new = sum(times["old"]), sum(times["new"])
        print(f"whole report: old {old / args.rounds:.1f} s, new {new / args.rounds:.1f} s, {old / new:.2f}x")
        diff = {k: (reports["old"][k], reports["new"][k]) for k in SAME if reports["old"][k] != reports["new"][k]}
        print("reports agree:", "yes" if not diff else f"NO {diff}")
        print({k: reports["new"][k] for k in SAME if k != "eval"})
        return 1 if diff else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
