"""`llmkit generate` in this process, on the tiny GGUF: every bad row reported at once, answers in input order
equal to the engine's own greedy answers, a killed run (torn last line) resumed to the same file as an
uninterrupted one, and a resume with other settings refused."""

from __future__ import annotations

import json

import pytest

from llmkit.cli import main
from llmkit.engines import GenParams
from llmkit.engines.batch import BatchSpec, generate
from llmkit.engines.llamacpp import LlamaCppEngine
from llmkit.errors import DataError
from llmkit.models import resolve_model

PROMPTS = [{"prompt": f"Question {i}: how do I restart device {i * 7}?", "id": f"q{i}"} for i in range(6)] + \
    [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Reset the router?"}]}]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _spec(model, **kw):
    return BatchSpec(model=str(model), threads=1, parallel=3, n_ctx=256, params=GenParams(max_tokens=8), **kw)


def test_answers_in_input_order_equal_the_engine_alone(tiny_gguf, tmp_path):
    inp = _write(tmp_path / "p.jsonl", PROMPTS)
    s = generate(inp, tmp_path / "a.jsonl", _spec(tiny_gguf, workers=2), progress=False)
    assert s["answered"] == 7 and s["skipped"] == 0 and s["errors"] == 0
    out = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [r["line"] for r in out] == list(range(1, 8))
    assert [r.get("id") for r in out] == [f"q{i}" for i in range(6)] + [None]
    eng = LlamaCppEngine(resolve_model(str(tiny_gguf)), n_ctx=256, n_threads=1)
    try:
        want = [eng.submit(eng.format_chat(r.get("messages") or [{"role": "user", "content": r["prompt"]}]),
                           GenParams(max_tokens=8)).text() for r in PROMPTS]
    finally:
        eng.close()
    assert [r["answer"] for r in out] == want
    assert all(r["completion_tokens"] <= 8 and r["prompt_tokens"] > 0 for r in out)


def test_a_killed_run_resumes_to_the_same_file(tiny_gguf, tmp_path):
    inp = _write(tmp_path / "p.jsonl", PROMPTS)
    full = tmp_path / "full.jsonl"
    generate(inp, full, _spec(tiny_gguf), progress=False)
    lines = full.read_bytes().splitlines(keepends=True)
    part = tmp_path / "part.jsonl"
    part.write_bytes(b"".join(lines[:3]) + lines[3][:25])  # killed in the middle of writing row 4
    s = generate(inp, part, _spec(tiny_gguf), progress=False)
    assert (s["skipped"], s["answered"]) == (3, 4)
    assert part.read_bytes() == full.read_bytes()
    again = generate(inp, part, _spec(tiny_gguf), progress=False)
    assert again["answered"] == 0 and again["skipped"] == 7
    # the same output with other settings would mix two jobs in one file: refused, naming the rows
    with pytest.raises(DataError, match=r"part.jsonl:1: line 1 was answered from another prompt, model or settings"):
        generate(inp, part, BatchSpec(model=str(tiny_gguf), threads=1, params=GenParams(max_tokens=9)), progress=False)


def test_bad_rows_are_all_reported_before_any_model_loads(tmp_path, capsys):
    inp = tmp_path / "bad.jsonl"
    inp.write_text('{"prompt": "ok"}\n{"prompt": ""}\nnot json\n\n{"messages": [{"role": "bot", "content": 1}]}\n'
                   '{"prompt": "a", "messages": []}\n[1]\n{"messages": [{"role": "assistant", "content": "hi"}]}\n')
    assert main(["generate", "--input", str(inp), "--out", str(tmp_path / "o.jsonl"), "--model", "no-such"]) == 1
    err = capsys.readouterr().err
    for want in ("bad.jsonl: 7 problems in its rows", "bad.jsonl:2: prompt: expected a non-empty string",
                 "bad.jsonl:3: not JSON", "bad.jsonl:5: messages[0].role: expected one of system, user, assistant",
                 "bad.jsonl:5: messages[0].content: expected a string, got int",
                 "bad.jsonl:6: expected exactly one of `prompt`", "bad.jsonl:7: expected an object",
                 "bad.jsonl:8: messages[0].role: the last message must not be the assistant's"):
        assert want in err, want
    assert not (tmp_path / "o.jsonl").exists()


def test_the_cli_answers_and_resumes(tiny_gguf, tmp_path, capsys):
    inp = _write(tmp_path / "p.jsonl", PROMPTS[:3])
    args = ["generate", "--input", str(inp), "--out", str(tmp_path / "o.jsonl"), "--model", str(tiny_gguf),
            "--threads", "1", "--max-tokens", "4", "--n-ctx", "256", "--quiet"]
    assert main(args) == 0
    assert "answered 3 prompts" in capsys.readouterr().out
    assert main(args) == 0
    assert "all 3 prompts already answered" in capsys.readouterr().out


def test_a_prompt_longer_than_the_context_gets_an_error_row_in_its_place(tiny_gguf, tmp_path, capsys):
    inp = _write(tmp_path / "p.jsonl", [{"prompt": "hi"}, {"prompt": "word " * 300}, {"prompt": "bye"}])
    args = ["generate", "--input", str(inp), "--out", str(tmp_path / "o.jsonl"), "--model", str(tiny_gguf),
            "--threads", "1", "--max-tokens", "4", "--n-ctx", "256", "--quiet"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "answered 2 prompts" in out and "1 failed" in out
    assert f"not answered: {inp}:2: prompt (" in out and "exceeds the context of 256 tokens" in out
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3] and "error" in rows[1] and "answer" not in rows[1]
    assert main(args) == 0  # final, like an answer: the same prompt and settings would fail the same way
    assert "all 3 prompts already answered" in capsys.readouterr().out
