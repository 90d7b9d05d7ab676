"""The real bundled model (SmolLM2-135M-Instruct Q4_1) through both engines. Slower: ~1 min in all."""

import subprocess
import sys

import pytest

from llmkit.engines import GenParams, load_engine
from llmkit.models import hf_folder, resolve_model

pytestmark = pytest.mark.integration

# The two engines compute differently: llama.cpp quantizes activations to 8 bits for its Q4_1 dot products,
# transformers runs the dequantized weights in float32. Where two logits are within ~0.3 they pick different
# tokens (bench/engine_agreement.py: 14 of 20 prompts identical for 8 tokens, 96% teacher-forced agreement).
# These three prompts have no such near-tie in their first 8 tokens; a broken conversion (q/k order, norms,
# tokenizer) diverges on the first token.
PROMPTS = [
    "def fibonacci(n):",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
]


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    import os

    os.environ["LLMKIT_HOME"] = str(tmp_path_factory.mktemp("home"))  # one conversion for the module
    ref = resolve_model("smollm2-135m-instruct")
    hf_folder(ref, progress=False)
    cpp = load_engine("llamacpp", ref, n_ctx=1024, n_threads=2)
    hf = load_engine("transformers", ref, n_threads=2)
    yield cpp, hf
    cpp.close()


def test_tokenizers_agree(engines):
    cpp, hf = engines
    for text in PROMPTS + ["In 2024, 12,345 people paid $9.99 — naïve café 東京", "<|im_start|>user\nhi<|im_end|>"]:
        assert cpp.tokenize(text) == hf.tokenize(text), text


def test_greedy_continuations_agree_for_8_tokens(engines):
    cpp, hf = engines
    p = GenParams(max_tokens=8)
    for prompt in PROMPTS:
        a = "".join(cpp.complete(prompt, p))
        b = "".join(hf.complete(prompt, p))
        assert a == b, (prompt, a, b)


def test_chat_replies_are_non_empty(engines):
    for eng in engines:
        reply = "".join(eng.chat([{"role": "user", "content": "Say hello."}], GenParams(max_tokens=16)))
        assert reply.strip(), eng.name


def test_cli_chat_mentions_paris_on_transformers(engines):
    p = subprocess.run([sys.executable, "-m", "llmkit.cli", "chat", "smollm2-135m-instruct", "--engine",
                        "transformers", "--prompt", "What is the capital of France?", "--max-tokens", "24"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "Paris" in p.stdout
