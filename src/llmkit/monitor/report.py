"""What `llmkit monitor LOG` shows: a request log summed up over time windows, as a table, a PNG and an HTML page.

Per window: requests; p50/p95 latency and p50 time to first token (seconds); tokens/s (the median over requests
of completion tokens / latency: the speed one client sees); error rate (status ≥ 500: the server failed;
4xx are the client's and counted apart); refusal rate (`refused`: an input or output rail blocked, so the
client got a refusal, not the model's answer); guard hits per rail (side:rail); feedback (👍/👎, counted in the window of the request rated); and, with a
reference set, the drift score of the window's prompts against it (llmkit.monitor.drift). Over the whole log:
the top RAG sources given to the model.
"""

from __future__ import annotations

import base64
import html
import io
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmkit.monitor import drift as drift_
from llmkit.monitor.store import read_embeddings, read_log


@dataclass
class Window:
    start: float
    end: float
    requests: int = 0
    errors: int = 0  # status >= 500
    client_errors: int = 0  # 4xx
    refused: int = 0
    latency_p50: float | None = None
    latency_p95: float | None = None
    ttft_p50: float | None = None
    tokens_per_s: float | None = None
    completion_tokens: int = 0
    guard: dict[str, int] = field(default_factory=dict)  # "input:pii" → hits
    feedback_up: int = 0
    feedback_down: int = 0
    drift: dict | None = None  # DriftResult.to_dict() of the window's prompts

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def refusal_rate(self) -> float:
        return self.refused / self.requests if self.requests else 0.0


@dataclass
class Summary:
    windows: list[Window]
    total: Window
    rag_sources: list[tuple[str, int]]
    window_s: float

    def to_dict(self) -> dict:
        def w(x: Window) -> dict:
            return {**x.__dict__, "error_rate": x.error_rate, "refusal_rate": x.refusal_rate}

        return {"window_s": self.window_s, "total": w(self.total), "windows": [w(x) for x in self.windows],
                "rag_sources": [{"source": s, "count": n} for s, n in self.rag_sources]}


def parse_duration(text: str) -> float:
    """'90s', '5m', '2h', '1d' or plain seconds → seconds."""
    from llmkit.errors import ConfigError

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise ConfigError([f"--window {text!r}: expected a duration like 30s, 5m, 1h or 1d"]) from None
    if value <= 0:
        raise ConfigError([f"--window {text!r}: must be positive"])
    return value


def _fill(w: Window, reqs: list[dict], fb: list[dict]) -> Window:
    w.requests = len(reqs)
    w.errors = sum(1 for r in reqs if (r.get("status") or 0) >= 500)
    w.client_errors = sum(1 for r in reqs if 400 <= (r.get("status") or 0) < 500)
    w.refused = sum(1 for r in reqs if r.get("refused"))
    ok = [r for r in reqs if r.get("status") == 200]
    lat = [r["latency_s"] for r in ok if r.get("latency_s") is not None]
    if lat:
        w.latency_p50, w.latency_p95 = (float(v) for v in np.percentile(lat, [50, 95]))
    ttft = [r["ttft_s"] for r in ok if r.get("ttft_s") is not None]
    if ttft:
        w.ttft_p50 = float(np.median(ttft))
    rates = [r["completion_tokens"] / r["latency_s"] for r in ok
             if r.get("completion_tokens") and r.get("latency_s")]
    if rates:
        w.tokens_per_s = float(np.median(rates))
    w.completion_tokens = sum(r.get("completion_tokens") or 0 for r in ok)
    hits: Counter = Counter()
    for r in reqs:
        for h in r.get("guard") or []:
            hits[f"{h.get('side')}:{h.get('rail')}"] += 1
    w.guard = dict(sorted(hits.items()))
    w.feedback_up = sum(1 for f in fb if f.get("rating", 0) > 0)
    w.feedback_down = sum(1 for f in fb if f.get("rating", 0) < 0)
    return w


def summarize(path: str | Path, window: float | None = None, since: float | None = None,
              reference: str | Path | None = None, method: drift_.Method = drift_.DEFAULT_METHOD,
              threshold: float | None = None, drift_sample: int = 500, seed: int = 0) -> Summary:
    """The log at `path` in windows of `window` seconds (default: the span cut into ~12). With `reference`, each
    window's prompts (a seeded sample of at most `drift_sample`) are tested for drift; prompts whose embedding the
    server's drift monitor stored in a SQLite log are not embedded again."""
    reqs, fb = read_log(path, since)
    if not reqs:
        return Summary([], Window(0, 0), [], window or 0)
    t0, t1 = reqs[0]["time"], reqs[-1]["time"]
    if window is None:
        window = max(60.0, (t1 - t0) / 12)
    edges = np.arange(t0, t1 + window, window)
    idx = np.searchsorted(edges, [r["time"] for r in reqs], side="right") - 1
    # feedback counts in the window of the request it rates (it may come much later, or from before `since`)
    where = {r.get("request_id"): j for r, j in zip(reqs, idx)}
    fidx = [where.get(f["request_id"], -1) for f in fb]
    windows = []
    for i, start in enumerate(edges[:-1] if len(edges) > 1 else edges):
        wr = [r for r, j in zip(reqs, idx) if j == i]
        if wr:
            windows.append(_fill(Window(float(start), float(start + window)), wr,
                                 [f for f, j in zip(fb, fidx) if j == i]))
    total = _fill(Window(t0, t1), reqs, [f for f, j in zip(fb, fidx) if j >= 0])
    rag: Counter = Counter(s.get("source") for r in reqs for s in r.get("rag") or [])
    if reference is not None:
        _drift(path, reqs, idx, windows, total, reference, method, threshold, drift_sample, seed)
    return Summary(windows, total, rag.most_common(10), window)


def _drift(path, reqs, idx, windows, total, reference, method, threshold, sample, seed) -> None:
    ref = drift_.reference_embeddings(reference)
    cached = read_embeddings(path)
    rng = random.Random(seed)
    th = drift_.THRESHOLDS[method] if threshold is None else threshold

    def test(rows: list[dict]) -> dict | None:
        rows = [r for r in rows if r.get("status") == 200 and r.get("input")]
        if len(rows) > sample:
            rows = rng.sample(rows, sample)
        if len(rows) < drift_.MIN_SAMPLES:
            return None
        todo = [r for r in rows if r.get("request_id") not in cached]
        if todo:  # embedded once per run: the whole log's test reuses the windows' vectors
            cached.update(zip((r.get("request_id") or f"#{id(r)}" for r in todo),
                              drift_.embed([r["input"][-1] for r in todo])))
        vecs = np.stack([cached[r.get("request_id") or f"#{id(r)}"] for r in rows])
        res = drift_.two_sample(method, ref, vecs, seed)
        res.threshold, res.drifted = th, bool(res.score >= th and res.p_value < drift_.ALPHA)
        return res.to_dict()

    starts = [w.start for w in windows]
    for w in windows:
        i = starts.index(w.start)
        w.drift = test([r for r, j in zip(reqs, idx) if j == i] if len(windows) > 1 else reqs)
    total.drift = test(reqs[-sample:])  # the most recent prompts, as the server's monitor tests them


# ---------------------------------------------------------------------------------------------------------
# Output


def _f(x: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def table(s: Summary) -> str:
    import datetime as dt

    def when(t: float) -> str:
        return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")

    rails = sorted({k for w in s.windows for k in w.guard})
    head = ["window start (UTC)", "reqs", "p50 s", "p95 s", "ttft p50", "tok/s", "err %", "4xx", "refused %",
            "👍/👎", "drift"] + rails
    rows = []
    for w in s.windows + [s.total]:
        d = w.drift
        rows.append([("all" if w is s.total else when(w.start)), str(w.requests), _f(w.latency_p50),
                     _f(w.latency_p95), _f(w.ttft_p50), _f(w.tokens_per_s, "{:.1f}"), f"{100 * w.error_rate:.1f}",
                     str(w.client_errors), f"{100 * w.refusal_rate:.1f}", f"{w.feedback_up}/{w.feedback_down}",
                     "-" if d is None else f"{d['score']:.3f}{' ALERT' if d['drifted'] else ''}"]
                    + [str(w.guard.get(k, 0)) for k in rails])
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    out = ["  ".join(h.rjust(n) for h, n in zip(head, widths))]
    out += ["  ".join(c.rjust(n) for c, n in zip(r, widths)) for r in rows]
    if s.rag_sources:
        out += ["", "top RAG sources:"] + [f"  {n:6d}  {src}" for src, n in s.rag_sources]
    if s.total.drift is not None:
        d = s.total.drift
        out += ["", f"drift ({d['method']}, last {d['n_recent']} prompts vs {d['n_reference']} reference): "
                    f"score {d['score']:.4f}, p {d['p_value']:.4f}, threshold {d['threshold']} → "
                    f"{'DRIFT' if d['drifted'] else 'no drift'}"]
    return "\n".join(out)


def plot(s: Summary, out: str | Path | io.BytesIO) -> Path | io.BytesIO:
    """A PNG of the windows: latency, tokens/s, error and refusal rates, guard hits per rail, drift, RAG sources."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    t = [np.datetime64(int(w.start), "s") for w in s.windows]
    fig, ax = plt.subplots(2, 3, figsize=(15, 7.5), constrained_layout=True)
    empty: list = []  # panels with nothing to show: a note, no axes
    a = ax[0, 0]
    a.plot(t, [w.latency_p50 for w in s.windows], "o-", label="p50")
    a.plot(t, [w.latency_p95 for w in s.windows], "o-", label="p95")
    a.plot(t, [w.ttft_p50 for w in s.windows], "o--", label="time to first token p50")
    a.set(title="latency (s)")
    a.legend()
    ax[0, 1].plot(t, [w.tokens_per_s for w in s.windows], "o-")
    ax[0, 1].set(title="tokens/s per request (median)")
    a = ax[0, 2]
    a.plot(t, [100 * w.error_rate for w in s.windows], "o-", label="errors (5xx)")
    a.plot(t, [100 * w.refusal_rate for w in s.windows], "o-", label="refused by the guard")
    a.set(title="rates (%)")
    a.legend()
    a = ax[1, 0]
    bottom = np.zeros(len(s.windows))
    for rail in sorted({k for w in s.windows for k in w.guard}):
        v = np.array([w.guard.get(rail, 0) for w in s.windows])
        a.bar(t, v, bottom=bottom, width=0.8 * (s.window_s / 86400), label=rail)
        bottom += v
    a.set(title="guard hits per rail")
    if bottom.any():
        a.legend(fontsize=8)
    else:
        a.text(0.5, 0.5, "no rail fired", ha="center", va="center", transform=a.transAxes)
        empty.append(a)
    a = ax[1, 1]
    scores = [w.drift["score"] if w.drift else None for w in s.windows]
    if any(x is not None for x in scores):
        a.plot(t, scores, "o-", label=s.total.drift["method"] if s.total.drift else "score")
        a.axhline(next(w.drift["threshold"] for w in s.windows if w.drift), color="red", ls="--", label="alert")
        a.legend()
    else:
        a.text(0.5, 0.5, "no drift reference\n(--reference DATASET)", ha="center", va="center",
               transform=a.transAxes)
        empty.append(a)
    a.set(title="prompt drift")
    a = ax[1, 2]
    if s.rag_sources:
        names = [src if len(src) < 40 else "…" + src[-39:] for src, _ in s.rag_sources][::-1]
        a.barh(names, [n for _, n in s.rag_sources][::-1])
    else:
        a.text(0.5, 0.5, "no request named a collection", ha="center", va="center", transform=a.transAxes)
        empty.append(a)
    a.set(title="top RAG sources (whole log)")
    ax[0, 2].set_ylim(bottom=0)
    for a in empty:
        a.set_xticks([])
        a.set_yticks([])
    for a in (x for x in (ax[0, 0], ax[0, 1], ax[0, 2], ax[1, 0], ax[1, 1]) if x not in empty):
        locator = mdates.AutoDateLocator()
        a.xaxis.set_major_locator(locator)
        a.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        if len(t) == 1:  # one window: give the axis some width around it
            a.set_xlim(t[0] - np.timedelta64(int(s.window_s), "s"), t[0] + np.timedelta64(int(s.window_s), "s"))
    if not isinstance(out, io.BytesIO):
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, format="png")
    plt.close(fig)
    return out


def to_html(s: Summary, log: str | Path, out: str | Path) -> Path:
    """One self-contained page: the table and the figure (inlined, no external assets)."""
    buf = io.BytesIO()
    plot(s, buf)
    img = base64.b64encode(buf.getvalue()).decode()
    page = (f"<!doctype html><meta charset='utf-8'><title>llmkit monitor: {html.escape(str(log))}</title>"
            f"<h1>llmkit monitor</h1><p>{html.escape(str(log))}</p><img alt='charts' style='max-width:100%' "
            f"src='data:image/png;base64,{img}'><pre>{html.escape(table(s))}</pre>")
    out = Path(out)
    out.write_text(page, encoding="utf-8")
    return out
