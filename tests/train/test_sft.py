"""The train stage on the tiny model: loss falls, packing is exact, kill -9 + --resume matches, bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch

from llmkit.config import DataConfig, TrainConfig
from llmkit.data import prepare
from llmkit.errors import ConfigError, DataError, ModelNotFound
from llmkit.train import finetune
from llmkit.train.sft import loss_sum, make_batches


@pytest.fixture(scope="module")
def dataset(tiny_llama, tmp_path_factory):
    d = tmp_path_factory.mktemp("ds")
    rows = [{"instruction": f"How do I fix problem {i} on router R{i % 5}?",
             "output": f"Nimbus here! Step {i % 7}: restart it. Happy networking!"} for i in range(80)]
    (d / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare(DataConfig(train=str(d / "t.jsonl"), val_fraction=0.2), d / "data", model=str(tiny_llama), progress=False)
    return d / "data"


CFG = dict(epochs=2, lr=5e-3, batch_size=4, max_length=128, eval_every=10, save_every=5, precision="fp32")


def test_lora_loss_falls_and_writes_an_adapter(tiny_llama, dataset, tmp_path):
    r = finetune(TrainConfig(**CFG), dataset, str(tiny_llama), tmp_path / "out", progress=False)
    m = r["metrics"]
    assert m["train_loss_last"] < 0.7 * m["train_loss_first"]
    assert m["val_losses"][-1][1] < m["val_losses"][0][1]
    assert m["precision"] == "fp32"  # the precision actually used is recorded (auto resolves per CPU)
    out = tmp_path / "out"
    assert {"adapter_config.json", "adapter_model.safetensors", "loss.png", "manifest.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_llama)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["data"]["artifact"] == "dataset"  # lineage: model → dataset → raw file
    assert not (tmp_path / "out.checkpoints").exists()
    # device is where, not what: naming the CPU that auto chose is the same artifact
    again = finetune(TrainConfig(**CFG, device="cpu"), dataset, str(tiny_llama), tmp_path / "out", progress=False)
    assert again["status"] == "skipped"


@pytest.mark.parametrize("method", ["full", "lora"])
def test_bf16_and_full_run(tiny_llama, dataset, tmp_path, method):
    r = finetune(TrainConfig(**{**CFG, "precision": "bf16", "method": method}), dataset, str(tiny_llama),
                 tmp_path / "o", progress=False, max_steps=6)
    assert r["metrics"]["steps"] == 6 and r["metrics"]["train_loss_last"] < r["metrics"]["train_loss_first"]


def test_packed_loss_equals_separate_losses(tiny_llama, dataset):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.train.sft import load_examples

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    model.config.use_cache = False
    ex = load_examples(dataset, "train", tok, "lora", 128)[:6]
    packed = make_batches(ex, TrainConfig(batch_size=1, max_length=1000, packing=True), 0, tok.pad_token_id)
    single = make_batches(ex, TrainConfig(batch_size=1, max_length=1000, packing=False), 0, tok.pad_token_id)
    assert len(packed) == 1 and len(single) == 6
    with torch.no_grad():
        sp, np_ = loss_sum(model, packed[0])
        parts = [loss_sum(model, b) for b in single]
    assert np_ == sum(n for _, n in parts)
    assert abs(float(sp) - sum(float(s) for s, _ in parts)) < 1e-3 * float(sp)  # no attention across examples


def _train_cli(recipe, extra, env):
    return subprocess.run([sys.executable, "-m", "llmkit.cli", "train", "--recipe", str(recipe), *extra],
                          capture_output=True, text=True, env=env, timeout=600)


def test_kill_9_then_resume_matches_an_uninterrupted_run(tiny_llama, dataset, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: k\nmodel: {tiny_llama}\ntrain: {{epochs: 2, lr: 0.005, batch_size: 4, max_length: 128,"
                      f" eval_every: 100, save_every: 5, precision: fp32}}\n")
    env = {**os.environ}
    full = _train_cli(recipe, ["--data", str(dataset), "--out", str(tmp_path / "a")], env)
    assert full.returncode == 0, full.stderr
    killed = _train_cli(recipe, ["--data", str(dataset), "--out", str(tmp_path / "b")],
                        {**env, "LLMKIT_TEST_KILL_AT": "train.checkpoint:2"})
    assert killed.returncode == -9  # SIGKILL right after the step-10 checkpoint
    assert not (tmp_path / "b").exists() and (tmp_path / "b.checkpoints").is_dir()
    resumed = _train_cli(recipe, ["--data", str(dataset), "--out", str(tmp_path / "b"), "--resume"], env)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "a" / "manifest.json").read_text())["metrics"]["losses"]
    b = json.loads((tmp_path / "b" / "manifest.json").read_text())["metrics"]["losses"]
    assert len(a) == len(b) > 10
    for (sa, la), (sb, lb) in zip(a, b):
        assert sa == sb and abs(la - lb) <= 1e-4 * abs(la), (sa, la, lb)
    from safetensors.torch import load_file

    wa, wb = load_file(str(tmp_path / "a" / "adapter_model.safetensors")), load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wa)


def test_bad_input_is_refused_before_training(tiny_llama, dataset, tmp_path):
    pref = tmp_path / "pref"
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(5)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare(DataConfig(train=str(tmp_path / "p.jsonl"), val_fraction=0.0), pref, model=str(tiny_llama), progress=False)
    with pytest.raises(DataError, match=r"train.jsonl:1: preference rows .* are for method dpo"):
        finetune(TrainConfig(**CFG), pref, str(tiny_llama), tmp_path / "o", progress=False)
    with pytest.raises(ModelNotFound):
        finetune(TrainConfig(**CFG), dataset, "no-such-model", tmp_path / "o", progress=False)
    bad_target = TrainConfig(**CFG, lora={"target_modules": ["q_proj", "qkv"]})
    with pytest.raises(ConfigError, match=r"qkv not in the model; its linear modules are: .*down_proj"):
        finetune(bad_target, dataset, str(tiny_llama), tmp_path / "o", progress=False)
    with pytest.raises(ConfigError, match=r"max_length: 4096 is above the model's context length 256"):
        finetune(TrainConfig(**{**CFG, "max_length": 4096}), dataset, str(tiny_llama), tmp_path / "o", progress=False)
    if not torch.cuda.is_available():  # the CPU build this suite installs
        with pytest.raises(ConfigError, match=r"train.device: cuda, but this torch .* sees no CUDA device"):
            finetune(TrainConfig(**CFG, device="cuda"), dataset, str(tiny_llama), tmp_path / "o", progress=False)


def test_resume_refuses_a_checkpoint_of_another_config(tiny_llama, dataset, tmp_path, monkeypatch):
    from llmkit.train import sft

    calls = {"n": 0}
    real = sft.save_checkpoint

    def save_then_stop(*a, **k):
        real(*a, **k)
        calls["n"] += 1
        raise KeyboardInterrupt  # stands in for a crash right after the first checkpoint

    monkeypatch.setattr(sft, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        finetune(TrainConfig(**CFG), dataset, str(tiny_llama), tmp_path / "o", progress=False)
    monkeypatch.setattr(sft, "save_checkpoint", real)
    with pytest.raises(ConfigError, match="written for another config"):
        finetune(TrainConfig(**{**CFG, "lr": 1e-3}), dataset, str(tiny_llama), tmp_path / "o", resume=True,
                 progress=False)


def test_chat_with_the_trained_adapter(tiny_llama, dataset, tmp_path):
    from llmkit.engines import GenParams, load_engine
    from llmkit.models import resolve_model

    finetune(TrainConfig(**CFG), dataset, str(tiny_llama), tmp_path / "out", progress=False, max_steps=3)
    ref = resolve_model(str(tmp_path / "out"))
    assert ref.kind == "adapter"
    eng = load_engine("transformers", ref)
    assert "".join(eng.chat([{"role": "user", "content": "hi"}], GenParams(max_tokens=4))) is not None
    base = load_engine("transformers", resolve_model(str(tiny_llama)))
    ids = base.tokenizer("How do I fix it?", return_tensors="pt")["input_ids"]
    with torch.no_grad():  # the adapter changes the model's outputs
        assert not torch.allclose(eng.lm(ids).logits, base.lm(ids).logits)


def test_early_stopping_when_val_loss_stops_improving(tiny_llama, dataset, tmp_path, monkeypatch):
    # The rule under test is "stop after `early_stopping` evaluations without a new best", so the val losses are
    # scripted. (A real run tuned to overfit is no test of it: an lr of 3.0 left the tiny model on a plateau where
    # whether the loss still crept down by 1e-4 depended on the CPU's kernels, and it ran all 30 steps on AVX-512.)
    from llmkit.train import sft

    scripted = iter([3.0, 2.0, 2.5, 2.0, 2.6, 1.0, 1.0])  # new best at evals 1, 2; none at 3 and 4 -> stop
    monkeypatch.setattr(sft, "evaluate", lambda *a, **k: next(scripted))
    cfg = TrainConfig(**{**CFG, "eval_every": 2, "early_stopping": 2})
    r = finetune(cfg, dataset, str(tiny_llama), tmp_path / "o", progress=False, max_steps=30)
    assert [v for _, v in r["metrics"]["val_losses"]] == [3.0, 2.0, 2.5, 2.0]  # 2.0 again is no improvement
    assert r["metrics"]["steps"] == 8 and [s for s, _ in r["metrics"]["val_losses"]] == [2, 4, 6, 8]


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                    reason="no native bf16 kernels on this CPU (AVX2): bf16 is emulated; test_bf16_and_full_run covers it")
def test_auto_precision_is_native_bf16_here_and_tracks_fp32(tiny_llama, dataset, tmp_path):
    """On CPUs with oneDNN bf16 kernels (AVX-512 BF16 / AMX) `precision: auto` trains in bf16, on purpose:
    its losses follow the fp32 run's step by step (bf16 rounds weights and activations, not the method)."""
    runs = {p: finetune(TrainConfig(**{**CFG, "precision": p}), dataset, str(tiny_llama), tmp_path / p,
                        progress=False, max_steps=8)["metrics"] for p in ("auto", "fp32")}
    assert runs["auto"]["precision"] == "bf16"
    auto, fp32 = ([v for _, v in runs[p]["losses"]] for p in ("auto", "fp32"))
    assert all(abs(a - f) < 0.01 * f for a, f in zip(auto, fp32)), (auto, fp32)  # measured: < 0.001
    assert auto[-1] < 0.8 * auto[0]
