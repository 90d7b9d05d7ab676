"""GRPO speed, reward and memory: llmkit's `train.method: grpo` beside trl's GRPOTrainer, one script.

    .venv/bin/python bench/train_grpo.py [--steps 12] [--precision fp32|bf16] [--seeds 0,1,2]

Setup (both sides): SmolLM2-135M-Instruct (the bundled GGUF, dequantized), LoRA r=16 alpha=32 on all 7 linear
projections, the prompts of examples/grpo/train.jsonl in llmkit's seeded order (`grpo.order`: trl is handed the
dataset in that order, unshuffled, so both sides see the same prompts at every step; run
examples/make_grpo_data.py first),
2 prompts x 8 generations per step, 20 completion tokens, temperature 1, top_k 0, top_p 1, beta 0.04,
epsilon 0.2, one optimizer step per generation batch, AdamW lr 3e-4, the same seed, the same two rewards
(examples/grpo.yaml's: the last number equals the answer; one short line ending with the number, weight 0.5)
— trl is handed llmkit's reward callables with its `reward_weights`, so both score identically. trl runs with
`loss_type="grpo"` (the paper's per-sequence mean, as llmkit) and `scale_rewards="group"` (its default).

Precision is the same on both sides (`--precision`, default fp32): fp32 = the model loaded in float32, trl
`bf16=False`, llmkit `precision: fp32`; bf16 = the model loaded in bfloat16 with bf16 autocast, trl `bf16=True`,
llmkit `precision: bf16` (its frozen base in bf16, LoRA weights in fp32 — peft keeps trl's adapter in fp32 too).
Learning-rate schedule: each side's default (llmkit cosine, trl linear decay), no warmup. Each side runs in its
own process (peak RSS is its own), one after the other.

Reported: seconds per step of the training loop (sampling, rewards, reference pass, update), the mean reward
over all steps and of the first and the last quarter, peak RSS, and the held-out reward: each side's trained
adapter (and the base) answers the 40 prompts of examples/grpo/test.jsonl greedily, scored by the same rewards
with the same code (`grpo.evaluate`) — no sampling noise, so after the same steps it says which policy is better. Each side samples with its own generator, so
per-step rewards differ by sampling noise; compare means over >= 12 steps and several seeds (`--seeds`: both sides
run once per seed, and the table ends with the means over seeds). Check `uptime` first: a busy box lies.
"""

import json
import tempfile
import time
from pathlib import Path

import sides

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "examples" / "grpo" / "train.jsonl"
HELDOUT = ROOT / "examples" / "grpo" / "test.jsonl"
RECIPE = ROOT / "examples" / "grpo.yaml"
B, G, LENGTH, LR, BETA = 2, 8, 20, 3e-4, 0.04


def _rewards():
    from llmkit.config import load_recipe
    from llmkit.train import rewards

    return rewards.build(load_recipe(RECIPE).train.rewards, None)


def child_llmkit(work: Path, steps: int, precision: str, seed: int) -> dict:
    from llmkit.config import TrainConfig, load_recipe
    from llmkit.train import finetune

    work.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(x) for x in PROMPTS.read_text().splitlines()]
    (work / "data").mkdir(exist_ok=True)
    (work / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))  # {prompt, completion}
    cfg = TrainConfig(method="grpo", lr=LR, batch_size=B, num_generations=G, max_completion_length=LENGTH,
                      max_length=128, beta=BETA, epsilon=0.2, warmup_ratio=0.0, precision=precision,
                      eval_every=10**6, save_every=10**6, lora={"r": 16, "alpha": 32},
                      rewards=load_recipe(RECIPE).train.rewards, seed=seed)
    m = finetune(cfg, work / "data", "smollm2-135m-instruct", work / "llmkit-grpo", progress=False,
                 max_steps=steps, force=True)["metrics"]
    return {"steps": m["steps"], "loop_seconds": m["seconds"], "rewards": [e["reward"] for e in m["log"]],
            "generate_share": m["generate_share"], "precision": m["precision"], "adapter": str(work / "llmkit-grpo")}


def child_trl(work: Path, steps: int, precision: str, seed: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from llmkit.models import hf_folder, resolve_model
    from llmkit.train.grpo import order

    base = hf_folder(resolve_model("smollm2-135m-instruct"), progress=False)
    tok = AutoTokenizer.from_pretrained(base)
    rows = [json.loads(x) for x in PROMPTS.read_text().splitlines()]
    rows = [rows[i] for i in order(len(rows), seed, 0)]  # llmkit's first-epoch order; trl does not shuffle
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "completion_ref": r["completion"]}
                              for r in rows])
    rs = _rewards()

    def wrap(r):
        def fn(prompts, completions, completion_ref, **kw):
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            return r.fn(prompts, texts, completion=completion_ref)

        fn.__name__ = r.name
        return fn

    rewards = []

    class Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "reward" in logs:
                rewards.append(logs["reward"])

    args = GRPOConfig(output_dir=str(work / "trl-out"), per_device_train_batch_size=B * G, num_generations=G,
                      max_completion_length=LENGTH, temperature=1.0, top_k=0, top_p=1.0, learning_rate=LR,
                      beta=BETA, epsilon=0.2, loss_type="grpo", num_iterations=1, max_steps=steps,
                      logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=precision == "bf16",
                      dataloader_num_workers=0, seed=seed, gradient_checkpointing=False,
                      reward_weights=[r.weight for r in rs], shuffle_dataset=False)
    peft_cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(base, dtype=dtype), args=args, train_dataset=data,
                          processing_class=tok, peft_config=peft_cfg, reward_funcs=[wrap(r) for r in rs],
                          callbacks=[Log()])
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    trainer.save_model(str(work / "trl-adapter"))  # the peft adapter, as llmkit's artifact holds its own
    return {"steps": steps, "loop_seconds": seconds, "rewards": rewards, "generate_share": None,
            "precision": precision, "model_dtype": str(next(trainer.model.parameters()).dtype),
            "adapter": str(work / "trl-adapter")}


def heldout(adapters: dict[str, str | None], precision: str) -> dict[str, float]:
    """Mean reward of greedy replies to the held-out prompts, for each adapter (None: the base), scored by
    grpo.evaluate with the bench's rewards."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.config import TrainConfig
    from llmkit.models import hf_folder, resolve_model
    from llmkit.train import grpo

    base = hf_folder(resolve_model("smollm2-135m-instruct"), progress=False)
    tok = AutoTokenizer.from_pretrained(base)
    cfg = TrainConfig(method="grpo", max_completion_length=LENGTH, max_length=128)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "val.jsonl").write_text(HELDOUT.read_text())
        prompts = grpo.load_prompts(Path(d), "val", tok, cfg)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    out = {}
    for name, adapter in adapters.items():
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        if adapter:
            model = PeftModel.from_pretrained(model, adapter)
        out[name] = grpo.evaluate(model, tok, prompts, _rewards(), cfg, precision == "bf16", tok.eos_token_id,
                                  tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)["reward"]
    return out


def main() -> None:
    ap = sides.arguments(__doc__, "steps (one generation batch and one update each) per side")
    ap.add_argument("--sides", default="llmkit,trl", help="comma-separated sides to run (llmkit, trl)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds; both sides run once per seed")
    args = ap.parse_args()
    if args.child:
        res = (child_trl if args.child == "trl" else child_llmkit)(Path(args.work) / args.child, args.steps,
                                                                     args.precision, int(args.seeds))
        sides.child_result(res)
        return
    from llmkit.commands import quiet_known_noise

    quiet_known_noise()  # the held-out pass loads models in this process: no loading bars or known warnings
    print(sides.machine())
    print(f"precision: {args.precision} (both sides), steps: {args.steps}, seeds: {args.seeds}")
    runs = {}  # (side, seed) -> result
    for seed in args.seeds.split(","):
        work = Path(tempfile.mkdtemp(prefix="bench-grpo-"))
        for k, r in sides.run(__file__, args.sides.split(","), ["--work", str(work), "--steps", str(args.steps),
                                                                 "--precision", args.precision, "--seeds", seed]).items():
            runs[k, seed] = r
        scores = heldout({"base": None, **{k: runs[k, seed]["adapter"] for k in args.sides.split(",")}},
                         args.precision)
        for k in args.sides.split(","):
            runs[k, seed]["heldout"], runs[k, seed]["heldout_base"] = scores[k], scores["base"]
        print(f"seed {seed}: held-out greedy reward (40 prompts)", json.dumps(scores), "\nuptime:", sides.uptime())
    q = max(1, args.steps // 4)
    print(f"\n{'':7} {'seed':>4} {'steps':>5} {'s/step':>7} {'steps/s':>8} {'mean reward':>11} {'first¼ → last¼':>16} "
          f"{'peak RSS GB':>11} {'held-out':>8}")
    for (k, seed), r in runs.items():
        rw = r["rewards"]
        first, last = sum(rw[:q]) / q, sum(rw[-q:]) / q
        print(f"{k:7} {seed:>4} {r['steps']:>5} {r['loop_seconds'] / r['steps']:>7.2f} "
              f"{r['steps'] / r['loop_seconds']:>8.3f} {sum(rw) / len(rw):>11.3f} {first:>7.3f} → {last:<6.3f} "
              f"{r['peak_rss_gb']:>11.2f} {r['heldout']:>8.3f}")
    per_side = {k: [r for (s, _), r in runs.items() if s == k] for k in args.sides.split(",")}
    mean = {k: {"s_step": sum(r["loop_seconds"] / r["steps"] for r in rs) / len(rs),
                "reward": sum(sum(r["rewards"]) / len(r["rewards"]) for r in rs) / len(rs),
                "last": sum(sum(r["rewards"][-q:]) / q for r in rs) / len(rs),
                "rss": max(r["peak_rss_gb"] for r in rs),
                "heldout": sum(r["heldout"] for r in rs) / len(rs)} for k, rs in per_side.items()}
    for k, m in mean.items():
        print(f"{k:7} {'mean':>4} {'':>5} {m['s_step']:>7.2f} {1 / m['s_step']:>8.3f} {m['reward']:>11.3f} "
              f"{'':>7}   {m['last']:<6.3f} {m['rss']:>11.2f} {m['heldout']:>8.3f}")
    print(f"base held-out greedy reward: {runs[next(iter(runs))]['heldout_base']:.3f}")
    if {"llmkit", "trl"} <= mean.keys():
        a, t = mean["llmkit"], mean["trl"]
        print(f"llmkit / trl over {len(per_side['llmkit'])} seed(s): steps/s {t['s_step'] / a['s_step']:.2f}x, "
              f"peak RSS {a['rss'] / t['rss']:.2f}x, mean reward {a['reward']:.3f} vs {t['reward']:.3f}, "
              f"last quarter {a['last']:.3f} vs {t['last']:.3f}, held-out {a['heldout']:.3f} vs {t['heldout']:.3f}")


if __name__ == "__main__":
    main()
