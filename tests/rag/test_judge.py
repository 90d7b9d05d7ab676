"""Answer faithfulness: the judge's reply parsed, and the whole loop against a real server (the tiny model)."""

import json

from rag_helpers import write_docs
from serve_helpers import make_state, running

from llmkit.cli import main
from llmkit.config import RagConfig
from llmkit.rag import index, judge


def test_verdict_takes_the_first_yes_or_no():
    assert judge.verdict("Yes.") is True and judge.verdict("no, the answer invents a number") is False
    assert judge.verdict("  YES - all of it") is True and judge.verdict("Not sure; yesterday") is None
    assert judge.verdict("x" * 70 + " yes") is None  # only the start of the reply counts


def _setup(tmp_path):
    write_docs(tmp_path / "docs")
    index(RagConfig(sources=[str(tmp_path / "docs")], collection="help"), tmp_path / "store" / "help", progress=False)
    q = tmp_path / "q.jsonl"
    q.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "How long do I hold the reset button?", "source": "*router.md"},
        {"question": "Where is the MAC address?", "source": "*modem.txt"}]))
    return q


def test_faithfulness_against_a_real_server(tmp_path, tiny_llama, capsys):
    q = _setup(tmp_path)
    with running(make_state(tiny_llama)) as srv:
        r = judge.faithfulness(tmp_path / "store" / "help", q, f"{srv.url}/v1", "tiny", top_k=1, max_tokens=8,
                               progress=False)  # the tiny server reads 256 tokens: one source
        assert r["questions"] == 2 and r["judged"] + r["unparsed"] == 2
        assert all(a["answer"] and a["judge"] is not None for a in r["answers"])
        assert srv.metric("llmkit_requests_total", route="/v1/chat/completions", status="200") == 4  # 2 answers, 2 verdicts
        assert main(["rag", "eval", str(q), "--collection", "help", "--store", str(tmp_path / "store"),
                     "--endpoint", f"{srv.url}/v1", "--model", "tiny", "--max-tokens", "8", "--top-k", "1"]) == 0
    assert "answer faithfulness (tiny judging tiny)" in capsys.readouterr().out


def test_faithfulness_counts_the_judges_words(tmp_path, monkeypatch):
    """The judge's replies replaced (a unit test; the loop against a real server is above)."""
    q = _setup(tmp_path)
    replies = iter(["Hold it for 10 seconds [1].", "Yes.", "On the label [1].", "Unclear."])
    monkeypatch.setattr(judge, "_client", lambda endpoint, key: object())
    monkeypatch.setattr(judge, "_chat", lambda client, model, content, max_tokens: next(replies))
    r = judge.faithfulness(tmp_path / "store" / "help", q, "http://x/v1", "m", progress=False)
    assert (r["faithfulness"], r["judged"], r["unparsed"]) == (1.0, 1, 1)
    assert [a["supported"] for a in r["answers"]] == [True, None]
