"""The train stage: LoRA, full-parameter and continued pretraining, DPO and reward models (sft.py), GRPO (grpo.py)."""

from __future__ import annotations

from pathlib import Path

from llmkit.config import TrainConfig


def finetune(cfg: TrainConfig, data: Path, base: str, out: Path, *, resume: bool | str = False, force: bool = False,
             progress: bool = True, max_steps: int | None = None) -> dict:
    """Train `base` on the dataset artifact `data` by `cfg.method`; write the model artifact to `out`
    (sft.finetune documents the keywords)."""
    if cfg.method == "grpo":  # online: rollouts, rewards, its own loop over sft's model and checkpoints
        from llmkit.train import grpo as impl
    else:
        from llmkit.train import sft as impl
    return impl.finetune(cfg, data, base, out, resume=resume, force=force, progress=progress, max_steps=max_steps)


__all__ = ["finetune"]
