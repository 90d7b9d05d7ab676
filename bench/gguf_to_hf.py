"""GGUF → HF-format folder for the bundled model: transformers' own path vs llmkit's converter.

    .venv/bin/python bench/gguf_to_hf.py

transformers: `AutoModelForCausalLM/AutoTokenizer.from_pretrained(dir, gguf_file=...)` then `save_pretrained`
(after clearing `hf_quantizer` and `quantization_config`, which otherwise make it refuse). llmkit: one pass
with transformers' mmap header reader, gguf-py's numpy dequantization, and the tokenizer converter
(`llmkit.models.convert_gguf`). Each runs in a fresh process, imports excluded; then the two folders'
weights are compared. Check `uptime` first: a busy box lies.
"""

import json
import subprocess
import sys
import tempfile

CHILD = r'''
import json, sys, time
import transformers, torch  # imports before the clock
from pathlib import Path
from llmkit.models import resolve_model, convert_gguf
which, out = sys.argv[1], Path(sys.argv[2])
gguf = resolve_model("smollm2-135m-instruct").path
t0 = time.perf_counter()
if which == "transformers":
    from transformers import AutoModelForCausalLM, AutoTokenizer
    m = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    m.hf_quantizer = None
    if hasattr(m.config, "quantization_config"):
        del m.config.quantization_config
    m.save_pretrained(out)
    tok.save_pretrained(out)
else:
    convert_gguf(gguf, out, progress=False)
print(json.dumps({"seconds": time.perf_counter() - t0}))
'''


def main() -> None:
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    res = {}
    with tempfile.TemporaryDirectory() as d:
        for which in ("transformers", "llmkit"):
            p = subprocess.run([sys.executable, "-c", CHILD, which, f"{d}/{which}"], capture_output=True, text=True)
            if p.returncode:
                print(which, "failed:", p.stderr[-1500:])
                return
            res[which] = json.loads(p.stdout.strip().splitlines()[-1])["seconds"]
        from safetensors.numpy import load_file

        a = load_file(f"{d}/transformers/model.safetensors")
        b = load_file(f"{d}/llmkit/model.safetensors")
        common = sorted(set(a) & set(b))
        diff = max(float(abs(a[k].astype("float32") - b[k].astype("float32")).max()) for k in common)
        print(f"tensors: transformers {len(a)}, llmkit {len(b)}, compared {len(common)}; max |diff| {diff:.2e}")
    print(f"{'':13} {'seconds':>8}")
    for k, v in res.items():
        print(f"{k:13} {v:>8.1f}")
    print(f"llmkit is {res['transformers'] / res['llmkit']:.1f}x faster")


if __name__ == "__main__":
    main()
