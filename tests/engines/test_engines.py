import pytest

from llmkit.engines import ENGINES, GenParams, load_engine
from llmkit.errors import LlmkitError, UnsupportedModel
from llmkit.models import resolve_model


def test_engine_registry_is_a_plain_dict():
    assert list(ENGINES) == ["llamacpp", "transformers", "openai", "vllm"]
    with pytest.raises(LlmkitError, match="available: llamacpp, transformers, openai, vllm"):
        load_engine("vllm-typo", resolve_model("smollm2-135m-instruct"))


def test_transformers_engine_streams_on_a_tiny_model(tiny_llama):
    eng = load_engine("transformers", resolve_model(str(tiny_llama)))
    pieces = list(eng.chat([{"role": "user", "content": "hi"}], GenParams(max_tokens=8)))
    assert len(pieces) >= 1 and all(isinstance(p, str) for p in pieces)
    # greedy is deterministic
    again = list(eng.chat([{"role": "user", "content": "hi"}], GenParams(max_tokens=8)))
    assert "".join(pieces) == "".join(again)
    assert eng.tokenize("12") == [eng.tokenizer.convert_tokens_to_ids("1"), eng.tokenizer.convert_tokens_to_ids("2")]


def test_llamacpp_engine_loads_our_gguf_and_matches_its_tokenizer(tiny_llama, tiny_gguf):
    from transformers import AutoTokenizer

    eng = load_engine("llamacpp", resolve_model(str(tiny_gguf)), n_ctx=128)
    text = "In 2024 the fox, 12345!"
    assert eng.tokenize(text) == AutoTokenizer.from_pretrained(tiny_llama)(text)["input_ids"]
    out = "".join(eng.complete("Paris is", GenParams(max_tokens=4)))
    assert isinstance(out, str)
    eng.close()


def test_llamacpp_engine_refuses_an_hf_folder(tiny_llama):
    with pytest.raises(UnsupportedModel, match="--engine transformers"):
        load_engine("llamacpp", resolve_model(str(tiny_llama)))


def test_cpu_kernels_names_what_the_build_uses_and_what_the_cpu_has_beside_it():
    from llmkit.engines.llamacpp import cpu_kernels, cpu_kernels_line

    generic = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 0 | LLAMAFILE = 1 | REPACK = 1 |"
    epyc = {"avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512vbmi"}
    info = cpu_kernels(generic, epyc)
    assert info == {"uses": ["SSE3", "AVX", "AVX2", "F16C", "FMA", "LLAMAFILE", "REPACK"],
                    "unused": ["AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"]}
    assert "this CPU also has AVX512 AVX512_VBMI AVX512_VNNI AVX512_BF16, unused" in cpu_kernels_line(info)
    # a variant built for the CPU (llama.cpp's runtime dispatch) leaves nothing unused
    zen4 = generic.replace("AVX512 = 0", "AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1")
    assert cpu_kernels(zen4, epyc)["unused"] == []
    assert "unused" not in cpu_kernels_line(cpu_kernels(zen4, epyc))
    # the real library answers too (whatever this box is)
    assert "AVX2" in cpu_kernels()["uses"] or "NEON" in cpu_kernels()["uses"]
