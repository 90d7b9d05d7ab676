"""The data card: what went in, what came out, what was dropped and why — as JSON, Markdown and a plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def length_stats(lengths: np.ndarray, bins: int = 30) -> dict:
    if len(lengths) == 0:
        return {"count": 0}
    counts, edges = np.histogram(lengths, bins=bins)
    return {
        "count": int(len(lengths)), "total": int(lengths.sum()), "min": int(lengths.min()), "max": int(lengths.max()),
        "mean": round(float(lengths.mean()), 1), "p50": int(np.percentile(lengths, 50)),
        "p95": int(np.percentile(lengths, 95)),
        "histogram": {"edges": [round(float(e), 1) for e in edges], "counts": counts.tolist()},
    }


def plot_lengths(lengths: np.ndarray, max_tokens: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    ax.hist(lengths, bins=40, color="#3b75af")
    ax.set_xlabel("tokens per row (chat template applied)")
    ax.set_ylabel("rows")
    ax.set_title(f"Token lengths of kept rows (n={len(lengths)}, p50={int(np.median(lengths)) if len(lengths) else 0})")
    if len(lengths) and max_tokens < lengths.max() * 1.5:  # a far-away limit line would squash the bars
        ax.axvline(max_tokens, color="#c44", linestyle="--", label=f"max_tokens={max_tokens}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summary(card: dict) -> str:
    """The one-line result the CLI and `llmkit run` print."""
    dropped = ", ".join(f"{k} {v}" for k, v in card["dropped"].items() if v) or "none"
    added = "".join(f"; added: {k} {v}" for k, v in card.get("augmented", {}).items())
    return (f"{card['rows_in']} rows in → train {card['rows_out']['train']}, val {card['rows_out']['val']}; "
            f"dropped: {dropped}{added}")


def write_card(card: dict, folder: Path) -> None:
    (folder / "data_card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    (folder / "data_card.md").write_text(to_markdown(card))


def to_markdown(card: dict) -> str:
    t = card["tokens"]
    lines = [
        f"# Data card: {card['name']}", "",
        f"Kind: **{card['kind']}**; formats: {', '.join(f'`{k}`: {v}' for k, v in card['formats'].items())}.", "",
        "| rows | count |", "|---|---:|",
        f"| read | {card['rows_in']} |",
        f"| kept for train | {card['rows_out']['train']} |",
        f"| kept for val | {card['rows_out']['val']} |",
    ]
    lines += [f"| dropped: {reason} | {n} |" for reason, n in card["dropped"].items() if n]
    lines += [f"| added: {k} copies (in train) | {n} |" for k, n in card.get("augmented", {}).items()]
    if card.get("invalid_reasons"):
        lines += ["", "Invalid rows by reason:", ""] + [f"- {r}: {n}" for r, n in card["invalid_reasons"].items()]
    if card.get("pii_found"):
        lines += ["", f"Personal data found ({card['pii']}):", ""] + [f"- {k}: {v}" for k, v in card["pii_found"].items()]
    if t.get("count"):
        lines += ["", f"Tokens per kept row: min {t['min']}, p50 {t['p50']}, mean {t['mean']}, p95 {t['p95']}, "
                      f"max {t['max']}; {t['total']} in all.", "", "![token lengths](token_lengths.png)"]
    lines += ["", "| file | sha256 |", "|---|---|"]
    lines += [f"| in: {k} | `{v[:16]}` |" for k, v in card["inputs"].items()]
    lines += [f"| out: {k} | `{v[:16]}` |" for k, v in card["outputs"].items()]
    return "\n".join(lines) + "\n"
