"""The real bundled model (SmolLM2-135M-Instruct) exported to q8_0 GGUF: loads in llama.cpp, keeps the tokenizer
and chat template, and stays close to its f16 export (perplexity, top-1 agreement). ~1 min."""

import pytest
from gguf import GGUFReader

from llmkit.compress import compress
from llmkit.config import CompressConfig
from llmkit.engines import GenParams, load_engine
from llmkit.models import resolve_model

pytestmark = pytest.mark.integration


def test_bundled_model_to_q8_0(tmp_path):
    r = compress(CompressConfig(quantize="q8_0", prompts=2, gen_tokens=16), "smollm2-135m-instruct",
                 tmp_path / "q8", threads=1, progress=False)
    m = r["metrics"]
    assert m["tensor_types"] == {"Q8_0": 211, "F32": 61}  # every matrix, the tied embedding too; norms stay f32
    assert 0.5 < m["size_vs_f16"] < 0.56  # 8.5 bits per weight against 16
    # measured here: +1.26% on the fixed text (the bundled weights were Q4_1, so the f16 reference sits on a 4-bit
    # grid that q8_0's blocks do not share); the example adapter's export meets the goal (+0.3%, bench/compress.py).
    # This bound catches a broken export (wrong scales, permutation, tokenizer), not the goal.
    assert abs(m["ppl_increase_pct"]) <= 2.0 and m["top1_agreement"] > 0.95
    fields = GGUFReader(r["gguf"]).fields
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert "You are a helpful AI assistant named SmolLM" in fields["tokenizer.chat_template"].contents()
    engine = load_engine("llamacpp", resolve_model(str(tmp_path / "q8")), n_ctx=512, n_threads=1)
    reply = "".join(engine.chat([{"role": "user", "content": "What is the capital of France?"}], GenParams(max_tokens=16)))
    engine.close()
    # a real reply through llama.cpp; not checked for "Paris": the bundled Q4_1 weights and their q8_0 re-export
    # both start "L'Étoile…" greedily (a near-tie at the first token), while their f16 export answers "Paris"
    assert len(reply.split()) >= 3
