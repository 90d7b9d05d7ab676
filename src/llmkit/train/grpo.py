"""GRPO (Shao et al. 2024, DeepSeekMath) with LoRA: the model samples, the rewards score, the policy moves.

    manifest = finetune(TrainConfig(method="grpo", rewards=[...]), data, base, out)   # via llmkit.train.finetune

One step, top to bottom (names as trl's GRPOConfig; `batch_size` counts prompts here):

    prompts   = batch_size prompts of the dataset, in a seeded order
    rollouts  = num_generations samples per prompt        # transformers generate, KV cache, all B·G rows at once,
                                                          # each prompt prefilled once for its group
    r         = Σ weight_f · reward_f(prompts, completions, **row_fields)                      # (B·G,)
    A         = (r - mean_group(r)) / (std_group(r) + 1e-4)                                     # per prompt group
    ratio     = exp(log π(o_t) - log π_old(o_t))                        # π_old: the policy that sampled
    kl_t      = exp(ref_t - logp_t) - (ref_t - logp_t) - 1              # k3 estimator; ref: the adapter off
    loss      = mean_i 1/|o_i| Σ_t -min(ratio·A_i, clip(ratio, 1±epsilon)·A_i) + beta·kl_t
    num_iterations optimizer steps on those rollouts (π_old fixed at the sampling policy; with 1, ratio ≡ 1
    in value and clipping never fires — the gradient is the plain policy gradient, as in trl)

The reference model is the base with the LoRA adapter switched off (no second copy), as DPO does. The loop
shares sft.py's model loading, checkpoints and state, so kill -9 and `--resume` continue the same run: a
checkpoint holds the adapter, optimizer, scheduler, both RNG states (the sampling too) and the position in
the prompt order, and the resumed steps sample the same completions as an uninterrupted run.

Rollouts are generated with transformers (not the llama.cpp engine): the adapter changes every step, and a
llama.cpp LoRA would need the adapter converted to GGUF at every step; transformers samples all B·G rows in one
batched, KV-cached generate with the adapter as it is in memory (README, GRPO, has the measured split between
sampling and training). Both the sampling and the loss's forward passes run each prompt once for its group
and share its KV cache among the group's rows (generate, group_logps).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

from llmkit import artifacts
from llmkit.config import TrainConfig
from llmkit.errors import ConfigError, DataError
from llmkit.train import fast, sft
from llmkit.train import rewards as rewards_mod
from llmkit.train.common import base_model, read_split, target_logps

STD_EPS = 1e-4  # trl's: a group whose rewards are all equal gets advantage 0, not 0/0


# ---------------------------------------------------------------------------------------------------------
# data


def load_prompts(dataset: Path, split: str, tok, cfg: TrainConfig) -> list[dict]:
    """Prompt rows of `{split}.jsonl`: {ids (the chat prompt, generation prompt added), prompt, fields}.

    A `prompt` row is a user message; its other fields go to the reward functions. A `messages` row (what the
    data stage makes of prompt/completion rows) is prompted with its turns before the last assistant reply,
    and that reply is the field `completion` (the reference answer)."""
    out, problems = [], []
    room = cfg.max_length - cfg.max_completion_length
    for where, row in read_split(dataset, split):
        if "chosen" in row:
            raise DataError(f"{where}: preference rows (prompt/chosen/rejected) are for method dpo or reward, not grpo")
        if isinstance(row.get("messages"), list):
            msgs = row["messages"]
            fields = {k: v for k, v in row.items() if k != "messages"}
            if msgs and msgs[-1]["role"] == "assistant":
                msgs, fields["completion"] = msgs[:-1], msgs[-1]["content"]
        elif isinstance(row.get("prompt"), str):
            msgs, fields = [{"role": "user", "content": row["prompt"]}], dict(row)
        else:
            raise DataError(f"{where}: method grpo samples from prompt rows ({{prompt, ...}} or {{messages}}); "
                            f"this row has {sorted(row)}")
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) > room:
            problems.append(f"{where}: the prompt has {len(ids)} tokens; max_length {cfg.max_length} - "
                            f"max_completion_length {cfg.max_completion_length} leaves {room}")
        single = len(msgs) == 1 and msgs[0]["role"] == "user"
        out.append({"ids": ids, "prompt": msgs[0]["content"] if single else msgs, "fields": fields})
    if problems:
        raise DataError("\n".join(problems[:20]) + (f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""))
    return out


def order(n: int, seed: int, epoch: int) -> list[int]:
    o = list(range(n))
    random.Random(seed * 100_003 + epoch).shuffle(o)
    return o


# ---------------------------------------------------------------------------------------------------------
# the math


def group_advantages(rewards, group: int):
    """(N,) rewards of N = B·G completions, grouped per prompt in order → (N,) advantages (r - mean) / (std + eps)
    within each group; std is the unbiased sample std, as trl's."""
    r = rewards.view(-1, group)  # (B, G)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + STD_EPS)).view(-1)


def grpo_loss(logps, old_logps, ref_logps, adv, rows, n_rows: int, epsilon: float, beta: float):
    """GRPO's loss for one micro-batch's target tokens, and its statistics.

    logps, old_logps, ref_logps: (N,) per-token log-probs (old/ref may be None: π_old = π detached, no KL);
    adv: (R,) advantage per row; rows: (N,) row of each token; n_rows: the rows of the whole step, so the
    micro-batches' losses add up to the mean over all sequences of 1/|o_i| Σ_t (per-token loss).
    Returns (loss, {"kl_sum", "clipped", "tokens"}) with sums over this micro-batch's tokens.
    """
    import torch

    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)  # (N,)
    a = adv[rows]  # (N,)
    per_tok = -torch.min(ratio * a, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * a)
    kl = None
    if ref_logps is not None and beta > 0:
        d = ref_logps - logps
        kl = torch.exp(d) - d - 1  # (N,) ≥ 0, unbiased for KL(π || π_ref)
        per_tok = per_tok + beta * kl
    length = torch.zeros(adv.shape[0]).index_add(0, rows, torch.ones_like(logps))  # (R,) tokens per row
    per_row = torch.zeros(adv.shape[0]).index_add(0, rows, per_tok) / length.clamp(min=1)  # (R,)
    clipped = ((ratio < 1 - epsilon) & (a < 0)) | ((ratio > 1 + epsilon) & (a > 0))
    stats = {"kl_sum": float(kl.detach().sum()) if kl is not None else 0.0, "clipped": int(clipped.sum()),
             "tokens": int(logps.shape[0])}
    return per_row.sum() / n_rows, stats


def group_logps(model, prompt: list[int], completions: list[list[int]], pad: int):
    """((N,) log p of every completion token, (N,) its row) for one prompt's group, the prompt run once.

    The prompt but its last token goes through the model once as (1, P-1); its KV cache (gradient kept) is copied
    to the G rows, which hold (G, 1+L) the prompt's last token and each right-padded completion, attending to that
    cache causally. Log-probs and gradients equal G full rows' (token_logps) to float rounding
    (tests/train/test_grpo.py) at (P + G·L) / (G·(P + L)) of the tokens: on the example's ~52-token prompts and
    ≤ 20-token completions about a third. Right padding needs no mask: a padded position comes after every real one.
    """
    import torch

    lm = base_model(model)
    G, P, L = len(completions), len(prompt), max(len(c) for c in completions)
    cache = None
    if P > 1:
        cache = lm.model(input_ids=torch.tensor([prompt[:-1]]), position_ids=torch.arange(P - 1)[None],
                         use_cache=True).cache  # (1, H, P-1, D) per layer
        cache.batch_repeat_interleave(G)  # (G, H, P-1, D)
    x = torch.tensor([[prompt[-1]] + c + [pad] * (L - len(c)) for c in completions])  # (G, 1+L)
    hidden = lm.model(input_ids=x, position_ids=torch.arange(P - 1, P + L).expand(G, -1), cache=cache,
                      use_cache=True).last_hidden_state  # (G, 1+L, C): position t predicts x[:, t+1]
    mask = torch.arange(L) < torch.tensor([len(c) for c in completions])[:, None]  # (G, L) real completion tokens
    rows = torch.arange(G)[:, None].expand(G, L)[mask]  # (N,)
    return target_logps(lm, hidden[:, :-1][mask], x[:, 1:][mask]), rows


# ---------------------------------------------------------------------------------------------------------
# rollouts


def generate(model, tok, prompts: list[list[int]], n: int, max_new: int, temperature: float | None, bf16: bool,
             eos: int, pad: int) -> list[list[int]]:
    """n completions (token ids, up to and with the first end token) per prompt, sampled (or greedy when
    temperature is None) in one left-padded, KV-cached generate over all len(prompts)·n rows.

    Each prompt is prefilled once and its KV cache copied to its n rows (`batch_repeat_interleave`), instead of
    generate's n copies of the prompt prefilled n times: the same keys and values, 1/n of the prefill work.
    Measured on the bench's 2 prompts × 8 rows of ~52 prompt tokens (bf16, one thread, a busy box, two runs
    each): 13.4 s against 32.6 s for the two steps' rollouts. Greedy and sampled completions equal generate's own
    (tests/train/test_grpo.py)."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # (B, P) left-padded
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    sample = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature else \
        {"do_sample": False}
    was_training = model.training
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        cache = None
        if n > 1 and width > 1:  # the prompt but its last token: generate feeds that one and samples from it
            lm = base_model(model)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, P) as generate numbers left-padded rows
            cache = lm.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                             use_cache=True).cache  # (B, H, P-1, D) per layer
            cache.batch_repeat_interleave(n)  # (B·n, H, P-1, D): prompt i's cache at rows [i·n, (i+1)·n)
        out = model.generate(input_ids=ids.repeat_interleave(n, 0), attention_mask=mask.repeat_interleave(n, 0),
                             cache=cache, max_new_tokens=max_new, use_cache=True, pad_token_id=pad,
                             eos_token_id=eos, **sample)  # (B·n, P + L)
    model.train(was_training)
    completions = []
    for row in out[:, width:].tolist():
        completions.append(row[:row.index(eos) + 1] if eos in row else row)
    return completions


def evaluate(model, tok, prompts: list[dict], rewards: list, cfg: TrainConfig, bf16: bool, eos: int, pad: int,
             batch: int = 16) -> dict:
    """Mean reward (and each function's) of greedy completions of held-out prompts."""
    comps = []
    for i in range(0, len(prompts), batch):
        comps += generate(model, tok, [p["ids"] for p in prompts[i:i + batch]], 1, cfg.max_completion_length, None,
                          bf16, eos, pad)
    texts = [tok.decode(c, skip_special_tokens=True) for c in comps]
    per, total = rewards_mod.score(rewards, [p["prompt"] for p in prompts], texts, _fields(prompts, 1))
    out = {"reward": float(total.mean())}
    for r, row in zip(rewards, per):
        out[r.name] = float(row.nanmean()) if not row.isnan().all() else None
    return out


def _fields(prompts: list[dict], n: int) -> dict[str, list]:
    """Row fields as keyword lists, one value per completion (each prompt's repeated n times)."""
    keys = sorted({k for p in prompts for k in p["fields"]})
    return {k: [p["fields"].get(k) for p in prompts for _ in range(n)] for k in keys}


# ---------------------------------------------------------------------------------------------------------
# the stage


def finetune(cfg: TrainConfig, data: Path, base: str, out: Path, *, resume: bool | str = False, force: bool = False,
             progress: bool = True, max_steps: int | None = None) -> dict:
    """GRPO on the prompts of the dataset artifact `data`; writes a PEFT adapter artifact to `out`."""
    import torch
    from tqdm import tqdm
    from transformers import AutoTokenizer, get_cosine_schedule_with_warmup

    from llmkit.models import hf_folder, resolve_model

    data, out = Path(data).resolve(), Path(out).resolve()
    ref = resolve_model(base)
    inputs = {"data": artifacts.input_ref(data), "base": artifacts.input_ref(ref.path)}
    for i, r in enumerate(cfg.rewards):  # a reward model is an input: lineage, and a new one retrains
        if r.fn == "reward_model" and r.path and Path(r.path).exists():
            inputs[f"reward_model_{i}"] = artifacts.input_ref(r.path)
    config = {"train": cfg.model_dump(exclude={"device"}), "base": base, "max_steps": max_steps}
    fp = artifacts.fingerprint("model", config, inputs)
    if not force and (m := artifacts.finished(out, fp)):
        return {"metrics": m["metrics"], "out": str(out), "status": "skipped"}
    if cfg.method != "grpo":
        raise ConfigError([f"train.method: grpo.finetune runs method grpo, not {cfg.method}"])
    if cfg.device == "cuda":  # sampling, the loss and the KV-cache copies are written for the CPU only so far
        raise ConfigError(["train.device: cuda is not supported for method grpo yet (it trains on the CPU; "
                           "device: auto or cpu)"])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each rank would sample, train and write the artifact alone
        raise ConfigError(["train.method grpo runs in one process; --nproc (data parallel) is not supported for it"])
    base_dir = hf_folder(ref, progress=progress)
    cfg = cfg.model_copy(update={"precision": sft.resolve_precision(cfg.precision)})
    tok = AutoTokenizer.from_pretrained(base_dir)
    context = json.loads((base_dir / "config.json").read_text()).get("max_position_embeddings", 0)
    if context and cfg.max_length > context:
        raise ConfigError([f"train.max_length: {cfg.max_length} is above the model's context length {context}"])
    if cfg.max_completion_length >= cfg.max_length:
        raise ConfigError([f"train.max_completion_length: {cfg.max_completion_length} leaves no room for the "
                           f"prompt in max_length {cfg.max_length}"])
    rewards = rewards_mod.build(cfg.rewards, tok)  # every reward problem at once, before any slow work
    train_p = load_prompts(data, "train", tok, cfg)
    val_p = load_prompts(data, "val", tok, cfg) if (data / "val.jsonl").is_file() else []
    if not train_p:
        raise DataError(f"{data}/train.jsonl has no rows")

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = tok.eos_token_id
    model = sft.load_model(cfg, base_dir)
    if cfg.fast_kernels:  # the fused LoRA linear (exact); attention stays stock: generate needs the KV cache path
        fast.use_fast_lora(model)
    bf16 = cfg.precision == "bf16"
    model.train()
    B, G = cfg.batch_size, cfg.num_generations
    per_epoch = max(1, len(train_p) // B)
    total = max(1, int(per_epoch * cfg.epochs)) if max_steps is None else max_steps
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, int(cfg.warmup_ratio * total * cfg.num_iterations),
                                            total * cfg.num_iterations)

    ckpts = out.with_name(out.name + ".checkpoints")
    state = None
    if resume == "auto":
        try:
            state = sft.load_checkpoint(ckpts, model, opt, sched, fp)
        except ConfigError:
            state = None
    elif resume:
        state = sft.load_checkpoint(ckpts, model, opt, sched, fp)
        if state is None:
            raise ConfigError([f"--resume: no checkpoint in {ckpts}"])
    bar = tqdm(total=total, initial=state.step if state else 0, desc="train grpo", unit="step", disable=not progress)
    if state is None:
        shutil.rmtree(ckpts, ignore_errors=True)
        state = sft.State()
        if val_p:  # the base's held-out reward: the "before"
            bar.set_postfix_str(f"greedy reward of the base on {len(val_p)} held-out prompts")
            state.val_losses.append((0, evaluate(model, tok, val_p, rewards, cfg, bf16, eos, pad)))
            if progress:
                bar.write(f"step 0: val reward {state.val_losses[0][1]['reward']:.3f} " + " ".join(
                    f"{k} {x:.3f}" for k, x in state.val_losses[0][1].items() if k != "reward" and x is not None))
    t_start = time.perf_counter() - state.seconds
    while state.step < total:
        if state.micro + B > len(train_p):
            state.epoch, state.micro = state.epoch + 1, 0
        idx = order(len(train_p), cfg.seed, state.epoch)[state.micro:state.micro + B]
        batch_p = [train_p[i] for i in idx]
        t0 = time.perf_counter()
        comps = generate(model, tok, [p["ids"] for p in batch_p], G, cfg.max_completion_length, cfg.temperature,
                         bf16, eos, pad)  # (B·G) rows, prompt i's group at rows [iG, (i+1)G)
        t_gen = time.perf_counter() - t0
        texts = [tok.decode(c, skip_special_tokens=True) for c in comps]
        per, total_r = rewards_mod.score(rewards, [p["prompt"] for p in batch_p for _ in range(G)], texts,
                                         _fields(batch_p, G))
        adv = group_advantages(total_r, G)  # (B·G,)
        # one micro-batch per prompt group: its prompt run once, then its G completions (group_logps)
        micro = [{"prompt": p["ids"], "comps": comps[g * G:(g + 1) * G], "adv": adv[g * G:(g + 1) * G]}
                 for g, p in enumerate(batch_p)]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for b in micro:
                if cfg.num_iterations > 1:  # π_old: the sampling policy, fixed for the step's iterations
                    b["old"] = group_logps(model, b["prompt"], b["comps"], pad)[0]
                if cfg.beta > 0:
                    with model.disable_adapter():
                        b["ref"] = group_logps(model, b["prompt"], b["comps"], pad)[0]
        stats = {"kl_sum": 0.0, "clipped": 0, "tokens": 0}
        loss_total = 0.0
        for _ in range(cfg.num_iterations):
            for b in micro:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    logps, rows = group_logps(model, b["prompt"], b["comps"], pad)
                    loss, s = grpo_loss(logps, b.get("old"), b.get("ref"), b["adv"], rows, B * G, cfg.epsilon,
                                        cfg.beta)
                loss.backward()
                loss_total += float(loss.detach())
                for k in stats:
                    stats[k] += s[k]
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        state.micro += B
        state.step += 1
        lengths = torch.tensor([len(c) for c in comps], dtype=torch.float32)
        state.tokens += int(lengths.sum())
        state.seconds = time.perf_counter() - t_start
        entry = {"step": state.step, "reward": float(total_r.mean()), "reward_std": float(total_r.std()),
                 "kl": stats["kl_sum"] / max(1, stats["tokens"]) if cfg.beta > 0 else None,
                 "clip_fraction": stats["clipped"] / max(1, stats["tokens"]),
                 "completion_length": float(lengths.mean()), "loss": loss_total / cfg.num_iterations,
                 "generate_s": round(t_gen, 3), "step_s": round(time.perf_counter() - t0, 3)}
        for r, row in zip(rewards, per):
            ok = row[~row.isnan()]
            entry[f"rewards/{r.name}/mean"] = float(ok.mean()) if len(ok) else None
            entry[f"rewards/{r.name}/std"] = float(ok.std()) if len(ok) > 1 else None
        state.log.append(entry)
        state.losses.append((state.step, entry["loss"]))
        bar.update(1)
        bar.set_postfix(reward=f"{entry['reward']:.3f}", kl=f"{entry['kl'] or 0:.4f}",
                        len=f"{entry['completion_length']:.0f}")
        if val_p and (state.step % cfg.eval_every == 0 or state.step == total):
            v = evaluate(model, tok, val_p, rewards, cfg, bf16, eos, pad)
            state.val_losses.append((state.step, v))
            if progress:
                bar.write(f"step {state.step}: val reward {v['reward']:.3f} "
                          + " ".join(f"{k} {x:.3f}" for k, x in v.items() if k != "reward" and x is not None))
        if state.step % cfg.save_every == 0 and state.step < total:
            sft.save_checkpoint(ckpts, model, opt, sched, state, fp)
            artifacts.kill_point("train.checkpoint")
        artifacts.kill_point("train.step")  # a step that no checkpoint holds yet: redone on resume
    bar.close()

    fast.restore_lora(model)  # what is saved is the stock peft model
    with artifacts.build("model", out, config, inputs) as b:
        model.save_pretrained(b.tmp)
        meta = json.loads((b.tmp / "adapter_config.json").read_text())
        meta["base_model_name_or_path"] = base  # as the user named it, so `llmkit chat OUT` finds it again
        if isinstance(meta.get("target_modules"), list):
            meta["target_modules"] = sorted(meta["target_modules"])
        (b.tmp / "adapter_config.json").write_text(json.dumps(meta, indent=2))
        tok.save_pretrained(b.tmp)
        plot(state, b.tmp)
        b.outputs = {"format": "peft-adapter", "base": base}
        b.metrics = metrics(state, cfg, len(train_p))
        manifest_metrics = b.metrics
    shutil.rmtree(ckpts, ignore_errors=True)
    return {"metrics": manifest_metrics, "out": str(out), "status": "ran"}


def metrics(state, cfg: TrainConfig, n_prompts: int) -> dict:
    log = state.log
    val = [v for _, v in state.val_losses]
    gen = sum(e["generate_s"] for e in log)
    return {
        "steps": state.step, "epochs": round(state.step * cfg.batch_size / max(1, n_prompts), 2),
        "seconds": round(state.seconds, 2), "seconds_per_step": round(state.seconds / max(1, state.step), 3),
        "generate_share": round(gen / max(1e-9, sum(e["step_s"] for e in log)), 3),
        "completion_tokens": state.tokens, "completion_tokens_per_s": round(state.tokens / max(1e-9, state.seconds), 1),
        "reward_first": log[0]["reward"], "reward_last": log[-1]["reward"],
        # a step's mean reward is noisy (B·G samples): the first and last quarter of the run, averaged
        "reward_first_quarter": _mean([e["reward"] for e in log[:max(1, len(log) // 4)]]),
        "reward_last_quarter": _mean([e["reward"] for e in log[-max(1, len(log) // 4):]]),
        "val_reward_first": val[0]["reward"] if val else None, "val_reward_last": val[-1]["reward"] if val else None,
        "val_before": val[0] if val else None, "val_after": val[-1] if val else None,
        "train_loss_first": state.losses[0][1], "train_loss_last": state.losses[-1][1],
        "rewards": [(e["step"], e["reward"]) for e in log], "val_rewards": [(s, v["reward"]) for s, v in state.val_losses],
        "log": log, "precision": cfg.precision,
    }


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(1, len(xs))


def plot(state, folder: Path) -> None:
    """reward.png: mean reward per step (and the held-out greedy reward), the curve the README shows;
    loss.png: the GRPO loss and the KL to the base per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e["step"] for e in state.log]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=100)
    a1.plot(steps, [e["loss"] for e in state.log], color="#3b75af")
    a1.set_xlabel("step")
    a1.set_ylabel("GRPO loss")
    a2.plot(steps, [e["kl"] or 0.0 for e in state.log], color="#c44")
    a2.set_xlabel("step")
    a2.set_ylabel("KL to the base (per token)")
    fig.tight_layout()
    fig.savefig(folder / "loss.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    ax.plot(steps, [e["reward"] for e in state.log], color="#3b75af", alpha=0.5, label="train (mean of the group samples)")
    k = max(1, len(steps) // 10)
    if len(steps) > k:
        smooth = [_mean([e["reward"] for e in state.log[max(0, i - k + 1):i + 1]]) for i in range(len(steps))]
        ax.plot(steps, smooth, color="#3b75af", label=f"train, running mean of {k}")
    if state.val_losses:
        ax.plot([s for s, _ in state.val_losses], [v["reward"] for _, v in state.val_losses], "o-", color="#c44",
                label="held-out (greedy)")
    ax.set_xlabel("step")
    ax.set_ylabel("mean reward")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "reward.png")
    plt.close(fig)
