import subprocess
import sys

import pytest

from llmkit.cli import build_parser, main


def test_every_command_has_help(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {"models", "chat", "generate", "validate", "run", "lineage", "data", "train", "compress", "eval", "serve", "keys",
                                  "rag", "guard", "monitor", "track", "register", "promote", "dashboard", "report"}
    for name in [*sub.choices, "rag index", "rag query", "rag eval", "guard check", "guard train", "track sync"]:
        with pytest.raises(SystemExit) as e:
            main([*name.split(), "--help"])
        assert e.value.code == 0
        assert "usage: llmkit" in capsys.readouterr().out


def test_models_list_and_show(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "installed" in out
    assert main(["models", "show", "smollm2-135m-instruct"]) == 0
    out = capsys.readouterr().out
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in out and "layers" in out
    assert "llamacpp_cpu_kernels" in out and "AVX2" in out  # the kernels llama.cpp runs the GGUF with here


def test_errors_are_one_line_and_exit_nonzero():
    # a real process: exit code and stderr as a user sees them
    p = subprocess.run([sys.executable, "-m", "llmkit.cli", "chat", "no-such-model", "-p", "hi"],
                       capture_output=True, text=True)
    assert p.returncode == 1
    assert p.stderr.startswith("error: model 'no-such-model' is not a registry name")
    assert "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "-m", "llmkit.cli", "--debug", "lineage", "/nonexistent"],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "Traceback" in p.stderr and "is not an artifact" in p.stderr


def test_run_twice_then_lineage(tmp_path, tiny_gguf, capsys):
    r = tmp_path / "r.yaml"
    r.write_text(f"name: demo\nmodel: {tiny_gguf}\n")
    assert main(["run", str(r)]) == 0
    assert "1 stage(s) ran" in capsys.readouterr().out
    assert main(["run", str(r)]) == 0
    out = capsys.readouterr().out
    assert "skipped (finished artifact" in out and "0 stage(s) ran, 1 skipped" in out
    assert main(["lineage", str(tmp_path / "runs" / "demo" / "model")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("model ") and "weights:" in out


def test_chat_one_shot_on_tiny_model(tiny_llama, capsys):
    assert main(["chat", str(tiny_llama), "--engine", "transformers", "-p", "hi", "--max-tokens", "4"]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_interactive_chat_reads_turns_until_empty_line(tiny_llama, tmp_path):
    import os

    env = {**os.environ, "LLMKIT_HOME": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "llmkit.cli", "chat", str(tiny_llama), "--engine", "transformers",
                        "--max-tokens", "3"], input="hi\n/reset\nhello again\n\n", capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("Chatting with") and p.stdout.count("> ") == 4  # 3 turns + the final empty one
