"""`llmkit eval` on the tiny model: the table, the artifact, exit 1 on a failing gate, file:line errors."""

import json

from llmkit.cli import main


def test_eval_command_writes_the_artifact_and_exits_1_on_a_failing_gate(tiny_llama, tmp_path, capsys):
    (tmp_path / "t.jsonl").write_text(json.dumps(
        {"type": "generate", "prompt": "Hi", "max_tokens": 4, "checks": {"contains": "Nimbus here!"}}) + "\n")
    args = ["eval", "--model", str(tiny_llama), "--tasks", f"style={tmp_path / 't.jsonl'}", "--out", str(tmp_path / "e")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "style.contains" in out and (tmp_path / "e" / "metrics.json").is_file()
    assert main([*args, "--gate", "style.contains=>= 0.5", "--gate", "style.f1=>= 0.1"]) == 1
    cap = capsys.readouterr()
    assert "2 eval gates failed" in cap.err and "style.contains >= 0.5: 0 is not >= 0.5" in cap.err
    assert "style.f1 >= 0.1: no such metric" in cap.err and "gate style.contains >= 0.5: FAIL" in cap.out


def test_a_bad_task_file_is_an_error_with_file_and_line(tmp_path, capsys):
    (tmp_path / "t.jsonl").write_text('{"type": "choice", "prompt": "Q", "choices": ["a", "b"]}\n\n{"type": 1}\n')
    assert main(["eval", "--model", "x", "--tasks", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "e")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 't.jsonl'}:1: answer: expected the index" in err and f"{tmp_path / 't.jsonl'}:3: type" in err
