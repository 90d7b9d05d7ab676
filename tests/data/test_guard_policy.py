"""The guard policy scrubs training data the way it scrubs requests."""

import json

from llmkit.config import DataConfig, parse_recipe
from llmkit.data import prepare
from llmkit.guard import data_guard


def test_policy_rails_scrub_training_rows(tmp_path, tiny_llama):
    (tmp_path / "policy.yaml").write_text("input:\n  pii: {action: redact}\n  secrets: {action: block}\n"
                                          "  injection: {action: block}\n")
    rows = [{"instruction": "Mail me at jane.doe@example.com please", "output": "Will do."},
            {"instruction": "Deploy with key AKIAIOSFODNN7EXAMPLE", "output": "Done."},
            {"instruction": "How do I reset the router?", "output": "Hold the button for ten seconds."}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = parse_recipe("name: g\ndata: {train: t.jsonl, val_fraction: 0}\nguard: {policy: policy.yaml}\n",
                          base_dir=tmp_path)
    rails = data_guard(recipe)
    assert set(rails) == {"pii", "secrets"}  # the classifier rails judge traffic, not training text
    r = prepare(recipe.data, tmp_path / "out", base_dir=tmp_path, model=str(tiny_llama), progress=False, guard=rails)
    text = (tmp_path / "out" / "train.jsonl").read_text()
    assert "jane.doe" not in text and "<EMAIL_ADDRESS>" in text  # redact: kept, redacted
    assert "AKIA" not in text and r.card["dropped"]["pii"] == 1  # block: the row is dropped
    assert r.card["pii"] == "guard policy" and r.card["pii_found"] == {"EMAIL_ADDRESS": 1, "AWS Access Key": 1}
    again = prepare(DataConfig(train=str(tmp_path / "t.jsonl"), val_fraction=0), tmp_path / "out",
                    model=str(tiny_llama), progress=False)
    assert again.status == "ran"  # without the policy it is another config: not skipped
