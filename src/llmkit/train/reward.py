"""Reward models (`method: reward`): a scalar head on the base, LoRA, trained on preference pairs.

The train loop, checkpoints, resume and eval are sft.py's, as for DPO; this module brings the scores and the loss:

    pairs  = preference.load_pairs(dataset, "train", tok, max_length, method="reward")
    loss, n = loss_sum(model, batch)            # Bradley–Terry: -log σ(r(chosen) - r(rejected)), summed over pairs
    rm = RewardModel.load("runs/x/train")       # later: rm(prompts, completions) -> list[float] (a GRPO reward)

The model is transformers' `AutoModelForSequenceClassification` with one label (a linear `score` head over the
last hidden state), wrapped by peft with `task_type="SEQ_CLS"`, so the head is trained in full beside the LoRA
weights and saved in the adapter (peft's `modules_to_save`) — the folder is a stock peft adapter that trl's
RewardTrainer would also write. A sequence's reward is the head's output at its last real token (the end of the
assistant turn); padding is found from the position ids that collate restarts at 0, not from the pad token id,
which SmolLM2 shares with its end-of-turn token.
"""

from __future__ import annotations

import json
from pathlib import Path

from llmkit.train.common import amp, base_model, device_of, to_device


def last_index(position_ids):
    """(R,) index of each right-padded row's last real token: positions run 0..n-1, then the padding restarts at 0."""
    import torch

    t = torch.arange(position_ids.shape[1], device=position_ids.device)
    return (position_ids == t).long().cumprod(1).sum(1) - 1


def scores(model, batch: dict):
    """(R,) the reward of each row of a batch: the score head at the row's last real token, in float32."""
    import torch

    lm = base_model(model)
    hidden = lm.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                      use_cache=False).last_hidden_state  # (R, T, C)
    last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index(batch["position_ids"])]  # (R, C)
    return lm.score(last).float()[:, 0]


def loss_sum(model, batch: dict) -> tuple:
    """(Bradley–Terry loss summed over the batch's pairs, number of pairs). Rows [0, B) chosen, [B, 2B) rejected."""
    import torch.nn.functional as F

    r = scores(model, batch)
    half = r.shape[0] // 2
    return -F.logsigmoid(r[:half] - r[half:]).sum(), half


def pairwise_accuracy(model, batches: list[dict], bf16: bool) -> tuple[float, float]:
    """(share of pairs whose chosen reply scores above the rejected one, mean score margin)."""
    import torch

    model.eval()
    margins = []
    with torch.no_grad(), amp(model, bf16):
        for b in batches:
            r = scores(model, b)
            half = r.shape[0] // 2
            margins += (r[:half] - r[half:]).tolist()
    model.train()
    return sum(m > 0 for m in margins) / max(1, len(margins)), sum(margins) / max(1, len(margins))


def float_trainables(model) -> None:
    """Keep the trained weights (LoRA and the score head peft copies from the base) in float32 for AdamW, also
    when the frozen base is stored in bf16."""
    import torch

    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


class RewardModel:
    """A `method: reward` artifact as a reward function: rm(prompts, completions) -> list[float].

    prompts are user messages (str) or chat message lists; each (prompt, completion) is scored as the chat the
    model was trained on. Usable in GRPO (`rewards: [{fn: reward_model, path: ...}]`) and from Python.
    """

    def __init__(self, model, tok, max_length: int = 1024, batch_size: int = 8):
        self.model, self.tok, self.max_length, self.batch_size = model, tok, max_length, batch_size

    @classmethod
    def load(cls, path: str | Path, max_length: int = 1024) -> RewardModel:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from llmkit.errors import ConfigError
        from llmkit.models import hf_folder, resolve_model

        path = Path(path)
        manifest = json.loads((path / "manifest.json").read_text()) if (path / "manifest.json").is_file() else {}
        if manifest.get("outputs", {}).get("head") != "reward":
            raise ConfigError([f"{path}: not a reward model artifact (train with method: reward)"])
        base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        tok = AutoTokenizer.from_pretrained(path)
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "score weights newly initialized": the adapter loads them next
        try:
            lm = AutoModelForSequenceClassification.from_pretrained(hf_folder(resolve_model(base), progress=False),
                                                                    num_labels=1, dtype=torch.float32)
        finally:
            hf_logging.set_verbosity(level)
        lm.config.pad_token_id = tok.pad_token_id
        model = PeftModel.from_pretrained(lm, path).eval()
        return cls(model, tok, max_length)

    def __call__(self, prompts: list, completions: list[str], **_row_fields) -> list[float]:
        import torch

        from llmkit.train.common import collate, with_positions
        from llmkit.train.template import encode_chat

        seqs = []
        for p, c in zip(prompts, completions):
            msgs = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
            seqs.append(with_positions(encode_chat(self.tok, msgs + [{"role": "assistant", "content": c}],
                                                   self.max_length)))
        out = []
        with torch.no_grad():
            for i in range(0, len(seqs), self.batch_size):
                batch = collate(seqs[i:i + self.batch_size], self.tok.pad_token_id)
                out += scores(self.model, to_device(batch, device_of(self.model))).tolist()
        return out
