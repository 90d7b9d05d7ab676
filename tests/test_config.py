from pathlib import Path

import pytest

from llmkit.cli import main
from llmkit.config import load_recipe, parse_recipe
from llmkit.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "recipe.yaml"

THREE_MISTAKES = """\
name: demo
model: smollm2-135m-instruct
train:
  method: lora
  epochs: 2
  lr: 2e-4
  lora:
    r: -1
    alpha: 32
  packing: true
  optimiser: adamw
compress:
  quantize: q3_x
"""


def test_example_recipe_is_valid():
    recipe = load_recipe(EXAMPLE)
    assert recipe.name and recipe.stages()[0] == "model"
    assert recipe.run_dir == EXAMPLE.parents[1] / "runs" / recipe.name  # out_dir is relative to the recipe


def test_all_problems_reported_with_paths_and_lines():
    with pytest.raises(ConfigError) as e:
        parse_recipe(THREE_MISTAKES)
    problems = e.value.problems
    assert len(problems) == 3, problems
    assert problems[0] == "train.lora.r (line 8): must be > 0, got -1"
    assert problems[1].startswith("train.optimiser (line 11): unknown key (allowed: method, epochs,")
    assert problems[2].startswith("compress.quantize (line 13): must be one of 'f16', 'q8_0', 'q4_0', 'q4_k', 'q4_gptq', "
                                  "'int8' or 'int4'")


def test_cli_validate_prints_all_three_and_exits_1(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(THREE_MISTAKES)
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "3 problems" in err
    for line in (8, 11, 13):
        assert f"(line {line})" in err


def test_duplicate_keys_and_missing_name_are_errors():
    with pytest.raises(ConfigError) as e:
        parse_recipe("model: a\nmodel: b\n")
    text = str(e.value)
    assert "model (line 2): duplicate key" in text
    assert "name (line 1): required, but missing" in text


def test_invalid_yaml_names_the_line():
    with pytest.raises(ConfigError, match=r"line 2"):
        parse_recipe("name: x\ntrain: {method: lora\n")


def test_missing_data_file_is_reported_before_running(tmp_path):
    (tmp_path / "r.yaml").write_text("name: x\ndata:\n  train: nope/train.jsonl\n")
    with pytest.raises(ConfigError, match=r"data.train \(line 3\): no such file or folder"):
        load_recipe(tmp_path / "r.yaml")


def test_paths_resolve_against_the_recipe_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "t.jsonl").write_text("{}\n")
    (tmp_path / "r.yaml").write_text("name: x\ndata: {train: d/t.jsonl}\n")
    r = load_recipe(tmp_path / "r.yaml")
    assert r.path(r.data.train) == tmp_path / "d" / "t.jsonl"
    assert r.run_dir == tmp_path / "runs" / "x"


def test_bad_gate_expression():
    with pytest.raises(ConfigError, match=r"eval.gates \(line 2\): gates must look like"):
        parse_recipe('name: x\neval: {gates: {safety.refusal_rate: "at least 0.9"}}\n')
