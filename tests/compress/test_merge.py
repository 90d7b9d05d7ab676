"""Merging a LoRA adapter: the merged model computes what base + adapter compute, the GGUF export carries the
adapter, and a foreign base, misfitting shapes and pickle checkpoints are refused."""

import numpy as np
import pytest
from conftest import build_tiny_llama
from lora_helpers import QUICK, hf_logits, llama_logits, make_adapter, make_train_artifact

from llmkit.compress import compress
from llmkit.compress.merge import merge
from llmkit.config import CompressConfig
from llmkit.errors import ConfigError, UnsupportedModel

IDS = [1, 40, 41, 42, 100, 200, 7, 8, 9, 250, 2, 31]


@pytest.fixture(scope="module")
def adapter(tiny_llama, tmp_path_factory):
    return make_train_artifact(tiny_llama, tmp_path_factory.mktemp("adapter") / "train")


@pytest.fixture(scope="module")
def peft_model(tiny_llama, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), str(adapter)).eval()


def test_merged_model_equals_base_plus_adapter(tiny_llama, adapter, peft_model, tmp_path):
    from transformers import AutoModelForCausalLM

    merged = merge(adapter, tiny_llama, tmp_path / "merged")
    got = hf_logits(AutoModelForCausalLM.from_pretrained(merged).eval(), IDS)
    want = hf_logits(peft_model, IDS)
    with peft_model.disable_adapter():
        base = hf_logits(peft_model, IDS)
    assert np.abs(want - base).max() > 0.1  # the adapter changes the model, so the comparison means something
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert (merged / "tokenizer.json").is_file()


def test_gguf_export_of_an_adapter_computes_base_plus_adapter(adapter, peft_model, tmp_path):
    r = compress(CompressConfig(quantize="f16", **QUICK), str(adapter), tmp_path / "e", threads=1, progress=False)
    cpp = llama_logits(r["gguf"], IDS)
    want = hf_logits(peft_model, IDS)
    assert np.abs(cpp - want).max() < 0.02 * np.abs(want).max()
    assert r["metrics"]["tokenizer"] == "built from tokenizer.json"  # this base has no GGUF origin


def test_a_base_other_than_the_recorded_one_is_refused_with_both_names(tiny_llama, adapter, tmp_path):
    other = build_tiny_llama(tmp_path / "other", seed=1)  # same shapes, other weights: only the hash tells
    with pytest.raises(UnsupportedModel, match="refusing to merge") as e:
        compress(CompressConfig(), str(other), tmp_path / "out", adapter=str(adapter), progress=False)
    assert f"trained on '{tiny_llama}'" in str(e.value) and f"the base given, '{other}'" in str(e.value)
    assert not (tmp_path / "out").exists()
    # the recorded base itself is accepted through --adapter too
    r = compress(CompressConfig(quantize="q8_0", **QUICK), str(tiny_llama), tmp_path / "ok", adapter=str(adapter),
                 threads=1, progress=False)
    assert r["status"] == "ran"


def test_an_adapter_whose_shapes_do_not_fit_is_refused_with_both_names(tiny_llama, tiny_wide, tmp_path):
    plain = make_adapter(tiny_llama, tmp_path / "plain")  # no manifest: the shape check is what catches it
    with pytest.raises(UnsupportedModel, match="does not fit the base") as e:
        compress(CompressConfig(), str(tiny_wide), tmp_path / "out", adapter=str(plain), progress=False)
    assert f"trained on '{tiny_llama}'" in str(e.value) and f"'{tiny_wide}'" in str(e.value)
    assert "in_features" in str(e.value)


def test_pickle_adapters_are_refused_unless_explicitly_allowed(tiny_llama, peft_model, tmp_path):
    pickled = make_adapter(tiny_llama, tmp_path / "pickled", safetensors=False)
    assert (pickled / "adapter_model.bin").is_file() and not list(pickled.glob("*.safetensors"))
    with pytest.raises(UnsupportedModel, match=r"pickle checkpoint \(adapter_model.bin\).*--unsafe-allow-pickle"):
        compress(CompressConfig(), str(pickled), tmp_path / "out", progress=False)
    r = compress(CompressConfig(quantize="f16", allow_pickle=True, **QUICK), str(pickled), tmp_path / "ok", threads=1,
                 progress=False)
    assert r["status"] == "ran"


def test_pickle_base_is_refused_unless_explicitly_allowed(tiny_llama, tmp_path):
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tmp_path / "pickle-base"
    base.mkdir()
    shutil.copy(tiny_llama / "config.json", base)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(base)
    # transformers 5 writes safetensors even when asked for pickle; write the old format by hand
    torch.save(AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict(), base / "pytorch_model.bin")
    with pytest.raises(UnsupportedModel, match=r"pickle checkpoint \(pytorch_model.bin\)"):
        compress(CompressConfig(), str(base), tmp_path / "out", progress=False)
    r = compress(CompressConfig(quantize="f16", allow_pickle=True, **QUICK), str(base), tmp_path / "ok", threads=1,
                 progress=False)
    ids = [1, 40, 41, 42]
    want = hf_logits(AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), ids)
    assert np.abs(llama_logits(r["gguf"], ids) - want).max() < 0.02 * np.abs(want).max()


def test_an_adapter_without_merge_is_a_config_error(adapter, tmp_path):
    with pytest.raises(ConfigError, match="compress.merge"):
        compress(CompressConfig(merge=False), str(adapter), tmp_path / "out", progress=False)

