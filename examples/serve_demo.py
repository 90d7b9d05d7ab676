"""Start `llmkit serve` on the given models, ask each the same question through the official `openai` client,
print the answers side by side, and stop the server (what `make run` does after training).

    python examples/serve_demo.py --model smollm2-135m-instruct --model support=runs/support-assistant/train
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="NAME=SPEC or SPEC, as `llmkit serve --model`")
    ap.add_argument("--prompt", default="My Nimbus R2 router has slow Wi-Fi. What should I do?")
    ap.add_argument("--max-tokens", type=int, default=120)
    args = ap.parse_args()

    port = free_port()
    cmd = [sys.executable, "-m", "llmkit.cli", "serve", "--port", str(port), "--embedder", "none"]
    for m in args.model:
        cmd += ["--model", m]
    print("$ llmkit", " ".join(cmd[4:]), flush=True)
    server = subprocess.Popen(cmd, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # poll /health with a deadline; the server may be converting an adapter first
            if server.poll() is not None:
                print(f"llmkit serve exited with {server.returncode}", file=sys.stderr)
                return 1
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                print("llmkit serve did not become ready in 120 s", file=sys.stderr)
                return 1
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=os.environ.get("LLMKIT_API_KEY", "none"))
        models = [m.id for m in client.models.list().data if m.id != "all-minilm-l6-v2"]
        print(f"serving: {', '.join(models)}\nasking each: {args.prompt!r}\n")
        for model in models:
            t0 = time.perf_counter()
            r = client.chat.completions.create(model=model, max_tokens=args.max_tokens, temperature=0,
                                               messages=[{"role": "user", "content": args.prompt}])
            took = time.perf_counter() - t0
            print(f"--- {model} ({r.usage.completion_tokens} tokens, {took:.1f} s)\n{r.choices[0].message.content}\n")
        return 0
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # graceful: the server drains, then exits
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
