"""GRPO on the tiny model: the advantage and loss math against a hand computation, the rewards (built-ins,
module:function, weighted sums, every bad entry reported at once), a short run that raises a learnable reward,
and kill -9 + --resume continuing the same run."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmkit.config import DataConfig, RewardConfig, TrainConfig
from llmkit.data import prepare
from llmkit.errors import ConfigError
from llmkit.train import finetune
from llmkit.train.grpo import group_advantages, grpo_loss
from llmkit.train.rewards import build, score

DIGITS = f"{Path(__file__).with_name('grpo_rewards.py')}:digits"


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    std = math.sqrt(4 * 0.5 ** 2 / 3)  # unbiased sample std of (1, 0, 0, 1)
    want = [0.5 / (std + 1e-4), -0.5 / (std + 1e-4)] * 2
    got = group_advantages(r, 4)
    assert got[:4].tolist() == pytest.approx([want[0], want[1], want[1], want[0]], rel=1e-6)
    assert got[4:].tolist() == [0.0] * 4  # a group whose samples all score the same teaches nothing


def test_grpo_loss_by_hand():
    # two rows: row 0 has 2 completion tokens (advantage +1), row 1 has 1 token (advantage -0.5)
    logps = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    old = torch.tensor([-1.5, -2.0, -1.0])
    ref = torch.tensor([-1.2, -2.5, -0.4])
    adv, rows = torch.tensor([1.0, -0.5]), torch.tensor([0, 0, 1])
    eps, beta = 0.2, 0.1

    def tok_loss(lp, o, rf, a):
        ratio = math.exp(lp - o)
        pg = -min(ratio * a, min(max(ratio, 1 - eps), 1 + eps) * a)
        return pg + beta * (math.exp(rf - lp) - (rf - lp) - 1)

    row0 = (tok_loss(-1.0, -1.5, -1.2, 1.0) + tok_loss(-2.0, -2.0, -2.5, 1.0)) / 2
    row1 = tok_loss(-0.5, -1.0, -0.4, -0.5)
    loss, stats = grpo_loss(logps, old, ref, adv, rows, 2, eps, beta)
    assert float(loss) == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # token 0: ratio e^0.5 > 1.2 with A > 0 -> clipped; token 2: ratio e^0.5 with A < 0 -> the unclipped term wins
    assert stats["clipped"] == 1 and stats["tokens"] == 3
    kl = [math.exp(rf - lp) - (rf - lp) - 1 for lp, rf in ((-1.0, -1.2), (-2.0, -2.5), (-0.5, -0.4))]
    assert stats["kl_sum"] == pytest.approx(sum(kl), rel=1e-6)
    loss.backward()  # the clipped token gets only the KL gradient: d/dlp beta*(e^(rf-lp) - (rf-lp) - 1)
    assert float(logps.grad[0]) == pytest.approx(beta * (1 - math.exp(-1.2 + 1.0)) / 2 / 2, rel=1e-5)


def test_rewards_builtins_module_function_and_weights(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    rs = build([RewardConfig(fn="exact", pattern=r"Answer:\s*(-?[\d.]+)"),
                RewardConfig(fn="regex", pattern=r"^Answer: \d+$", weight=0.5),
                RewardConfig(fn="json_schema", json_schema={"type": "object", "required": ["a"]}, weight=2.0),
                RewardConfig(fn="length", target_length=4, weight=0.1),
                RewardConfig(fn=DIGITS, name="digits", weight=0.0)], tok)
    comps = ["Answer: 84", "so Answer: 84.0 I think", '{"a": 1}', "Answer: 85"]
    per, total = score(rs, ["q"] * 4, comps, {"completion": ["Answer: 84", "Answer: 84", "x", "Answer: 84"]})
    assert per[0].tolist() == [1.0, 1.0, 0.0, 0.0]  # 84.0 == 84 as numbers
    assert per[1].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert per[2].tolist() == [0.0, 0.0, 1.0, 0.0]
    n = [len(tok(c, add_special_tokens=False)["input_ids"]) for c in comps]
    assert per[3].tolist() == pytest.approx([-max(0, k - 4) / 4 for k in n])
    want = per[0] + 0.5 * per[1] + 2.0 * per[2] + 0.1 * per[3]
    torch.testing.assert_close(total, want)
    with pytest.raises(ConfigError) as e:
        build([RewardConfig(fn="regex"), RewardConfig(fn="no_such_module_xyz:f"), RewardConfig(fn="exactly"),
               RewardConfig(fn="regex", pattern="(")], tok)
    # every bad entry at once, each named by its index (the second `regex` also repeats a name)
    assert len(e.value.problems) == 5, e.value.problems
    assert "train.rewards[1].fn" in str(e.value) and "train.rewards[3].pattern" in str(e.value)
    assert "train.rewards[3].name: 'regex' is used twice" in str(e.value)


@pytest.fixture
def one_thread():
    """The tiny model's ops are too small to split: on a shared 2-core box two threads only wait for each other
    (a 30-step run took 130 s at load 10 with two threads, ~3 s with one)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def prompts(tiny_llama, tmp_path_factory):
    d = tmp_path_factory.mktemp("grpo")
    rows = [{"prompt": f"Count the routers in room {i}.", "completion": str(i % 10)} for i in range(40)]
    (d / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare(DataConfig(train=str(d / "p.jsonl"), val_fraction=0.1, format="prompt_completion"), d / "data",
            model=str(tiny_llama), progress=False)
    return d / "data"


CFG = dict(method="grpo", lr=5e-2, batch_size=2, num_generations=8, max_completion_length=6, max_length=96,
           beta=0.04, precision="fp32", eval_every=100, save_every=100, warmup_ratio=0.0,
           rewards=[{"fn": DIGITS, "name": "digits"}])


def test_rollouts_prefill_each_prompt_once_and_match_generate(tiny_llama, one_thread):
    """grpo.generate prefills each prompt once and copies its KV cache to the group's rows: the completions are
    transformers' own generate(num_return_sequences=n) ones, greedy and sampled from the same seed."""
    from transformers import AutoTokenizer

    from llmkit.train import sft
    from llmkit.train.grpo import generate

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = sft.load_model(TrainConfig(**CFG), tiny_llama)
    with torch.no_grad():  # an adapter that moves the policy away from the base
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    pad, eos = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id, tok.eos_token_id
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]  # the second is left-padded
    ids = torch.tensor([prompts[0], [pad] * 4 + prompts[1]])
    mask = torch.tensor([[1] * 7, [0] * 4 + [1] * 3])

    def stock(n, **sample):  # each prompt prefilled in every one of its rows
        model.eval()
        with torch.no_grad():
            out = model.generate(input_ids=ids.repeat_interleave(3 // n, 0), num_return_sequences=n, use_cache=True,
                                 attention_mask=mask.repeat_interleave(3 // n, 0), max_new_tokens=6,
                                 pad_token_id=pad, eos_token_id=eos, **sample)
        model.train()
        return [row[:row.index(eos) + 1] if eos in row else row for row in out[:, 7:].tolist()]

    assert generate(model, tok, prompts, 3, 6, None, False, eos, pad) == stock(1, do_sample=False)
    torch.manual_seed(3)
    sampled = generate(model, tok, prompts, 3, 6, 1.0, False, eos, pad)
    torch.manual_seed(3)
    assert sampled == stock(3, do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    assert len({tuple(c) for c in sampled}) > 2  # sampled rows differ: the test compares real samples


def test_group_logps_run_the_prompt_once_and_equal_full_rows(tiny_llama, one_thread):
    """The training forward with one prompt's KV cache shared by its group gives the log-probs and LoRA gradients
    of the group's full rows (prompt + completion each, padded), which token_logps computes."""
    from llmkit.train import sft
    from llmkit.train.common import collate, token_logps
    from llmkit.train.grpo import group_logps
    from llmkit.train.template import IGNORE

    model = sft.load_model(TrainConfig(**CFG), tiny_llama)
    with torch.no_grad():  # an adapter that moves the policy away from the base
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    prompt, comps = [5, 6, 7, 8, 9, 10, 11], [[20, 21, 22], [30], [40, 41, 42, 43, 44], [20, 21]]
    params = [p for p in model.parameters() if p.requires_grad]

    def run(fn):
        model.zero_grad(set_to_none=True)
        logps, rows = fn()
        (logps * torch.linspace(-1, 1, len(logps))).sum().backward()  # a loss that weighs tokens differently
        return logps.detach(), rows, torch.cat([p.grad.flatten() for p in params])

    full = collate([{"input_ids": prompt + c, "labels": [IGNORE] * len(prompt) + c,
                     "position_ids": list(range(len(prompt) + len(c)))} for c in comps], 0)
    want, want_rows, want_grad = run(lambda: token_logps(model, full))
    got, rows, grad = run(lambda: group_logps(model, prompt, comps, 0))
    assert rows.tolist() == want_rows.tolist() == [0, 0, 0, 1, 2, 2, 2, 2, 2, 3, 3]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-6)


def test_grpo_raises_a_learnable_reward(tiny_llama, prompts, tmp_path, one_thread):
    r = finetune(TrainConfig(**CFG), prompts, str(tiny_llama), tmp_path / "o", progress=False, max_steps=30)
    m = r["metrics"]
    log = m["log"]
    # the share of digits in a sampled completion: ~0.03 for the random model (10 of its 320 tokens are digits);
    # measured 0.03 -> 0.13 over 30 steps (fp32, one or two threads)
    first, last = (sum(e["reward"] for e in part) / 8 for part in (log[:8], log[-8:]))
    assert last > 2.5 * first and last > first + 0.04, (first, last, [round(e["reward"], 2) for e in log])
    assert m["val_after"]["digits"] > m["val_before"]["digits"]  # greedy held-out completions too
    assert {"rewards/digits/mean", "rewards/digits/std", "kl", "clip_fraction", "completion_length"} <= log[0].keys()
    assert log[0]["kl"] == pytest.approx(0.0, abs=1e-6) and log[-1]["kl"] > 0  # the adapter starts as the base
    assert m["steps"] == 30
    out = tmp_path / "o"
    assert {"adapter_model.safetensors", "reward.png", "loss.png"} <= {p.name for p in out.iterdir()}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["format"] == "peft-adapter" and manifest["config"]["train"]["method"] == "grpo"


def _cli(recipe, out, data, extra=(), env=None):
    return subprocess.run([sys.executable, "-m", "llmkit.cli", "train", "--recipe", str(recipe), "--data", str(data),
                           "--out", str(out), "--max-steps", "6", *extra], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=600)


def test_kill_9_then_resume_continues_the_same_run(tiny_llama, prompts, tmp_path, one_thread):
    from llmkit.config import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: g\nmodel: {tiny_llama}\ntrain:\n  method: grpo\n  lr: 0.02\n  batch_size: 2\n"
                      f"  num_generations: 8\n  max_completion_length: 6\n  max_length: 96\n  beta: 0.04\n"
                      f"  precision: fp32\n  save_every: 3\n  eval_every: 100\n"
                      f"  rewards: [{{fn: '{DIGITS}', name: digits}}]\n")
    # the uninterrupted run in this process (the same config as the CLI's), the killed one through the CLI
    finetune(load_recipe(recipe).train, prompts, str(tiny_llama), tmp_path / "a", progress=False, max_steps=6)
    killed = _cli(recipe, tmp_path / "b", prompts, env={"LLMKIT_TEST_KILL_AT": "train.checkpoint:1"})
    assert killed.returncode == -9  # SIGKILL right after the step-3 checkpoint
    assert not (tmp_path / "b").exists() and (tmp_path / "b.checkpoints").is_dir()
    resumed = _cli(recipe, tmp_path / "b", prompts, ["--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "mean reward" in resumed.stdout
    a, b = (json.loads((tmp_path / x / "manifest.json").read_text())["metrics"]["log"] for x in "ab")
    assert [e["step"] for e in b] == list(range(1, 7))
    # the sampling RNG is in the checkpoint: the resumed steps draw the same completions, so the same rewards
    assert [e["reward"] for e in b] == pytest.approx([e["reward"] for e in a], abs=1e-6)
    assert [e["loss"] for e in b] == pytest.approx([e["loss"] for e in a], rel=1e-3, abs=1e-6)


def test_the_example_recipe_is_valid():
    from llmkit.config import load_recipe

    root = Path(__file__).resolve().parents[2]
    cfg = load_recipe(root / "examples" / "grpo.yaml").train
    rs = build(cfg.rewards, None)
    per, _ = score(rs, ["q"] * 3, ["3 + 19 = 22", "The sum is 21.", "22\nok"], {"completion": ["22"] * 3})
    assert per.tolist() == [[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]  # correct (the last number); format (one short line)


def test_toxicity_reward_is_the_guard_classifier(monkeypatch):
    # the guard's real toxicity head, trained by its own code on its corpus (what load_heads trains and caches,
    # without the injection heads' minutes of MiniLM), installed as the process's heads as the guard tests do
    from llmkit.guard import classify
    from llmkit.guard.corpora import TOXICITY_CLASSES, toxicity_corpus

    corpus = toxicity_corpus()
    head = classify._fit("toxicity", TOXICITY_CLASSES, *corpus["train"], C=4.0)
    monkeypatch.setattr(classify, "_HEADS", {"toxicity": head})
    texts, y = corpus["test"]
    rs = build([RewardConfig(fn="toxicity", weight=2.0)], None)
    per, total = score(rs, ["q"] * len(texts), list(texts), {})
    want = -head.scores(classify.featurize(list(texts)))
    assert per[0].tolist() == pytest.approx(want.tolist(), abs=1e-6) and (per[0] <= 0).all()
    torch.testing.assert_close(total, 2.0 * per[0])
    toxic, ok = per[0][torch.tensor(y > 0)], per[0][torch.tensor(y == 0)]
    # held-out texts; measured -0.64 (toxic) vs -0.35 (ok): the head is soft, so the margin is modest
    assert toxic.mean() < ok.mean() - 0.2, (float(toxic.mean()), float(ok.mean()))
