"""Gates: thresholds on metrics, absolute (`>= 0.5`) or relative to a baseline model (`>= baseline - 0.02`).

    results = check({"support.contains": ">= baseline + 0.5"}, metrics, baseline_metrics)
    failed = [r for r in results if not r["passed"]]

Every gate is checked and every failure is reported, each with the value, the threshold and why.
"""

from __future__ import annotations

import math
import operator

from llmkit.config import GATE
from llmkit.errors import ConfigError

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}


def parse(expr: str) -> tuple[str, float | None, float]:
    """(operator, absolute threshold or None, delta from the baseline)."""
    m = GATE.match(str(expr))
    if not m:
        raise ConfigError([f"gate {expr!r}: expected '>= 0.9' or '>= baseline - 0.02' (>=, <=, >, <, ==)"])
    if m["base"]:
        delta = float(m["delta"] or 0)
        return m["op"], None, -delta if m["sign"] == "-" else delta
    return m["op"], float(m["num"]), 0.0


def uses_baseline(gates: dict[str, str]) -> bool:
    return any(parse(v)[1] is None for v in gates.values())


def check(gates: dict[str, str], metrics: dict, baseline: dict | None = None) -> list[dict]:
    """One result per gate: {gate, metric, expr, value, threshold, passed, why}."""
    out = []
    for name, expr in gates.items():
        op, absolute, delta = parse(expr)
        value = metrics.get(name)
        r = {"metric": name, "expr": expr, "value": value, "threshold": absolute, "passed": False, "why": ""}
        if absolute is None:
            base = (baseline or {}).get(name)
            if baseline is None:
                r["why"] = "no baseline was evaluated (set eval.baseline, or --baseline)"
            elif base is None:
                r["why"] = "the baseline has no such metric"
            else:
                r["threshold"] = base + delta
        if value is None and not r["why"]:
            have = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))) or "none"
            r["why"] = f"no such metric (measured: {have})"
        if not r["why"]:
            ok = not (isinstance(value, float) and math.isnan(value)) and OPS[op](value, r["threshold"])
            r["passed"] = bool(ok)
            if not ok:
                r["why"] = f"{value:.4g} is not {op} {r['threshold']:.4g}"
        r["gate"] = f"{name} {expr}"
        out.append(r)
    return out


def describe_failures(results: list[dict]) -> list[str]:
    return [f"{r['metric']} {r['expr'].strip()}: {r['why']}" for r in results if not r["passed"]]
