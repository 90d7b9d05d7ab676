"""How closely the llama.cpp engine (Q4_1 GGUF kernels) and the transformers engine (the same weights
dequantized to float32) agree on greedy decoding of the bundled model.

    .venv/bin/python bench/engine_agreement.py

For each prompt: llama.cpp's 8-token greedy continuation, whether transformers' is identical, and the
teacher-forced agreement (transformers' argmax at each of llama.cpp's positions). Divergences come from
llama.cpp quantizing activations to 8 bits for its Q4_1 dot products: where the top two logits are close,
the two engines pick different tokens.
"""

import torch

from llmkit.engines import GenParams, load_engine
from llmkit.models import resolve_model

PROMPTS = [
    "The capital of France is", "def fibonacci(n):", "Water boils at a temperature of",
    "Once upon a time", "The largest planet in the solar system is", "import numpy as np\n",
    "Photosynthesis is the process", "The three primary colors are", "To make a cup of tea,",
    "The French Revolution began in", "A prime number is", "The speed of light is",
    "My favorite food is", "SELECT * FROM users WHERE", "The human heart has",
    "In machine learning, overfitting", "The Great Wall of China", "Shakespeare wrote",
    "The chemical symbol for gold is", "Mount Everest is located in",
]


def main() -> None:
    ref = resolve_model("smollm2-135m-instruct")
    cpp = load_engine("llamacpp", ref, n_ctx=512, n_threads=2)
    hf = load_engine("transformers", ref, n_threads=2)
    exact, forced, total, gaps = 0, 0, 0, []
    for prompt in PROMPTS:
        ids = cpp.tokenize(prompt)
        text = "".join(cpp.complete(prompt, GenParams(max_tokens=8)))
        cont = cpp.tokenize(prompt + text)[len(ids):][:8]
        with torch.no_grad():
            logits = hf.lm(torch.tensor([ids + cont])).logits[0, len(ids) - 1: len(ids) + len(cont) - 1]
        top = logits.argmax(-1).tolist()
        agree = [a == b for a, b in zip(top, cont)]
        first_diff = agree.index(False) if False in agree else None
        if first_diff is not None:
            row = logits[first_diff]
            gaps.append(float(row.max() - row[cont[first_diff]]))
        exact += first_diff is None
        forced += sum(agree)
        total += len(agree)
        print(f"{'same ' if first_diff is None else f'diff@{first_diff}'}  {prompt!r} → {text!r}")
    print(f"\n8-token greedy identical: {exact}/{len(PROMPTS)} prompts; teacher-forced top-1 agreement "
          f"{forced}/{total} = {forced / total:.1%}; logit gap at first divergence (fp32 view): "
          f"{', '.join(f'{g:.2f}' for g in gaps) or '-'}")


if __name__ == "__main__":
    main()
