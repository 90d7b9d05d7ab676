"""LoRA fine-tuning speed, memory and quality: llmkit's train stage beside trl's SFTTrainer and litgpt, one script.

    .venv/bin/python bench/train_lora.py [--tokens 20000] [--sides llmkit-1,trl] [--seeds 0,1,2]
    .venv/bin/python bench/train_lora.py --sides llmkit-1,trl,litgpt --litgpt-python /tmp/lgvenv/bin/python
    .venv/bin/python bench/train_lora.py --sides llmkit-1,llmkit-1/compile=on,llmkit-1/opt=foreach,trl-bf16,trl

Setup (the fine-tuning issue's): SmolLM2-135M-Instruct (the bundled GGUF, dequantized), LoRA r=16 alpha=32 on
all 7 linear projections, dropout 0 (peft's default), batch 4, max length 256, ~64-token instruction rows,
AdamW lr 5e-4, cosine schedule with 3% warmup, completion-only loss. Each side trains on the same rows until
it has seen about the same number of real (non-padding) tokens, in its own process (peak RSS is its own), and
then both adapters are scored on the same held-out rows with the same loss (mean over completion tokens).

trl runs with plain settings: prompt/completion rows, no packing, fp32, gradient checkpointing off (trl's default
turns it on, which trades speed for memory); `trl-bf16` is the same with `bf16=True` (fp32 master weights under
bf16 autocast, what trl does with bf16 on a CPU). llmkit runs as a user would: packing, bf16 where the CPU has fast bf16
kernels (precision auto), train.fast_kernels (packed attention, fused LoRA; a `-stock` side such as
`llmkit-1-stock` turns them off). A second llmkit row uses batch 1 of packed 256-token sequences, so it takes
about as many optimizer steps per token as trl does — the fair row for "same val loss after the same tokens".
A side may change llmkit's settings one at a time to measure a lever alone: `llmkit-1/compile=on` (train.compile),
`llmkit-1/max_length=512` (longer packs), `llmkit-1/opt=foreach` (AdamW without the fused kernel),
`llmkit-1/attn=bf16` (packed attention in bf16 for every sequence, as before fast.FP32_MAX_LEN); several
`/key=value` parts combine. Each llmkit side's seconds are the train stage's own, so a compile is counted.
litgpt (optional: `--litgpt-python`, its own venv) runs finetune_lora with the same LoRA, batch, lr and schedule,
fp32 (32-true), completion-only loss (mask_prompt) and SmolLM2's chat prompt; its merged weights are scored by the
same val loss.
Check `uptime` first: a busy box lies.
"""

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEVICES = ["router", "mesh node", "modem", "extender", "gateway", "smart plug"]
ACTIONS = ["restart", "update", "reset", "rename", "secure", "move", "pair", "check"]
STEPS = ["Hold the power button for 5 seconds.", "Open the app and tap Settings.", "Check that the light is white.",
         "Unplug it for 30 seconds.", "Tap Update and wait five minutes.", "Move it off the floor."]


def rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        d, a = rng.choice(DEVICES), rng.choice(ACTIONS)
        out.append({"prompt": f"How do I {a} my Nimbus {d}?",
                    "completion": f"Nimbus here! To {a} your {d}: {rng.choice(STEPS)} — Happy networking!"})
    return out


def child_llmkit(work: Path, tokens: int, batch: int, precision: str, fast_kernels: bool = True, seed: int = 0,
                 sets: tuple = ()) -> dict:
    import torch

    from llmkit.config import TrainConfig
    from llmkit.train import finetune

    over = dict(kv.split("=", 1) for kv in sets)
    if over.pop("opt", "fused") == "foreach":  # the lever "fused AdamW" off (llmkit's default: torch's fused kernel)
        from llmkit.train import common, sft

        sft.adamw = lambda params, lr: common.adamw(params, lr, fused=False)
    if over.pop("attn", "fp32") == "bf16":  # the lever "short sequences' attention in fp32" off (train/fast.py)
        from llmkit.train import fast

        fast.FP32_MAX_LEN = 0
    cfg = TrainConfig(**{**dict(method="lora", lr=5e-4, batch_size=batch, max_length=256, packing=True,
                                precision=precision, eval_every=10**6, save_every=10**6, warmup_ratio=0.03,
                                lora={"r": 16, "alpha": 32}, fast_kernels=fast_kernels, seed=seed), **over})
    # steps for the token budget, from the real tokens per batch of this packing
    from transformers import AutoTokenizer

    from llmkit.models import hf_folder, resolve_model
    from llmkit.train.sft import load_examples, make_batches

    tok = AutoTokenizer.from_pretrained(hf_folder(resolve_model("smollm2-135m-instruct"), progress=False))
    batches = make_batches(load_examples(work / "data", "train", tok, "lora", 256), cfg, 0, tok.pad_token_id)
    per_step = sum(b["real_tokens"] for b in batches) / len(batches)
    steps = max(1, round(tokens / per_step))
    torch.manual_seed(seed)
    out = work / f"llmkit-{batch}-{precision}-{'fast' if fast_kernels else 'stock'}-{'-'.join(sets)}-{seed}"
    r = finetune(cfg, work / "data", "smollm2-135m-instruct", out, progress=False, max_steps=steps, force=True)
    m = r["metrics"]
    return {"steps": m["steps"], "real_tokens": m["real_tokens"], "seconds": m["seconds"],
            "compile": m.get("compile"), "compile_seconds": m.get("compile_seconds"), "adapter": str(out)}


def child_trl(work: Path, tokens: int, seed: int = 0, bf16: bool = False) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from llmkit.models import hf_folder, resolve_model

    base = hf_folder(resolve_model("smollm2-135m-instruct"), progress=False)
    tok = AutoTokenizer.from_pretrained(base)
    train = [json.loads(x) for x in (work / "train.jsonl").read_text().splitlines()]
    conv = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "completion": [{"role": "assistant", "content": r["completion"]}]} for r in train]
    lengths = [len(tok.apply_chat_template(c["prompt"] + c["completion"], return_dict=False)) for c in conv]
    mean_len = sum(lengths) / len(lengths)
    steps = max(1, round(tokens / (4 * mean_len)))
    args = SFTConfig(output_dir=str(work / "trl-out"), per_device_train_batch_size=4, max_length=256,
                     learning_rate=5e-4, lr_scheduler_type="cosine", warmup_steps=int(0.03 * steps), max_steps=steps,
                     logging_steps=10**6, save_strategy="no", report_to=[], use_cpu=True, bf16=bf16,
                     dataloader_num_workers=0, seed=seed, gradient_checkpointing=False)  # trl turns it on by default
    peft_cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = AutoModelForCausalLM.from_pretrained(base)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(conv), processing_class=tok,
                         peft_config=peft_cfg)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    adapter = work / f"trl-adapter-{'bf16' if bf16 else 'fp32'}-{seed}"
    trainer.model.save_pretrained(adapter)
    return {"steps": steps, "real_tokens": round(steps * 4 * mean_len), "seconds": seconds, "adapter": str(adapter)}


def child_litgpt(work: Path, tokens: int, seed: int = 0) -> dict:
    """litgpt's finetune_lora with the same setup. Runs in litgpt's own venv (it pins other transformers and hub
    versions), so nothing from llmkit is imported here; the parent made `work/litgpt-base` with convert_to_litgpt.
    Completion-only loss (mask_prompt), SmolLM2's own chat prompt (litgpt's `smollm2` style = the chat template
    with its default system prompt), fp32 (32-true), no packing (litgpt pads each micro-batch to its longest row)."""
    import litgpt.finetune.lora as lora
    from litgpt.args import EvalArgs, TrainArgs
    from litgpt.data import JSON
    from litgpt.prompts import SmolLM2
    from litgpt.tokenizer import Tokenizer

    base, data = work / "litgpt-base", work / "litgpt-data"
    data.mkdir(exist_ok=True)
    train = [json.loads(x) for x in (work / "train.jsonl").read_text().splitlines()]
    for name, rs in (("train", train), ("val", train[:8])):  # litgpt's own val pass is off; both sides are scored alike
        (data / f"{name}.json").write_text(json.dumps(
            [{"instruction": r["prompt"], "input": "", "output": r["completion"]} for r in rs]))
    tok, style = Tokenizer(base), SmolLM2()
    mean_len = sum(len(tok.encode(style.apply(r["prompt"]) + r["completion"], eos=True)) for r in train) / len(train)
    steps = max(1, round(tokens / (4 * mean_len)))
    timed = {}
    fit = lora.fit

    def timed_fit(*a, **k):
        t0 = time.perf_counter()
        timed["counts"] = fit(*a, **k)
        timed["seconds"] = time.perf_counter() - t0
        return timed["counts"]

    lora.fit = timed_fit
    out = work / f"litgpt-out-{seed}"
    shape = dict(precision="32-true", lora_r=16, lora_alpha=32, lora_dropout=0.0, lora_query=True, lora_key=True,
                 lora_value=True, lora_projection=True, lora_mlp=True, lora_head=False)
    # litgpt re-parses the command line to save the hyperparameters its merge_lora then reads back
    sys.argv = [sys.argv[0], str(base), *(x for k, v in shape.items() for x in (f"--{k}", str(v).lower()))]
    lora.setup(base, out_dir=out, **shape,
               data=JSON(json_path=data, mask_prompt=True, prompt_style="smollm2", num_workers=0),  # as trl
               train=TrainArgs(save_interval=10**6, log_interval=10**6, global_batch_size=4, micro_batch_size=4,
                               lr_warmup_steps=max(1, int(0.03 * steps)),  # litgpt divides by it
                               epochs=100, max_steps=steps, max_seq_length=256),
               eval=EvalArgs(interval=10**6, max_new_tokens=16, initial_validation=False, final_validation=False),
               optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 5e-4, "weight_decay": 0.0}},
               logger_name="csv", seed=seed)
    return {"steps": steps, "real_tokens": int(timed["counts"]["raw_tokens_plus_prompt_template"]),
            "seconds": timed["seconds"], "adapter": str(out / "final")}


def litgpt_to_hf(litgpt_python: str, final: Path) -> str:
    """litgpt merges the LoRA into `final/lit_model.pth` itself; convert that to HF names for the val child."""
    subprocess.run([litgpt_python, "-m", "litgpt", "convert_from_litgpt", str(final), str(final)], check=True,
                   capture_output=True)
    return str(final / "model.pth")


def val_loss(adapter: str, work: Path) -> float:
    """Both adapters scored alike: mean loss over completion tokens of the held-out rows, fp32, batch 1."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.config import TrainConfig
    from llmkit.models import hf_folder, resolve_model
    from llmkit.train.sft import evaluate, load_examples, make_batches

    base = hf_folder(resolve_model("smollm2-135m-instruct"), progress=False)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter.endswith(".pth"):  # litgpt: a merged state dict with HF names
        missing, unexpected = model.load_state_dict(torch.load(adapter, map_location="cpu"), strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:  # lm_head is tied to the embeddings
            raise SystemExit(f"litgpt's weights do not fit: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
    else:
        model = PeftModel.from_pretrained(model, adapter)
    model.config.use_cache = False
    ex = load_examples(work / "data", "val", tok, "lora", 256)
    return evaluate(model, make_batches(ex, TrainConfig(batch_size=1, packing=False), 0, tok.pad_token_id), bf16=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=20000, help="real tokens each side trains on")
    ap.add_argument("--child", choices=["llmkit-4", "llmkit-1", "llmkit-4-stock", "llmkit-1-stock", "trl", "trl-bf16",
                                        "litgpt", "val"])
    ap.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)  # a side's /key=value parts
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help="llmkit's training precision")
    ap.add_argument("--sides", default="llmkit-4,llmkit-1,trl",
                    help="which runs, comma-separated; a -stock suffix runs llmkit with train.fast_kernels off; "
                         "/key=value parts change one llmkit setting (compile=on, max_length=512, opt=foreach); "
                         "trl-bf16 runs trl with bf16=True")
    ap.add_argument("--seeds", default="0", help="training seeds (LoRA init, data order), comma-separated: "
                    "each side runs once per seed, so the val-loss spread between seeds shows the noise")
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--litgpt-python", default="", help="python of a venv with litgpt 0.5.13 (it pins other "
                    "transformers/hub versions than llmkit's, so it lives apart); needed by a `litgpt` side")
    ap.add_argument("--work")
    ap.add_argument("--adapter")
    args = ap.parse_args()
    if args.child:
        work = Path(args.work)
        if args.child == "val":
            res = {"val_loss": val_loss(args.adapter, work)}
        elif args.child == "litgpt":
            res = child_litgpt(work, args.tokens, args.seed)
        elif args.child in ("trl", "trl-bf16"):
            res = child_trl(work, args.tokens, args.seed, bf16=args.child == "trl-bf16")
        else:
            res = child_llmkit(work, args.tokens, int(args.child.split("-")[1]), args.precision,
                               fast_kernels=not args.child.endswith("-stock"), seed=args.seed, sets=tuple(args.set))
        res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        # inductor compiles in worker processes: their peak is reported beside the side's own
        res["children_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        print(json.dumps(res))
        return
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n")[0].split() \
        if Path("/proc/cpuinfo").is_file() else []
    print("cpu flags:", " ".join(f for f in flags if f.startswith(("avx2", "avx512", "amx"))))
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    for name, n, seed in (("train", 2000, 0), ("val", 100, 1)):
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(n, seed)))
    from llmkit.config import DataConfig
    from llmkit.data import prepare

    # one dataset artifact for every side: llmkit trains on it, and both sides are scored on its val rows
    prepare(DataConfig(train=str(work / "train.jsonl"), val=str(work / "val.jsonl"), dedupe="none"), work / "data",
            progress=False)

    sides = args.sides.split(",")
    if "litgpt" in sides:
        if not args.litgpt_python:
            sys.exit("the litgpt side needs --litgpt-python: python3 -m venv /tmp/lgvenv && /tmp/lgvenv/bin/pip "
                     "install torch==2.13.0 litgpt==0.5.13 requests")
        import shutil

        from llmkit.models import hf_folder, resolve_model

        shutil.copytree(hf_folder(resolve_model("smollm2-135m-instruct"), progress=False), work / "litgpt-base")
        subprocess.run([args.litgpt_python, "-m", "litgpt", "convert_to_litgpt", str(work / "litgpt-base"),
                        "--model_name", "SmolLM2-135M-Instruct"], check=True, capture_output=True)

    def run(*a: str, python: str = sys.executable) -> dict:
        p = subprocess.run([python, __file__, "--work", str(work), "--tokens", str(args.tokens),
                            "--precision", args.precision, *a],
                           capture_output=True, text=True)
        if p.returncode:
            sys.exit(f"{a} failed:\n{p.stderr[-3000:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])

    results: dict[str, list[dict]] = {}
    for seed in [int(x) for x in args.seeds.split(",")]:
        for side in sides:
            python = args.litgpt_python if side == "litgpt" else sys.executable
            name, *sets = side.split("/")
            r = run("--child", name, "--seed", str(seed), *(x for kv in sets for x in ("--set", kv)), python=python)
            if side == "litgpt":
                r["adapter"] = litgpt_to_hf(args.litgpt_python, Path(r["adapter"]))
            r["val_loss"] = run("--child", "val", "--adapter", r["adapter"])["val_loss"]
            r["tok_s"] = r["real_tokens"] / r["seconds"]
            results.setdefault(side, []).append(r)
            print(side, f"seed {seed}", json.dumps(r), flush=True)

    def mean(side, key):
        return sum(r[key] for r in results[side]) / len(results[side])

    print(f"\n{'':28} {'runs':>4} {'steps':>6} {'real tok':>9} {'seconds':>8} {'real tok/s':>10} {'peak RSS GB':>11}"
          f" {'val loss (each seed)':>28}")
    for k, rs in results.items():
        vals = " ".join(f"{r['val_loss']:.4f}" for r in rs)
        print(f"{k:28} {len(rs):>4} {rs[0]['steps']:>6} {rs[0]['real_tokens']:>9} {mean(k, 'seconds'):>8.1f}"
              f" {mean(k, 'tok_s'):>10.0f} {max(r['peak_rss_gb'] for r in rs):>11.2f} {vals:>28}")
    print("uptime at the end:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    peers = [k for k in ("trl-bf16", "trl", "litgpt") if k in results]
    for k in [k for k in results if k not in peers]:
        for peer in peers:
            print(f"{k} / {peer}: speed {mean(k, 'tok_s') / mean(peer, 'tok_s'):.2f}x, peak RSS "
                  f"{max(r['peak_rss_gb'] for r in results[k]) / max(r['peak_rss_gb'] for r in results[peer]):.2f}x, "
                  f"mean val loss {mean(k, 'val_loss') / mean(peer, 'val_loss') - 1:+.1%}")


if __name__ == "__main__":
    main()
