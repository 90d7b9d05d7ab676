"""llama.cpp's CPU kernel variants side by side: prefill, batch-1 decode and batch-8 decode per variant.

    python bench/cpu_variants.py --models DIR [--dl-python /work/venv-dl/bin/python] [--variants x64,haswell,zen4]
        [--quants q4_0,q4_1,q8_0,iq4_nl] [--threads 1,2] [--rounds 2]

Sides:
- `static`: the llama-cpp-python in `--python` (the project's wheel, `GGML_NATIVE=OFF`: one CPU backend linked in);
- one side per `libggml-cpu-<variant>.so` of a `GGML_BACKEND_DL=ON GGML_CPU_ALL_VARIANTS=ON` wheel installed in
  `--dl-python`'s environment, each in its own process that registers only that backend (`ggml_backend_load`
  from libggml through ctypes, before `llama_backend_init`, which then loads nothing more);
- `auto`: the same wheel with `ggml_backend_load_all_from_path(<variant folder>)`, the loader's own pick (by
  `ggml_backend_score`); the variant it picked is read from /proc/self/maps.
A variant this CPU cannot run (score 0) is reported as such; an AMX variant (`sapphirerapids`) is never loaded
unless `--allow-amx` (FACTS.md: AMX crashed batched prefill in this llama.cpp version).

Per side, quantization type and thread count (token ids are fixed, not sampled; speed does not depend on them):
- prefill: one `llama_decode` of `--prompt` tokens (fastest of 3) (n_batch = n_ubatch = 512, flash attention off, logits of
  the last token only), as compress/scoring.py's perplexity report decodes its rows; tok/s;
- decode b1: `--decode` one-token steps after a 32-token prompt, logits each step; tok/s;
- decode b8: 8 sequences (kv_unified off, as the engine's parallel slots) each given a 32-token prompt, then
  `--decode` steps of 8 tokens (one per sequence) per `llama_decode`; aggregate tok/s.
Best of `--rounds`; rounds go round-robin over the sides so load hits them alike. `uptime` and the CPU flags are
printed before and after. The GGUF files are `<models>/<quant>.gguf`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

PROMPT_SHORT = 32  # prompt tokens before the decode steps
B8 = 8  # sequences in the batch-8 decode
PREFILL_REPS = 3  # prefills per cell and process, the fastest kept (one prefill is short: load spikes hit it)
AMX_VARIANTS = ("sapphirerapids",)  # ggml's x86 variants built with AMX_TILE / AMX_INT8


# ---------------------------------------------------------------- child: one process, one CPU backend

def _tokens(n: int, offset: int = 0) -> list[int]:
    return [100 + (i * 37 + offset * 101) % 20000 for i in range(n)]


def _variant_dir(pkg: Path) -> Path:
    """Where the wheel put the libggml-cpu-*.so files: ggml installs backend modules to CMAKE_INSTALL_BINDIR, which
    scikit-build-core maps to site-packages/bin/ (not llama_cpp/lib/, where llama-cpp-python puts its own)."""
    for d in (pkg / "lib", pkg.parent / "bin"):
        if any(d.glob("libggml-cpu-*.so")):
            return d
    return pkg / "lib"


def _load_backend(lc, variant: str | None) -> str:
    """Register the CPU backend: None = the wheel's linked-in one; "auto" = ggml's pick; else that .so file."""
    import ctypes
    if variant is None:
        return "static"
    # By soname, so dlopen hands back the copy libllama loaded: the wheel holds libggml.so and libggml.so.0 as two
    # files (zip has no symlinks), and a path would load a second libggml with a second, empty backend registry
    ggml = ctypes.CDLL("libggml.so.0")
    vdir = _variant_dir(Path(lc.__file__).parent)
    if variant == "auto":
        ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
        ggml.ggml_backend_load_all_from_path(str(vdir).encode())
    else:
        ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
        ggml.ggml_backend_load.restype = ctypes.c_void_p
        if not ggml.ggml_backend_load(str(vdir / f"libggml-cpu-{variant}.so").encode()):
            return "unsupported"
    maps = Path("/proc/self/maps").read_text()
    return ",".join(sorted(set(re.findall(r"libggml-cpu-([\w.]+)\.so", maps)))) or "none"


def _context(lc, model, *, n_ctx: int, n_seq: int, threads: int, flash_attn: bool | None):
    """The settings of llmkit's engines/llamacpp.py `new_context` (not imported: the DL side's venv holds only
    llama-cpp-python and numpy)."""
    settings = {"n_ctx": n_ctx * n_seq, "n_batch": 512, "n_ubatch": 512, "n_seq_max": n_seq, "n_threads": threads,
                "n_threads_batch": threads, "kv_unified": False, "no_perf": True}
    if flash_attn is not None:
        settings["flash_attn_type"] = (lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                       else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    p = lc.llama_context_default_params()
    for name, value in settings.items():
        setattr(p, name, value)
    ctx = lc.llama_init_from_model(model, p)
    assert ctx, "llama_init_from_model failed"
    return ctx


def _fill(batch, items: list[tuple[int, int, int, bool]]) -> None:
    """items: (token, position, sequence, logits?)"""
    for i, (tok, pos, seq, want) in enumerate(items):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, pos, 1, want
        batch.seq_id[i][0] = seq
    batch.n_tokens = len(items)


def _decode(lc, ctx, batch) -> None:
    rc = lc.llama_decode(ctx, batch)
    assert rc == 0, f"llama_decode returned {rc}"
    lc.llama_synchronize(ctx)


def _prefill(lc, model, threads: int, n_prompt: int) -> float:
    ctx = _context(lc, model, n_ctx=n_prompt + 64, n_seq=1, threads=threads, flash_attn=False)
    batch = lc.llama_batch_init(n_prompt, 0, 1)
    ids = _tokens(n_prompt)
    _fill(batch, [(t, i, 0, i == n_prompt - 1) for i, t in enumerate(ids[:64])])
    _decode(lc, ctx, batch)  # warm-up (first use allocates and repacks)
    _fill(batch, [(t, i, 0, i == n_prompt - 1) for i, t in enumerate(ids)])
    dt = float("inf")
    for _ in range(PREFILL_REPS):
        lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
        t0 = time.perf_counter()
        _decode(lc, ctx, batch)
        dt = min(dt, time.perf_counter() - t0)
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)
    return n_prompt / dt


def _decode_steps(lc, model, threads: int, n_seq: int, steps: int) -> float:
    import numpy as np
    ctx = _context(lc, model, n_ctx=PROMPT_SHORT + steps + 8, n_seq=n_seq, threads=threads, flash_attn=None)
    n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    batch = lc.llama_batch_init(max(PROMPT_SHORT * n_seq, n_seq), 0, 1)
    _fill(batch, [(t, i, s, i == PROMPT_SHORT - 1)
                  for s in range(n_seq) for i, t in enumerate(_tokens(PROMPT_SHORT, s))])
    _decode(lc, ctx, batch)
    last = [int(np.argmax(np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, (s + 1) * PROMPT_SHORT - 1),
                                                 shape=(n_vocab,)))) for s in range(n_seq)]
    t0 = time.perf_counter()
    for step in range(steps):
        _fill(batch, [(last[s], PROMPT_SHORT + step, s, True) for s in range(n_seq)])
        _decode(lc, ctx, batch)
        last = [int(np.argmax(np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, s), shape=(n_vocab,))))
                for s in range(n_seq)]  # greedy, as a real reply picks its next token
    dt = time.perf_counter() - t0
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)
    return n_seq * steps / dt


def child(spec: dict) -> dict:
    import llama_cpp as lc
    from llama_cpp import _logger
    _logger.set_verbose(False)
    loaded = _load_backend(lc, spec["variant"])
    out = {"loaded": loaded, "cells": {}}
    if loaded in ("unsupported", "none"):
        return out
    lc.llama_backend_init()
    out["system_info"] = lc.llama_print_system_info().decode().strip()
    for quant in spec["quants"]:
        mp = lc.llama_model_default_params()
        model = lc.llama_model_load_from_file(str(Path(spec["models"]) / f"{quant}.gguf").encode(), mp)
        assert model, f"could not load {quant}.gguf"
        for threads in spec["threads"]:
            cell = {"prefill": _prefill(lc, model, threads, spec["prompt"]),
                    "b1": _decode_steps(lc, model, threads, 1, spec["decode"])}
            if spec["b8"]:
                cell["b8"] = _decode_steps(lc, model, threads, B8, spec["decode"])
            out["cells"][f"{quant}/{threads}"] = cell
        lc.llama_model_free(model)
    return out


# ---------------------------------------------------------------- parent: the sides, round-robin, the table

def _dl_variants(python: str) -> tuple[Path, list[str]]:
    code = "import llama_cpp, pathlib; print(pathlib.Path(llama_cpp.__file__).parent)"
    pkg = Path(subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.strip())
    libdir = _variant_dir(pkg)
    names = sorted(m.group(1) for p in libdir.glob("libggml-cpu-*.so")
                   if (m := re.match(r"libggml-cpu-([\w.]+)\.so$", p.name)))
    return libdir, names


def _run_child(python: str, spec: dict) -> dict:
    r = subprocess.run([python, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if r.returncode != 0:
        return {"loaded": f"crashed rc={r.returncode}", "cells": {}, "stderr": r.stderr[-2000:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def _state(label: str) -> None:
    up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    flags = sorted(set(re.findall(r"avx512[a-z_0-9]*|amx[a-z_0-9]*|avx_vnni|avx2", lscpu)))
    model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "?")
    print(f"# {label}: {time.strftime('%H:%M:%S', time.gmtime())} UTC  {up}")
    print(f"#   cpu: {model}; flags: {' '.join(flags)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--models", type=Path, help="folder with <quant>.gguf files")
    ap.add_argument("--python", default=sys.executable, help="interpreter of the static (current) wheel")
    ap.add_argument("--dl-python", help="interpreter whose llama-cpp-python is built with GGML_BACKEND_DL=ON")
    ap.add_argument("--variants", default="", help="comma list of libggml-cpu-<variant>.so names; default all")
    ap.add_argument("--no-auto", action="store_true", help="leave out the loader's own pick")
    ap.add_argument("--allow-amx", action="store_true", help="load AMX variants too (crashed on prefill, FACTS)")
    ap.add_argument("--quants", default="q4_0,q4_1,q8_0,iq4_nl")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prompt", type=int, default=512, help="prefill tokens")
    ap.add_argument("--decode", type=int, default=64, help="decode steps")
    ap.add_argument("--no-b8", action="store_true")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.models is None:
        ap.error("--models is required")

    common = {"models": str(args.models.resolve()), "quants": args.quants.split(","),
              "threads": [int(t) for t in args.threads.split(",")], "prompt": args.prompt,
              "decode": args.decode, "b8": not args.no_b8}
    sides: list[tuple[str, str, str | None]] = [("static", args.python, None)]
    if args.dl_python:
        libdir, found = _dl_variants(args.dl_python)
        wanted = args.variants.split(",") if args.variants else found
        missing = [v for v in wanted if v not in found]
        if missing:
            sys.exit(f"--variants: {', '.join(missing)} not in {libdir} (found: {', '.join(found)})")
        if not args.no_auto:
            sides.append(("auto", args.dl_python, "auto"))
        sides += [(v, args.dl_python, v) for v in wanted if args.allow_amx or v not in AMX_VARIANTS]
        skipped = [v for v in wanted if not args.allow_amx and v in AMX_VARIANTS]
        if skipped:
            print(f"# not loaded (AMX, crashed batched prefill per FACTS.md): {', '.join(skipped)}")

    _state("start")
    best: dict[str, dict] = {}
    for rnd in range(args.rounds):
        for name, python, variant in sides:
            t0 = time.perf_counter()
            res = _run_child(python, {**common, "variant": variant})
            print(f"# round {rnd + 1} {name}: loaded {res['loaded']} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
            if "stderr" in res:
                print("#   " + res["stderr"].replace("\n", "\n#   "))
            b = best.setdefault(name, {"loaded": res["loaded"], "system_info": res.get("system_info", ""),
                                       "cells": {}})
            for key, cell in res["cells"].items():
                old = b["cells"].setdefault(key, {})
                for metric, v in cell.items():
                    old[metric] = max(old.get(metric, 0.0), v)
    _state("end")

    print()
    for name, b in best.items():
        print(f"{name:<14} loaded={b['loaded']}  {b['system_info']}")
    print()
    ref = best["static"]["cells"]
    metrics = ["prefill", "b1"] + ([] if args.no_b8 else ["b8"])
    head = f"{'side':<14}{'quant':<8}{'thr':>4}" + "".join(f"{m + ' tok/s':>15}{'×':>6}" for m in metrics)
    print(head)
    for key in ref:
        quant, threads = key.split("/")
        for name, b in best.items():
            cell = b["cells"].get(key)
            if not cell:
                continue
            row = f"{name:<14}{quant:<8}{threads:>4}"
            for m in metrics:
                ratio = cell[m] / ref[key][m] if ref[key].get(m) else float("nan")
                row += f"{cell[m]:>15.1f}{ratio:>6.2f}"
            print(row)
        print()


if __name__ == "__main__":
    main()
