"""Many LoRA adapters on one base in the llama.cpp engine: two adapters trained to answer in different styles
run side by side in the same engine (and the same decode steps) as the plain base, each in its own style."""

import json

import pytest

from llmkit.config import DataConfig, TrainConfig
from llmkit.engines import GenParams
from llmkit.engines.llamacpp import LlamaCppEngine
from llmkit.models import resolve_model

STYLES = {"pirate": "Ahoy matey! Restart the router, arr.", "formal": "Dear customer, kindly restart the router."}


@pytest.fixture(scope="module")
def adapters(tiny_llama, tmp_path_factory):
    """Two real LoRA adapters trained on the tiny model by the train stage, exported to llama.cpp's format."""
    from llmkit.compress.lora_gguf import export_lora_gguf
    from llmkit.data import prepare
    from llmkit.train import finetune

    out = {}
    for style, reply in STYLES.items():
        d = tmp_path_factory.mktemp(style)
        rows = [{"instruction": f"Question {i}: my router R{i % 5} is slow.", "output": reply} for i in range(48)]
        (d / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        prepare(DataConfig(train=str(d / "t.jsonl"), val_fraction=0.1), d / "data", model=str(tiny_llama),
                progress=False)
        cfg = TrainConfig(epochs=4, lr=1e-2, batch_size=4, max_length=96, eval_every=100, save_every=100,
                          precision="fp32")
        finetune(cfg, d / "data", str(tiny_llama), d / "adapter", progress=False)
        out[style] = export_lora_gguf(d / "adapter", d / f"{style}.gguf")
    return out


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
