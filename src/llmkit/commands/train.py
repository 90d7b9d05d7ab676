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
    if (args.nproc > 1 or args.nnodes > 1) and "LOCAL_RANK" not in os.environ:
        return _torchrun(args.nproc, _nodes(args))
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


LAUNCH_FLAGS = ("--nproc", "--nnodes", "--node-rank", "--master-addr", "--master-port")
MASTER_PORT = 29500  # torchrun's own default, for nodes that must agree on it without being told


def _nodes(args: argparse.Namespace) -> tuple[int, int, str, int] | None:
    """(nnodes, node rank, master address, master port) for a multi-node run, None for one machine; every problem
    with the flags at once."""
    from llmkit.errors import ConfigError

    if args.nnodes == 1:
        given = [f for f, v in (("--node-rank", args.node_rank), ("--master-addr", args.master_addr)) if v]
        if given:
            raise ConfigError([f"{f} is for multi-node runs: add --nnodes N (N > 1)" for f in given])
        return None
    problems = []
    if args.nnodes < 1:
        problems.append(f"--nnodes {args.nnodes}: expected 1 or more")
    if args.node_rank is None or not 0 <= args.node_rank < args.nnodes:
        problems.append(f"--node-rank: expected this node's index, 0 to {args.nnodes - 1} (0 is the master node), "
                        f"got {args.node_rank}")
    if not args.master_addr:
        problems.append("--master-addr: expected the address of node 0, reachable from every node")
    if problems:
        raise ConfigError(problems)
    return args.nnodes, args.node_rank, args.master_addr, args.master_port or MASTER_PORT


def torchrun_command(nproc: int, nodes: tuple[int, int, str, int] | None, argv: list[str], port: int) -> list[str]:
    """torchrun running `llmkit <argv>` (without the launch flags) as `nproc` ranks on this node; on one machine
    (`nodes` None) its rendezvous is on loopback `port`, else on the master node's address and port (static
    rendezvous: every node starts the same command with its own --node-rank)."""
    rest, skip = [], False
    for a in argv:  # the ranks run the same command without the launch flags (torchrun's parser would trip too)
        if skip:
            skip = False
        elif a in LAUNCH_FLAGS:
            skip = True
        elif not a.startswith(tuple(f + "=" for f in LAUNCH_FLAGS)):
            rest.append(a)
    nnodes, rank, addr, port = nodes or (1, 0, "127.0.0.1", port)
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={nnodes}",
            f"--node_rank={rank}", f"--master_addr={addr}", f"--master_port={port}", "-m", "llmkit.cli", *rest]


def _torchrun(nproc: int, nodes: tuple[int, int, str, int] | None = None) -> int:
    """Run this same `llmkit train` command as `nproc` processes under torchrun (DDP; gloo on CPU, nccl on GPU),
    on this machine or as one node of `nodes`.

    torchrun, not `accelerate launch`: on CPU, `accelerate launch --cpu --num_processes 2` silently runs a
    single process.
    """
    import socket
    import subprocess

    with socket.socket() as s:  # a free port on loopback for a one-machine rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return subprocess.call(torchrun_command(nproc, nodes, sys.argv[1:], port))


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
    t.add_argument("--nnodes", type=int, default=1,
                   help="machines in a multi-node run: start the same command on each, with its own --node-rank "
                        "(world size = nnodes x nproc; the artifact is written by node 0: give every node the same "
                        "--out on a shared filesystem, or read node 0's)")
    t.add_argument("--node-rank", type=int, help="this machine's index in a multi-node run, 0 to nnodes-1 (0: master)")
    t.add_argument("--master-addr", help="multi-node: the address of node 0, reachable from every node")
    t.add_argument("--master-port", type=int,
                   help=f"multi-node: the rendezvous port on node 0 (default {MASTER_PORT}, torchrun's)")
    t.set_defaults(fn=_train)
