"""Charts for the eval report as inline SVG strings, drawn here so the report is one file that needs no script,
no font and no network. Every chart is `<svg class="chart" data-kind=...>`; its marks are `rect.bar` and
`path.line`, which the browser test counts to know each chart was drawn.

    bars_ci([("female", 0.61, 0.52, 0.70), ("male", 0.58, None, None)], "refusal rate")
    grouped([("acc", {"tuned": 0.8, "base": 0.6})], {"tuned": "#2563eb", "base": "#9ca3af"})
    lines({"train": [(1, 2.6), (2, 2.1)], "val": [(2, 2.2)]}, "step", "loss")
    histogram([126.0, 130.0, 134.0], [7, 12], "tokens per row")
"""

from __future__ import annotations

import math
from html import escape

FONT = 'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif"'
INK, MUTED, GRID = "#1f2937", "#6b7280", "#e5e7eb"


def fmt(v: float | None, digits: int = 4) -> str:
    """A number at a readable precision (`digits` significant digits; integers as integers)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int) or float(v).is_integer() and abs(v) < 1e9:
        return f"{int(v):,}"
    return f"{v:.{digits}g}"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values spanning [lo, hi] (the 1-2-5 steps of a plotting library)."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    return [round(first + i * step, 10) for i in range(int(math.ceil((hi - first) / step)) + 1)]


def frame(w: int, h: int, kind: str, body: str, title: str = "") -> str:
    """The `<svg class="chart">` around a chart's marks (what the browser tests find and count)."""
    label = f' aria-label="{escape(title)}"' if title else ""
    # scales down with its container (never up): a chart in a half-width card stays whole and legible
    return (f'<svg class="chart" data-kind="{kind}" role="img"{label} viewBox="0 0 {w} {h}" width="{w}" '
            f'height="{h}" style="max-width:100%;height:auto" xmlns="http://www.w3.org/2000/svg" {FONT}>{body}</svg>')


def bars_ci(rows: list[tuple[str, float, float | None, float | None]], value_label: str = "",
            color: str = "#2563eb") -> str:
    """Horizontal bars, one per row (label, value, lo, hi), with a whisker from lo to hi where given."""
    rows = [r for r in rows if isinstance(r[1], (int, float))]
    if not rows:
        return ""
    vals = [v for _, x, lo, hi in rows for v in (x, lo, hi) if isinstance(v, (int, float))]
    ticks = _ticks(min(0.0, *vals), max(0.0, *vals))
    lo_d, hi_d = ticks[0], ticks[-1]
    left = min(220, 14 + 7 * max(len(str(r[0])) for r in rows))
    w, plot_w, row_h = 640, 640 - left - 70, 26
    h = 30 + row_h * len(rows) + 26

    def x(v: float) -> float:
        return left + (v - lo_d) / (hi_d - lo_d) * plot_w

    out = [f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="22" y2="{h - 24}" stroke="{GRID}"/>'
           f'<text x="{x(t):.1f}" y="{h - 8}" font-size="11" fill="{MUTED}" text-anchor="middle">{fmt(t)}</text>'
           for t in ticks]
    if value_label:
        out.append(f'<text x="{left}" y="13" font-size="11" fill="{MUTED}">{escape(value_label)}</text>')
    for i, (label, v, lo, hi) in enumerate(rows):
        y = 24 + i * row_h
        x0, x1 = sorted((x(0.0), x(v)))
        ci = f" [{fmt(lo)}, {fmt(hi)}]" if lo is not None and hi is not None else ""
        out.append(f'<text x="{left - 8}" y="{y + 15}" font-size="12" fill="{INK}" text-anchor="end">'
                   f'{escape(str(label))}</text>')
        out.append(f'<rect class="bar" x="{x0:.1f}" y="{y + 4}" width="{max(x1 - x0, 1):.1f}" height="{row_h - 10}" '
                   f'rx="2" fill="{color}" fill-opacity="0.85"><title>{escape(str(label))}: {fmt(v)}{ci}</title></rect>')
        end = x1
        if lo is not None and hi is not None:
            a, b, m = x(lo), x(hi), y + row_h / 2 - 1
            out.append(f'<path class="whisker" d="M{a:.1f},{m}H{b:.1f}M{a:.1f},{m - 5}V{m + 5}M{b:.1f},{m - 5}V{m + 5}" '
                       f'stroke="{INK}" stroke-width="1.4" fill="none"/>')
            end = max(end, b)
        out.append(f'<text x="{end + 6:.1f}" y="{y + 15}" font-size="11" fill="{INK}">{fmt(v)}</text>')
    return frame(w, h, "bar_ci" if any(r[2] is not None for r in rows) else "bar", "".join(out), value_label)


def grouped(metrics: list[tuple[str, dict[str, float | None]]], colors: dict[str, str]) -> str:
    """Small multiples: one panel per metric, one bar per series (tuned, base), each panel on its own scale
    (a perplexity of 20 and an accuracy of 0.6 share no axis)."""
    panels = [(name, vals) for name, vals in metrics if any(isinstance(v, (int, float)) for v in vals.values())]
    if not panels:
        return ""
    pw, ph, per_row = 130, 150, 4
    rows = math.ceil(len(panels) / per_row)
    w, h = max(pw * min(len(panels), per_row), 30 + 90 * len(colors)), ph * rows + 22  # room for the legend
    out = []
    for n, (c, s) in enumerate(colors.items()):  # the legend
        out.append(f'<rect x="{8 + n * 90}" y="4" width="10" height="10" rx="2" fill="{s}"/>'
                   f'<text x="{22 + n * 90}" y="13" font-size="11" fill="{INK}">{escape(c)}</text>')
    for i, (name, vals) in enumerate(panels):
        ox, oy = (i % per_row) * pw, 22 + (i // per_row) * ph
        nums = [v for v in vals.values() if isinstance(v, (int, float))]
        top = max(max(nums), 0.0) or 1.0
        base_y, plot_h = oy + ph - 34, ph - 66
        bw = 36
        start = ox + (pw - bw * len(vals) - 8 * (len(vals) - 1)) / 2
        out.append(f'<line x1="{ox + 10}" x2="{ox + pw - 10}" y1="{base_y}" y2="{base_y}" stroke="{GRID}"/>')
        for j, (series, v) in enumerate(vals.items()):
            if not isinstance(v, (int, float)):
                continue
            bh = max(abs(v) / top * plot_h, 1) if top else 1
            bx = start + j * (bw + 8)
            out.append(f'<rect class="bar" x="{bx:.1f}" y="{base_y - bh:.1f}" width="{bw}" height="{bh:.1f}" rx="2" '
                       f'fill="{colors.get(series, "#2563eb")}"><title>{escape(name)} ({escape(series)}): {fmt(v)}'
                       f'</title></rect>'
                       f'<text x="{bx + bw / 2:.1f}" y="{base_y - bh - 4:.1f}" font-size="11" fill="{INK}" '
                       f'text-anchor="middle">{fmt(v, 3)}</text>')
        short = name if len(name) <= 19 else name[:18] + "…"
        out.append(f'<text x="{ox + pw / 2}" y="{base_y + 18}" font-size="11.5" fill="{INK}" text-anchor="middle">'
                   f'<title>{escape(name)}</title>{escape(short)}</text>')
    return frame(w, h, "grouped", "".join(out))


def lines(series: dict[str, list[tuple[float, float]]], x_label: str, y_label: str,
          colors: dict[str, str] | None = None) -> str:
    """A line chart of each series' (x, y) points: the training loss curve."""
    series = {k: [(float(a), float(b)) for a, b in v] for k, v in series.items() if v}
    if not series:
        return ""
    colors = colors or {}
    palette = ["#2563eb", "#dc2626", "#059669", "#d97706"]
    xs = [p[0] for v in series.values() for p in v]
    ys = [p[1] for v in series.values() for p in v]
    xt, yt = _ticks(min(xs), max(xs), 6), _ticks(min(ys), max(ys), 5)
    w, h, left, right, top, bottom = 640, 260, 56, 16, 28, 40
    pw, ph = w - left - right, h - top - bottom

    def px(v: float) -> float:
        return left + (v - xt[0]) / ((xt[-1] - xt[0]) or 1) * pw

    def py(v: float) -> float:
        return top + ph - (v - yt[0]) / ((yt[-1] - yt[0]) or 1) * ph

    out = [f'<line x1="{left}" x2="{w - right}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="{GRID}"/>'
           f'<text x="{left - 6}" y="{py(t) + 4:.1f}" font-size="11" fill="{MUTED}" text-anchor="end">{fmt(t)}</text>'
           for t in yt]
    out += [f'<text x="{px(t):.1f}" y="{top + ph + 16}" font-size="11" fill="{MUTED}" text-anchor="middle">'
            f'{fmt(t)}</text>' for t in xt]
    out.append(f'<text x="{left + pw / 2}" y="{h - 6}" font-size="11.5" fill="{INK}" text-anchor="middle">'
               f'{escape(x_label)}</text>'
               f'<text x="14" y="{top + ph / 2}" font-size="11.5" fill="{INK}" text-anchor="middle" '
               f'transform="rotate(-90 14 {top + ph / 2})">{escape(y_label)}</text>')
    key_x = left + 10  # the legend runs left to right, each entry as wide as its name
    for n, (name, pts) in enumerate(series.items()):
        c = colors.get(name, palette[n % len(palette)])
        d = "M" + "L".join(f"{px(a):.1f},{py(b):.1f}" for a, b in pts)
        out.append(f'<path class="line" d="{d}" fill="none" stroke="{c}" stroke-width="2">'
                   f'<title>{escape(name)}: {fmt(pts[0][1])} → {fmt(pts[-1][1])}</title></path>')
        if len(pts) <= 40:
            out += [f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="2.6" fill="{c}"><title>{escape(name)} step '
                    f'{fmt(a)}: {fmt(b)}</title></circle>' for a, b in pts]
        out.append(f'<rect x="{key_x}" y="8" width="10" height="10" rx="2" fill="{c}"/>'
                   f'<text x="{key_x + 14}" y="17" font-size="11" fill="{INK}">{escape(name)}</text>')
        key_x += max(90, 30 + 7 * len(name))
    return frame(w, h, "line", "".join(out), y_label)


def histogram(edges: list[float], counts: list[int], x_label: str, color: str = "#2563eb") -> str:
    """Vertical bars over bins (`edges` has one more value than `counts`): a data card's token lengths."""
    if not counts or len(edges) != len(counts) + 1 or not any(counts):
        return ""
    w, h, left, right, top, bottom = 640, 220, 48, 16, 14, 40
    pw, ph = w - left - right, h - top - bottom
    yt = _ticks(0, max(counts), 4)
    lo, hi = edges[0], edges[-1] if edges[-1] > edges[0] else edges[0] + 1

    def px(v: float) -> float:
        return left + (v - lo) / (hi - lo) * pw

    def py(v: float) -> float:
        return top + ph - v / (yt[-1] or 1) * ph

    out = [f'<line x1="{left}" x2="{w - right}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="{GRID}"/>'
           f'<text x="{left - 6}" y="{py(t) + 4:.1f}" font-size="11" fill="{MUTED}" text-anchor="end">{fmt(t)}</text>'
           for t in yt]
    out += [f'<text x="{px(t):.1f}" y="{top + ph + 16}" font-size="11" fill="{MUTED}" text-anchor="middle">{fmt(t)}'
            f'</text>' for t in _ticks(lo, hi, 6) if lo <= t <= hi]
    for a, b, n in zip(edges, edges[1:], counts):
        if n:
            x0, x1 = px(a), px(b)
            out.append(f'<rect class="bar" x="{x0 + 0.5:.1f}" y="{py(n):.1f}" width="{max(x1 - x0 - 1, 1):.1f}" '
                       f'height="{py(0) - py(n):.1f}" fill="{color}" fill-opacity="0.85"><title>{fmt(a)}–{fmt(b)}: '
                       f'{n}</title></rect>')
    out.append(f'<text x="{left + pw / 2}" y="{h - 6}" font-size="11.5" fill="{INK}" text-anchor="middle">'
               f'{escape(x_label)}</text>')
    return frame(w, h, "histogram", "".join(out), x_label)
