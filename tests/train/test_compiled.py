"""train.compile: the compiled layers give eager's loss and gradients, a compiled run trains like an eager one, a
failed compile falls back to eager training (and says so), and `auto` decides per run."""

import json

import pytest
import torch

from llmkit.config import DataConfig, TrainConfig
from llmkit.train import compiled, fast, finetune
from llmkit.train.sft import load_model, loss_sum, make_batches, tensors


@pytest.fixture(scope="module")
def dataset(tiny_llama, tmp_path_factory):
    d = tmp_path_factory.mktemp("compileds")
    rows = [{"instruction": f"How do I reset router R{i}?", "output": f"Hold the button {i % 9} seconds."}
            for i in range(40)]
    (d / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from llmkit.data import prepare

    prepare(DataConfig(train=str(d / "t.jsonl"), val_fraction=0.2, dedupe="none"), d / "data", model=str(tiny_llama),
            progress=False)
    return d / "data"


def _loss_and_grads(model, batch, bf16):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        s, n = loss_sum(model, tensors(batch))
        (s / n).backward()
    return float(s), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_layers_give_the_eager_loss_and_gradients(tiny_llama, dataset, precision):
    from transformers import AutoTokenizer

    from llmkit.train.sft import load_examples

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ex = load_examples(dataset, "train", tok, "lora", 128)
    batches = make_batches(ex, TrainConfig(batch_size=2, max_length=128), 0, tok.pad_token_id)
    other = next(b for b in batches if b["input_ids"].shape != batches[0]["input_ids"].shape)
    batches = [batches[0], other]  # two packed lengths: dynamic shapes, no failure on the second
    cfg = TrainConfig(method="lora", precision=precision, lora={"r": 8, "alpha": 16})
    torch.manual_seed(0)
    model = load_model(cfg, tiny_llama)
    with torch.no_grad():  # peft starts lora_B at zero; give it weights so its gradient path is exercised
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    assert fast.use_packed_attention(model) and fast.use_fast_lora(model) == 14
    bf16 = precision == "bf16"
    eager = [_loss_and_grads(model, b, bf16) for b in batches[:2]]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        assert compiled.compile_layers(model) == 2
        comp = [_loss_and_grads(model, b, bf16) for b in batches[:2]]
        frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    finally:
        compiled.uncompile(model)
    assert frames > 0  # dynamo really built graphs (a silent eager run would leave this at 0)
    tol = 2e-2 if bf16 else 1e-4  # bf16: inductor keeps fused intermediates in fp32, eager rounds each op to bf16
    for (le, ge), (lc, gc) in zip(eager, comp):
        assert abs(lc - le) <= tol * abs(le), (lc, le)
        for k in ge:
            err = float((gc[k] - ge[k]).norm() / ge[k].norm().clamp_min(1e-12))
            assert err <= 5 * tol, (k, err)


def test_a_compiled_run_trains_like_an_eager_one(tiny_llama, dataset, tmp_path):
    torch._dynamo.reset()
    base = dict(epochs=1, lr=5e-3, batch_size=2, max_length=128, eval_every=3, save_every=100, precision="fp32")
    runs = {c: finetune(TrainConfig(**base, compile=c), dataset, str(tiny_llama), tmp_path / c, progress=False,
                        max_steps=6)["metrics"] for c in ("off", "on")}
    assert runs["on"]["compile"] == "on" and runs["off"]["compile"] == "off"
    assert runs["on"]["compile_seconds"] > 0
    on, off = ([v for _, v in runs[c]["losses"]] for c in ("on", "off"))
    assert len(on) == len(off) == 6
    assert all(abs(a - b) <= 1e-3 * b for a, b in zip(on, off)), (on, off)
    assert abs(runs["on"]["val_loss"] - runs["off"]["val_loss"]) <= 1e-3 * runs["off"]["val_loss"]
    # what is saved is the plain adapter: the layers are uncompiled before saving
    assert (tmp_path / "on" / "adapter_model.safetensors").is_file()


def test_a_failed_compile_says_so_and_trains_eagerly(tiny_llama, dataset, tmp_path, monkeypatch, capsys):
    base = dict(epochs=1, lr=5e-3, batch_size=2, max_length=128, eval_every=100, save_every=100, precision="fp32")
    eager = finetune(TrainConfig(**base, compile="off"), dataset, str(tiny_llama), tmp_path / "e", progress=False,
                     max_steps=4)["metrics"]

    def broken(model):  # stands in for inductor failing (no C++ compiler, an op it cannot lower)
        raise RuntimeError("inductor: no working C++ compiler")

    monkeypatch.setattr(compiled, "compile_layers", broken)
    r = finetune(TrainConfig(**base, compile="on"), dataset, str(tiny_llama), tmp_path / "f", progress=False,
                 max_steps=4)["metrics"]
    assert r["compile"] == "failed" and "no working C++ compiler" in r["compile_error"]
    assert "torch.compile failed" in capsys.readouterr().err
    # the warm-up left no gradient and no RNG draw behind: the eager run's losses, exactly
    assert [v for _, v in r["losses"]] == [v for _, v in eager["losses"]]


def test_auto_compiles_only_long_bf16_runs(monkeypatch):
    monkeypatch.setattr(compiled, "cxx_compiler", lambda: "/usr/bin/g++")
    long = compiled.AUTO_MIN_TOKENS
    assert compiled.wanted("auto", "lora", "bf16", long) == (True, "auto: on")
    assert not compiled.wanted("auto", "lora", "bf16", long - 1)[0]
    assert not compiled.wanted("auto", "lora", "fp32", long)[0]
    assert not compiled.wanted("auto", "qlora", "bf16", long)[0]
    assert compiled.wanted("on", "lora", "fp32", 1)[0] and not compiled.wanted("off", "lora", "bf16", long)[0]
    monkeypatch.setattr(compiled, "cxx_compiler", lambda: None)
    assert compiled.wanted("auto", "lora", "bf16", long) == (False, "auto: off, no C++ compiler for inductor")
