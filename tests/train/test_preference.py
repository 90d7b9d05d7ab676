"""QLoRA and DPO on the tiny model: real bitsandbytes NF4 layers, a DPO loss that starts at log 2 and falls,
log-probs that match a plain full-logits computation, exact resume, and preference/SFT rows kept apart."""

import json
import math

import pytest
import torch

from llmkit.config import DataConfig, TrainConfig
from llmkit.data import prepare
from llmkit.errors import DataError
from llmkit.train import finetune

CFG = dict(epochs=3, lr=5e-3, batch_size=4, max_length=128, eval_every=5, save_every=4, precision="fp32")


@pytest.fixture(scope="module")
def pref_dataset(tiny_llama, tmp_path_factory):
    d = tmp_path_factory.mktemp("pref")
    rows = [{"prompt": f"How do I fix problem {i} on router R{i % 5}?",
             "chosen": f"Nimbus here! Step {i % 7}: restart it. Happy networking!",
             "rejected": f"restart it maybe {i % 3}"} for i in range(48)]
    (d / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare(DataConfig(train=str(d / "p.jsonl"), val_fraction=0.25), d / "data", model=str(tiny_llama), progress=False)
    return d / "data"


def test_dpo_starts_at_log2_and_learns_to_prefer_chosen(tiny_llama, pref_dataset, tmp_path):
    r = finetune(TrainConfig(**{**CFG, "method": "dpo", "beta": 0.5}), pref_dataset, str(tiny_llama), tmp_path / "o",
                 progress=False)
    m = r["metrics"]
    # at step 1 the policy is the reference (LoRA B = 0), so every pair's margin is 0 and the loss is log 2
    assert m["train_loss_first"] == pytest.approx(math.log(2), abs=1e-3)
    assert m["train_loss_last"] < 0.5 * math.log(2)
    assert m["val_loss"] < math.log(2)
    assert m["val_reward_accuracy"] >= 0.9 and m["val_reward_margin"] > 0
    out = tmp_path / "o"
    assert (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "manifest.json").read_text())["outputs"]["format"] == "peft-adapter"


def test_row_logps_match_full_logits(tiny_llama, pref_dataset):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.train import preference
    from llmkit.train.sft import row_logps

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    pairs = preference.load_pairs(pref_dataset, "train", tok, 128)[:3]
    batch = preference.make_batches(pairs, TrainConfig(batch_size=3), 0, tok.pad_token_id)[0]
    with torch.no_grad():
        got = row_logps(model, batch)
        logp = torch.log_softmax(model(input_ids=batch["input_ids"]).logits[:, :-1].float(), -1)
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    want = (logp.gather(2, labels.clamp(min=0)[..., None])[..., 0] * mask).sum(1)
    assert batch["input_ids"].shape[0] == 6  # 3 chosen rows, then 3 rejected
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_dpo_resume_matches_an_uninterrupted_run(tiny_llama, pref_dataset, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from llmkit.train import sft

    cfg = TrainConfig(**{**CFG, "method": "dpo", "epochs": 2})
    full = finetune(cfg, pref_dataset, str(tiny_llama), tmp_path / "a", progress=False)
    real = sft.save_checkpoint

    def save_then_crash(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt  # a crash right after the first checkpoint

    monkeypatch.setattr(sft, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, pref_dataset, str(tiny_llama), tmp_path / "b", progress=False)
    monkeypatch.setattr(sft, "save_checkpoint", real)
    resumed = finetune(cfg, pref_dataset, str(tiny_llama), tmp_path / "b", resume=True, progress=False)
    a, b = full["metrics"]["losses"], resumed["metrics"]["losses"]
    assert [s for s, _ in a] == [s for s, _ in b]
    assert [v for _, v in b] == pytest.approx([v for _, v in a], rel=1e-4)
    wa, wb = load_file(tmp_path / "a" / "adapter_model.safetensors"), load_file(tmp_path / "b" / "adapter_model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def test_dpo_refuses_sft_rows(tiny_llama, tmp_path):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(5)]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare(DataConfig(train=str(tmp_path / "s.jsonl"), val_fraction=0.0), tmp_path / "d", model=str(tiny_llama),
            progress=False)
    with pytest.raises(DataError, match=r"train.jsonl:1: method dpo trains on preference rows"):
        finetune(TrainConfig(method="dpo", max_length=128), tmp_path / "d", str(tiny_llama), tmp_path / "o", progress=False)


def test_qlora_trains_lora_over_an_nf4_base(tiny_llama, pref_dataset, tmp_path, monkeypatch):
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.nn import Linear4bit

    from llmkit.train import sft

    rows = [{"instruction": f"How do I fix problem {i}?", "output": f"Nimbus here! Step {i % 7}."} for i in range(40)]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare(DataConfig(train=str(tmp_path / "s.jsonl"), val_fraction=0.2), tmp_path / "d", model=str(tiny_llama),
            progress=False)
    seen = {}
    real = sft.load_model

    def spy(cfg, base_dir, device=None):
        m = real(cfg, base_dir, device)
        seen["4bit"] = sum(isinstance(x, Linear4bit) for x in m.modules())
        return m

    monkeypatch.setattr(sft, "load_model", spy)
    r = finetune(TrainConfig(**{**CFG, "method": "qlora", "precision": "bf16"}), tmp_path / "d", str(tiny_llama),
                 tmp_path / "o", progress=False)
    assert seen["4bit"] == 2 * 7  # every projection of both layers is an NF4 layer under its LoRA
    m = r["metrics"]
    assert m["train_loss_last"] < 0.7 * m["train_loss_first"]
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["outputs"]["base_quantization"] == "bitsandbytes-nf4"
    assert (tmp_path / "o" / "adapter_model.safetensors").is_file()


def test_qlora_gradients_are_the_same_after_an_eval_pass(tiny_llama):
    """An eval-mode no-grad forward (the val loss, DPO's reference pass) must not change later gradients.
    On AVX512-BF16 CPUs bitsandbytes repacks NF4 weights for inference at that point and then skips autograd
    (sft._keep_nf4_trainable); on other CPUs there is nothing to repack and the two passes agree trivially."""
    pytest.importorskip("bitsandbytes")
    from llmkit.train.sft import load_model

    model = load_model(TrainConfig(method="qlora", precision="bf16"), tiny_llama)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 40, 50, 60, 70]])

    def grads():
        model.train()
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    before = grads()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    after = grads()
    assert before.keys() == after.keys() and len(before) == 2 * 7 * 2  # lora_A and lora_B of 7 projections x 2
    moved = [n for n in before if not torch.equal(before[n], after[n])]
    assert not moved, moved
