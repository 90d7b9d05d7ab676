"""The real bundled model (SmolLM2-135M-Instruct) exported to q8_0 GGUF: loads in llama.cpp, keeps the tokenizer
and chat template, and stays within the q8_0 goal (perplexity +<= 0.5% against its f16 export, on 16 rows of the
example val set). ~1 min."""

import json
from pathlib import Path

import pytest
from gguf import GGUFReader

from llmkit.compress import compress
from llmkit.config import CompressConfig
from llmkit.engines import GenParams, load_engine
from llmkit.models import resolve_model

pytestmark = pytest.mark.integration
VAL = Path(__file__).resolve().parents[2] / "examples" / "support" / "val.jsonl"


def write_val(path: Path) -> None:
    """The example's val rows as chat messages: the rows the report's perplexity is measured on."""
    rows = [json.loads(line) for line in VAL.read_text().splitlines()]
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}) + "\n"
        for r in rows))


def test_bundled_model_to_q8_0(tmp_path):
    write_val(tmp_path / "val.jsonl")
    r = compress(CompressConfig(quantize="q8_0", eval_rows=16, prompts=2, gen_tokens=16), "smollm2-135m-instruct",
                 tmp_path / "q8", dataset=tmp_path / "val.jsonl", threads=1, progress=False)
    m = r["metrics"]
    assert m["eval"].endswith("val.jsonl: 16 rows, 1602 target tokens")
    assert m["tensor_types"] == {"Q8_0": 211, "F32": 61}  # every matrix, the tied embedding too; norms stay f32
    assert 0.5 < m["size_vs_f16"] < 0.56  # 8.5 bits per weight against 16
    assert abs(m["ppl_increase_pct"]) <= 0.5 and m["top1_agreement"] > 0.95
    fields = GGUFReader(r["gguf"]).fields
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert "You are a helpful AI assistant named SmolLM" in fields["tokenizer.chat_template"].contents()
    engine = load_engine("llamacpp", resolve_model(str(tmp_path / "q8")), n_ctx=512, n_threads=1)
    reply = "".join(engine.chat([{"role": "user", "content": "Say hello."}], GenParams(max_tokens=16)))
    # "What is the capital of France?" is a near-tie for this model (README, Engines): q8_0 answers "L'Étoile…"
    facts = "".join(engine.complete("The largest planet in the solar system is", GenParams(max_tokens=8)))
    engine.close()
    assert reply.strip() and "Jupiter" in facts


def test_bundled_model_to_int8_for_transformers(tmp_path):
    """int8 (optimum-quanto) in transformers: ~61% of bf16 (the bf16 embedding is a fifth of the model), within
    +1% perplexity of bf16 on 16 val rows; the transformers engine runs it and it still knows its facts."""
    write_val(tmp_path / "val.jsonl")
    r = compress(CompressConfig(quantize="int8", eval_rows=16, prompts=2, gen_tokens=16), "smollm2-135m-instruct",
                 tmp_path / "int8", dataset=tmp_path / "val.jsonl", threads=1, progress=False)
    m = r["metrics"]
    assert m["eval"].endswith("val.jsonl: 16 rows, 1602 target tokens")  # the same targets as the GGUF test's
    assert m["quantized_layers"] == 210 and 0.58 < m["size_vs_f16"] < 0.64
    assert abs(m["ppl_increase_pct"]) <= 1 and m["top1_agreement"] > 0.9
    engine = load_engine("transformers", resolve_model(r["model"]), n_threads=1)
    facts = "".join(engine.complete("The largest planet in the solar system is", GenParams(max_tokens=8)))
    engine.close()
    assert "Jupiter" in facts
