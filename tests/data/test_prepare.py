"""The data stage on small files written by each test, with the tiny model's tokenizer."""

import json
import subprocess
import sys

import pytest

from llmkit.config import DataConfig
from llmkit.data import prepare
from llmkit.data.load import read_rows
from llmkit.errors import DataError

GOOD = {"instruction": "How do I reset the router?", "input": "", "output": "Hold the button for 10 s."}


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def run(tmp_path, tiny_llama, train, **kw):
    cfg = DataConfig(train=str(train), **kw)
    return prepare(cfg, tmp_path / "out", model=str(tiny_llama), progress=False)


def rows_of(n, start=0):
    return [{"instruction": f"Question number {i} about topic {i * 7} and more words {i}", "input": "",
             "output": f"Answer {i}."} for i in range(start, start + n)]


def test_every_row_is_accounted_for(tmp_path, tiny_llama):
    rows = rows_of(40) + rows_of(3)  # 3 exact duplicates
    r = run(tmp_path, tiny_llama, write_jsonl(tmp_path / "t.jsonl", rows), val_fraction=0.25)
    c = r.card
    assert c["rows_in"] == 43 and c["dropped"]["exact_duplicate"] == 3
    assert c["rows_out"]["train"] + c["rows_out"]["val"] + sum(c["dropped"].values()) == c["rows_in"]
    assert c["rows_out"]["val"] > 0 and c["formats"] == {"t.jsonl": "alpaca"}
    out = tmp_path / "out"
    train = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert train[0]["messages"][0]["role"] == "user" and train[0]["messages"][1]["role"] == "assistant"
    for f in ("data_card.json", "data_card.md", "token_lengths.png", "manifest.json"):
        assert (out / f).is_file()
    assert (out / "token_lengths.png").read_bytes()[:4] == b"\x89PNG"
    assert c["tokens"]["count"] == c["rows_out"]["train"] + c["rows_out"]["val"]


def test_split_is_seeded_and_order_independent(tmp_path, tiny_llama):
    rows = rows_of(60)
    a = run(tmp_path / "a", tiny_llama, write_jsonl(tmp_path / "a.jsonl", rows), val_fraction=0.3)
    b = run(tmp_path / "b", tiny_llama, write_jsonl(tmp_path / "b.jsonl", rows[::-1]), val_fraction=0.3)
    val_a = sorted((tmp_path / "a" / "out" / "val.jsonl").read_text().splitlines())
    val_b = sorted((tmp_path / "b" / "out" / "val.jsonl").read_text().splitlines())
    assert val_a == val_b and a.card["rows_out"] == b.card["rows_out"]


@pytest.mark.parametrize("bad_line, reason", [
    ('{"instruction": "x", "output": "y"', "truncated JSON"),
    ('{"instruction": "x", "output": 5}', "field 'output': expected a string, got int"),
    ('{"instruction": "x", "output": "   "}', "field 'output': empty"),
    ('[1, 2]', "expected a JSON object per line, got list"),
])
def test_bad_jsonl_rows_fail_with_file_and_line(tmp_path, tiny_llama, bad_line, reason):
    f = write_jsonl(tmp_path / "t.jsonl", [GOOD, GOOD | {"output": "other"}, bad_line, GOOD | {"output": "x"}])
    with pytest.raises(DataError) as e:
        run(tmp_path, tiny_llama, f)
    assert f"t.jsonl:3: {reason}" in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_invalid_utf8_byte(tmp_path, tiny_llama):
    f = tmp_path / "t.jsonl"
    f.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"instruction": "caf\xe9", "output": "y"}\n')
    with pytest.raises(DataError, match=r"t.jsonl:2: invalid UTF-8 \(byte 0xe9 at column 21\)"):
        run(tmp_path, tiny_llama, f)


def test_skip_writes_rejects_with_reasons(tmp_path, tiny_llama):
    f = write_jsonl(tmp_path / "t.jsonl", rows_of(5) + ['{"instruction": "x"', {"instruction": "q", "output": 3}])
    r = run(tmp_path, tiny_llama, f, on_error="skip")
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(x["line"], x["reason"].split(":")[0]) for x in rejects] == [(6, "truncated JSON"), (7, "field 'output'")]
    assert rejects[1]["row"] == {"instruction": "q", "output": 3}
    assert r.card["dropped"]["invalid"] == 2 and r.card["rows_in"] == 7


def test_csv_missing_column_and_empty_and_missing_files(tmp_path, tiny_llama):
    f = tmp_path / "t.csv"
    f.write_text("instruction,output\nhow?,like this\nonly one column\n")
    with pytest.raises(DataError, match=r"t.csv:3: expected 2 columns \(instruction, output\), got 1"):
        run(tmp_path, tiny_llama, f)
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(DataError, match=r"e.jsonl: the file is empty"):
        run(tmp_path, tiny_llama, tmp_path / "e.jsonl")
    with pytest.raises(DataError, match=r"nope.jsonl: no such file"):
        run(tmp_path, tiny_llama, tmp_path / "nope.jsonl")


def test_cli_exits_1_with_the_error(tmp_path, tiny_llama):
    write_jsonl(tmp_path / "t.jsonl", [GOOD, '{"instruction": "x", "output": "y"'])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: x\nmodel: {tiny_llama}\ndata: {{train: t.jsonl}}\n")
    p = subprocess.run([sys.executable, "-m", "llmkit.cli", "data", "prepare", "--recipe", str(recipe),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert p.returncode == 1 and "t.jsonl:2: truncated JSON" in p.stderr


@pytest.mark.parametrize("row, fmt", [
    ({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                   {"role": "assistant", "content": "hello"}]}, "messages"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}, "sharegpt"),
    ({"prompt": "hi", "completion": "hello"}, "prompt_completion"),
    ({"prompt": "hi", "chosen": "hello", "rejected": "go away"}, "preference"),
    ({"text": "Once upon a time."}, "text"),
])
def test_formats_are_detected_and_normalized(tmp_path, tiny_llama, row, fmt):
    r = run(tmp_path, tiny_llama, write_jsonl(tmp_path / "t.jsonl", [row]), val_fraction=0.0)
    assert r.card["formats"]["t.jsonl"] == fmt
    out = json.loads((tmp_path / "out" / "train.jsonl").read_text())
    if fmt == "preference":
        assert out == row
    elif fmt == "text":
        assert out == {"text": "Once upon a time."}
    else:
        assert out["messages"][-1] == {"role": "assistant", "content": "hello"}


def test_bad_role_order_and_wrong_kind_mix(tmp_path, tiny_llama):
    row = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}
    with pytest.raises(DataError, match=r"t.jsonl:1: field 'messages\[1\].role': bad role order"):
        run(tmp_path, tiny_llama, write_jsonl(tmp_path / "t.jsonl", [row]))
    write_jsonl(tmp_path / "v.jsonl", [{"text": "plain"}])
    cfg = DataConfig(train=str(write_jsonl(tmp_path / "u.jsonl", [GOOD])), val=str(tmp_path / "v.jsonl"))
    with pytest.raises(DataError, match="one dataset holds one kind"):
        prepare(cfg, tmp_path / "o2", model=str(tiny_llama), progress=False)


def test_too_long_for_the_model_and_max_tokens(tmp_path, tiny_llama):
    long = {"instruction": "word " * 400, "output": "ok"}  # the tiny model's context is 256
    rows = rows_of(3) + [long]
    with pytest.raises(DataError, match=r"t.jsonl:4: too long for the model: \d+ tokens > context length 256"):
        run(tmp_path, tiny_llama, write_jsonl(tmp_path / "t.jsonl", rows))
    medium = {"instruction": "word " * 40, "output": "ok"}  # fits the model (256), not max_tokens
    r = run(tmp_path, tiny_llama, write_jsonl(tmp_path / "t.jsonl", rows_of(2) + [medium]), max_tokens=120,
            val_fraction=0.0)
    assert r.card["dropped"]["over_max_tokens"] == 1 and r.card["rows_out"]["train"] == 2


def test_near_duplicates_are_dropped(tmp_path, tiny_llama):
    a = {"instruction": "How do I set up the guest network on my Nimbus mesh node at home?", "output": "Steps."}
    b = {"instruction": "How do I set up the guest network on my Nimbus mesh node at home please?", "output": "Other."}
    c = {"instruction": "What is the warranty period for a Nimbus router bought in Europe?", "output": "Two years."}
    r = run(tmp_path, tiny_llama, write_jsonl(tmp_path / "t.jsonl", [a, b, c]), dedupe="near", val_fraction=0.0)
    assert r.card["dropped"]["near_duplicate"] == 1 and r.card["rows_out"]["train"] == 2


def test_pii_redacted_regex_mode(tmp_path, tiny_llama):
    rows = [{"instruction": "Mail me at jane.doe@example.com or call +1 415 555 0100", "output": "Will do."}]
    r = run(tmp_path, tiny_llama, write_jsonl(tmp_path / "t.jsonl", rows), pii="redact", pii_mode="regex",
            val_fraction=0.0)
    text = (tmp_path / "out" / "train.jsonl").read_text()
    assert "jane.doe" not in text and "<EMAIL_ADDRESS>" in text and "<PHONE_NUMBER>" in text
    assert r.card["pii_found"] == {"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1}


def test_second_prepare_is_skipped(tmp_path, tiny_llama):
    f = write_jsonl(tmp_path / "t.jsonl", rows_of(5))
    assert run(tmp_path, tiny_llama, f).status == "ran"
    assert run(tmp_path, tiny_llama, f).status == "skipped"
    assert run(tmp_path, tiny_llama, f, seed=1).status == "ran"


def test_json_parquet_and_hf_folder_loaders(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = rows_of(3)
    (tmp_path / "a.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    for src in ("a.json", "a.parquet", "hf"):
        got = list(read_rows(tmp_path / src))
        assert [g.data for g in got] == rows and [g.line for g in got] == [1, 2, 3], src


def test_fast_renderer_matches_apply_chat_template(tiny_llama):
    from transformers import AutoTokenizer

    from llmkit.data.prepare import _chat_renderer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    render = _chat_renderer(tok)
    for msgs in ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                 [{"role": "system", "content": ""}, {"role": "user", "content": "a\nb"},
                  {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"},
                  {"role": "assistant", "content": "e"}]):
        assert render(msgs) == tok.apply_chat_template(msgs, tokenize=False)


@__import__("pytest").mark.integration
def test_fast_renderer_matches_on_smollm2():
    from transformers import AutoTokenizer

    from llmkit.data.prepare import _chat_renderer
    from llmkit.models import hf_folder, resolve_model

    tok = AutoTokenizer.from_pretrained(hf_folder(resolve_model("smollm2-135m-instruct"), progress=False))
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert _chat_renderer(tok)(msgs) == tok.apply_chat_template(msgs, tokenize=False)
    assert "You are a helpful AI assistant named SmolLM" in _chat_renderer(tok)(msgs)


def test_worker_processes_give_the_same_artifact(tmp_path, tiny_llama):
    rows = rows_of(700) + rows_of(20) + ['{"instruction": "x"']  # > 1 batch, duplicates, a bad line (721)
    f = write_jsonl(tmp_path / "t.jsonl", rows)
    cards = {}
    for w in (1, 2):
        cfg = DataConfig(train=str(f), workers=w, on_error="skip", val_fraction=0.2)
        cards[w] = prepare(cfg, tmp_path / f"w{w}", model=str(tiny_llama), progress=False).card
    assert cards[1]["rows_out"] == cards[2]["rows_out"] and cards[1]["dropped"] == cards[2]["dropped"]
    for name in ("train.jsonl", "val.jsonl", "rejects.jsonl"):
        assert (tmp_path / "w1" / name).read_text() == (tmp_path / "w2" / name).read_text()
    assert "\"line\": 721" in (tmp_path / "w2" / "rejects.jsonl").read_text()


def test_csv_bad_rows_go_to_rejects_under_skip(tmp_path, tiny_llama):
    f = tmp_path / "t.csv"
    f.write_text('instruction,output\nhow?,"like\nthis"\nonly one column\nwhy?,because\n')
    r = run(tmp_path, tiny_llama, f, on_error="skip", val_fraction=0.0)
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(x["line"], x["reason"]) for x in rejects] == [(4, "expected 2 columns (instruction, output), got 1")]
    assert r.card["rows_out"]["train"] == 2  # the quoted field spanning two lines is one row


def test_hub_dataset_code_path_with_a_local_folder(tmp_path):
    # `datasets.load_dataset(id, streaming=True)` is the hub path; given a local folder it reads it the same way
    from llmkit.data.load import _read_hub

    (tmp_path / "ds").mkdir()
    write_jsonl(tmp_path / "ds" / "train.jsonl", rows_of(4))
    got = list(_read_hub(str(tmp_path / "ds")))
    assert [g.data for g in got] == rows_of(4) and got[0].where.endswith(":1")
