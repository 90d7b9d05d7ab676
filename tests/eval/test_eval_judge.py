"""LLM-as-judge: strict parsing, the pairwise protocol (both orders asked, a disagreement between them is a tie,
unparsed counted) against a deterministic fake judge endpoint (a unit test), and the requests against a real
`llmkit serve` of the tiny model (whose verdicts are noise: the test checks they are recorded honestly)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llmkit.config import EvalConfig
from llmkit.errors import ConfigError
from llmkit.eval import evaluate
from llmkit.eval.judge import combine, parse_choice, parse_score


def test_scores_and_choices_are_parsed_strictly():
    assert [parse_score(s) for s in ("4", " Score: 5 ", "[[3]]", "2/5", "4.")] == [4, 5, 3, 2, 4]
    assert [parse_score(s) for s in ("6", "0", "4/10", "I'd say 4", "4 - good", "")] == [None] * 6
    assert parse_score("10", "0-10") == 10 and parse_score("0", "0-10") == 0 and parse_score("11", "0-10") is None
    assert [parse_choice(s) for s in ("A", "b.", "[[A]]", "Reply B", "Tie", '"a"')] == ["a", "b", "a", "b", "tie", "a"]
    assert [parse_choice(s) for s in ("A is better", "Both", "AB", "")] == [None] * 4


def test_both_orders_combine_and_a_disagreement_is_a_tie():
    win = combine("a", "b")  # target first: A; target second: B. The target's reply won both times
    assert (win["win_rate"], win["position_disagreement"]) == (1.0, 0.0)
    assert combine("b", "a")["loss_rate"] == 1.0 and combine("tie", "tie")["tie_rate"] == 1.0
    biased = combine("a", "a")  # the judge picks the first position whatever is in it
    assert (biased["tie_rate"], biased["win_rate"], biased["position_disagreement"]) == (1.0, 0.0, 1.0)
    assert combine("a", None) == {"unparsed": 1.0}  # never guessed from the one order that parsed


class FakeJudge:
    """A deterministic OpenAI-compatible judge (unit tests only): rules over the prompt text, every request kept."""

    def __init__(self, rule):
        self.rule, self.prompts = rule, []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, body):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send({"object": "list", "data": [{"id": "fake-judge", "object": "model", "created": 0,
                                                        "owned_by": "test"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                fake.prompts.append(prompt)
                fake.auth = self.headers.get("Authorization")
                self._send({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": fake.rule(prompt)}}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _reply(prompt: str, which: str) -> str:
    return prompt.split(f"Reply {which}: ")[1].split("\n\n")[0]


def rule(prompt: str) -> str:
    if "score from" in prompt:  # single: a number for polite replies, prose otherwise (unparsable)
        return "Score: 4" if "polite" in prompt else "It is fine, I think."
    if "always-first" in prompt:  # position bias: whatever stands first wins
        return "A"
    if "mumble" in prompt:
        return "Hmm."
    # a consistent judge: the reply that mentions Nimbus wins, whichever position it is in
    return "A" if "Nimbus" in _reply(prompt, "A") else "B" if "Nimbus" in _reply(prompt, "B") else "tie"


def _rows(tmp_path, rows):
    p = tmp_path / "j.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_the_protocol_against_a_fake_judge(tiny_llama, tmp_path):
    rows = [
        {"type": "judge", "id": "s1", "prompt": "Hi", "rubric": "polite", "max_tokens": 4},
        {"type": "judge", "id": "s2", "prompt": "Hi", "rubric": "rude", "max_tokens": 4},
        {"type": "pairwise", "id": "p1", "prompt": "Fix?", "reply_a": "Nimbus here! 1. Restart.", "reply_b": "No."},
        {"type": "pairwise", "id": "p2", "prompt": "Fix?", "reply_a": "No.", "reply_b": "Nimbus here!"},
        {"type": "pairwise", "id": "p3", "prompt": "Fix?", "rubric": "always-first", "reply_a": "x", "reply_b": "y"},
        {"type": "pairwise", "id": "p4", "prompt": "Fix?", "rubric": "mumble", "reply_a": "x", "reply_b": "y"},
        {"type": "pairwise", "id": "p5", "prompt": "Fix?", "against": "Nimbus here!", "max_tokens": 4},
        {"type": "pairwise", "id": "p6", "prompt": "Fix?", "rubric": "always-first", "max_tokens": 4},
    ]
    fake = FakeJudge(rule)
    try:
        cfg = EvalConfig(tasks=[f"q={_rows(tmp_path, rows)}"], judge_endpoint=fake.url, judge_api_key="sk-secret-1")
        r = evaluate(cfg, str(tiny_llama), tmp_path / "e", baseline=str(tiny_llama), progress=False)
    finally:
        fake.close()
    items = {(i["target"], i["id"]): i for i in map(json.loads, (tmp_path / "e" / "items.jsonl").read_text().splitlines())}
    m = items["model", "p1"]
    assert m["verdicts"] == ["A", "B"] and m["scores"]["win_rate"] == 1.0  # both orders were asked
    a1, a2 = [p for p in fake.prompts if "Nimbus here! 1. Restart." in p][:2]
    assert _reply(a1, "A") == _reply(a2, "B") == "Nimbus here! 1. Restart."  # the second order swaps the replies
    assert items["model", "p2"]["scores"]["loss_rate"] == 1.0
    assert items["model", "p3"]["scores"] == {"unparsed": 0.0, "win_rate": 0.0, "tie_rate": 1.0, "loss_rate": 0.0,
                                              "position_disagreement": 1.0}
    assert items["model", "p4"]["scores"] == {"unparsed": 1.0}
    assert items["model", "p5"]["versus"] == "against" and items["model", "p5"]["scores"]["loss_rate"] == 1.0
    assert items["model", "p6"]["versus"] == "baseline" and items["model", "p6"]["scores"]["tie_rate"] == 1.0
    assert items["baseline", "p6"] == {"target": "baseline", "task": "q", "id": "p6", "type": "pairwise",
                                       "opponent": True}  # not judged twice
    assert items["model", "s1"]["scores"] == {"unparsed": 0.0, "judge_score": 4.0}
    assert items["model", "s2"]["scores"] == {"unparsed": 1.0}  # prose: counted, not guessed
    mm = r["metrics"]["model"]
    assert mm["q.judge_score"] == 4.0 and mm["q.unparsed"] == pytest.approx(2 / 8)
    assert (mm["q.win_rate"], mm["q.tie_rate"], mm["q.loss_rate"]) == pytest.approx((1 / 5, 2 / 5, 2 / 5))
    assert mm["q.position_disagreement"] == pytest.approx(2 / 5)
    assert fake.auth == "Bearer sk-secret-1"
    assert "sk-secret-1" not in (tmp_path / "e" / "manifest.json").read_text()  # the key never reaches a file
    assert len(fake.prompts) == 2 * 2 + 6 * 2 * 2 - 2  # singles once per target; pairs twice (p6 once)


def test_judge_rows_need_a_judge_and_baseline_pairs_a_baseline(tiny_llama, tmp_path):
    p = _rows(tmp_path, [{"type": "pairwise", "prompt": "Fix?"}, {"type": "judge", "prompt": "Hi", "rubric": "r"}])
    with pytest.raises(ConfigError) as e:
        evaluate(EvalConfig(tasks=[str(p)]), str(tiny_llama), tmp_path / "e", progress=False)
    assert "set eval.judge_endpoint" in str(e.value) and "no baseline is given" in str(e.value)


def test_a_real_server_as_the_judge(tiny_llama, tmp_path):
    """The tiny model served by `llmkit serve` judges: every request goes through, and each verdict is either
    parsed or counted as unparsed, as the strict parser says."""
    from serve_helpers import make_state, running

    rows = [{"type": "judge", "prompt": "Hi", "rubric": "polite", "max_tokens": 4},
            {"type": "pairwise", "prompt": "Fix?", "against": "Restart it.", "max_tokens": 4},
            {"type": "pairwise", "prompt": "Fix?", "reply_a": "Restart.", "reply_b": "Unplug."}]
    with running(make_state(tiny_llama)) as srv:
        cfg = EvalConfig(tasks=[f"q={_rows(tmp_path, rows)}"], judge_endpoint=f"{srv.url}/v1")
        r = evaluate(cfg, str(tiny_llama), tmp_path / "e", progress=False)
        assert srv.metric("llmkit_requests_total", route="/v1/chat/completions", status="200") == 1 + 2 + 2
    items = [json.loads(x) for x in (tmp_path / "e" / "items.jsonl").read_text().splitlines()]
    single, *pairs = items
    assert single["judge"] == f"{srv.url}/v1 (tiny)"
    assert single["scores"]["unparsed"] == float(parse_score(single["verdicts"][0]) is None)
    for p in pairs:
        assert len(p["verdicts"]) == 2
        parsed = [parse_choice(v) for v in p["verdicts"]]
        assert p["scores"]["unparsed"] == float(None in parsed)
        if None not in parsed:
            assert p["scores"] == combine(*parsed)
    assert r["metrics"]["model"]["q.unparsed"] == pytest.approx(sum(i["scores"]["unparsed"] for i in items) / 3)
