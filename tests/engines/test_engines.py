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
