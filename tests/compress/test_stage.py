"""The compress stage as `llmkit run` and the CLI run it, and the quality report's measurements."""

import json
import subprocess
import sys

from lora_helpers import QUICK

from llmkit.artifacts import lineage, read_manifest
from llmkit.compress import compress
from llmkit.compress.report import format_table, measure
from llmkit.config import CompressConfig, parse_recipe
from llmkit.pipeline import run_recipe


def test_recipe_runs_model_data_then_compress_with_skip_and_lineage(tmp_path, tiny_gguf):
    rows = [{"prompt": f"question {i} about thing {i * 5}", "completion": f"answer {i} is 42"} for i in range(30)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = parse_recipe(f"name: t\nmodel: {tiny_gguf}\ndata: {{train: t.jsonl, val_fraction: 0.2}}\n"
                          "compress: {quantize: q4_0, imatrix: true, eval_rows: 4, prompts: 2, gen_tokens: 8}\n",
                          base_dir=tmp_path, source="t.yaml")
    lines = []
    first = run_recipe(recipe, echo=lines.append)
    assert [(r.stage, r.status) for r in first] == [("model", "ran"), ("data", "ran"), ("compress", "ran")]
    out = tmp_path / "runs" / "t" / "compress"
    m = read_manifest(out)
    assert m["outputs"]["gguf"] == str(out / "t.q4_0.gguf") and (out / "t.q4_0.gguf").is_file()
    assert m["metrics"]["eval"].startswith(f"{tmp_path / 'runs' / 't' / 'data' / 'val.jsonl'}: 4 rows, ")
    train_rows = len((tmp_path / "runs" / "t" / "data" / "train.jsonl").read_text().splitlines())
    assert m["metrics"]["calibration"] == f"importance matrix from {train_rows} train rows"  # the data stage's
    assert any("t.q4_0.gguf" in line and "of f16" in line for line in lines)  # the one-line summary
    assert [r.status for r in run_recipe(recipe, echo=lines.append)] == ["skipped"] * 3
    kinds = [(d, x["kind"]) for d, x in lineage(out)]
    assert (1, "dataset") in kinds and kinds.count((1, "input")) == 1  # the base GGUF and the dataset


def test_report_of_a_file_against_itself_and_against_another_model(tiny_llama, tmp_path):
    from conftest import build_tiny_llama

    a = compress(CompressConfig(quantize="f16", **QUICK), str(tiny_llama), tmp_path / "a", threads=1, progress=False)
    same = a["metrics"]
    assert same["ppl"] == same["ppl_f16"] and same["top1_agreement"] == 1.0 and same["greedy_same"] == 2
    other = build_tiny_llama(tmp_path / "other", seed=1)
    b = compress(CompressConfig(quantize="f16", **QUICK), str(other), tmp_path / "b", threads=1, progress=False)
    # a different model with the same tokenizer: the report must see it (this is what a broken export looks like)
    r = measure(a["gguf"], b["gguf"], tiny_llama, rows=4, prompts=2, gen_tokens=8, threads=1)
    assert r["top1_agreement"] < 0.5 and abs(r["ppl_increase_pct"]) > 1
    table = format_table([same, r])
    assert table.splitlines()[0].split()[:3] == ["file", "size", "MB"] and "fixed text" in table.splitlines()[-1]


def test_perplexity_is_taken_on_the_assistant_replies_of_val_rows(tiny_llama, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"Where is fox {i}?"},
                          {"role": "assistant", "content": f"Fox {i} is in the forest near the river."}]}
            for i in range(3)]
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = compress(CompressConfig(quantize="f16", **QUICK), str(tiny_llama), tmp_path / "e", dataset=tmp_path,
                 threads=1, progress=False)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    # each target span is the reply plus the template's end-of-turn tokens; never the prompt
    reply_tokens = sum(len(tok(row["messages"][1]["content"] + "<|im_end|>\n")["input_ids"]) for row in rows)
    assert r["metrics"]["eval"] == f"{tmp_path / 'val.jsonl'}: 3 rows, {reply_tokens} target tokens"
    assert r["metrics"]["samples"][0]["prompt"] == "Where is fox 0?"


def test_cli_compress_help_and_a_clean_error(tmp_path):
    h = subprocess.run([sys.executable, "-m", "llmkit.cli", "compress", "--help"], check=False, capture_output=True,
                       text=True)
    assert h.returncode == 0 and "--quantize" in h.stdout and "--unsafe-allow-pickle" in h.stdout
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"architectures": ["MistralForCausalLM"]}))
    p = subprocess.run([sys.executable, "-m", "llmkit.cli", "compress", str(tmp_path / "m"), "--out",
                        str(tmp_path / "o")], check=False, capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.startswith("error: ") and "supported: LlamaForCausalLM" in p.stderr
    assert "Traceback" not in p.stderr
