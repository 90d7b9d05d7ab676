"""The run report's serving section: the registered versions of the run, a load benchmark of the server
(bench/serve_load.py's JSON) and a server's request log summed up over time (monitor.report.summarize), each
drawn as inline SVG. Found in RUN_DIR/serve/ unless named with --request-log / --bench:

    runs/support-assistant/serve/requests.db        `llmkit serve --request-log runs/support-assistant/serve/requests.db`
    runs/support-assistant/serve/serve_load.json    `python bench/serve_load.py --out runs/support-assistant/serve/serve_load.json`
"""

from __future__ import annotations

import datetime as dt
import json
from html import escape
from pathlib import Path

from llmkit.eval import svg
from llmkit.eval.report import link
from llmkit.monitor.store import SQLITE_SUFFIXES
from llmkit.web.report_links import Page

FOLDERS = ("serve",)
LOG_NAMES = tuple(f"requests{s}" for s in (*SQLITE_SUFFIXES, ".jsonl"))
BENCH_NAME = "serve_load.json"
PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2"]


def find(run: Path, request_log: str | Path | None, bench: str | Path | None) -> tuple[Path | None, Path | None]:
    """The request log and benchmark to show: the ones named, else those in the run's serve/ folder."""
    def first(names: tuple[str, ...]) -> Path | None:
        return next((run / d / n for d in FOLDERS for n in names if (run / d / n).is_file()), None)

    return (Path(request_log) if request_log else first(LOG_NAMES)), (Path(bench) if bench else first((BENCH_NAME,)))


def _registry(p: Page, versions: list[dict]) -> str:
    if not versions:
        return ""
    rows = []
    for v in versions:
        src = Path(v["source_path"])
        man = (src if src.is_dir() else src.parent) / "manifest.json"
        where = link(p.href(man), str(src)) if man.is_file() else escape(str(src))
        created = dt.datetime.fromtimestamp(v["created"] / 1000, dt.timezone.utc).isoformat(timespec="seconds") \
            if isinstance(v.get("created"), (int, float)) else ""
        rows.append(f'<tr><td><b>{escape(v["name"])}</b></td><td class="num">{v["version"]}</td><td>'
                    f'{" ".join(f"<span class=pill>@{escape(a)}</span>" for a in v.get("aliases") or []) or "–"}</td>'
                    f'<td>{escape(str(v.get("format")))}</td><td>{escape(created)}</td><td>{where}</td></tr>')
    return ('<h3>Registered versions (the model registry)</h3><table><tr><th>name</th><th class="num">version</th>'
            '<th>aliases</th><th>format</th><th>registered</th><th>made from (its manifest)</th></tr>'
            f'{"".join(rows)}</table>')


def _bench(p: Page, path: Path) -> str:
    try:
        b = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return f'<h3>Load benchmark</h3><p class="notrun">unreadable: {escape(str(path))}: {escape(str(e))}</p>'
    rows, tok, lat = [], {}, {}
    for i, r in enumerate(b.get("runs") or []):
        name = f'{r.get("server")} · {r["threads"]} thread{"s" if r["threads"] != 1 else ""}' \
            if r.get("threads") is not None else str(r.get("server"))
        if r.get("error"):
            rows.append(f'<tr><td>{escape(name)}</td><td colspan="8" class="worse">failed: {escape(r["error"])}</td></tr>')
            continue
        for j, lv in enumerate(r.get("levels") or []):
            at = f"runs[{i}].levels[{j}]"
            if lv.get("skipped"):
                rows.append(f'<tr><td>{escape(name)}</td><td class="num">{lv["clients"]}</td><td colspan="7" '
                            f'class="muted">skipped ({escape(str(lv["skipped"]))})</td></tr>')
                continue
            for chart, key in ((tok, "tok_s"), (lat, "p50_latency")):
                if lv.get(key) is not None:
                    chart.setdefault(name, []).append((lv["clients"], lv[key]))
            cells = "".join(f'<td class="num">{p.num(lv.get(k), path, f"{at}.{k}", 3)}</td>' for k in
                            ("tok_s", "p50_latency", "p95_latency", "p50_ttft", "decode_tok_s"))
            rows.append(f'<tr><td>{escape(name)}</td><td class="num">{lv["clients"]}</td><td class="num">'
                        f'{p.num(lv.get("ok"), path, at + ".ok")}/{p.num(lv.get("requests"), path, at + ".requests")}'
                        f'</td><td class="num">{p.num(lv.get("cut"), path, at + ".cut")}</td>{cells}</tr>')
    colors = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(dict.fromkeys([*tok, *lat]))}
    charts = [svg.lines(tok, "concurrent clients", "aggregate completion tok/s", colors),
              svg.lines(lat, "concurrent clients", "p50 latency (s)", colors)]
    load = b.get("load_start")
    warn = (f'<p class="worse">1-minute load was {svg.fmt(load)} at the start: other work was running; treat the '
            'figures as noise.</p>' if isinstance(load, (int, float)) and load > 0.5 else "")
    return (f'<h3>Load benchmark</h3><div class="src">from {link(p.href(path), path.name)} (bench/serve_load.py) · '
            f'model {escape(str(b.get("model", "?")))} · uptime at start: {escape(str(b.get("uptime_start", "?")))}</div>'
            f'{warn}<table><tr><th>server</th><th class="num">clients</th><th class="num">ok/requests</th>'
            '<th class="num">cut short</th><th class="num">tok/s</th><th class="num">p50 latency s</th>'
            '<th class="num">p95 latency s</th><th class="num">p50 TTFT s</th><th class="num">decode tok/s per request'
            f'</th></tr>{"".join(rows)}</table><div class="grid">'
            f'{"".join(f"<div class=card>{c}</div>" for c in charts if c)}</div>')


def _monitor(p: Page, path: Path) -> str:
    from llmkit.monitor.report import summarize

    try:
        s = summarize(path)
        span = s.total.end - s.total.start
        if len(s.windows) < 12 and span > 0:  # the default windows (≥ 60 s) are too coarse for a short log
            s = summarize(path, window=max(span / 20, 1.0))
    except Exception as e:  # noqa: BLE001 -- a damaged log costs its own charts, not the page
        return f'<h3>Request log</h3><p class="notrun">unreadable: {escape(str(path))}: {escape(str(e))}</p>'
    t = s.total
    if not t.requests:
        return f'<h3>Request log</h3><p class="notrun">{escape(str(path))} holds no requests yet</p>'
    t0 = s.windows[0].start

    def series(key: str) -> list[tuple[float, float]]:
        return [((w.start - t0) / 60, getattr(w, key)) for w in s.windows if getattr(w, key) is not None]

    charts = [
        svg.lines({"p50": series("latency_p50"), "p95": series("latency_p95"), "TTFT p50": series("ttft_p50")},
                  "minutes", "latency (s)", {"p50": "#2563eb", "p95": "#dc2626", "TTFT p50": "#059669"}),
        svg.lines({"tokens/s": series("tokens_per_s")}, "minutes", "tokens/s per request (median)"),
        svg.lines({k: [((w.start - t0) / 60, float(getattr(w, k))) for w in s.windows]
                   for k in ("requests", "errors", "refused")},
                  "minutes", f"per {svg.fmt(s.window_s, 3)} s window", {"requests": "#2563eb", "errors": "#dc2626",
                                                                       "refused": "#d97706"}),
    ]
    rows = [("requests", t.requests, "requests"), ("server errors (5xx)", t.errors, "status"),
            ("client errors (4xx)", t.client_errors, "status"), ("refused by the guard", t.refused, "refused"),
            ("latency p50 s", t.latency_p50, "latency_s"), ("latency p95 s", t.latency_p95, "latency_s"),
            ("time to first token p50 s", t.ttft_p50, "ttft_s"), ("tokens/s per request", t.tokens_per_s, "completion_tokens"),
            ("completion tokens", t.completion_tokens, "completion_tokens"), ("feedback: thumbs up", t.feedback_up, "feedback"),
            ("feedback: thumbs down", t.feedback_down, "feedback")]
    rows += [(f"guard hits {k}", v, "guard") for k, v in t.guard.items()]
    rows += [(f"RAG source {src}", n, "rag") for src, n in s.rag_sources]
    table = '<table class="kv">' + "".join(f'<tr><td>{escape(k)}</td><td class="num">{p.num(v, path, col, 3)}</td></tr>'
                                           for k, v, col in rows) + "</table>"
    when = dt.datetime.fromtimestamp(t.start, dt.timezone.utc).isoformat(timespec="seconds")
    return (f'<h3>Request log</h3><div class="src">from {link(p.href(path), path.name)} (a server\'s request log; '
            f'<code>llmkit monitor {escape(path.name)}</code> prints the same windows) · from {escape(when)}, '
            f'{svg.fmt((t.end - t.start) / 60, 3)} minutes</div><div class="grid"><div>{table}</div>'
            f'{"".join(f"<div class=card>{c}</div>" for c in charts if c)}</div>')


def section(p: Page, run: Path, log: Path | None, bench: Path | None, registry: list[dict]) -> str:
    parts = [_registry(p, registry)]
    if bench is not None:
        parts.append(_bench(p, bench) if bench.is_file() else
                     f'<h3>Load benchmark</h3><p class="notrun">no such file: {escape(str(bench))}</p>')
    if log is not None:
        parts.append(_monitor(p, log) if log.is_file() else
                     f'<h3>Request log</h3><p class="notrun">no such file: {escape(str(log))}</p>')
    if not "".join(parts):
        return ('<section id="serving"><h2>Serving</h2><p class="notrun">not run: no registered version, load '
                'benchmark or request log for this run.</p><p class="note">Serve with <code>llmkit serve '
                f'--request-log {escape(str(run / "serve" / "requests.db"))}</code>, measure with <code>python '
                f'bench/serve_load.py --out {escape(str(run / "serve" / BENCH_NAME))}</code>, or name them with '
                '<code>--request-log</code> / <code>--bench</code>.</p></section>')
    return f'<section id="serving"><h2>Serving</h2>{"".join(parts)}</section>'
