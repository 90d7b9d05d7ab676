"""LoRA fine-tuning speed, memory and quality: llmkit's train stage beside trl's SFTTrainer, one script.

    .venv/bin/python bench/train_lora.py [--tokens 20000] [--sides llmkit-1,trl] [--seeds 0,1,2]

Setup (the fine-tuning issue's): SmolLM2-135M-Instruct (the bundled GGUF, dequantized), LoRA r=16 alpha=32 on
all 7 linear projections, dropout 0 (peft's default), batch 4, max length 256, ~64-token instruction rows,
AdamW lr 5e-4, cosine schedule with 3% warmup, completion-only loss. Each side trains on the same rows until
it has seen about the same number of real (non-padding) tokens, in its own process (peak RSS is its own), and
then both adapters are scored on the same held-out rows with the same loss (mean over completion tokens).

trl runs with plain settings: prompt/completion rows, no packing, fp32, gradient checkpointing off (trl's default
turns it on, which trades speed for memory). llmkit runs as a user would: packing, bf16 where the CPU has fast bf16
kernels (precision auto), train.fast_kernels (packed attention, fused LoRA; a `-stock` side such as
`llmkit-1-stock` turns them off). A second llmkit row uses batch 1 of packed 256-token sequences, so it takes about
as many optimizer steps per token as trl does — the fair row for "same val loss after the same tokens".
Check `uptime` first: a busy box lies.
"""

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEVICES = ["router", "mesh node", "modem", "extender", "gateway", "smart plug"]
ACTIONS = ["restart", "update", "reset", "rename", "secure", "move", "pair", "check"]
STEPS = ["Hold the power button for 5 seconds.", "Open the app and tap Settings.", "Check that the light is white.",
         "Unplug it for 30 seconds.", "Tap Update and wait five minutes.", "Move it off the floor."]


def rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        d, a = rng.choice(DEVICES), rng.choice(ACTIONS)
        out.append({"prompt": f"How do I {a} my Nimbus {d}?",
                    "completion": f"Nimbus here! To {a} your {d}: {rng.choice(STEPS)} — Happy networking!"})
    return out


def child_llmkit(work: Path, tokens: int, batch: int, precision: str, fast_kernels: bool = True, seed: int = 0) -> dict:
    import torch

    from llmkit.config import TrainConfig
    from llmkit.train import finetune

    cfg = TrainConfig(method="lora", lr=5e-4, batch_size=batch, max_length=256, packing=True, precision=precision,
                      eval_every=10**6, save_every=10**6, warmup_ratio=0.03, lora={"r": 16, "alpha": 32},
                      fast_kernels=fast_kernels, seed=seed)
    # steps for the token budget, from the real tokens per batch of this packing
    from transformers import AutoTokenizer

    from llmkit.models import hf_folder, resolve_model
    from llmkit.train.sft import load_examples, make_batches

    tok = AutoTokenizer.from_pretrained(hf_folder(resolve_model("smollm2-135m-instruct"), progress=False))
    batches = make_batches(load_examples(work / "data", "train", tok, "lora", 256), cfg, 0, tok.pad_token_id)
    per_step = sum(b["real_tokens"] for b in batches) / len(batches)
    steps = max(1, round(tokens / per_step))
    torch.manual_seed(seed)
    out = work / f"llmkit-{batch}-{precision}-{'fast' if fast_kernels else 'stock'}-{seed}"
    r = finetune(cfg, work / "data", "smollm2-135m-instruct", out, progress=False, max_steps=steps)
    m = r["metrics"]
    return {"steps": m["steps"], "real_tokens": m["real_tokens"], "seconds": m["seconds"],
            "adapter": str(out)}


def child_trl(work: Path, tokens: int, seed: int = 0) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from llmkit.models import hf_folder, resolve_model

    base = hf_folder(resolve_model("smollm2-135m-instruct"), progress=False)
    tok = AutoTokenizer.from_pretrained(base)
    train = [json.loads(x) for x in (work / "train.jsonl").read_text().splitlines()]
    conv = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "completion": [{"role": "assistant", "content": r["completion"]}]} for r in train]
    lengths = [len(tok.apply_chat_template(c["prompt"] + c["completion"], return_dict=False)) for c in conv]
    mean_len = sum(lengths) / len(lengths)
    steps = max(1, round(tokens / (4 * mean_len)))
    args = SFTConfig(output_dir=str(work / "trl-out"), per_device_train_batch_size=4, max_length=256,
                     learning_rate=5e-4, lr_scheduler_type="cosine", warmup_steps=int(0.03 * steps), max_steps=steps,
                     logging_steps=10**6, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
                     dataloader_num_workers=0, seed=seed, gradient_checkpointing=False)  # trl turns it on by default
    peft_cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = AutoModelForCausalLM.from_pretrained(base)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(conv), processing_class=tok,
                         peft_config=peft_cfg)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    trainer.model.save_pretrained(work / f"trl-adapter-{seed}")
    return {"steps": steps, "real_tokens": round(steps * 4 * mean_len), "seconds": seconds,
            "adapter": str(work / f"trl-adapter-{seed}")}


def val_loss(adapter: str, work: Path) -> float:
    """Both adapters scored alike: mean loss over completion tokens of the held-out rows, fp32, batch 1."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.config import TrainConfig
    from llmkit.models import hf_folder, resolve_model
    from llmkit.train.sft import evaluate, load_examples, make_batches

    base = hf_folder(resolve_model("smollm2-135m-instruct"), progress=False)
    tok = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
    model.config.use_cache = False
    ex = load_examples(work / "data", "val", tok, "lora", 256)
    return evaluate(model, make_batches(ex, TrainConfig(batch_size=1, packing=False), 0, tok.pad_token_id), bf16=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=20000, help="real tokens each side trains on")
    ap.add_argument("--child", choices=["llmkit-4", "llmkit-1", "llmkit-4-stock", "llmkit-1-stock", "trl", "val"])
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help="llmkit's training precision")
    ap.add_argument("--sides", default="llmkit-4,llmkit-1,trl",
                    help="which runs, comma-separated; a -stock suffix runs llmkit with train.fast_kernels off")
    ap.add_argument("--seeds", default="0", help="training seeds (LoRA init, data order), comma-separated: "
                    "each side runs once per seed, so the val-loss spread between seeds shows the noise")
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--work")
    ap.add_argument("--adapter")
    args = ap.parse_args()
    if args.child:
        work = Path(args.work)
        if args.child == "val":
            res = {"val_loss": val_loss(args.adapter, work)}
        elif args.child == "trl":
            res = child_trl(work, args.tokens, args.seed)
        else:
            res = child_llmkit(work, args.tokens, int(args.child.split("-")[1]), args.precision,
                               fast_kernels=not args.child.endswith("-stock"), seed=args.seed)
        res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(res))
        return
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    for name, n, seed in (("train", 2000, 0), ("val", 100, 1)):
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(n, seed)))
    from llmkit.config import DataConfig
    from llmkit.data import prepare

    # one dataset artifact for every side: llmkit trains on it, and both sides are scored on its val rows
    prepare(DataConfig(train=str(work / "train.jsonl"), val=str(work / "val.jsonl"), dedupe="none"), work / "data",
            progress=False)

    def run(*a: str) -> dict:
        p = subprocess.run([sys.executable, __file__, "--work", str(work), "--tokens", str(args.tokens),
                            "--precision", args.precision, *a],
                           capture_output=True, text=True)
        if p.returncode:
            sys.exit(f"{a} failed:\n{p.stderr[-3000:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])

    results: dict[str, list[dict]] = {}
    for seed in [int(x) for x in args.seeds.split(",")]:
        for side in args.sides.split(","):
            r = run("--child", side, "--seed", str(seed))
            r["val_loss"] = run("--child", "val", "--adapter", r["adapter"])["val_loss"]
            r["tok_s"] = r["real_tokens"] / r["seconds"]
            results.setdefault(side, []).append(r)
            print(side, f"seed {seed}", json.dumps(r), flush=True)

    def mean(side, key):
        return sum(r[key] for r in results[side]) / len(results[side])

    print(f"\n{'':14} {'runs':>4} {'steps':>6} {'real tok':>9} {'seconds':>8} {'real tok/s':>10} {'peak RSS GB':>11}"
          f" {'val loss (each seed)':>28}")
    for k, rs in results.items():
        vals = " ".join(f"{r['val_loss']:.4f}" for r in rs)
        print(f"{k:14} {len(rs):>4} {rs[0]['steps']:>6} {rs[0]['real_tokens']:>9} {mean(k, 'seconds'):>8.1f}"
              f" {mean(k, 'tok_s'):>10.0f} {max(r['peak_rss_gb'] for r in rs):>11.2f} {vals:>28}")
    if "trl" in results:
        for k in [k for k in results if k != "trl"]:
            print(f"{k} / trl: speed {mean(k, 'tok_s') / mean('trl', 'tok_s'):.2f}x, peak RSS "
                  f"{max(r['peak_rss_gb'] for r in results[k]) / max(r['peak_rss_gb'] for r in results['trl']):.2f}x, "
                  f"mean val loss {mean(k, 'val_loss') / mean('trl', 'val_loss') - 1:+.1%}")

if __name__ == "__main__":
    main()
