"""What `weights: auto` could serve the bundled Q4_1 as: each llama.cpp type's speed and what it costs in quality.

    .venv/bin/python bench/serve_weights.py [--threads 2] [--rounds 3] [--types q4_1,q8_0,q4_0,iq4_nl]

The bundled SmolLM2-135M-Instruct ships as Q4_1, a type llama.cpp multiplies without its repacked or llamafile
kernels. `llmkit serve` (weights: auto) requantizes it to Q8_0 when batching is on; Q4_0 and IQ4_NL have faster
kernels still. Each type is made from the Q4_1 file with llama.cpp's own quantizer (`allow_requantize`: every
weight dequantized, then quantized again; cached in a temp folder) and measured in one process, round-robin over
the types so a noisy neighbour hits all alike:

- quality, against the Q4_1 file the user gave: perplexity of the example's val replies (examples/support/val.jsonl
  in the chat template, loss on the assistant tokens: the compress report's scorer) and top-1 agreement with Q4_1
  at each of those positions;
- prefill tok/s (one 512-token llama_decode), batch-1 decode tok/s (128 greedy steps, one token per llama_decode,
  the sampler in C: the ceiling of any llama.cpp server on this file, no HTTP, no Python per token beyond the
  call) and batch-8 decode tok/s (8 sequences, one token each per llama_decode);
  the median of the rounds.

Prints `uptime` and the CPU's flags: on a shared 2-core box timings move with the load of others.
"""

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {"q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0", "iq4_nl": "MOSTLY_IQ4_NL"}


def _sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


class Ctx:
    """One model and one context of `n_seq` sequences (llama.cpp's low-level API, as the engine uses it)."""

    def __init__(self, path: Path, threads: int, n_seq: int):
        import llama_cpp as lc

        from llmkit.engines.llamacpp import new_context

        self.lc = lc
        self.model = lc.llama_model_load_from_file(str(path).encode(), lc.llama_model_default_params())
        self.ctx = new_context(lc, self.model, n_ctx=1024, n_seq=n_seq, n_batch=512, threads=threads)
        self.mem = lc.llama_get_memory(self.ctx)
        self.batch = lc.llama_batch_init(512, 0, 1)
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.greedy = lc.llama_sampler_init_greedy()

    def decode(self, items):  # (token, position, sequence, wants logits)
        b = self.batch
        for n, (tok, pos, seq, out) in enumerate(items):
            b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = tok, pos, 1, out
            b.seq_id[n][0] = seq
        b.n_tokens = len(items)
        assert self.lc.llama_decode(self.ctx, b) == 0

    def close(self):
        lc = self.lc
        lc.llama_sampler_free(self.greedy)
        lc.llama_batch_free(self.batch)
        lc.llama_free(self.ctx)
        lc.llama_model_free(self.model)


def speed(path: Path, threads: int, prompt: list[int]) -> dict:
    """prefill, batch-1 and batch-8 decode tok/s of one file."""
    lc = __import__("llama_cpp")
    c = Ctx(path, threads, 8)
    try:
        ids = (prompt * (512 // len(prompt) + 1))[:512]
        lc.llama_memory_clear(c.mem, True)
        t0 = time.perf_counter()
        c.decode([(t, i, 0, i == 511) for i, t in enumerate(ids)])
        prefill = 512 / (time.perf_counter() - t0)
        # batch 1: the prompt, then 128 one-token steps, each sampled greedily in C from the last logits
        lc.llama_memory_clear(c.mem, True)
        c.decode([(t, i, 0, i == len(prompt) - 1) for i, t in enumerate(prompt)])
        pos, steps = len(prompt), 128
        t0 = time.perf_counter()
        for _ in range(steps):
            tok = lc.llama_sampler_sample(c.greedy, c.ctx, -1)
            c.decode([(tok, pos, 0, True)])
            pos += 1
        b1 = steps / (time.perf_counter() - t0)
        # batch 8: 8 sequences on the same prompt, 64 steps of 8 tokens
        lc.llama_memory_clear(c.mem, True)
        for s in range(8):
            c.decode([(t, i, s, i == len(prompt) - 1) for i, t in enumerate(prompt)])
        toks = [lc.llama_sampler_sample(c.greedy, c.ctx, -1)] * 8
        pos, steps = len(prompt), 64
        t0 = time.perf_counter()
        for _ in range(steps):
            c.decode([(toks[s], pos, s, True) for s in range(8)])
            toks = [lc.llama_sampler_sample(c.greedy, c.ctx, s) for s in range(8)]
            pos += 1
        b8 = 8 * steps / (time.perf_counter() - t0)
    finally:
        c.close()
    return {"prefill": prefill, "b1": b1, "b8": b8}


def quality(path: Path, threads: int, es) -> tuple[float, list]:
    from llmkit.compress.scoring import LlamaScorer

    with LlamaScorer(path, threads, 1024) as s:
        rows = s.score(es.sequences)
    return math.exp(sum(r[0] for r in rows) / sum(r[1] for r in rows)), [r[2] for r in rows]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--types", default="q4_1,q8_0,q4_0,iq4_nl", help="q4_1 is the file as shipped")
    ap.add_argument("--val", default=str(ROOT / "examples/support/val.jsonl"))
    args = ap.parse_args()
    from llmkit.commands import quiet_known_noise

    quiet_known_noise()
    import llama_cpp

    from llmkit.compress import report as R
    from llmkit.compress.quantize import quantize
    from llmkit.models import hf_folder, resolve_model

    print("uptime:", _sh("uptime"))
    print("cpu flags:", " ".join(sorted(set(_sh("lscpu | grep -o 'avx512[a-z_0-9]*\\|avx2\\|amx[a-z_0-9]*'").split()))))
    print("ggml:", llama_cpp.llama_print_system_info().decode().strip())
    print(f"threads {args.threads}, rounds {args.rounds}", flush=True)
    ref = resolve_model("smollm2-135m-instruct")
    hf = hf_folder(ref, progress=False)
    tmp = Path(tempfile.mkdtemp(prefix="serve-weights-"))
    files = {}
    for t in args.types.split(","):
        if t == "q4_1":
            files[t] = ref.path
            continue
        files[t] = tmp / f"smollm2.{t}.gguf"
        quantize(ref.path, files[t], t, threads=args.threads, preset={"ftype": PRESETS[t]}, requantize=True)
    first = R._load(ref.path, 1, 1024)
    tokenize = partial(R._tokenize, first)
    val = tmp / "val.jsonl"  # the example's alpaca rows as chat messages, as the data stage writes them
    with open(args.val) as f, open(val, "w") as out:
        for line in f:
            row = json.loads(line)
            user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
            out.write(json.dumps({"messages": [{"role": "user", "content": user},
                                               {"role": "assistant", "content": row["output"]}]}) + "\n")
    es = R.eval_set(tokenize, hf, val, rows=100, prompts=1)
    prompt = es.prompts[0]
    first.close()
    print(f"quality on {es.source}; decode prompt {len(prompt)} tokens", flush=True)

    ppl, tops = {}, {}
    for t, f in files.items():
        ppl[t], tops[t] = quality(f, args.threads, es)
    base = "q4_1" if "q4_1" in files else next(iter(files))
    agree = {t: sum(int((a == b).sum()) for a, b in zip(tops[t], tops[base])) / sum(len(a) for a in tops[base])
             for t in files}
    runs: dict[str, list[dict]] = {t: [] for t in files}
    for rnd in range(args.rounds):
        for t in (list(files) if rnd % 2 == 0 else list(files)[::-1]):
            runs[t].append(speed(files[t], args.threads, prompt))
            r = runs[t][-1]
            print(f"round {rnd} {t}: prefill {r['prefill']:.0f}, batch-1 {r['b1']:.1f}, batch-8 {r['b8']:.1f} tok/s",
                  flush=True)
    print("uptime:", _sh("uptime"))
    med = {t: {k: statistics.median(r[k] for r in rs) for k in ("prefill", "b1", "b8")} for t, rs in runs.items()}
    print(f"\n| type | size MB | val ppl | Δppl vs {base} | top-1 agree vs {base} | prefill 512 tok/s | batch-1 tok/s "
          f"(vs {base}) | batch-8 tok/s (vs {base}) |")
    print("|---|---|---|---|---|---|---|---|")
    for t, f in files.items():
        m, b = med[t], med[base]
        print(f"| {t} | {f.stat().st_size / 1e6:.1f} | {ppl[t]:.4f} | {100 * (ppl[t] / ppl[base] - 1):+.2f}% | "
              f"{agree[t]:.1%} | {m['prefill']:.0f} | {m['b1']:.1f} ({m['b1'] / b['b1']:.2f}×) | "
              f"{m['b8']:.1f} ({m['b8'] / b['b8']:.2f}×) |")
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
