"""LoRA adapters as llama.cpp adapter GGUFs: llama.cpp with the adapter on the unmerged base computes what
transformers + PEFT compute, through the high-level and the low-level llama-cpp-python API; what llama.cpp cannot
compute is refused naming the file; a converted adapter is cached by content."""

import ctypes
from contextlib import closing

import numpy as np
import pytest
from lora_helpers import hf_logits, make_adapter

from llmkit.compress import lora_gguf
from llmkit.compress.lora_gguf import adapter_gguf, export_lora_gguf
from llmkit.errors import UnsupportedModel

IDS = [1, 40, 41, 42, 100, 200, 7, 8, 9, 250, 2, 31]
# f32 KV cache: llama.cpp's default f16 cache alone moves these logits by ~1e-3, which would hide a small error
TIGHT = 1e-4


def cpp_context(gguf, lora=None):
    import llama_cpp
    from llama_cpp import Llama

    return closing(Llama(model_path=str(gguf), lora_path=str(lora) if lora else None, n_ctx=64, n_threads=1,
                 n_threads_batch=1, logits_all=True, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32,
                 verbose=False))


def cpp_logits(llm, ids=IDS):
    """(T, V) logits of every position of `ids`, from an empty KV cache."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)])


def peft_logits(base, adapter, ids=IDS):
    """(with the adapter, without it) from transformers + PEFT."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval()
    want = hf_logits(model, ids)
    with model.disable_adapter():
        return want, hf_logits(model, ids)


@pytest.fixture(scope="module")
def adapter(tiny_llama, tmp_path_factory):
    return make_adapter(tiny_llama, tmp_path_factory.mktemp("lora") / "adapter")  # random non-zero B, 7 projections


def test_llama_cpp_with_the_adapter_gguf_computes_base_plus_adapter(tiny_llama, tiny_gguf, adapter, tmp_path):
    path = export_lora_gguf(adapter, tmp_path / "adapter.gguf")  # base from adapter_config.json: the HF folder
    assert path == tmp_path / "adapter.gguf" and [p.name for p in tmp_path.iterdir()] == ["adapter.gguf"]
    want, base = peft_logits(tiny_llama, adapter)
    assert np.abs(want - base).max() > 0.5  # the adapter changes the model, so the comparison means something
    with cpp_context(tiny_gguf, path) as llm:
        got = cpp_logits(llm)
    np.testing.assert_allclose(got, want, atol=TIGHT, rtol=0)


def test_the_file_is_llama_cpps_lora_format(adapter, tiny_gguf, tmp_path):
    from gguf import GGUFReader

    r = GGUFReader(str(export_lora_gguf(adapter, tmp_path / "a.gguf", base=tiny_gguf)))
    kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    assert kv["general.type"] == "adapter" and kv["adapter.type"] == "lora"
    assert kv["general.architecture"] == "llama" and kv["adapter.lora.alpha"] == 8.0  # r 4, alpha 8: PEFT's 2.0
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in r.tensors}  # ggml ne[] order
    assert len(shapes) == 2 * 7 * 2  # lora_a and lora_b of 7 projections in 2 layers
    assert shapes["blk.0.attn_q.weight.lora_a"] == (64, 4) and shapes["blk.0.attn_q.weight.lora_b"] == (4, 64)
    assert shapes["blk.1.ffn_down.weight.lora_a"] == (128, 4) and shapes["blk.1.attn_k.weight.lora_b"] == (4, 32)


def test_low_level_api_loads_adapters_once_and_switches_them_per_context(tiny_llama, tiny_gguf, adapter, tmp_path):
    """What the server does: one model, several adapters loaded on it, each request's context attaching one."""
    import llama_cpp

    other = make_adapter(tiny_llama, tmp_path / "other", seed=1)
    paths = [adapter_gguf(adapter, base=tiny_gguf), adapter_gguf(other, base=tiny_gguf)]
    with cpp_context(tiny_gguf, paths[0]) as llm:
        high_level = cpp_logits(llm)  # Llama(lora_path=...)
    want_other, base = peft_logits(tiny_llama, other)

    with cpp_context(tiny_gguf) as llm:
        loras = [llama_cpp.llama_adapter_lora_init(llm.model, str(p).encode()) for p in paths]
        assert all(loras)

        def attach(lora, scale: float = 1.0):
            if lora is None:  # detach every adapter
                assert llama_cpp.llama_set_adapters_lora(llm.ctx, None, 0, None) == 0
                return
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(lora)
            assert llama_cpp.llama_set_adapters_lora(llm.ctx, adapters, 1, (ctypes.c_float * 1)(scale)) == 0

        attach(loras[0])
        np.testing.assert_allclose(cpp_logits(llm), high_level, atol=1e-6, rtol=0)
        attach(loras[1])
        np.testing.assert_allclose(cpp_logits(llm), want_other, atol=TIGHT, rtol=0)
        attach(loras[1], 0.0)  # the scale multiplies alpha / r: 0 is the base
        np.testing.assert_allclose(cpp_logits(llm), base, atol=TIGHT, rtol=0)
        attach(None)
        np.testing.assert_allclose(cpp_logits(llm), base, atol=TIGHT, rtol=0)
        attach(loras[0])
        np.testing.assert_allclose(cpp_logits(llm), high_level, atol=1e-6, rtol=0)
        for lora in loras:
            llama_cpp.llama_adapter_lora_free(lora)


@pytest.mark.parametrize("lora", [{"use_rslora": True},
                                  {"rank_pattern": {"q_proj": 2}, "alpha_pattern": {"down_proj": 3, "k_proj": 16}}],
                         ids=["rslora", "patterns"])
def test_rslora_and_per_module_rank_and_alpha_get_peft_scaling(tiny_llama, tiny_gguf, tmp_path, lora):
    ad = make_adapter(tiny_llama, tmp_path / "ad", **lora)
    want, base = peft_logits(tiny_llama, ad)
    with cpp_context(tiny_gguf, export_lora_gguf(ad, tmp_path / "a.gguf")) as llm:
        got = cpp_logits(llm)
    assert np.abs(want - base).max() > 0.5
    np.testing.assert_allclose(got, want, atol=TIGHT, rtol=0)


def test_dora_is_refused_naming_the_file(tiny_llama, tmp_path):
    ad = make_adapter(tiny_llama, tmp_path / "dora", use_dora=True)
    with pytest.raises(UnsupportedModel, match="use_dora: DoRA") as e:
        export_lora_gguf(ad, tmp_path / "a.gguf")
    assert str(ad / "adapter_config.json") in str(e.value)
    assert not list(tmp_path.glob("*.gguf"))


def test_embedding_lora_is_refused_naming_the_tensor(tiny_llama, tmp_path):
    ad = make_adapter(tiny_llama, tmp_path / "emb", target_modules=["embed_tokens", "q_proj"])
    with pytest.raises(UnsupportedModel, match=r"lora_embedding_A: LoRA on the token embeddings") as e:
        export_lora_gguf(ad, tmp_path / "a.gguf")
    assert str(ad / "adapter_model.safetensors") in str(e.value)


def test_an_adapter_without_safetensors_weights_is_refused(tiny_llama, tmp_path):
    pickled = make_adapter(tiny_llama, tmp_path / "pickled", safetensors=False)
    with pytest.raises(UnsupportedModel, match=r"pickle checkpoint \(adapter_model.bin\)"):
        export_lora_gguf(pickled, tmp_path / "a.gguf")
    (pickled / "adapter_model.bin").unlink()
    with pytest.raises(UnsupportedModel, match=r"expected the adapter's weights in adapter_model.safetensors; found no"):
        adapter_gguf(pickled)


def test_a_second_adapter_gguf_is_a_cache_hit(adapter, tiny_gguf, llmkit_home, monkeypatch):
    first = adapter_gguf(adapter, base=tiny_gguf)
    assert first.is_relative_to(llmkit_home / "lora-gguf") and first.is_file()
    stat = first.stat()

    def no_export(*a, **kw):
        raise AssertionError("converted again")

    monkeypatch.setattr(lora_gguf, "export_lora_gguf", no_export)
    again = adapter_gguf(adapter, base=tiny_gguf)
    assert again == first and (again.stat().st_mtime_ns, again.stat().st_ino) == (stat.st_mtime_ns, stat.st_ino)
    assert adapter_gguf(adapter) == first  # the base from adapter_config.json has the same heads: same file
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary files left


def test_a_failed_write_leaves_nothing(adapter, tmp_path, monkeypatch):
    import gguf

    def disk_full(self, *a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        export_lora_gguf(adapter, tmp_path / "out" / "a.gguf")
    assert list((tmp_path / "out").iterdir()) == []
