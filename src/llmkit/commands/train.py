"""`llmkit train`: the train stage of a recipe, in this process or as `--nproc` ranks under torchrun."""

from __future__ import annotations

import argparse
import os
import sys


def _train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llmkit.config import load_recipe
    from llmkit.errors import ConfigError
    from llmkit.train import finetune
    from llmkit.train.sft import summary

    recipe = load_recipe(args.recipe)
    cfg = recipe.train
    if cfg is None:
        raise ConfigError(["train: the recipe has no train section"], args.recipe)
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _torchrun(args.nproc)
    if args.method:
        cfg = cfg.model_copy(update={"method": args.method})
    data = Path(args.data) if args.data else recipe.run_dir / "data"
    out = Path(args.out) if args.out else recipe.run_dir / "train"
    r = finetune(cfg, data, recipe.model, out, resume=args.resume, force=args.force, max_steps=args.max_steps)
    if r["status"] == "worker":  # ranks other than 0 under --nproc: rank 0 reports
        return 0
    if r["status"] == "skipped":
        print(f"skipped: {out} already holds a finished model for these inputs and config (--force to redo)")
    print(summary(r["metrics"]))
    print(f"model: {out}  (chat with it: llmkit chat {out} --engine transformers)")
    return 0


def _torchrun(nproc: int) -> int:
    """Run this same `llmkit train` command as `nproc` processes under torchrun (DDP; gloo on CPU).

    torchrun, not `accelerate launch`: on CPU, `accelerate launch --cpu --num_processes 2` silently runs a
    single process.
    """
    import socket
    import subprocess

    with socket.socket() as s:  # a free port on loopback for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the ranks run the same command without --nproc (torchrun's own parser would also trip over it)
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            argv.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "llmkit.cli", *argv]
    return subprocess.call(cmd)


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="fine-tune the recipe's model on its dataset (LoRA, QLoRA, full, DPO, pretrain, reward, GRPO)",
                       description="Fine-tune the recipe's model on the dataset artifact of its data stage. Shows "
                                   "loss, real (non-padding) tokens/s and ETA; checkpoints every train.save_every "
                                   "steps (atomically); --resume continues exactly where a killed run stopped.")
    t.add_argument("--recipe", required=True, help="recipe YAML with train: (and data:) sections")
    t.add_argument("--method", choices=["lora", "qlora", "full", "dpo", "pretrain", "reward", "grpo"],
                   help="override train.method: lora (peft), qlora (LoRA over a 4-bit NF4 base, bitsandbytes), "
                        "full (every weight), dpo (LoRA preference tuning on prompt/chosen/rejected rows), "
                        "pretrain (text rows, every token a target), reward (a reward model on preference rows), "
                        "grpo (online RL: sampled completions scored by train.rewards)")
    t.add_argument("--data", help="dataset artifact folder (default: RUN_DIR/data)")
    t.add_argument("--out", help="output artifact folder (default: RUN_DIR/train)")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of this config")
    t.add_argument("--force", action="store_true", help="train again even when a finished artifact matches")
    t.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (default: from epochs)")
    t.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes on this machine (torchrun + DDP; gloo on CPU, nccl on GPU)")
    t.set_defaults(fn=_train)
