"""Where a training process runs: CPU, or its CUDA device.

    dev = place(cfg.device)                  # after distributed(): cuda:LOCAL_RANK under torchrun, else cuda:0 / cpu
    model.to(dev)                            # (QLoRA: load with device_map={"": dev} instead; a 4-bit model can't move)
    with autocast(dev, bf16): loss = forward(**to_device(batch, dev))

`train.device` (TrainConfig): `auto` trains on CUDA when torch sees a device and on the CPU otherwise; `cpu` always
on the CPU; `cuda` refuses to start without one rather than run slowly somewhere else. Under torchrun each process
takes the GPU of its LOCAL_RANK (one process per GPU, as torchrun's --nproc-per-node GPUs intends), and the process
group's backend follows the device: nccl on CUDA, gloo on the CPU.

`choose` is the decision alone (plain values in, a device name out), so it is tested on a machine without a GPU.
"""

from __future__ import annotations

import os

from llmkit.errors import ConfigError


def choose(requested: str, *, cuda_available: bool, device_count: int, local_rank: int | None) -> str:
    """The device name for `requested` ('auto' | 'cpu' | 'cuda'): 'cpu' or 'cuda:N'."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ConfigError([f"train.device: {requested!r} is not one of auto, cpu, cuda"])
    if requested == "cpu" or requested == "auto" and not (cuda_available and device_count > 0):
        return "cpu"
    if not cuda_available or device_count < 1:
        raise ConfigError(["train.device: cuda, but torch sees no CUDA device (torch.cuda.is_available() is False: "
                           "a CPU build of torch, or no driver); use device: auto or cpu"])
    rank = local_rank or 0
    if rank >= device_count:
        raise ConfigError([f"train.device: this process is LOCAL_RANK {rank} but the machine has {device_count} CUDA "
                           f"device(s); start at most {device_count} processes per node (torchrun --nproc-per-node)"])
    return f"cuda:{rank}"


def place(requested: str = "auto"):
    """This process's torch.device for `requested`, made current when it is a GPU (so that NCCL and every tensor
    created without a device use it)."""
    import torch

    local = os.environ.get("LOCAL_RANK")
    name = choose(requested, cuda_available=torch.cuda.is_available(),
                  device_count=torch.cuda.device_count() if torch.cuda.is_available() else 0,
                  local_rank=int(local) if local else None)
    dev = torch.device(name)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def backend(requested: str = "auto") -> str:
    """The process group backend for the device `requested` resolves to: nccl for CUDA, gloo for the CPU."""
    import torch

    cuda = torch.cuda.is_available()
    name = choose(requested, cuda_available=cuda, device_count=torch.cuda.device_count() if cuda else 0,
                  local_rank=int(os.environ.get("LOCAL_RANK") or 0))
    return "nccl" if name.startswith("cuda") else "gloo"


def autocast(dev, bf16: bool):
    """bf16 autocast on `dev`'s kind of device (off when `bf16` is False)."""
    import torch

    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)


def to_device(batch: dict, dev) -> dict:
    """The batch with its tensors on `dev` (counts and other plain values as they are)."""
    return {k: v.to(dev, non_blocking=True) if hasattr(v, "to") else v for k, v in batch.items()}
