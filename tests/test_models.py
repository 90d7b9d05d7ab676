import shutil

import pytest

from llmkit import models
from llmkit.errors import ModelNotFound, UnsupportedModel
from llmkit.models import REGISTRY, hf_folder, resolve_model


def test_registry_name_resolves_to_the_bundled_gguf():
    ref = resolve_model("smollm2-135m-instruct")
    assert ref.kind == "gguf" and ref.source == "registry"
    assert ref.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and ref.path.stat().st_size > 90e6


def test_local_hf_folder_gguf_file_and_folder_with_one_gguf(tiny_llama, tiny_gguf):
    assert resolve_model(str(tiny_llama)).kind == "hf"
    assert resolve_model(str(tiny_gguf)).kind == "gguf"
    ref = resolve_model(str(tiny_gguf.parent))
    assert ref.kind == "gguf" and ref.path == tiny_gguf


def test_unknown_name_lists_what_is_known():
    with pytest.raises(ModelNotFound, match="smollm2-135m-instruct"):
        resolve_model("no-such-model")


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(UnsupportedModel, match="PEFT adapter with no base_model_name_or_path"):
        resolve_model(str(tmp_path))
    (tmp_path / "adapter_config.json").write_text('{"base_model_name_or_path": "smollm2-135m-instruct"}')
    ref = resolve_model(str(tmp_path))
    assert ref.kind == "adapter" and ref.base == "smollm2-135m-instruct"
    with pytest.raises(UnsupportedModel, match="PEFT adapter on 'smollm2-135m-instruct'"):
        hf_folder(ref)
    (tmp_path / "adapter_config.json").unlink()
    with pytest.raises(UnsupportedModel, match="expected config.json or exactly one .gguf"):
        resolve_model(str(tmp_path))


def test_hub_id_loads_from_the_local_hf_cache_offline(tiny_llama, tmp_path, monkeypatch):
    # The real hub path (snapshot_download), fed from a cache laid out the way huggingface_hub writes it.
    import huggingface_hub.constants as hc

    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    commit = "0" * 40
    shutil.copytree(tiny_llama, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = resolve_model("acme/tiny-llama")
    assert ref.source == "hub" and ref.kind == "hf" and (ref.path / "config.json").is_file()
    with pytest.raises(ModelNotFound, match="not in the local HF cache"):
        resolve_model("acme/not-cached")


def test_gguf_to_hf_roundtrip_is_exact(tiny_llama, tiny_gguf):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = hf_folder(resolve_model(str(tiny_gguf)), progress=False)
    a = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    b = AutoModelForCausalLM.from_pretrained(folder).eval()
    ta, tb = AutoTokenizer.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(folder)
    for text in ["In 2024 the fox, 12345!", "<|im_start|>user\nhi<|im_end|>\n"]:
        assert ta(text)["input_ids"] == tb(text)["input_ids"]
    msgs = [{"role": "user", "content": "hi"}]
    assert ta.apply_chat_template(msgs, tokenize=False) == tb.apply_chat_template(msgs, tokenize=False)
    ids = torch.tensor([ta("Paris is the capital of")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)  # F32 GGUF: the q/k un-permutation must be exact


def test_quantized_gguf_converts_close(tiny_llama, tmp_path):
    import torch
    from conftest import write_gguf
    from transformers import AutoModelForCausalLM

    g = write_gguf(tiny_llama, tmp_path / "q8.gguf", quant="Q8_0")
    b = AutoModelForCausalLM.from_pretrained(hf_folder(resolve_model(str(g)), progress=False))
    a = AutoModelForCausalLM.from_pretrained(tiny_llama)
    wa, wb = a.model.layers[0].self_attn.q_proj.weight, b.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(wa, wb) and torch.allclose(wa, wb, atol=wa.abs().max().item() / 100)


def test_second_conversion_is_a_cache_hit(tiny_gguf, monkeypatch):
    ref = resolve_model(str(tiny_gguf))
    assert models.cached_conversion(ref) is None
    first = hf_folder(ref, progress=False)
    monkeypatch.setattr(models, "convert_gguf", lambda *a, **k: pytest.fail("converted again"))
    assert hf_folder(ref) == first and models.cached_conversion(ref) == first
    assert first.is_relative_to(models.home())


def test_unsupported_gguf_architecture_names_the_supported(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "mamba")
    w.add_tensor("x.weight", __import__("numpy").zeros((4, 4), dtype="float32"))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(UnsupportedModel, match="architecture 'mamba'.*supported: llama"):
        hf_folder(resolve_model(str(tmp_path / "m.gguf")))


def test_describe_reads_gguf_metadata(tiny_gguf):
    info = models.describe(resolve_model(str(tiny_gguf)))
    assert info["architecture"] == "llama" and info["layers"] == 2 and info["chat_template"] is True
    assert "not converted yet" in info["hf_conversion"]
    assert set(REGISTRY) == {"smollm2-135m-instruct"}
