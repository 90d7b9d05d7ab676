"""Eval tasks: what is asked and how the answer is scored, read from JSONL (or a task YAML naming a JSONL).

One JSON object per line; `type` says how the row is scored (the same way on every target):

    {"type": "generate", "prompt": "How do I reset my router?", "checks": {"contains": "Nimbus here!"}}
    {"type": "generate", "messages": [...], "reference": "Paris", "checks": {"exact": true, "f1": true}}
    {"type": "choice", "prompt": "Question: Paris is the capital of\\nAnswer:", "choices": ["France", "Spain"], "answer": 0}
    {"type": "perplexity", "text": "a passage"}       # or "prompt" + "completion": only the completion is scored

    {"type": "judge", "prompt": "...", "rubric": "Correct and polite.", "reference"?: "...", "scale"?: "1-5"}
    {"type": "pairwise", "prompt": "...", "rubric"?: "...", "against"?: "a reply" | "reply_a" + "reply_b"?: ...}

judge and pairwise rows are scored by an LLM judge (judge.py): a pairwise row compares the model's reply with
`against`, or two given replies, or (neither given) the baseline's reply.
generate checks: exact (== reference, surrounding whitespace ignored), contains (a string or a list, all must
occur), regex (re.search), f1 (token F1 with reference), rouge_l (with reference), json (the reply parses).
A task YAML (`name:`, `data:` a JSONL path relative to the YAML, `defaults:` fields every row gets unless it has
its own) names the task and shares fields. Every row is checked before anything runs, and every problem is
reported at once as `file:line: field: expected ...`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmkit.errors import ConfigError, DataError

TYPES = ("generate", "choice", "perplexity", "judge", "pairwise")
SCALES = ("1-5", "0-10")  # a judge row's score range
CHECKS = ("exact", "contains", "regex", "f1", "rouge_l", "json")
_FIELDS = {
    "generate": {"id", "type", "prompt", "messages", "reference", "checks", "max_tokens"},
    "choice": {"id", "type", "prompt", "choices", "answer"},
    "perplexity": {"id", "type", "text", "prompt", "completion"},
    # scored by an LLM judge (judge.py)
    "judge": {"id", "type", "prompt", "messages", "rubric", "reference", "scale", "max_tokens"},
    "pairwise": {"id", "type", "prompt", "messages", "rubric", "against", "reply_a", "reply_b", "max_tokens"},
}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


@dataclass
class Item:
    id: str
    type: str
    row: dict[str, Any]  # the validated row (defaults applied)
    # A built-in suite's own scorer (safety, bias, ...): score(target, row, max_tokens) -> the fields items.jsonl
    # keeps for this item, with its 0..1 scores under "scores". None: scored by `type` (generate/choice/perplexity).
    score: Callable[[Any, dict, int], dict] | None = None


@dataclass
class Summary:
    """What a suite makes of one target's records: flat metrics (the task's name is put in front of each) and
    tables for the report, each {"id", "title", "columns": [...], "rows": [[...]], "note"?, "chart"?} where
    chart = {"type": "bar" | "bar_ci", "label": column, "value": column, "lo"?: column, "hi"?: column}."""

    metrics: dict[str, float]
    tables: list[dict] = field(default_factory=list)


@dataclass
class Task:
    name: str
    source: str  # the file or folder the items come from (hashed into the eval's manifest)
    items: list[Item] = field(default_factory=list)
    # A suite's own aggregation of one target's records; None: the mean of each score, perplexity from the nlls.
    summarize: Callable[[list[dict]], Summary] | None = None
    # Further files or folders the items depend on (the rag task's index), hashed into the manifest beside source.
    inputs: list[str] = field(default_factory=list)

    @property
    def types(self) -> set[str]:
        return {i.type for i in self.items}


def _is_messages(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in v)


def check_row(row: Any) -> list[str]:
    """The problems of one row, each `field: expected ..., got ...` (empty when the row is fine)."""
    if not isinstance(row, dict):
        return [f"row: expected a JSON object, got {type(row).__name__}"]
    kind = row.get("type")
    if kind not in TYPES:
        return [f"type: expected one of {', '.join(TYPES)}, got {kind!r}"]
    out = [f"{k}: unknown field for type {kind} (allowed: {', '.join(sorted(_FIELDS[kind]))})"
           for k in row if k not in _FIELDS[kind]]
    if "id" in row and not isinstance(row["id"], (str, int)):
        out.append(f"id: expected a string or an integer, got {row['id']!r}")

    def text(k: str, required: bool = True) -> None:
        if k not in row:
            if required:
                out.append(f"{k}: expected a string, but it is missing")
        elif not isinstance(row[k], str) or not row[k]:
            out.append(f"{k}: expected a non-empty string, got {row[k]!r}")

    if kind == "generate":
        if ("prompt" in row) == ("messages" in row):
            out.append("prompt: expected exactly one of prompt (a string) or messages (a list of {role, content})")
        elif "prompt" in row:
            text("prompt")
        elif not _is_messages(row["messages"]):
            out.append(f"messages: expected a non-empty list of {{role, content}} objects, got {row['messages']!r}")
        text("reference", required=False)
        checks = row.get("checks")
        if not isinstance(checks, dict) or not checks:
            out.append(f"checks: expected an object naming at least one of {', '.join(CHECKS)}, got {checks!r}")
        else:
            for k, v in checks.items():
                if k not in CHECKS:
                    out.append(f"checks.{k}: expected one of {', '.join(CHECKS)}")
                elif k == "contains" and not (isinstance(v, str) and v or isinstance(v, list) and v and all(
                        isinstance(s, str) and s for s in v)):
                    out.append(f"checks.contains: expected a string or a list of strings, got {v!r}")
                elif k == "regex":
                    if not isinstance(v, str):
                        out.append(f"checks.regex: expected a regular expression string, got {v!r}")
                    else:
                        try:
                            re.compile(v)
                        except re.error as e:
                            out.append(f"checks.regex: expected a valid regular expression ({e}), got {v!r}")
                elif k in ("exact", "f1", "rouge_l", "json") and v is not True:
                    out.append(f"checks.{k}: expected true, got {v!r}")
                elif k in ("exact", "f1", "rouge_l") and not isinstance(row.get("reference"), str):
                    out.append(f"checks.{k}: needs a reference (a string field beside checks)")
        mt = row.get("max_tokens")
        if mt is not None and not (isinstance(mt, int) and not isinstance(mt, bool) and mt > 0):
            out.append(f"max_tokens: expected an integer > 0, got {mt!r}")
    elif kind in ("judge", "pairwise"):
        if ("prompt" in row) == ("messages" in row):
            out.append("prompt: expected exactly one of prompt (a string) or messages (a list of {role, content})")
        elif "prompt" in row:
            text("prompt")
        elif not _is_messages(row["messages"]):
            out.append(f"messages: expected a non-empty list of {{role, content}} objects, got {row['messages']!r}")
        text("rubric", required=kind == "judge")
        if kind == "judge":
            text("reference", required=False)
            if row.get("scale", "1-5") not in SCALES:
                out.append(f"scale: expected one of {', '.join(SCALES)}, got {row['scale']!r}")
        else:
            for k in ("against", "reply_a", "reply_b"):
                text(k, required=False)
            if ("reply_a" in row) != ("reply_b" in row):
                out.append("reply_a: expected reply_a and reply_b together (two given replies), or neither")
            elif "reply_a" in row and "against" in row:
                out.append("against: expected either against (compared with the model's reply) or reply_a + "
                           "reply_b (two given replies), not both")
        mt = row.get("max_tokens")
        if mt is not None and not (isinstance(mt, int) and not isinstance(mt, bool) and mt > 0):
            out.append(f"max_tokens: expected an integer > 0, got {mt!r}")
    elif kind == "choice":
        text("prompt")
        choices = row.get("choices")
        if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)):
            out.append(f"choices: expected a list of at least 2 non-empty strings, got {choices!r}")
        ans = row.get("answer")
        n = len(choices) if isinstance(choices, list) else 0
        if not (isinstance(ans, int) and not isinstance(ans, bool) and 0 <= ans < max(n, 1)):
            out.append(f"answer: expected the index of the right choice (0 to {max(n - 1, 0)}), got {ans!r}")
    else:
        if "text" in row:
            text("text")
            if "prompt" in row or "completion" in row:
                out.append("text: expected either text, or prompt + completion, not both")
        else:
            text("prompt")
            text("completion")
    return out


def read_rows(path: Path, defaults: dict | None = None) -> list[tuple[int, dict]]:
    """(line, row) of every row of a task JSONL, defaults applied; DataError with every problem at once."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: no such task file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    rows, problems = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{n}: row: expected a JSON object ({e.msg}, column {e.colno})")
            continue
        if isinstance(row, dict) and defaults:
            row = {**defaults, **row}
        problems += [f"{path}:{n}: {p}" for p in check_row(row)]
        rows.append((n, row))
    if not rows and not problems:
        problems.append(f"{path}: no rows (a task file holds one JSON object per line)")
    if problems:
        raise DataError(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in task file {path}:\n"
                        + "\n".join(f"  - {p}" for p in problems))
    return rows


def load_task(spec: str, base_dir: Path = Path(".")) -> Task:
    """A task from `path.jsonl`, `path.yaml` or `NAME=path`; the name defaults to the file's stem."""
    name, _, p = spec.rpartition("=")
    path = Path(p).expanduser()
    path = path if path.is_absolute() else base_dir / path
    defaults = None
    if path.suffix in (".yaml", ".yml"):
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{path}: no such task file") from None
        except yaml.YAMLError as e:
            raise ConfigError([f"not valid YAML: {e}"], str(path)) from None
        problems = []
        if not isinstance(doc, dict):
            raise ConfigError(["a task YAML is a mapping with name:, data: and defaults:"], str(path))
        problems += [f"{k}: unknown key (allowed: name, data, defaults)" for k in doc if k not in ("name", "data", "defaults")]
        if not isinstance(doc.get("data"), str):
            problems.append(f"data: expected the path of a task JSONL, got {doc.get('data')!r}")
        if "defaults" in doc and not isinstance(doc["defaults"], dict):
            problems.append(f"defaults: expected a mapping of row fields, got {doc['defaults']!r}")
        if "name" in doc and not (isinstance(doc["name"], str) and _NAME.match(doc["name"])):
            problems.append(f"name: expected a name of letters, digits, - and _, got {doc['name']!r}")
        if problems:
            raise ConfigError(problems, str(path))
        name = name or doc.get("name") or path.stem
        defaults = doc.get("defaults")
        path = path.parent / doc["data"]
    name = name or path.stem
    if not _NAME.match(name):
        raise ConfigError([f"task name {name!r}: expected letters, digits, - and _ (give NAME=path)"], spec)
    rows = read_rows(path, defaults)
    items = [Item(str(r.get("id", n)), r["type"], r) for n, r in rows]
    dupes = sorted({i.id for i in items if [j.id for j in items].count(i.id) > 1})
    if dupes:
        raise DataError(f"{path}: ids must be unique; repeated: {', '.join(dupes)}")
    return Task(name, str(path), items)


def dataset_perplexity_task(dataset: Path, limit: int | None = None) -> Task:
    """The built-in `perplexity` task: the replies of a dataset artifact's val split, scored given their
    conversation (chat template applied by the target), or the `text` of text rows."""
    path = Path(dataset) / "val.jsonl"
    if not path.is_file():
        raise DataError(f"the built-in perplexity task scores a dataset artifact's val split, but {path} does not "
                        "exist; run the data stage (a recipe's data: section) or give a task file")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        msgs = row.get("messages")
        if _is_messages(msgs) and msgs[-1]["role"] == "assistant":
            items.append(Item(str(n), "perplexity", {"type": "perplexity", "messages": msgs}))
        elif isinstance(row.get("text"), str) and row["text"]:
            items.append(Item(str(n), "perplexity", {"type": "perplexity", "text": row["text"]}))
    if not items:
        raise DataError(f"{path}: no rows with messages ending in an assistant reply, nor text rows, to score")
    return Task("perplexity", str(path), items[:limit] if limit else items)
