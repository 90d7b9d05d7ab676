"""Reward-model accuracy, speed and memory: llmkit's `train.method: reward` beside trl's RewardTrainer, one script.

    .venv/bin/python bench/train_reward.py [--steps 12] [--precision fp32|bf16]

Setup (both sides): SmolLM2-135M-Instruct (the bundled GGUF, dequantized) with a one-label sequence-classification
head (transformers' AutoModelForSequenceClassification), LoRA r=16 alpha=32 on all 7 linear projections (the
head trained in full, peft's SEQ_CLS task), the 60 preference pairs of examples/support/preference.jsonl split
by llmkit's data stage (val_fraction 0.25, seed 0): both sides train on the same train.jsonl and are scored on
the same val.jsonl. 4 pairs per step, max length 256, AdamW lr 1e-4, no warmup, seed 0, Bradley–Terry loss.
Precision is the same on both sides (`--precision`, default fp32): the model loaded in that dtype; trl
`bf16=True` for bf16, llmkit `precision: bf16`. trl with gradient checkpointing off (RewardConfig turns it on by
default, which trades speed for memory). Learning-rate schedule: each side's default (llmkit cosine, trl linear
decay). Each side runs in its own process (peak RSS is its own), one after the other.

Reported: seconds per optimizer step of the training loop, val pairwise accuracy (share of val pairs whose chosen
reply scores above the rejected one: llmkit's manifest metric, trl's `eval_accuracy`), peak RSS.
Check `uptime` first: a busy box lies.
"""

import json
import tempfile
import time
from pathlib import Path

import sides

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "examples" / "support" / "preference.jsonl"
B, LENGTH, LR = 4, 256, 1e-4
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def prepare_pairs(work: Path) -> Path:
    """The data stage's split of the example pairs: work/data/{train,val}.jsonl, rows {prompt, chosen, rejected}."""
    from llmkit.config import DataConfig
    from llmkit.data import prepare

    prepare(DataConfig(train=str(PAIRS), val_fraction=0.25, dedupe="none"), work / "data", progress=False)
    return work / "data"


def child_llmkit(data: Path, work: Path, steps: int, precision: str) -> dict:
    from llmkit.config import TrainConfig
    from llmkit.train import finetune

    cfg = TrainConfig(method="reward", lr=LR, batch_size=B, max_length=LENGTH, warmup_ratio=0.0, precision=precision,
                      eval_every=10**6, save_every=10**6, lora={"r": 16, "alpha": 32})
    m = finetune(cfg, data, "smollm2-135m-instruct", work / "llmkit-rm", progress=False, max_steps=steps,
                 force=True)["metrics"]
    return {"steps": m["steps"], "loop_seconds": m["seconds"], "val_accuracy": m["val_pairwise_accuracy"],
            "loss_first": m["train_loss_first"], "loss_last": m["train_loss_last"]}


def child_trl(data: Path, work: Path, steps: int, precision: str) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from llmkit.models import hf_folder, resolve_model

    base = hf_folder(resolve_model("smollm2-135m-instruct"), progress=False)
    tok = AutoTokenizer.from_pretrained(base)

    def rows(split):  # conversational rows, as llmkit templates them: the user prompt, then the reply
        out = []
        for line in (data / f"{split}.jsonl").read_text().splitlines():
            r = json.loads(line)
            out.append({"prompt": [{"role": "user", "content": r["prompt"]}],
                        "chosen": [{"role": "assistant", "content": r["chosen"]}],
                        "rejected": [{"role": "assistant", "content": r["rejected"]}]})
        return Dataset.from_list(out)

    losses = []

    class Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    args = RewardConfig(output_dir=str(work / "trl-out"), per_device_train_batch_size=B, per_device_eval_batch_size=B,
                        max_length=LENGTH, learning_rate=LR, max_steps=steps, logging_steps=1, save_strategy="no",
                        eval_strategy="no", report_to=[], use_cpu=True, bf16=precision == "bf16",
                        dataloader_num_workers=0, seed=0, gradient_checkpointing=False, warmup_steps=0)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=dtype)
    model.config.pad_token_id = tok.pad_token_id
    peft_cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="SEQ_CLS", target_modules=TARGETS)
    trainer = RewardTrainer(model=model, args=args, train_dataset=rows("train"), eval_dataset=rows("val"),
                            processing_class=tok, peft_config=peft_cfg, callbacks=[Log()])
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    acc = trainer.evaluate()["eval_accuracy"]
    return {"steps": steps, "loop_seconds": seconds, "val_accuracy": acc,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}


def main() -> None:
    ap = sides.arguments(__doc__, "optimizer steps each side runs")
    args = ap.parse_args()
    if args.child:
        work = Path(args.work)
        res = (child_trl if args.child == "trl" else child_llmkit)(work / "data", work / args.child, args.steps,
                                                                     args.precision)
        sides.child_result(res)
        return
    print(sides.machine())
    print(f"precision: {args.precision} (both sides), steps: {args.steps}")
    work = Path(tempfile.mkdtemp(prefix="bench-rm-"))
    data = prepare_pairs(work)
    n = {s: len((data / f"{s}.jsonl").read_text().splitlines()) for s in ("train", "val")}
    print(f"pairs: {n['train']} train, {n['val']} val")
    results = sides.run(__file__, ["llmkit", "trl"], ["--work", str(work), "--steps", str(args.steps),
                                                      "--precision", args.precision])
    print(f"\n{'':7} {'steps':>5} {'s/step':>7} {'val pairwise acc':>16} {'loss first→last':>16} {'peak RSS GB':>11}")
    for k, r in results.items():
        print(f"{k:7} {r['steps']:>5} {r['loop_seconds'] / r['steps']:>7.2f} {r['val_accuracy']:>16.3f} "
              f"{r['loss_first']:>7.4f}→{r['loss_last']:<7.4f} {r['peak_rss_gb']:>11.2f}")
    a, t = results["llmkit"], results["trl"]
    print(f"llmkit / trl steps/s: {(t['loop_seconds'] / t['steps']) / (a['loop_seconds'] / a['steps']):.2f}x, "
          f"val accuracy {a['val_accuracy']:.3f} vs {t['val_accuracy']:.3f}, "
          f"peak RSS {a['peak_rss_gb'] / t['peak_rss_gb']:.2f}x")


if __name__ == "__main__":
    main()
