"""The README's dashboard screenshot (docs/dashboard.png), made the way a user would see the page: `llmkit serve`
on the bundled model with a RAG collection of the support docs, a guard policy, a request log, the drift monitor
and API keys; support traffic then cooking/code/German traffic; then the page in headless Chromium, a chat in the
playground with the collection selected, and a token hovered.

    HF_HUB_OFFLINE=1 python scripts/dashboard_screenshot.py [--runs runs] [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-llmkit-dashboard-demo"
POLICY = """input:
  pii: {action: redact}
  secrets: {action: redact}
  injection: {action: flag}   # counted in the charts, not refused: the demo's questions all get answers
output:
  length: {max_chars: 8000}
"""
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def prompts(name: str) -> list[str]:
    return [json.loads(x)["prompt"] for x in (ROOT / "examples/drift" / name).read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default=str(ROOT / "runs"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "dashboard.png"))
    ap.add_argument("--per-phase", type=int, default=30)
    args = ap.parse_args()
    from llmkit.config import RagConfig
    from llmkit.rag import index

    tmp = Path(tempfile.mkdtemp(prefix="llmkit-dash-"))
    index(RagConfig(sources=[str(ROOT / "examples/support/docs")], collection="support"), tmp / "rag" / "support",
          progress=False)
    (tmp / "policy.yaml").write_text(POLICY)
    (tmp / "keys").write_text(KEY + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "llmkit.cli", "serve", "--model", "support=smollm2-135m-instruct", "--port",
           str(port), "--threads", "2", "--embedder", "none", "--rag", str(tmp / "rag"), "--guard",
           str(tmp / "policy.yaml"), "--api-keys", str(tmp / "keys"), "--request-log", str(tmp / "requests.db"),
           "--drift-reference", str(ROOT / "examples/support"), "--drift-window", str(args.per_phase),
           "--drift-interval-s", "2", "--runs", args.runs, "--log-level", "warning"]
    server = subprocess.Popen(cmd, start_new_session=True, stdout=open(tmp / "server.log", "w"),
                              stderr=subprocess.STDOUT)
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                sys.exit(f"the server did not start: {(tmp / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)

        def ask(text: str) -> None:
            httpx.post(f"{url}/v1/chat/completions", headers=auth, timeout=120, json={
                "model": "support", "max_tokens": 16, "messages": [{"role": "user", "content": text}]})

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(ask, prompts("in_distribution.jsonl")[:args.per_phase]))
            time.sleep(5)  # a drift test of the support traffic alone
            list(pool.map(ask, prompts("out_of_distribution.jsonl")[:args.per_phase]))
        time.sleep(5)
        shoot(url, Path(args.out))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)


def shoot(url: str, out: Path) -> None:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path="/usr/bin/chromium", headless=True,
                                                    args=FLAGS, viewport={"width": 1440, "height": 900})
        page = ctx.new_page()
        page.goto(f"{url}/ui", wait_until="load")
        page.fill("#key", KEY)
        page.click("#keyform button")
        page.wait_for_selector("#model option", state="attached")
        page.select_option("#collection", "support")
        page.fill("#maxtok", "80")
        page.fill("#temp", "0.2")
        page.fill("#topk", "2")
        page.fill("#prompt", "How do I factory reset the R2 router?")
        page.click("#send")
        page.wait_for_selector(".msg.bot .bubble:not(.streaming)", timeout=120_000)
        page.wait_for_timeout(1500)  # the charts' refresh after the reply
        page.evaluate("window.scrollTo(0, 0)")
        print("reply:", page.inner_text(".msg.bot"))
        tokens = page.query_selector_all(".msg.bot .tok[data-lp]")
        if tokens:
            tokens[min(5, len(tokens) - 1)].hover()  # its probability and the alternatives, as a user sees them
        png = page.screenshot(full_page=True)
        ctx.close()
    img = Image.open(io.BytesIO(png)).convert("RGB")
    img = img.quantize(colors=128, method=Image.Quantize.MEDIANCUT)  # flat UI colours: small, still sharp
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, optimize=True)
    print(f"{out}: {out.stat().st_size // 1024} KB, {img.size[0]}x{img.size[1]}")


if __name__ == "__main__":
    main()
