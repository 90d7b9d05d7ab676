"""One input row after the data stage's per-row transforms: what the in-process path (prepare.py) and the Ray
path (ray_backend.py) both hand to the in-order half of the stage."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Item:
    """One input row after the per-row transforms."""

    file: str
    line: int
    row: str | None = None  # the normalized, cleaned, scrubbed row as a JSON line; None when invalid
    key: bytes = b""  # exact-duplicate digest of `row`
    ask: str = ""  # what the row asks (user turns), for near dedupe
    tokens: int = 0
    error: str | None = None
    category: str | None = None  # short reason, for the data card's counts
    raw: dict | None = None  # the input row, for rejects.jsonl
    pii: dict = field(default_factory=dict)
    twins: list[str] = field(default_factory=list)  # counterfactual copies of `row` (data.augment: counterfactual)
    twin_tokens: list[int] = field(default_factory=list)
    drop: bool = False  # a finding whose rule is to drop the row (data.pii: drop, or a guard rail's block)
