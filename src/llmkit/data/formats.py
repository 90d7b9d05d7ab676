"""Row formats, detected or named, and normalized to DESIGN.md's rows.

| format            | input fields                               | normalized row                      |
|-------------------|--------------------------------------------|-------------------------------------|
| messages          | messages: [{role, content}, …]             | {messages}                          |
| sharegpt          | conversations: [{from, value}, …]          | {messages}                          |
| alpaca            | instruction, input (optional), output      | {messages}                          |
| prompt_completion | prompt, completion                         | {messages}                          |
| preference        | prompt, chosen, rejected                   | {prompt, chosen, rejected}          |
| text              | text                                       | {text}  (continued pretraining)     |

`normalize` raises RowError naming the field and what was expected; the caller adds file and line.
"""

from __future__ import annotations

from typing import Any

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "preference", "text")

# What each format needs; detection takes the first format whose keys are all present (order matters:
# preference rows also have `prompt`, so preference is tried before prompt_completion).
_KEYS = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "preference": ("prompt", "chosen", "rejected"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
_DETECT_ORDER = ("messages", "sharegpt", "preference", "alpaca", "prompt_completion", "text")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}


class RowError(ValueError):
    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"field '{field}': {problem}")


def kind_of(fmt: str) -> str:
    """The normalized kind a format produces: 'sft', 'preference' or 'text'."""
    return {"preference": "preference", "text": "text"}.get(fmt, "sft")


def detect(row: dict) -> str | None:
    for fmt in _DETECT_ORDER:
        if all(k in row for k in _KEYS[fmt]):
            return fmt
    return None


def expected_fields(fmt: str) -> str:
    return ", ".join(_KEYS[fmt])


def _text(row: dict, key: str, field: str | None = None, allow_empty: bool = False) -> str:
    field = field or key
    if key not in row or row[key] is None:
        raise RowError(field, "missing")
    v = row[key]
    if not isinstance(v, str):
        raise RowError(field, f"expected a string, got {type(v).__name__}")
    if not allow_empty and not v.strip():
        raise RowError(field, "empty")
    return v


def check_messages(messages: Any, field: str = "messages") -> list[dict]:
    """Roles in order: an optional system turn, then user/assistant alternating, ending with assistant."""
    if not isinstance(messages, list):
        raise RowError(field, f"expected a list of {{role, content}}, got {type(messages).__name__}")
    if not messages:
        raise RowError(field, "empty conversation")
    out = []
    for i, m in enumerate(messages):
        f = f"{field}[{i}]"
        if not isinstance(m, dict):
            raise RowError(f, f"expected an object with role and content, got {type(m).__name__}")
        role = m.get("role")
        if role not in ("system", "user", "assistant"):
            raise RowError(f"{f}.role", f"expected system, user or assistant, got {role!r}")
        content = _text(m, "content", f"{f}.content", allow_empty=role == "system")
        out.append({"role": role, "content": content})
    turns = out[1:] if out[0]["role"] == "system" else out
    for i, m in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            idx = i + (len(out) - len(turns))
            raise RowError(f"{field}[{idx}].role", f"bad role order: expected {want} at this turn, got {m['role']}")
    if not turns or turns[-1]["role"] != "assistant":
        raise RowError(field, "the conversation must end with an assistant turn")
    return out


def normalize(row: dict, fmt: str) -> dict:
    """One input row in format `fmt` → its normalized row. Raises RowError."""
    missing = [k for k in _KEYS[fmt] if k not in row]
    if missing:
        raise RowError(missing[0], f"missing (format '{fmt}' needs: {expected_fields(fmt)})")
    if fmt == "messages":
        return {"messages": check_messages(row["messages"])}
    if fmt == "sharegpt":
        conv = row["conversations"]
        if not isinstance(conv, list):
            raise RowError("conversations", f"expected a list of {{from, value}}, got {type(conv).__name__}")
        msgs = []
        for i, turn in enumerate(conv):
            if not isinstance(turn, dict):
                raise RowError(f"conversations[{i}]", f"expected an object, got {type(turn).__name__}")
            role = _SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
            if role is None:
                raise RowError(f"conversations[{i}].from", f"expected human, gpt or system, got {turn.get('from')!r}")
            msgs.append({"role": role, "content": turn.get("value")})
        return {"messages": check_messages(msgs, "conversations")}
    if fmt == "alpaca":
        instruction = _text(row, "instruction")
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise RowError("input", f"expected a string, got {type(extra).__name__}")
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": _text(row, "output")}]}
    if fmt == "prompt_completion":
        return {"messages": [{"role": "user", "content": _text(row, "prompt")},
                             {"role": "assistant", "content": _text(row, "completion")}]}
    if fmt == "preference":
        out = {k: _text(row, k) for k in ("prompt", "chosen", "rejected")}
        if out["chosen"] == out["rejected"]:
            raise RowError("rejected", "identical to chosen")
        return out
    if fmt == "text":
        return {"text": _text(row, "text")}
    raise ValueError(f"unknown format {fmt!r}")


def texts(row: dict) -> list[str]:
    """Every free-text field of a normalized row (for cleaning, PII scrubbing and dedupe)."""
    if "messages" in row:
        return [m["content"] for m in row["messages"]]
    if "chosen" in row:
        return [row["prompt"], row["chosen"], row["rejected"]]
    return [row["text"]]


def asks(row: dict) -> str:
    """What a row asks: its user turns (or prompt, or text). Near-dedupe compares this side only: two rows
    asking the same thing in nearly the same words are redundant even when their answers differ."""
    if "messages" in row:
        return "\n".join(m["content"] for m in row["messages"] if m["role"] == "user")
    return row.get("prompt") or row["text"]


def with_texts(row: dict, new: list[str]) -> dict:
    """The same row with its free-text fields replaced, in the order `texts` gives them."""
    if "messages" in row:
        return {"messages": [{**m, "content": t} for m, t in zip(row["messages"], new)]}
    if "chosen" in row:
        return dict(zip(("prompt", "chosen", "rejected"), new))
    return {"text": new[0]}
