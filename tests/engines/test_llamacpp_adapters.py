"""Many LoRA adapters on one base in the llama.cpp engine: two adapters trained to answer in different styles
run side by side in the same engine (and the same decode steps) as the plain base, each in its own style."""

import pytest

from llmkit.engines import GenParams
from llmkit.engines.llamacpp import LlamaCppEngine
from llmkit.models import resolve_model


@pytest.fixture(scope="module")
def adapters(style_adapters, tiny_gguf):
    from llmkit.compress.lora_gguf import export_lora_gguf

    return {name: export_lora_gguf(folder, folder.parent / f"{name}.gguf", base=tiny_gguf)
            for name, folder in style_adapters.items()}


def test_two_adapters_and_the_base_answer_side_by_side(tiny_gguf, adapters):
    eng = LlamaCppEngine(resolve_model(str(tiny_gguf)), n_ctx=256, n_threads=1, parallel=4)
    try:
        for name, path in adapters.items():
            eng.load_adapter(name, path)
        prompt = eng.format_chat([{"role": "user", "content": "Question 99: my router R2 is slow."}])
        params = GenParams(max_tokens=24)
        gens = {name: eng.submit(prompt, params, adapter=name) for name in adapters}
        gens["base"] = eng.submit(prompt, params)  # all three in flight together
        replies = {name: g.text() for name, g in gens.items()}
        assert replies["pirate"].startswith("Ahoy matey!"), replies
        assert replies["formal"].startswith("Dear customer"), replies
        assert not replies["base"].startswith(("Ahoy", "Dear")), replies
        # the same prompt on the same adapter again: the adapter, not a cached prefix, decides the answer
        assert eng.submit(prompt, params, adapter="pirate").text() == replies["pirate"]
        eng.unload_adapter("pirate")
        with pytest.raises(Exception, match="not loaded"):
            eng.submit(prompt, params, adapter="pirate")
        assert eng.submit(prompt, params).text() == replies["base"]
    finally:
        eng.close()
