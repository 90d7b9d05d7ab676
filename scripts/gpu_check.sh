#!/usr/bin/env bash
# The GPU path of issue 19, as one short script for a machine with an NVIDIA GPU (run from the repo root after
# `make setup`, or with LLMKIT_PY pointing at a Python that has llmkit installed):
#   1. vLLM in its own venv (it pins torch/transformers that cannot share llmkit's), serving the bundled model's
#      HF conversion, started by `llmkit serve --engine vllm` behind llmkit's gateway;
#   2. bench/serve_load.py-style load through the gateway (8 clients), and the same against vLLM directly;
#   3. one LoRA epoch of the example's data in bf16 on the GPU (`train.device: cuda`; the manifest records the
#      device); FSDP/ZeRO on GPUs go through docs/scale.md's configs.
# Prints the figures with nvidia-smi's GPU line, `uptime` and the CPU flags. Every step has a time limit.
#
#   scripts/gpu_check.sh [OUT_DIR]          # default OUT_DIR: ${OUT:-/tmp/llmkit-gpu-check}
#
# Nothing here runs on the CPU boxes; it was written for the `device` machine and has not run yet unless a note
# says so.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/llmkit-gpu-check}}
PY=${LLMKIT_PY:-.venv/bin/python}
VLLM_VENV=${VLLM_VENV:-$OUT/vllm-venv}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1

echo "== machine"; date -u; uptime; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx|amx)' | tr '\n' ' '; echo
export HF_HUB_OFFLINE=1 LLMKIT_HOME=${LLMKIT_HOME:-$OUT/home}

echo "== torch sees the GPU"
"$PY" -c "import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0))"

echo "== vLLM in its own venv ($VLLM_VENV)"
if [ ! -x "$VLLM_VENV/bin/python" ]; then
    python3 -m venv "$VLLM_VENV"
    timeout 1200 "$VLLM_VENV/bin/pip" install -q vllm
fi
"$VLLM_VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__)"

echo "== the bundled model's HF conversion"
HF=$("$PY" -c "from llmkit.models import resolve_model, hf_folder; print(hf_folder(resolve_model('smollm2-135m-instruct')))")
echo "$HF"

echo "== llmkit's gateway in front of vllm serve (started by --engine vllm)"
PORT=${PORT:-8765}
LLMKIT_VLLM_ARGS="--dtype bfloat16 --gpu-memory-utilization 0.5" \
    timeout 1800 "$PY" -m llmkit.cli serve --engine vllm --vllm-python "$VLLM_VENV/bin/python" \
    --model "support=$HF" --host 127.0.0.1 --port "$PORT" > "$OUT/gateway.log" 2>&1 &
GW=$!
trap 'kill $GW 2>/dev/null || true' EXIT
for _ in $(seq 900); do
    curl -sf "http://127.0.0.1:$PORT/v1/models" > /dev/null && break
    kill -0 $GW 2>/dev/null || { tail -30 "$OUT/gateway.log"; exit 1; }
    sleep 1
done
curl -sf "http://127.0.0.1:$PORT/v1/chat/completions" -H 'content-type: application/json' \
    -d '{"model": "support", "messages": [{"role": "user", "content": "How do I reset my password?"}], "max_tokens": 48}'
echo

echo "== load through the gateway and directly (8 clients x 8 requests x 64 tokens)"
VLLM_URL=$(grep -oE 'http://127\.0\.0\.1:[0-9]+/v1' "$OUT/gateway.log" | head -1 || true)
"$PY" - "$PORT" "$VLLM_URL" <<'PYEOF'
import json, statistics, sys, time
from concurrent.futures import ThreadPoolExecutor
import httpx

port, upstream = sys.argv[1], sys.argv[2]

def load(base, model, clients=8, each=8, tokens=64):
    lat, toks = [], 0
    def one(_):
        t0 = time.perf_counter()
        r = httpx.post(f"{base}/chat/completions", timeout=300, json={"model": model, "max_tokens": tokens,
                       "messages": [{"role": "user", "content": "Explain how to reset a router, step by step."}]})
        r.raise_for_status()
        return time.perf_counter() - t0, r.json()["usage"]["completion_tokens"]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        for s, n in ex.map(one, range(clients * each)):
            lat.append(s); toks += n
    wall = time.perf_counter() - t0
    return {"tok_s": round(toks / wall, 1), "p50_s": round(statistics.median(lat), 3)}

rows = {"gateway": load(f"http://127.0.0.1:{port}/v1", "support")}
if upstream:
    models = httpx.get(f"{upstream}/models").json()["data"]
    rows["vllm direct"] = load(upstream, models[0]["id"])
for k, v in rows.items():
    print(f"{k:<12} {v['tok_s']:>8} tok/s  p50 {v['p50_s']} s")
if "vllm direct" in rows:
    print(f"gateway / direct throughput: {rows['gateway']['tok_s'] / rows['vllm direct']['tok_s']:.3f}")
print(json.dumps(rows))
PYEOF
kill $GW 2>/dev/null || true; wait $GW 2>/dev/null || true

echo "== one LoRA epoch, bf16, on the GPU (the example's data)"
mkdir -p "$OUT/train"
cat > "$OUT/train/recipe.yaml" <<EOF
name: gpu-check
out_dir: $OUT/train/runs/{name}
data: {train: $PWD/examples/support/train.jsonl, val_fraction: 0.1}
train: {method: lora, epochs: 1, batch_size: 16, max_length: 512, precision: bf16, eval_every: 20, device: cuda}
EOF
time timeout 1800 "$PY" -m llmkit.cli run "$OUT/train/recipe.yaml"
"$PY" -c "import json,sys; m=json.load(open('$OUT/train/runs/gpu-check/train/manifest.json'))['metrics']; \
print({k: m[k] for k in m if k in ('real_tokens_per_s', 'val_loss', 'steps', 'device', 'peak_rss_gb')})"
echo "== done: $OUT/gpu_check.log"
