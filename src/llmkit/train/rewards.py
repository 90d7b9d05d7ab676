"""GRPO's rewards: built-ins and your own functions, named in the recipe and summed with weights.

    train:
      method: grpo
      rewards:
        - {fn: exact, pattern: 'Answer:\\s*(-?[\\d.]+)', field: completion}   # 1 if the answers agree
        - {fn: regex, pattern: '^Answer: -?[\\d.]+$', weight: 0.5}           # 1 if the format is kept
        - {fn: length, target_length: 48, weight: 0.2}                       # -(tokens over 48) / 48
        - {fn: json_schema, json_schema: {type: object, required: [name]}}   # 1 if valid JSON of that schema
        - {fn: reward_model, path: runs/rm/train}                            # a `method: reward` artifact
        - {fn: toxicity, weight: 0.5}                                        # -P(toxic), the guard's classifier
        - {fn: "mypkg.rewards:brevity", weight: 0.1}                         # your own

A reward function has trl's signature:

    def fn(prompts: list, completions: list[str], **row_fields) -> list[float | None]

`prompts[i]` is the prompt of `completions[i]` (the user message as a string, or the message list of a
multi-turn prompt); each field of the dataset rows comes as a keyword holding one value per completion
(`completion`: the reference reply of a prompt/completion or messages row). `None` means "does not apply"
and counts as 0 in the sum, as trl's nansum does. A `module:function` is imported (a `path/to/file.py:function`
is loaded from that file), so it must be importable where training runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmkit.config import RewardConfig
from llmkit.errors import ConfigError

BUILTINS = ("exact", "regex", "json_schema", "length", "reward_model", "toxicity")


@dataclass
class Reward:
    name: str
    weight: float
    fn: Callable  # fn(prompts, completions, **row_fields) -> list[float | None]


def _number(s: str) -> float | None:
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


def exact(pattern: str | None, field: str) -> Callable:
    """1.0 where the completion's answer equals the reference's, else 0.0. With `pattern`, its first group (or
    whole match) is the answer on both sides; numbers compare as numbers (`84` == `84.0`)."""
    rx = re.compile(pattern) if pattern else None

    def answer(text: str) -> str | None:
        if rx is None:
            return text.strip()
        m = rx.search(text)
        return None if m is None else (m.group(1) if rx.groups else m.group(0)).strip()

    def fn(prompts, completions, **rows):
        out = []
        for c, ref in zip(completions, rows[field]):
            got, want = answer(c), answer(str(ref))
            if want is None:  # the pattern does not find the reference's answer: compare with the whole reference
                want = str(ref).strip()
            a, b = (_number(got), _number(want)) if got is not None else (None, None)
            same = got is not None and ((a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9,
                                                                                          abs_tol=1e-9)) or got == want)
            out.append(1.0 if same else 0.0)
        return out

    return fn


def regex(pattern: str) -> Callable:
    """1.0 where the completion (stripped) contains a match of `pattern`, else 0.0."""
    rx = re.compile(pattern, re.MULTILINE)
    return lambda prompts, completions, **rows: [1.0 if rx.search(c.strip()) else 0.0 for c in completions]


def json_schema(schema: dict) -> Callable:
    """1.0 where the completion parses as JSON and is valid against `schema` (jsonschema), else 0.0."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)

    def fn(prompts, completions, **rows):
        out = []
        for c in completions:
            try:
                out.append(1.0 if validator.is_valid(json.loads(c.strip())) else 0.0)
            except ValueError:
                out.append(0.0)
        return out

    return fn


def length(tok, target: int) -> Callable:
    """-max(0, tokens - target) / target: zero up to `target` tokens, then a linear penalty."""
    def fn(prompts, completions, **rows):
        return [-max(0, len(tok(c, add_special_tokens=False)["input_ids"]) - target) / target for c in completions]

    return fn


def toxicity() -> Callable:
    """-P(toxic) of each completion: 1 - P(ok) of the guard's toxicity classifier (classes ok / hate / harmful;
    the head the guard's toxicity rail uses, `guard.classify.load_heads`, trained once per machine and cached).
    0 for a harmless reply, down to -1: a penalty, weighted like any other reward. ~30 µs per completion."""
    from llmkit.guard.classify import featurize, load_heads

    head = load_heads()["toxicity"]
    return lambda prompts, completions, **rows: (-head.scores(featurize(list(completions)))).tolist()


def _import(spec: str) -> Callable:
    mod, _, name = spec.rpartition(":")
    if mod.endswith(".py"):
        s = importlib.util.spec_from_file_location(Path(mod).stem, mod)
        if s is None or not Path(mod).is_file():
            raise ImportError(f"no file {mod}")
        module = importlib.util.module_from_spec(s)
        s.loader.exec_module(module)
    else:
        module = importlib.import_module(mod)
    fn = getattr(module, name)
    if not callable(fn):
        raise TypeError(f"{spec} is not callable")
    return fn


def build(specs: list[RewardConfig], tok) -> list[Reward]:
    """The recipe's rewards as callables; every problem of every entry is reported at once (ConfigError)."""
    problems, out, names = [], [], set()
    if not specs:
        problems.append("train.rewards: method grpo needs at least one reward (built-ins: "
                        f"{', '.join(BUILTINS)}; or module:function)")
    for i, s in enumerate(specs):
        where = f"train.rewards[{i}]"
        name = s.name or s.fn
        if name in names:
            problems.append(f"{where}.name: {name!r} is used twice; give each reward its own name")
        names.add(name)
        try:
            if s.fn == "exact":
                fn = exact(s.pattern, s.field)
            elif s.fn == "regex":
                if not s.pattern:
                    raise ValueError("fn regex needs a pattern")
                fn = regex(s.pattern)
            elif s.fn == "json_schema":
                if s.json_schema is None:
                    raise ValueError("fn json_schema needs a json_schema")
                import jsonschema

                jsonschema.validators.validator_for(s.json_schema).check_schema(s.json_schema)
                fn = json_schema(s.json_schema)
            elif s.fn == "length":
                fn = length(tok, s.target_length)
            elif s.fn == "reward_model":
                if not s.path:
                    raise ValueError("fn reward_model needs the path of a `method: reward` artifact")
                from llmkit.train.reward import RewardModel

                fn = RewardModel.load(s.path)
            elif s.fn == "toxicity":
                fn = toxicity()
            elif ":" in s.fn:
                fn = _import(s.fn)
            else:
                raise ValueError(f"{s.fn!r} is neither a built-in ({', '.join(BUILTINS)}) nor module:function")
        except ConfigError as e:
            problems += [f"{where}.path: {p}" for p in e.problems]
            continue
        except re.error as e:
            problems.append(f"{where}.pattern: not a valid regular expression ({e})")
            continue
        except Exception as e:  # an import error, a bad schema, a missing setting: collected, reported together
            problems.append(f"{where}.fn: {type(e).__name__}: {e}")
            continue
        out.append(Reward(name, s.weight, fn))
    if problems:
        raise ConfigError(problems)
    return out


def score(rewards: list[Reward], prompts: list, completions: list[str], fields: dict[str, list]) -> tuple:
    """((F, N) each reward's values, NaN where a function returned None; (N,) weighted sum, NaN counted as 0)."""
    import torch

    per = []
    for r in rewards:
        vals = r.fn(prompts, completions, **fields)
        if len(vals) != len(completions):
            raise ValueError(f"reward {r.name} returned {len(vals)} values for {len(completions)} completions")
        per.append([math.nan if v is None else float(v) for v in vals])
    per = torch.tensor(per, dtype=torch.float32)  # (F, N)
    weights = torch.tensor([r.weight for r in rewards], dtype=torch.float32)[:, None]  # (F, 1)
    return per, (per.nan_to_num(0.0) * weights).sum(0)
