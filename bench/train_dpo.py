"""DPO speed and memory: llmkit's `train.method: dpo` beside trl's DPOTrainer, one script.

    .venv/bin/python bench/train_dpo.py [--steps 12]

Setup: SmolLM2-135M-Instruct (the bundled GGUF, dequantized), LoRA r=16 alpha=32 on all 7 linear projections,
beta 0.1, batch 4 pairs, max length 256, AdamW lr 5e-5, the 60 preference pairs of examples/support (our own
text; each side cycles through them). Both use the base with the adapter disabled as the reference model.
Each side runs in its own process (peak RSS is its own).

trl runs with plain settings: fp32, gradient checkpointing off (DPOConfig turns it on by default, which trades
speed for memory), reference log-probs computed at every step (its default). llmkit runs as a user would:
precision auto (bf16 on CPUs with AVX-512 bf16 kernels, fp32 elsewhere), reference log-probs
computed once before training, logits only at reply tokens.
Reported: seconds per optimizer step of the training loop, and the same with everything llmkit does before
the loop that trl does inside it (the reference pass), so neither side hides work.
Check `uptime` first: a busy box lies.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "examples" / "support" / "preference.jsonl"


def child_llmkit(work: Path, steps: int) -> dict:
    from llmkit.config import DataConfig, TrainConfig
    from llmkit.data import prepare
    from llmkit.train import finetune, preference

    prepare(DataConfig(train=str(PAIRS), val_fraction=0.0, dedupe="none"), work / "data", progress=False)
    ref_seconds = []
    real = preference.add_reference_logps

    def timed(*a, **k):
        t0 = time.perf_counter()
        real(*a, **k)
        ref_seconds.append(time.perf_counter() - t0)

    preference.add_reference_logps = timed
    cfg = TrainConfig(method="dpo", lr=5e-5, beta=0.1, batch_size=4, max_length=256, precision="auto",
                      eval_every=10**6, save_every=10**6, lora={"r": 16, "alpha": 32})
    m = finetune(cfg, work / "data", "smollm2-135m-instruct", work / "llmkit-dpo", progress=False,
                 max_steps=steps)["metrics"]
    return {"steps": m["steps"], "loop_seconds": m["seconds"], "ref_seconds": sum(ref_seconds),
            "loss_first": m["train_loss_first"], "loss_last": m["train_loss_last"]}


def child_trl(work: Path, steps: int) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from llmkit.models import hf_folder, resolve_model

    base = hf_folder(resolve_model("smollm2-135m-instruct"), progress=False)
    tok = AutoTokenizer.from_pretrained(base)
    rows = [json.loads(x) for x in PAIRS.read_text().splitlines()]
    conv = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]
    losses = []

    class Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    args = DPOConfig(output_dir=str(work / "trl-out"), per_device_train_batch_size=4, max_length=256,
                     learning_rate=5e-5, beta=0.1, max_steps=steps, logging_steps=1, save_strategy="no", report_to=[],
                     use_cpu=True, bf16=False, dataloader_num_workers=0, seed=0, gradient_checkpointing=False)
    peft_cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(base), args=args,
                         train_dataset=Dataset.from_list(conv), processing_class=tok, peft_config=peft_cfg,
                         callbacks=[Log()])
    t0 = time.perf_counter()
    trainer.train()
    return {"steps": steps, "loop_seconds": time.perf_counter() - t0, "ref_seconds": 0.0,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps each side runs")
    ap.add_argument("--child", choices=["llmkit", "trl"])
    ap.add_argument("--work")
    args = ap.parse_args()
    if args.child:
        work = Path(args.work)
        res = (child_trl if args.child == "trl" else child_llmkit)(work, args.steps)
        res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(res))
        return
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    work = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    results = {}
    for side in ("llmkit", "trl"):
        p = subprocess.run([sys.executable, __file__, "--work", str(work), "--steps", str(args.steps), "--child", side],
                           capture_output=True, text=True)
        if p.returncode:
            sys.exit(f"{side} failed:\n{p.stderr[-3000:]}")
        results[side] = r = json.loads(p.stdout.strip().splitlines()[-1])
        print(side, json.dumps(r))
    print(f"\n{'':7} {'steps':>5} {'loop s/step':>11} {'+ref s/step':>11} {'peak RSS GB':>11} {'loss first→last':>16}")
    for k, r in results.items():
        print(f"{k:7} {r['steps']:>5} {r['loop_seconds'] / r['steps']:>11.2f} "
              f"{(r['loop_seconds'] + r['ref_seconds']) / r['steps']:>11.2f} {r['peak_rss_gb']:>11.2f} "
              f"{r['loss_first']:>7.4f}→{r['loss_last']:.4f}")
    a, t = results["llmkit"], results["trl"]
    print(f"llmkit / trl s/step: {(a['loop_seconds'] + a['ref_seconds']) / a['steps'] / (t['loop_seconds'] / t['steps']):.2f}x "
          f"(reference pass included; goal ≤ 0.5x), peak RSS {a['peak_rss_gb'] / t['peak_rss_gb']:.2f}x")


if __name__ == "__main__":
    main()
