"""Fine-tuning — LoRA, QLoRA, full-parameter, continued pretraining and DPO — in one plain PyTorch loop.

    manifest = finetune(TrainConfig(method="lora"), data=Path("runs/x/data"), base="smollm2-135m-instruct",
                        out=Path("runs/x/train"))

Read top to bottom: examples → batches (packed) → loss → optimizer step → eval → checkpoint. Why not trl's
SFTTrainer: on this CPU a plain loop that (1) packs rows so no compute goes to padding, (2) keeps frozen
weights in bf16 under bf16 autocast, and (3) computes logits only where there is a target — SmolLM2's
49k-token vocabulary makes the full (B, T, V) logits the biggest tensor of the step — and (4) runs attention
per packed sequence and each LoRA linear as one fused function (fast.py; exact) is faster at lower memory
(bench/train_lora.py measures it side by side with trl).

QLoRA is the same loop over a base loaded in 4-bit NF4 by bitsandbytes (CPU or GPU). DPO swaps in
preference.py's pairs, batches and loss; a reward model (`method: reward`) the same pairs with a scalar head
and reward.py's Bradley–Terry loss; the loop, checkpoints, eval and early stopping stay these. GRPO (online,
with rollouts) has its own loop in grpo.py over this module's model, checkpoints and state.

Resume is exact: a checkpoint holds the trainable weights, optimizer, scheduler, RNG state and the position
in the seeded data order, written atomically; `resume=True` continues from the newest one and every later
step matches an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmkit import artifacts
from llmkit.config import TrainConfig
from llmkit.errors import ConfigError, DataError, MissingExtra
from llmkit.train import compiled, fast
from llmkit.train.common import (
    adamw,
    amp,
    collate,
    optimizer_step,
    read_split,
    row_logps,
    to_device,
    train_device,
    with_positions,
)
from llmkit.train.template import IGNORE, encode_chat, encode_text, pack

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_METHODS = ("lora", "qlora", "dpo", "reward", "grpo")  # the methods that train a LoRA adapter
GRPO_FIELDS = {"num_generations", "max_completion_length", "temperature", "epsilon", "num_iterations", "rewards"}
# speed-only settings: the same model to float rounding, so a finished artifact is not trained again for them
SPEED_FIELDS = {"compile", "device"}


@dataclass
class State:
    """Where training is; saved in every checkpoint."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    micro: int = 0  # micro-batches done in the current epoch
    losses: list = field(default_factory=list)  # [(step, train loss)]
    val_losses: list = field(default_factory=list)  # [(step, val loss)]
    best_val: float = math.inf
    bad_evals: int = 0  # evaluations in a row without improvement (early stopping)
    tokens: int = 0  # real (non-padding) tokens seen
    seconds: float = 0.0  # training time so far, across resumes
    log: list = field(default_factory=list)  # GRPO: one dict of metrics per step (grpo.py)


# ---------------------------------------------------------------------------------------------------------
# data


def load_examples(dataset: Path, split: str, tok, method: str, max_length: int) -> list[dict]:
    """Tokenized examples with labels from a dataset artifact's `{split}.jsonl`."""
    out = []
    for where, row in read_split(dataset, split):
        if "chosen" in row:
            raise DataError(f"{where}: preference rows (prompt/chosen/rejected) are for method dpo or reward, "
                            f"not {method}")
        if method == "pretrain":
            if "text" not in row:
                raise DataError(f"{where}: method pretrain trains on text rows; this row has {sorted(row)}")
            out.append(encode_text(tok, row["text"], max_length))
        else:
            if "messages" not in row:
                raise DataError(f"{where}: method {method} trains on conversations; this row has {sorted(row)}")
            out.append(encode_chat(tok, row["messages"], max_length))
    return out


def make_batches(examples: list[dict], cfg: TrainConfig, epoch: int, pad_id: int) -> list[dict]:
    """One epoch of micro-batches in a seeded order: (B, T) tensors input_ids, labels, position_ids."""
    order = list(range(len(examples)))
    random.Random(cfg.seed * 100_003 + epoch).shuffle(order)
    seqs = [examples[i] for i in order]
    if cfg.packing:
        seqs = list(pack(seqs, cfg.max_length))
    else:
        seqs = [with_positions(s) for s in seqs]
    batches = []
    for i in range(0, len(seqs), cfg.batch_size):
        b = collate(seqs[i:i + cfg.batch_size], pad_id)
        b["count"] = int((b["labels"][:, 1:] != IGNORE).sum())  # the loss is a mean over target tokens
        batches.append(b)
    return batches


# ---------------------------------------------------------------------------------------------------------
# model and loss


def resolve_precision(precision: str, device=None) -> str:
    """"auto" → "bf16" where oneDNN has bf16 kernels for this CPU (AVX-512 and up), else "fp32"; on a CUDA
    `device`, "bf16" where the GPU supports it (Ampere and later).

    Measured: on an AVX-512 EPYC bf16 LoRA steps ran 2.4x faster than fp32; on an AVX2-only EPYC a bf16
    matmul ran 7x slower than fp32 (8 vs 59 GFLOP/s, one thread), since bf16 is then emulated.
    """
    if precision != "auto":
        return precision
    import torch

    if device is not None and device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def _keep_nf4_trainable(model) -> None:
    """Keep bitsandbytes' NF4 layers on their autograd path for the whole run.

    On CPUs with AVX512-BF16, bitsandbytes 0.50's `Linear4bit.forward` repacks its weight for a faster inference
    kernel the first time it runs in eval mode without grad (our val loss, DPO's reference pass), and keeps it so:
    every later training step then goes through `gemv_4bit`, which has no autograd kernel, so the gradient stops
    at each NF4 layer and the LoRA weights below it learn from a wrong signal (measured on an AVX-512 EPYC: the
    tiny-model QLoRA test's loss fell 5.90 -> 4.17 instead of below 4.13; on AVX2 there is no repacking).
    Switching the repacking off keeps training exact on every CPU."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def load_model(cfg: TrainConfig, base_dir: Path, device=None):
    """The model to train, on `device` (default the CPU): the base with LoRA adapters or all weights trainable,
    or with a scalar score head (reward)."""
    import torch
    from transformers import AutoModelForCausalLM

    bf16 = cfg.precision == "bf16"
    adapter = cfg.method in ADAPTER_METHODS
    kwargs = {}
    if cfg.method == "qlora":
        # frozen base in 4-bit NF4 (bitsandbytes; runs on CPU too), LoRA weights in fp32, compute in bf16/fp32
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise MissingExtra("train.method qlora needs bitsandbytes: pip install 'llmkit[quant]'") from None
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32)
        if device is not None and device.type == "cuda":  # a 4-bit model cannot be moved after loading
            kwargs["device_map"] = {"": device.index or 0}
    # LoRA: frozen base stored in bf16 (half the memory; autocast would otherwise keep a bf16 copy of each
    # fp32 weight as well). Full: fp32 master weights, bf16 compute under autocast.
    dtype = torch.bfloat16 if bf16 and adapter else torch.float32
    if cfg.method == "reward":  # a scalar head over the last hidden state (reward.py)
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "score weights newly initialized": that head is what we train
        try:
            model = AutoModelForSequenceClassification.from_pretrained(base_dir, dtype=dtype, num_labels=1, **kwargs)
        finally:
            hf_logging.set_verbosity(level)
    else:
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, **kwargs)
    if device is not None and cfg.method != "qlora":
        model.to(device)  # before peft wraps it: the LoRA weights are made on the device of their base layer
    if cfg.method == "qlora":
        _keep_nf4_trainable(model)
    # transformers 5.24 detects packed sequences from position_ids only when use_cache is off
    model.config.use_cache = False
    if adapter:
        from peft import LoraConfig, get_peft_model

        names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        targets = [t for t in LINEAR if t in names] if cfg.lora.target_modules == "all-linear" else cfg.lora.target_modules
        missing = [t for t in targets if t not in names]
        if missing:
            raise ConfigError([f"train.lora.target_modules: {', '.join(missing)} not in the model; its linear "
                               f"modules are: {', '.join(sorted(names))}"])
        model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                                 target_modules=targets,
                                                 task_type="SEQ_CLS" if cfg.method == "reward" else "CAUSAL_LM"))
        if cfg.method == "reward":
            from llmkit.train.reward import float_trainables

            float_trainables(model)
    return model


def loss_sum(model, batch: dict) -> tuple:
    """(sum of token losses, number of target tokens) for one micro-batch."""
    return -row_logps(model, batch).sum(), int((batch["labels"][:, 1:] != IGNORE).sum())


def evaluate(model, batches: list[dict], bf16: bool, loss_fn=loss_sum) -> float:
    import torch

    model.eval()
    total, n = 0.0, 0
    with torch.no_grad(), amp(model, bf16):
        for b in batches:
            s, k = loss_fn(model, tensors(b))
            total, n = total + float(s), n + k
    model.train()
    return total / max(1, n)


def distributed(device=None) -> tuple[int, int]:
    """(rank, world size). Under torchrun (WORLD_SIZE > 1) joins the process group: nccl on CUDA, gloo on CPU."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device is not None and device.type == "cuda" else "gloo")
        # the cores are shared by the ranks; more threads than cores only spin
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _all_sum(x: float) -> float:
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return x
    t = torch.tensor([x], dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return float(t)


def tensors(batch: dict) -> dict:
    """The tensors of a batch (what the forward takes), without its bookkeeping counts."""
    return {k: v for k, v in batch.items() if k not in ("real_tokens", "count")}


def loss_module(model, loss_fn=loss_sum):
    """`loss_fn` as the forward of an nn.Module, so DistributedDataParallel can wrap it and sync gradients."""
    import torch

    class Loss(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.model = m

        def forward(self, **batch):
            return loss_fn(self.model, batch)[0]

    return Loss(model)


# ---------------------------------------------------------------------------------------------------------
# checkpoints


def _trainable(model) -> dict:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(folder: Path, model, opt, sched, state: State, fp: str) -> Path:
    """Write `folder/step-N/` atomically (temp folder, then rename) and keep only the newest two."""
    import torch
    from safetensors.torch import save_file

    final = folder / f"step-{state.step:07d}"
    tmp = folder / f".tmp-step-{state.step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(_trainable(model), str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(),
                    **({"cuda_rng": torch.cuda.get_rng_state_all()} if torch.cuda.is_initialized() else {})},
                   tmp / "optimizer.pt")
        version, internal, gauss = random.getstate()
        artifacts.write_json_atomic(tmp / "state.json", {"fingerprint": fp, "python_rng": [version, list(internal),
                                                                                          gauss], **asdict(state)})
    except BaseException as e:  # a full disk: do not leave a half checkpoint taking the space
        shutil.rmtree(tmp, ignore_errors=True)
        if artifacts.no_space(e):
            raise artifacts.disk_full(e, tmp) from e
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(folder.glob("step-*"))[:-2]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(folder: Path, model, opt, sched, fp: str) -> State | None:
    import torch
    from safetensors.torch import load_file

    done = sorted(p for p in folder.glob("step-*") if (p / "state.json").is_file())
    if not done:
        return None
    ck = done[-1]
    meta = json.loads((ck / "state.json").read_text())
    version, internal, gauss = meta.pop("python_rng")
    if meta.pop("fingerprint") != fp:
        raise ConfigError([f"--resume: {ck} was written for another config or dataset; start without --resume "
                           f"or delete {folder}"])
    params = dict(model.named_parameters())
    for name, t in load_file(str(ck / "trainable.safetensors")).items():
        params[name].data.copy_(t)
    extra = torch.load(ck / "optimizer.pt", weights_only=True)
    opt.load_state_dict(extra["optimizer"])
    sched.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["torch_rng"])
    if "cuda_rng" in extra and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(extra["cuda_rng"])
    random.setstate((version, tuple(internal), gauss))
    meta["losses"] = [tuple(x) for x in meta["losses"]]
    meta["val_losses"] = [tuple(x) for x in meta["val_losses"]]
    return State(**meta)


# ---------------------------------------------------------------------------------------------------------
# the stage


def finetune(cfg: TrainConfig, data: Path, base: str, out: Path, *, resume: bool | str = False, force: bool = False,
             progress: bool = True, max_steps: int | None = None) -> dict:
    """Train `base` on the dataset artifact `data`; write an adapter (LoRA) or model folder artifact to `out`.

    resume: True continues from the newest checkpoint and refuses one written for another config; "auto"
    continues when a matching checkpoint exists and otherwise starts over; False always starts over.
    """
    import torch
    from tqdm import tqdm
    from transformers import AutoTokenizer, get_cosine_schedule_with_warmup

    from llmkit.models import hf_folder, resolve_model

    data, out = Path(data).resolve(), Path(out).resolve()
    ref = resolve_model(base)
    inputs = {"data": artifacts.input_ref(data), "base": artifacts.input_ref(ref.path)}
    # GRPO's settings are left out of the other methods' config, so their artifacts hash as before those existed;
    # so are the speed-only settings
    config = {"train": cfg.model_dump(exclude=GRPO_FIELDS | SPEED_FIELDS), "base": base, "max_steps": max_steps}
    if cfg.method == "dpo" and cfg.beta == 0:
        raise ConfigError(["train.beta: DPO needs beta > 0 (with 0 every pair's loss is log 2 and nothing is learned)"])
    fp = artifacts.fingerprint("model", config, inputs)
    if not force and (m := artifacts.finished(out, fp)):
        return {"metrics": m["metrics"], "out": str(out), "status": "skipped"}
    base_dir = hf_folder(ref, progress=progress)
    device = train_device(cfg.device)
    cfg = cfg.model_copy(update={"precision": resolve_precision(cfg.precision, device)})
    tok = AutoTokenizer.from_pretrained(base_dir)
    context = json.loads((base_dir / "config.json").read_text()).get("max_position_embeddings", 0)
    if context and cfg.max_length > context:
        raise ConfigError([f"train.max_length: {cfg.max_length} is above the model's context length {context}"])

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.method == "dpo":  # preference pairs, DPO loss; everything else below is shared
        from functools import partial

        from llmkit.train import preference

        def load(split):
            return preference.load_pairs(data, split, tok, cfg.max_length)

        batcher, loss_fn = preference.make_batches, partial(preference.loss_sum, beta=cfg.beta)
    elif cfg.method == "reward":  # the same pairs, a scalar head, the Bradley–Terry loss
        from llmkit.train import preference, reward

        def load(split):
            return preference.load_pairs(data, split, tok, cfg.max_length, method="reward")

        batcher, loss_fn = preference.make_batches, reward.loss_sum
    else:
        def load(split):
            return load_examples(data, split, tok, cfg.method, cfg.max_length)

        batcher, loss_fn = make_batches, loss_sum
    train_ex = load("train")
    val_ex = load("val") if (data / "val.jsonl").is_file() else []
    if not train_ex:
        raise DataError(f"{data}/train.jsonl has no rows")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rank, world = distributed(device)
    model = load_model(cfg, base_dir, device)
    if cfg.fast_kernels and device.type == "cpu":  # exact; see fast.py for what each replaces and the measured gain
        fast.use_packed_attention(model)
        fast.use_fast_lora(model)
    bf16 = cfg.precision == "bf16"
    if cfg.method == "dpo":
        preference.add_reference_logps(model, train_ex + val_ex, bf16, pad)
    model.train()
    forward = loss_mod = loss_module(model, loss_fn)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(  # syncs the trainable (LoRA or all) gradients only
            loss_mod, device_ids=[device.index] if device.type == "cuda" else None)
    span = cfg.grad_accum * world  # micro-batches per optimizer step, over all ranks

    def batched(examples: list, epoch: int) -> list[dict]:  # an epoch's micro-batches, on the training device
        return [to_device(b, device) for b in batcher(examples, cfg, epoch, pad)]

    batches = batched(train_ex, 0)
    per_epoch = len(batches) // span
    total = max(1, int(per_epoch * cfg.epochs)) if max_steps is None else max_steps
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, cfg.lr)
    sched = get_cosine_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    val_batches = batched(val_ex, 0) if val_ex else []

    ckpts = out.with_name(out.name + ".checkpoints")
    state = None
    if resume == "auto":
        try:
            state = load_checkpoint(ckpts, model, opt, sched, fp)
        except ConfigError:
            state = None  # checkpoints of another config: start over below
    elif resume:
        state = load_checkpoint(ckpts, model, opt, sched, fp)
        if state is None:
            raise ConfigError([f"--resume: no checkpoint in {ckpts}"])
    if state is None:
        shutil.rmtree(ckpts, ignore_errors=True)
        state = State()

    progress = progress and rank == 0
    bar = tqdm(total=total, initial=state.step, desc=f"train {cfg.method}", unit="step", disable=not progress)
    if state.epoch:  # resumed in a later epoch: its own seeded order
        batches = batched(train_ex, state.epoch)
    t_start = time.perf_counter() - state.seconds
    per_step = sum(b["real_tokens"] for b in batches) / max(1, len(batches)) * span
    on, why = compiled.wanted(cfg.compile, cfg.method, cfg.precision, int(per_step * (total - state.step)))
    compile_info = {"compile": "off", "compile_reason": why}
    if on:  # inside the timed part: the compile is paid for by this run's tokens/s

        def train_step(b):
            with amp(model, bf16):
                loss_mod(**tensors(b)).backward()

        compile_info = {**compiled.warm_up(model, train_step, batches[0],
                                           lambda b: evaluate(model, [b], bf16, loss_fn), (val_batches or [None])[0]),
                        "compile_reason": why}
        if progress:
            bar.write(f"train.compile: {compile_info['compile']} ({why}), {compile_info['compile_seconds']} s")
    while state.step < total:
        if state.micro + span > len(batches):  # next epoch, new seeded order
            state.epoch, state.micro = state.epoch + 1, 0
            batches = batched(train_ex, state.epoch)
        mine = batches[state.micro:state.micro + span][rank::world]  # this rank's share of the step
        # the loss is the mean over every target token of the step, on all ranks together; DDP averages
        # gradients over ranks, hence the factor `world`
        targets = _all_sum(sum(b["count"] for b in mine))
        step_loss, step_tokens = 0.0, 0
        for i, b in enumerate(mine):
            sync = world == 1 or i == len(mine) - 1  # all-reduce once per step, not per micro-batch
            with (forward.no_sync() if not sync else contextlib.nullcontext()), \
                    amp(model, bf16):
                s = forward(**tensors(b))
                (s * world / max(1.0, targets)).backward()
            step_loss += float(s.detach())
            step_tokens += b["real_tokens"]
        optimizer_step(params, opt, sched, state, span)
        state.tokens += int(_all_sum(step_tokens))
        state.losses.append((state.step, _all_sum(step_loss) / max(1.0, targets)))
        state.seconds = time.perf_counter() - t_start
        bar.update(1)
        bar.set_postfix(loss=f"{state.losses[-1][1]:.3f}", tok_s=f"{state.tokens / max(1e-9, state.seconds):.0f}")
        if val_batches and (state.step % cfg.eval_every == 0 or state.step == total):
            v = evaluate(model, val_batches, bf16, loss_fn)  # every rank: the early-stopping decision must agree
            state.val_losses.append((state.step, v))
            state.bad_evals = 0 if v < state.best_val else state.bad_evals + 1
            state.best_val = min(state.best_val, v)
            if progress:
                bar.write(f"step {state.step}: val loss {v:.4f}")
            if cfg.early_stopping and state.bad_evals >= cfg.early_stopping:
                if progress:
                    bar.write(f"early stop: val loss did not improve for {cfg.early_stopping} evaluations")
                break
        if state.step % cfg.save_every == 0 and state.step < total and rank == 0:
            save_checkpoint(ckpts, model, opt, sched, state, fp)
            artifacts.kill_point("train.checkpoint")
        if rank == 0:
            artifacts.kill_point("train.step")  # a step that no checkpoint holds yet: redone on resume
    bar.close()
    if world > 1:
        _write_rank_digest(model, out, rank)
        import torch.distributed as dist

        dist.barrier()
        if rank != 0:
            return {"metrics": {}, "out": str(out), "status": "worker"}  # rank 0 writes the artifact

    compiled.uncompile(model)
    fast.restore_lora(model)  # what is saved is the stock peft / transformers model
    fast.restore_attention(model)
    adapter = cfg.method in ADAPTER_METHODS
    extra = {}
    if cfg.method == "dpo" and val_batches:
        acc, margin = preference.reward_accuracy(model, val_batches, bf16)
        extra = {"val_reward_accuracy": round(acc, 4), "val_reward_margin": round(margin, 4)}
    if cfg.method == "reward" and val_batches:
        acc, margin = reward.pairwise_accuracy(model, val_batches, bf16)
        extra = {"val_pairwise_accuracy": round(acc, 4), "val_score_margin": round(margin, 4)}
    with artifacts.build("model", out, config, inputs) as b:
        if adapter:
            model.save_pretrained(b.tmp)
            # the base as the user named it, so `llmkit chat OUT` finds it again
            meta = json.loads((b.tmp / "adapter_config.json").read_text())
            meta["base_model_name_or_path"] = base
            if isinstance(meta.get("target_modules"), list):  # peft writes a set's order, which changes per process
                meta["target_modules"] = sorted(meta["target_modules"])
            (b.tmp / "adapter_config.json").write_text(json.dumps(meta, indent=2))
        else:
            model.save_pretrained(b.tmp)
        tok.save_pretrained(b.tmp)
        _plot(state, b.tmp / "loss.png")
        b.outputs = {"format": "peft-adapter" if adapter else "hf-model", "base": base,
                     # a QLoRA adapter was trained against the NF4-quantized base
                     **({"base_quantization": "bitsandbytes-nf4"} if cfg.method == "qlora" else {}),
                     **({"head": "reward"} if cfg.method == "reward" else {})}  # reward.RewardModel.load checks it
        b.metrics = {
            "steps": state.step, "epochs": round(state.step / max(1, per_epoch), 2), "real_tokens": state.tokens,
            "seconds": round(state.seconds, 2), "real_tokens_per_s": round(state.tokens / max(1e-9, state.seconds), 1),
            "train_loss_first": state.losses[0][1], "train_loss_last": state.losses[-1][1],
            "val_loss": state.val_losses[-1][1] if state.val_losses else None,
            "losses": state.losses, "val_losses": state.val_losses, "precision": cfg.precision, "device": device.type, **compile_info,
            **extra,
        }
        manifest_metrics = b.metrics
    shutil.rmtree(ckpts, ignore_errors=True)
    return {"metrics": manifest_metrics, "out": str(out), "status": "ran"}


def summary(metrics: dict) -> str:
    """The one-line result the CLI and `llmkit run` print."""
    if "reward_first" in metrics:  # GRPO (grpo.py)
        val = (f"val reward {metrics['val_reward_first']:.3f} → {metrics['val_reward_last']:.3f}, "
               if metrics.get("val_reward_first") is not None else "")
        return (f"{metrics['steps']} steps, mean reward (first → last quarter of the steps) "
                f"{metrics['reward_first_quarter']:.3f} → {metrics['reward_last_quarter']:.3f}, "
                f"{val}{metrics['seconds_per_step']:.1f} s/step")
    val = f", val {metrics['val_loss']:.4f}" if metrics.get("val_loss") is not None else ""
    if metrics.get("val_pairwise_accuracy") is not None:  # a reward model
        val += f", val pairwise accuracy {metrics['val_pairwise_accuracy']:.3f}"
    return (f"{metrics['steps']} steps, loss {metrics['train_loss_first']:.4f} → {metrics['train_loss_last']:.4f}{val}, "
            f"{metrics['real_tokens_per_s']:.0f} real tok/s")


def _write_rank_digest(model, out: Path, rank: int) -> None:
    """A hash of this rank's trainable weights, beside the output: equal on every rank when DDP worked."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(_trainable(model).items()):
        h.update(name.encode() + t.float().numpy().tobytes())  # _trainable: on the CPU
    folder = out.with_name(out.name + ".ranks")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank-{rank}.sha256").write_text(h.hexdigest() + "\n")


def _plot(state: State, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    ax.plot(*zip(*state.losses), label="train", color="#3b75af")
    if state.val_losses:
        ax.plot(*zip(*state.val_losses), "o-", label="val", color="#c44")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (per target token)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
