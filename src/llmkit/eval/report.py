"""report.html: one self-contained page per eval (inline CSS and SVG; no script, no font, no network), opened
from the eval artifact's manifest (outputs.report).

Top to bottom: the verdict and the gates (value against threshold), base vs tuned per task (a metric table and
one small bar chart per metric), the suites' own tables (safety, bias, ...: any {"id", "title", "columns",
"rows", "chart"?} table, with bar or bar-with-CI charts), interpretability (per-token confidence with the top-k
alternatives on hover, input-token attributions, the logit lens), the training loss curve (found by following
the eval's inputs to the train stage's manifest) and the inputs, each linked (relative links, so the folder can
be moved or zipped) to the file or manifest behind the numbers.
"""

from __future__ import annotations

import math
import os
from html import escape
from pathlib import Path

from llmkit import artifacts
from llmkit.eval import svg
from llmkit.eval.svg import fmt

TUNED, BASE = "#2563eb", "#9ca3af"
# Direction of a metric by its name, for the colour of a difference; a name matching neither stays neutral.
LOWER_BETTER = ("perplexity", "nll", "loss", "gap", "leak", "toxic", "over_refusal", "bias_score", "error")
HIGHER_BETTER = ("acc", "exact", "contains", "f1", "rouge", "json", "regex", "refusal_rate", "pass", "recall", "mrr",
                 "faithful", "score")

CSS = """
*{box-sizing:border-box}body{margin:0;background:#f6f7f9;color:#1f2937;font:14px/1.5 system-ui,-apple-system,
"Segoe UI",Roboto,sans-serif}header{background:#111827;color:#f9fafb;padding:22px 32px}header .kicker{font-size:12px;
letter-spacing:.08em;text-transform:uppercase;color:#9ca3af}header h1{margin:2px 0 4px;font-size:22px;font-weight:600;
word-break:break-all}header .sub{color:#d1d5db;font-size:13px}.verdict{float:right;margin-top:8px;padding:6px 14px;
border-radius:999px;font-weight:700;font-size:13px;letter-spacing:.04em}.verdict.pass{background:#dcfce7;color:#166534}
.verdict.fail{background:#fee2e2;color:#991b1b}.verdict.none{background:#e5e7eb;color:#374151}nav{background:#fff;
border-bottom:1px solid #e5e7eb;padding:8px 32px;position:sticky;top:0;z-index:2}nav a{margin-right:18px;color:#374151;
text-decoration:none;font-size:13px}nav a:hover{color:#2563eb}main{max-width:1240px;margin:0 auto;padding:20px 32px 60px}
section{background:#fff;border:1px solid #e5e7eb;border-radius:10px;padding:18px 22px;margin:18px 0}h2{font-size:17px;
margin:0 0 4px}h3{font-size:14.5px;margin:18px 0 6px}.src{font-size:12px;color:#6b7280;margin-bottom:10px}.src a{color:#2563eb}
table{border-collapse:collapse;width:100%;margin:6px 0 10px;font-variant-numeric:tabular-nums}th,td{padding:6px 10px;
border-bottom:1px solid #eef0f3;text-align:left;vertical-align:top}th{font-size:12px;color:#6b7280;font-weight:600;
background:#fafbfc}td.num,th.num{text-align:right}.pill{display:inline-block;padding:1px 10px;border-radius:999px;
font-size:12px;font-weight:700}.pill.pass{background:#dcfce7;color:#166534}.pill.fail{background:#fee2e2;color:#991b1b}
tr.fail td{background:#fff7f7}.better{color:#15803d;font-weight:600}.worse{color:#b91c1c;font-weight:600}.muted{color:#6b7280}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:16px}.grid>.card{margin:6px 0;min-width:0}.card{border:1px solid #eef0f3;
border-radius:8px;padding:10px 14px;margin:10px 0}.role{font-size:11px;text-transform:uppercase;letter-spacing:.06em;color:#6b7280}
.note{font-size:12.5px;color:#4b5563}.chat{background:#f9fafb;border-radius:6px;padding:6px 10px;font-size:13px;
white-space:pre-wrap}.toks{line-height:2.0;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px}
.tok{display:inline-block;white-space:pre;border-radius:3px;padding:0 1px;margin:0 1px 1px 0;cursor:help;line-height:1.6}.legend{font-size:12px;color:#6b7280}
.lens{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:11.5px;width:auto}.lens td,.lens th{padding:2px 6px;
border:1px solid #f0f1f3;white-space:pre;max-width:110px;overflow:hidden;text-overflow:ellipsis}.lens td.hit{font-weight:700}
.scroll{overflow-x:auto}.split{display:grid;grid-template-columns:minmax(320px,1fr) minmax(300px,auto);gap:24px;
align-items:start}@media (max-width:900px){.split{grid-template-columns:1fr}}code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px}
footer{color:#9ca3af;font-size:12px;text-align:center;margin:30px 0}
"""


def rel(path: str | Path, out: Path) -> str:
    """A link from the report's folder to `path` (relative, so the folders can move together)."""
    return Path(os.path.relpath(Path(path).resolve(), out)).as_posix()


def link(href: str, text: str) -> str:
    return f'<a href="{escape(href)}">{escape(text)}</a>'


def _file(here: str, name: str, short: bool = False) -> str:
    """A link to a file of the eval folder `here` (a path from the page, "" on the eval's own page), named
    "eval/metrics.json" from a run's page however far the page is from the run."""
    return link(here + name, name if short or not here else f"{Path(here).name}/{name}")


def direction(metric: str) -> int:
    """+1 when higher is better, -1 when lower is, 0 when the name does not say."""
    name = metric.rsplit(".", 1)[-1]
    if any(s in name for s in LOWER_BETTER):
        return -1
    return 1 if any(s in name for s in HIGHER_BETTER) else 0


def train_manifests(ref: dict | None, depth: int = 4) -> list[tuple[Path, dict]]:
    """The model artifacts up the lineage of an eval input that recorded a loss history (the train stage's
    manifest: metrics.losses), nearest first. A .gguf inside a compress folder leads to that folder."""
    found: list[tuple[Path, dict]] = []
    seen: set[Path] = set()
    todo = [Path(ref["path"])] if ref and ref.get("path") else []
    while todo and depth > 0:
        depth -= 1
        nxt = []
        for p in todo:
            folder = p if p.is_dir() else p.parent
            if folder in seen or not (folder / artifacts.MANIFEST).is_file():
                continue
            seen.add(folder)
            try:
                m = artifacts.read_manifest(folder)
            except Exception:  # a damaged manifest up the chain only costs the loss curve
                continue
            if (m.get("metrics") or {}).get("losses"):
                found.append((folder, m))
            nxt += [Path(r["path"]) for r in (m.get("inputs") or {}).values() if r.get("artifact") and r.get("path")]
        todo = nxt
    return found


# -- sections --------------------------------------------------------------------------------------------------

def gates_section(metrics: dict, here: str = "") -> str:
    """The gates' table; `here`: the eval folder as a path from the page (\"eval/\" in a run's report), so the
    links to its metrics.json and manifest.json resolve from either page."""
    gates = metrics.get("gates") or []
    if not gates:
        return ('<section id="gates"><h2>Gates</h2><p class="muted">No gates are set (eval.gates): nothing here '
                'stops a pipeline.</p></section>')
    failed = sum(not g["passed"] for g in gates)
    head = (f'{len(gates)} gate{"s" if len(gates) != 1 else ""}, all pass' if not failed
            else f'{failed} of {len(gates)} gate{"s" if len(gates) != 1 else ""} fail')
    rows = []
    for g in gates:
        ok = g["passed"]
        rows.append(f'<tr class="{"pass" if ok else "fail"}"><td><span class="pill {"pass" if ok else "fail"}">'
                    f'{"PASS" if ok else "FAIL"}</span></td><td><code>{escape(g["metric"])}</code></td>'
                    f'<td><code>{escape(str(g["expr"]).strip())}</code></td><td class="num">{fmt(g.get("value"))}</td>'
                    f'<td class="num">{fmt(g.get("threshold"))}</td><td class="note">{escape(g.get("why") or "")}</td></tr>')
    return (f'<section id="gates"><h2>Gates: {head}</h2><div class="src">from {_file(here, "metrics.json")}'
            f' (gates) · config in {_file(here, "manifest.json")}</div><table><tr><th></th><th>metric</th>'
            f'<th>gate</th><th class="num">value</th><th class="num">threshold</th><th>why</th></tr>{"".join(rows)}'
            '</table></section>')


def tasks_section(metrics: dict, inputs: dict, out: Path, here: str = "") -> str:
    """Tuned vs base per task; `out`: the page's folder, `here`: the eval folder as a path from it."""
    model, base = metrics.get("model") or {}, metrics.get("baseline")
    by_task: dict[str, dict[str, float]] = {}
    for k, v in model.items():
        task, _, name = k.partition(".")
        by_task.setdefault(task, {})[name] = v
    cards = []
    for task, vals in by_task.items():
        n = vals.get("items")
        rows, panels = [], []
        for name, v in vals.items():
            if name == "items" or not isinstance(v, (int, float)):
                continue
            key = f"{task}.{name}"
            b = base.get(key) if base else None
            cells = f'<td><code>{escape(name)}</code></td><td class="num">{fmt(v)}</td>'
            if base is not None:
                d = v - b if isinstance(b, (int, float)) else None
                sign = direction(key) * (d or 0)
                cls = "better" if sign > 0 else "worse" if sign < 0 else ""
                cells += (f'<td class="num">{fmt(b)}</td><td class="num {cls}">'
                          f'{"–" if d is None else "±0" if d == 0 else f"{d:+.4g}"}</td>')
            rows.append(f"<tr>{cells}</tr>")
            panels.append((name, {"tuned": v, **({"base": b} if base is not None else {})}))
        src = inputs.get(f"task:{task}", {}).get("path")
        links = [_file(here, "items.jsonl", short=True)] + ([link(rel(src, out), f"task file {Path(src).name}")] if src else [])
        head = ('<tr><th>metric</th><th class="num">tuned</th>'
                + ('<th class="num">base</th><th class="num">Δ</th>' if base is not None else "") + "</tr>")
        colors = {"tuned": TUNED, **({"base": BASE} if base is not None else {})}
        cards.append(f'<div class="card"><h3>{escape(task)} <span class="muted">· {fmt(n)} items</span></h3>'
                     f'<div class="src">{" · ".join(links)}</div><div class="split"><table>{head}{"".join(rows)}'
                     f'</table><div class="scroll">{svg.grouped(panels, colors)}</div></div></div>')
    who = escape(metrics.get("targets", {}).get("model", "model"))
    vs = f' against the baseline <b>{escape(metrics["targets"]["baseline"])}</b>' if base is not None else ""
    return (f'<section id="tasks"><h2>Quality: tuned vs base, per task</h2><div class="src"><b>{who}</b>{vs} · from '
            f'{_file(here, "metrics.json")}; Δ in green where the change is an improvement by the '
            f'metric\'s name (lower perplexity, higher accuracy), red where it is worse</div>'
            f'{"".join(cards)}</section>')


def table(t: dict, color: str) -> str:
    """A suite's table {columns, rows, note?, chart?} and its chart (bars, with CI whiskers where given)."""
    cols = t.get("columns") or []
    rows = t.get("rows") or []
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows if i < len(r)) for i in range(len(cols))]
    head = "".join(f'<th class="{"num" if numeric[i] else ""}">{escape(str(c))}</th>' for i, c in enumerate(cols))
    body = "".join("<tr>" + "".join(
        f'<td class="{"num" if i < len(numeric) and numeric[i] else ""}">'
        f'{fmt(c) if isinstance(c, (int, float)) else escape("" if c is None else str(c))}</td>'
        for i, c in enumerate(r)) + "</tr>" for r in rows)
    chart = ""
    spec = t.get("chart")
    if spec:
        idx = {c: i for i, c in enumerate(cols)}
        if spec.get("label") in idx and spec.get("value") in idx:
            def col(name: str | None, r: list):
                return r[idx[name]] if name in idx and idx[name] < len(r) else None

            pts = [(col(spec["label"], r), col(spec["value"], r), col(spec.get("lo"), r), col(spec.get("hi"), r))
                   for r in rows]
            chart = svg.bars_ci(pts, spec["value"], color)
    note = f'<div class="note">{escape(t["note"])}</div>' if t.get("note") else ""
    return f'<table><tr>{head}</tr>{body}</table>{note}<div class="scroll">{chart}</div>'


def suites_section(metrics: dict, here: str = "") -> str:
    tables = metrics.get("tables") or {}
    if not any(tables.values()):
        return ""
    roles = [r for r in ("model", "baseline") if tables.get(r)]
    tasks = list(dict.fromkeys(t for r in roles for t in tables[r]))
    parts = []
    for task in tasks:
        ids = list(dict.fromkeys(t["id"] for r in roles for t in tables[r].get(task, [])))
        for tid in ids:
            cards = []
            title = ""
            for role in roles:
                t = next((x for x in tables[role].get(task, []) if x["id"] == tid), None)
                if t is None:
                    continue
                title = t.get("title") or tid
                cards.append(f'<div class="card"><div class="role">{"tuned" if role == "model" else "base"}</div>'
                             f'{table(t, TUNED if role == "model" else BASE)}</div>')
            parts.append(f'<h3>{escape(task)} · {escape(title)}</h3><div class="grid">{"".join(cards)}</div>')
    return (f'<section id="suites"><h2>Suites</h2><div class="src">the suites\' own tables, from '
            f'{_file(here, "metrics.json")} (tables); each item in {_file(here, "items.jsonl")}'
            f'</div>{"".join(parts)}</section>')


def _tok(text: str) -> str:
    """A token as shown: newlines and tabs as arrows, a token of spaces alone as ␣ (else it would be blank)."""
    if text and not text.strip(" "):
        return "␣" * len(text)
    return escape(text.replace("\n", "↵").replace("\t", "⇥")) or "∅"


def _conf_color(p: float) -> str:
    """Red (unsure) through amber to green (sure): the token heatmap's background for probability p."""
    return f"hsl({120 * p:.0f} 75% {88 - 8 * (1 - abs(2 * p - 1)):.0f}%)"


def _tokens_html(entry: dict) -> str:
    spans = []
    for t in entry.get("tokens") or []:
        lp = t.get("logprob")
        if lp is None:
            spans.append(f'<span class="tok">{_tok(t["text"])}</span>')
            continue
        p = math.exp(lp)
        alts = "\n".join(f"  {a!r}  p={math.exp(v):.3f}" for a, v in t.get("top") or [])
        title = f"{t['text']!r}  p={p:.3f}  (logprob {lp:.3f})" + (f"\ntop alternatives:\n{alts}" if alts else "")
        spans.append(f'<span class="tok" style="background:{_conf_color(p)}" title="{escape(title)}">'
                     f'{_tok(t["text"])}</span>')
    return f'<div class="toks heat" data-kind="tokens">{"".join(spans)}</div>'


def _attr_html(a: dict) -> str:
    if "skipped" in a:
        return f'<p class="note">Attributions skipped: {escape(a["skipped"])}</p>'
    rows = []
    named = [(f"→ {o!r}", s) for o, s in zip(a["output_tokens"], a["scores"])] + [("all shown", a["total"])]
    for label, scores in named:
        m = max((abs(v) for v in scores), default=0) or 1.0
        spans = []
        for tok, v in zip(a["input_tokens"], scores):
            alpha = min(abs(v) / m, 1.0) * 0.85
            rgb = "220,38,38" if v > 0 else "37,99,235"
            spans.append(f'<span class="tok" style="background:rgba({rgb},{alpha:.2f})" title="{escape(repr(tok))}: '
                         f'{v:+.4g}">{_tok(tok)}</span>')
        rows.append(f'<tr><td class="muted" style="white-space:nowrap"><code>{escape(label)}</code></td><td class="toks">{"".join(spans)}</td></tr>')
    return (f'<div class="legend" title="{escape(a["method"])}"><span style="color:#dc2626">red</span> raised the '
            f'reply token\'s probability, <span style="color:#2563eb">blue</span> lowered it; each row scaled to its '
            f'largest score</div><table class="heat" data-kind="attribution">{"".join(rows)}</table>')


def _lens_html(lens: dict) -> str:
    if "skipped" in lens:
        return f'<p class="note">Logit lens skipped: {escape(lens["skipped"])}</p>'
    head = "".join(f'<th title="{escape(repr(p))}">{_tok(p)}</th>' for p in lens["positions"])
    nxt = "".join(f'<th title="{escape(repr(p))}">{_tok(p)}</th>' for p in lens["next"])
    rows = []
    for layer, cells in reversed(list(zip(lens["layers"], lens["top"]))):  # the output layer on top
        tds = "".join(f'<td class="{"hit" if tok == want else ""}" style="background:rgba(37,99,235,{0.08 + 0.6 * p:.2f})"'
                      f' title="layer {escape(layer)}: {escape(repr(tok))} p={p:.3f}">{_tok(tok)}</td>'
                      for (tok, p), want in zip(cells, lens["next"]))
        rows.append(f'<tr><th>{escape(layer)}</th>{tds}</tr>')
    return (f'<div class="legend">the top token of each layer, shaded by its probability; bold where it is the '
            f'token that comes next</div>'
            f'<div class="scroll"><table class="lens heat" data-kind="lens"><tr><th>input</th>{head}</tr>'
            f'<tr><th>next</th>{nxt}</tr>{"".join(rows)}</table></div>')


def _interpret(interp: dict | None, metrics: dict) -> str:
    if not interp:
        return ""
    roles = [r for r in ("model", "baseline") if interp.get(r)]
    n = max(len(interp[r]["prompts"]) for r in roles)
    parts = []
    for i in range(n):
        cards = []
        for role in roles:
            entries = interp[role]["prompts"]
            if i >= len(entries):
                continue
            e = entries[i]
            who = "tuned" if role == "model" else "base"
            if role == roles[0]:
                chat = "\n".join(f"{m['role']}: {m['content']}" for m in e["messages"])
                parts.append(f'<h3>Prompt {i + 1}</h3><div class="chat">{escape(chat)}</div>')
            lps = [t["logprob"] for t in e["tokens"] if t.get("logprob") is not None]
            mean = sum(math.exp(v) for v in lps) / len(lps) if lps else None
            cards.append(f'<div class="card"><div class="role">{who} · {escape(interp[role]["engine"])} · mean token '
                         f'probability {fmt(mean)} · {fmt(e.get("seconds"))} s</div>'
                         f'<h3>Reply, by token confidence</h3>{_tokens_html(e)}'
                         f'<h3>Which input tokens led to the first reply tokens</h3>{_attr_html(e["attribution"])}'
                         f'<h3>Logit lens</h3>{_lens_html(e["logit_lens"])}</div>')
        parts.append(f'<div class="grid">{"".join(cards)}</div>')  # tuned beside base, prompt by prompt
    method = next((e["attribution"]["method"] for r in roles for e in interp[r]["prompts"]
                   if "method" in e["attribution"]), "")
    return (f'<section id="interpret"><h2>Interpretability</h2><div class="src">from '
            f'{link("interpret.json", "interpret.json")}. Reply colour: the model\'s probability of the token it '
            f'chose (<span style="background:{_conf_color(0.05)}">unsure</span> → <span style="background:'
            f'{_conf_color(0.95)}">sure</span>); hover a token for its top {interp[roles[0]].get("top_k", "")} '
            f'alternatives. Attributions: {escape(method) or "–"}. Logit lens: the final norm and LM head applied '
            f'to each layer\'s hidden state (the output layer on top).</div>{"".join(parts)}</section>')


def loss_card(folder: Path, m: dict, out: Path, role: str = "") -> str:
    """A train manifest's loss curves (train and val per step) with the facts of the run, linked from `out`."""
    met = m.get("metrics") or {}
    chart = svg.lines({"train": met.get("losses") or [], "val": met.get("val_losses") or []}, "step",
                      "loss per target token", {"train": TUNED, "val": "#dc2626"})
    cfg = (m.get("config") or {}).get("train") or {}
    facts = " · ".join(f"{k} {escape(str(v))}" for k, v in (("method", cfg.get("method")),
                       ("epochs", met.get("epochs", cfg.get("epochs"))), ("lr", cfg.get("lr")), ("steps", met.get("steps")),
                       ("precision", met.get("precision"))) if v is not None)
    links = [link(rel(folder / artifacts.MANIFEST, out), "train manifest")]
    if (folder / "loss.png").is_file():
        links.append(link(rel(folder / "loss.png", out), "loss.png"))
    head = f'<div class="role">{escape(role)}</div>' if role else ""
    return (f'<div class="card">{head}<div class="src"><code>{escape(str(folder))}</code> · {facts} · '
            f'{" · ".join(links)}</div>{chart}</div>')


def _training(inputs: dict, out: Path) -> str:
    parts = [loss_card(folder, m, out, "tuned" if role == "model" else "base")
             for role in ("model", "baseline") for folder, m in train_manifests(inputs.get(role))[:1]]
    if not parts:
        return ""
    return f'<section id="training"><h2>Training</h2>{"".join(parts)}</section>'


def _sources(inputs: dict, out: Path) -> str:
    rows = []
    for name, ref in inputs.items():
        path = ref.get("path", "")
        p = Path(path)
        target = p / artifacts.MANIFEST if ref.get("artifact") else p
        href = link(rel(target, out), str(p)) if p.exists() else escape(str(path))
        rows.append(f'<tr><td><code>{escape(name)}</code></td><td>{href}</td><td>{escape(ref.get("artifact") or "")}'
                    f'</td><td><code>{escape(str(ref.get("sha256", ""))[:16])}</code></td></tr>')
    files = " · ".join(link(f, f) for f in ("manifest.json", "metrics.json", "items.jsonl", "model_card.md"))
    return (f'<section id="sources"><h2>Inputs and files</h2><div class="src">this eval: {files}</div><table><tr>'
            f'<th>input</th><th>path (its manifest, for an artifact)</th><th>kind</th><th>sha256 / fingerprint</th>'
            f'</tr>{"".join(rows)}</table></section>')


def render(metrics: dict, inputs: dict, out: Path, interp: dict | None = None) -> str:
    """The report page for an eval whose artifact folder will be `out` (links are relative to it)."""
    gates = metrics.get("gates") or []
    verdict = ("none", "NO GATES") if not gates else ("pass", "GATES PASS") if metrics.get("passed") else ("fail", "GATES FAIL")
    targets = metrics.get("targets") or {}
    name = targets.get("model", "")
    short = Path(name).name if "://" not in name and Path(name).name else name
    sub = f'{escape(name)} · ' if short != name else ""
    sub += f'baseline: {escape(targets["baseline"])} · ' if targets.get("baseline") else ""
    sub += f"{artifacts.now_iso()} · llmkit {escape(artifacts.library_versions(('llmkit',)).get('llmkit', '?'))}"
    body = [gates_section(metrics), tasks_section(metrics, inputs, out), suites_section(metrics), _interpret(interp, metrics),
            _training(inputs, out), _sources(inputs, out)]
    nav = "".join(f'<a href="#{i}">{t}</a>' for i, t in (("gates", "Gates"), ("tasks", "Quality"), ("suites", "Suites"),
                  ("interpret", "Interpretability"), ("training", "Training"), ("sources", "Inputs"))
                  if f'id="{i}"' in "".join(body))
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-'
            f'width, initial-scale=1"><title>Eval report: {escape(targets.get("model", ""))}</title>'
            f'<style>{CSS}</style></head><body><header><span class="verdict {verdict[0]}">{verdict[1]}</span>'
            f'<div class="kicker">llmkit eval report</div><h1>{escape(short)}</h1>'
            f'<div class="sub">{sub}</div></header><nav>{nav}</nav><main>{"".join(body)}</main>'
            f'<footer>one self-contained file: no script, no network · {link("manifest.json", "manifest.json")}'
            f'</footer></body></html>')


def write(folder: Path, out: Path, metrics: dict, inputs: dict, interp: dict | None = None) -> Path:
    """Write report.html into `folder` (the artifact being built, published later as `out`)."""
    path = Path(folder) / "report.html"
    path.write_text(render(metrics, inputs, Path(out), interp), encoding="utf-8")
    return path
