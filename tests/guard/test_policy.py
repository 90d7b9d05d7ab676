import pytest

from llmkit.config import GuardConfig
from llmkit.errors import ConfigError
from llmkit.guard import Policy, from_config, load_policy


def test_policy_file_reports_every_mistake_with_its_line(tmp_path):
    p = tmp_path / "policy.yaml"
    p.write_text("input:\n  pii: {action: shred}\n  injection: {threshold: 2}\noutput:\n  toxicty: {}\n")
    with pytest.raises(ConfigError) as e:
        load_policy(p)
    text = str(e.value)
    assert "input.pii.action (line 2): must be one of" in text
    assert "input.injection.threshold (line 3): must be < 1.0, got 2" in text
    assert "output.toxicty (line 5): unknown key (allowed: pii, secrets, injection, toxicity, topics, length, format)" in text


def test_rail_specific_rules():
    with pytest.raises(ValueError, match="topics needs a `deny` or an `allow` list"):
        Policy.model_validate({"input": {"topics": {}}})
    with pytest.raises(ValueError, match="format is an output rail"):
        Policy.model_validate({"input": {"format": {}}})
    with pytest.raises(ValueError):
        Policy.model_validate({"input": {"injection": {"action": "redact"}}})  # nothing to redact


def test_default_and_recipe_section(tmp_path):
    d = load_policy("default")
    assert d.input.names() == ["pii", "secrets", "injection", "toxicity"]
    assert d.output.names() == ["pii", "secrets", "toxicity"]
    pol = from_config(GuardConfig(input=["pii", "injection"], output=["pii"]))
    assert pol.input.names() == ["pii", "injection"] and pol.output.pii.action == "redact"
    (tmp_path / "p.yaml").write_text("output:\n  length: {max_chars: 10}\n")
    assert from_config(GuardConfig(policy="p.yaml"), tmp_path).output.length.max_chars == 10
    with pytest.raises(ConfigError, match="topics needs deny/allow lists"):
        from_config(GuardConfig(input=["topics"]))
