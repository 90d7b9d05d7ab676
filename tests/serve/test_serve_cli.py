"""`llmkit serve` and `llmkit keys` from the command line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from llmkit.cli import main
from llmkit.commands.serve import _recipe_model
from llmkit.config import parse_recipe
from llmkit.serve.auth import hash_key


def test_serve_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--api-keys", "--allow-public-without-keys", "--requests-per-minute", "--recipe"):
        assert flag in out


def test_keys_hash_and_new(capsys):
    assert main(["keys", "hash", "sk-abc"]) == 0
    assert capsys.readouterr().out.strip() == hash_key("sk-abc")
    assert main(["keys", "new"]) == 0
    lines = capsys.readouterr().out.splitlines()
    key, line = lines[0].split()[-1], lines[1].split()[-1]
    assert key.startswith("sk-") and line == hash_key(key)


def test_public_bind_without_keys_is_refused(capsys, monkeypatch):
    monkeypatch.delenv("LLMKIT_API_KEYS", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "8123"]) == 1  # refused before any model loads
    assert "--allow-public-without-keys" in capsys.readouterr().err


def test_bad_flag_value_is_one_clear_line(capsys):
    assert main(["serve", "--port", "70000"]) == 1
    assert "--port" in capsys.readouterr().err


def test_recipe_serves_its_newest_artifact(tmp_path):
    recipe = parse_recipe("name: demo\n", base_dir=tmp_path)
    assert _recipe_model(recipe) == ("smollm2-135m-instruct", None)
    train = recipe.run_dir / "train"
    train.mkdir(parents=True)
    (train / "adapter_config.json").write_text("{}")
    assert _recipe_model(recipe) == (str(train), "transformers")
    (recipe.run_dir / "compress").mkdir()
    (recipe.run_dir / "compress" / "demo.q8_0.gguf").write_bytes(b"GGUF")
    assert _recipe_model(recipe) == (str(recipe.run_dir / "compress" / "demo.q8_0.gguf"), "llamacpp")


@pytest.mark.integration
def test_serve_starts_answers_and_stops_cleanly_with_the_bundled_model(tmp_path):
    """The real `llmkit serve` on the bundled model: healthy, answers a chat, exits 0 on SIGTERM. How fast it is
    ready (the issue asks ≤ 5 s) is measured, not asserted: a test must not time a shared box."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LLMKIT_HOME": str(tmp_path), "LLMKIT_THREADS": "1"}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "llmkit.cli", "serve", "--port", str(port), "--log-level", "warning"],
                            env=env)
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, "the server exited"
            assert time.monotonic() - t0 < 120, "no /health within 120 s"
            time.sleep(0.05)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60, json={
            "model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
