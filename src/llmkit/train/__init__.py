"""The train stage: LoRA, full-parameter and continued pretraining (sft.py)."""

from llmkit.train.sft import finetune

__all__ = ["finetune"]
