"""LoRA fine-tuning speed, memory and quality: llmkit's train stage beside trl's SFTTrainer, one script.

    .venv/bin/python bench/train_lora.py [--tokens 20000]

Setup (the fine-tuning issue's): SmolLM2-135M-Instruct (the bundled GGUF, dequantized), LoRA r=16 alpha=32 on
all 7 linear projections, dropout 0 (peft's default), batch 4, max length 256, ~64-token instruction rows,
AdamW lr 5e-4, cosine schedule with 3% warmup, completion-only loss. Each side trains on the same rows until
it has seen about the same number of real (non-padding) tokens, in its own process (peak RSS is its own), and
then both adapters are scored on the same held-out rows with the same loss (mean over completion tokens).

trl runs with plain settings: prompt/completion rows, no packing, fp32, gradient checkpointing off (trl's default
turns it on, which trades speed for memory). llmkit runs as a user would: packing,
bf16. A second llmkit row uses batch 1 of packed 256-token sequences, so it takes about as many optimizer steps
per token as trl does — the fair row for "same val loss after the same tokens".
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


def child_llmkit(work: Path, tokens: int, batch: int, precision: str) -> dict:
    import torch

    from llmkit.config import DataConfig, TrainConfig
    from llmkit.data import prepare
    from llmkit.train import finetune

    prepare(DataConfig(train=str(work / "train.jsonl"), val=str(work / "val.jsonl"), dedupe="none"), work / f"data-{batch}",
            progress=False)
    cfg = TrainConfig(method="lora", lr=5e-4, batch_size=batch, max_length=256, packing=True, precision=precision,
                      eval_every=10**6, save_every=10**6, warmup_ratio=0.03, lora={"r": 16, "alpha": 32})
    # steps for the token budget, from the real tokens per batch of this packing
    from transformers import AutoTokenizer

    from llmkit.models import hf_folder, resolve_model
    from llmkit.train.sft import load_examples, make_batches

    tok = AutoTokenizer.from_pretrained(hf_folder(resolve_model("smollm2-135m-instruct"), progress=False))
    batches = make_batches(load_examples(work / f"data-{batch}", "train", tok, "lora", 256), cfg, 0, tok.pad_token_id)
    per_step = sum(b["real_tokens"] for b in batches) / len(batches)
    steps = max(1, round(tokens / per_step))
    torch.manual_seed(0)
    r = finetune(cfg, work / f"data-{batch}", "smollm2-135m-instruct", work / f"llmkit-{batch}-{precision}",
                 progress=False, max_steps=steps)
    m = r["metrics"]
    return {"steps": m["steps"], "real_tokens": m["real_tokens"], "seconds": m["seconds"],
            "adapter": str(work / f"llmkit-{batch}-{precision}")}


def child_trl(work: Path, tokens: int) -> dict:
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
                     dataloader_num_workers=0, seed=0, gradient_checkpointing=False)  # trl turns it on by default
    peft_cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = AutoModelForCausalLM.from_pretrained(base)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(conv), processing_class=tok,
                         peft_config=peft_cfg)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    trainer.model.save_pretrained(work / "trl-adapter")
    return {"steps": steps, "real_tokens": round(steps * 4 * mean_len), "seconds": seconds,
            "adapter": str(work / "trl-adapter")}


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
    data = sorted(work.glob("data-*"))[0]  # every data-* artifact holds the same val rows
    ex = load_examples(data, "val", tok, "lora", 256)
    return evaluate(model, make_batches(ex, TrainConfig(batch_size=1, packing=False), 0, tok.pad_token_id), bf16=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=20000, help="real tokens each side trains on")
    ap.add_argument("--child", choices=["llmkit-4", "llmkit-1", "trl", "val"])
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help="llmkit's training precision")
    ap.add_argument("--sides", default="llmkit-4,llmkit-1,trl", help="which runs, comma-separated")
    ap.add_argument("--work")
    ap.add_argument("--adapter")
    args = ap.parse_args()
    if args.child:
        work = Path(args.work)
        if args.child == "val":
            res = {"val_loss": val_loss(args.adapter, work)}
        elif args.child == "trl":
            res = child_trl(work, args.tokens)
        else:
            res = child_llmkit(work, args.tokens, int(args.child.split("-")[1]), args.precision)
        res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(res))
        return
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    for name, n, seed in (("train", 2000, 0), ("val", 100, 1)):
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(n, seed)))

    def run(*a: str) -> dict:
        p = subprocess.run([sys.executable, __file__, "--work", str(work), "--tokens", str(args.tokens),
                            "--precision", args.precision, *a],
                           capture_output=True, text=True)
        if p.returncode:
            sys.exit(f"{a} failed:\n{p.stderr[-3000:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])

    results = {}
    for side in args.sides.split(","):
        r = run("--child", side)
        r["val_loss"] = run("--child", "val", "--adapter", r["adapter"])["val_loss"]
        results[side] = r
        print(side, json.dumps(r))
    print(f"\n{'':9} {'steps':>6} {'real tok':>9} {'seconds':>8} {'real tok/s':>10} {'peak RSS GB':>11} {'val loss':>9}")
    for k, r in results.items():
        print(f"{k:9} {r['steps']:>6} {r['real_tokens']:>9} {r['seconds']:>8.1f} {r['real_tokens'] / r['seconds']:>10.0f}"
              f" {r['peak_rss_gb']:>11.2f} {r['val_loss']:>9.4f}")
    t = results.get("trl")
    for k in [k for k in results if k != "trl" and t]:
        r = results[k]
        print(f"{k} / trl: speed {r['real_tokens'] / r['seconds'] / (t['real_tokens'] / t['seconds']):.2f}x, "
              f"peak RSS {r['peak_rss_gb'] / t['peak_rss_gb']:.2f}x, val loss {r['val_loss'] / t['val_loss'] - 1:+.1%}")


if __name__ == "__main__":
    main()
