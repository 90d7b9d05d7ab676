"""Preference tuning (DPO) with LoRA: the pieces that differ from supervised fine-tuning.

The train loop, checkpoints, resume, evaluation and early stopping are sft.py's; `finetune(method="dpo")`
swaps in this module's examples, batches and loss:

    pairs  = load_pairs(dataset, "train", tok, max_length)     # chosen/rejected, completion-only labels
    add_reference_logps(model, pairs, bf16, pad_id)            # once, with the LoRA adapter disabled
    loss, n = loss_sum(model, batch, beta)                     # DPO loss summed over the batch's pairs

The reference model is the base itself with the adapter switched off (no second copy in memory), and since
it never changes, its log-probabilities are computed once before training rather than at every step as
trl's DPOTrainer does by default — one frozen forward per pair instead of one per pair per epoch. Log-probs
are taken only at completion tokens, in chunks (common.py), so the (rows, T, 49k vocab) logits never exist.

DPO (Rafailov et al. 2023): loss = -log σ(β · [(log π(c) - log π(r)) - (log π_ref(c) - log π_ref(r))]).
"""

from __future__ import annotations

import random
from pathlib import Path

from llmkit.config import TrainConfig
from llmkit.errors import DataError
from llmkit.train.common import amp, collate, device_of, read_split, row_logps, to_device, with_positions
from llmkit.train.template import encode_chat


def load_pairs(dataset: Path, split: str, tok, max_length: int, method: str = "dpo") -> list[dict]:
    """Tokenized {chosen, rejected} examples (prompt + reply, labels on the reply) from `{split}.jsonl`.
    Also the rows of `method: reward` (reward.py)."""
    out = []
    for where, row in read_split(dataset, split):
        if not {"prompt", "chosen", "rejected"} <= row.keys():
            raise DataError(f"{where}: method {method} trains on preference rows (prompt, chosen, rejected); "
                            f"this row has {sorted(row)}")
        user = {"role": "user", "content": row["prompt"]}
        out.append({side: encode_chat(tok, [user, {"role": "assistant", "content": row[side]}], max_length)
                    for side in ("chosen", "rejected")})
    return out


def make_batches(pairs: list[dict], cfg: TrainConfig, epoch: int, pad_id: int) -> list[dict]:
    """One epoch of micro-batches in a seeded order. Rows [0, B) are the chosen replies, [B, 2B) the rejected."""
    import torch

    order = list(range(len(pairs)))
    random.Random(cfg.seed * 100_003 + epoch).shuffle(order)
    batches = []
    for i in range(0, len(order), cfg.batch_size):
        group = [pairs[j] for j in order[i:i + cfg.batch_size]]
        b = collate([with_positions(p["chosen"]) for p in group] + [with_positions(p["rejected"]) for p in group],
                    pad_id)
        if all("ref" in p for p in group):
            b["ref_logps"] = torch.tensor([p["ref"][0] for p in group] + [p["ref"][1] for p in group])
        b["count"] = len(group)  # the loss is a mean over pairs
        batches.append(b)
    return batches


def margins(model, batch: dict):
    """(B,) implicit reward margins: [log π(c) - log π(r)] - [log π_ref(c) - log π_ref(r)]."""
    logps = row_logps(model, batch)
    ref = batch["ref_logps"]
    half = logps.shape[0] // 2
    return (logps[:half] - logps[half:]) - (ref[:half] - ref[half:])


def loss_sum(model, batch: dict, beta: float) -> tuple:
    """(DPO loss summed over the batch's pairs, number of pairs)."""
    import torch.nn.functional as F

    m = margins(model, batch)
    return -F.logsigmoid(beta * m).sum(), int(m.shape[0])


def add_reference_logps(model, pairs: list[dict], bf16: bool, pad_id: int, batch_size: int = 8) -> None:
    """Store each pair's reference log-probs as `pair["ref"] = (chosen, rejected)`: the base with the adapter off."""
    import torch

    todo = [p for p in pairs if "ref" not in p]
    was_training = model.training
    model.eval()
    with torch.no_grad(), model.disable_adapter(), amp(model, bf16):
        for i in range(0, len(todo), batch_size):
            group = todo[i:i + batch_size]
            seqs = [with_positions(s) for p in group for s in (p["chosen"], p["rejected"])]
            logps = row_logps(model, to_device(collate(seqs, pad_id), device_of(model))).tolist()
            for j, p in enumerate(group):
                p["ref"] = (logps[2 * j], logps[2 * j + 1])
    model.train(was_training)


def reward_accuracy(model, batches: list[dict], bf16: bool) -> tuple[float, float]:
    """(share of pairs whose chosen reply gained over the rejected one vs the reference, mean margin)."""
    import torch

    model.eval()
    ms = []
    with torch.no_grad(), amp(model, bf16):
        for b in batches:
            ms += margins(model, b).tolist()
    model.train()
    return sum(m > 0 for m in ms) / max(1, len(ms)), sum(ms) / max(1, len(ms))
