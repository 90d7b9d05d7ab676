"""report.html for a whole run (`llmkit report RUN_DIR`): one self-contained page, no script, no font, no network,
every chart inline SVG, from the manifests that `llmkit run` wrote.

    runs/support-assistant/            model/ data/ train/ compress/ eval/ rag/   each with manifest.json
    runs/support-assistant/serve/      optional: requests.db (a server's request log), serve_load.json (bench)
    runs/support-assistant/report.html this page

Top to bottom: the stages (finished or not run), the lineage graph from the raw files' hashes to the registered
versions, the data card, the loss curves, the compress quality table, the eval's gates, quality and suites
(drawn by eval/report.py's own functions), the RAG index and its quality metrics, and serving (a load benchmark
and the request log's charts). Each number links to the manifest (or file) it was read from, by a relative link,
so the run folder can be moved or zipped with its report. A stage that has not run is shown as "not run".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from html import escape
from pathlib import Path

from llmkit import artifacts
from llmkit.config import STAGE_ORDER
from llmkit.errors import ArtifactError
from llmkit.eval import report as eval_report
from llmkit.eval import svg
from llmkit.eval.report import CSS, link
from llmkit.web import lineage_svg, run_serving
from llmkit.web import runs as runs_
from llmkit.web.report_links import Page

STAGES = STAGE_ORDER  # the pipeline's order (config.py): model ... register, promote, rag
TUNED, BASE = eval_report.TUNED, eval_report.BASE
EXTRA_CSS = """a.n{color:inherit;text-decoration:none;border-bottom:1px dotted #94a3b8}a.n:hover{color:#2563eb}
.pill.none{background:#e5e7eb;color:#374151}.notrun{color:#6b7280;font-style:italic}.kv{width:auto;min-width:340px}
.kv td:first-child{color:#4b5563}.legend span{display:inline-block;width:10px;height:10px;border-radius:2px;
margin:0 4px 0 12px;vertical-align:-1px}"""


@dataclass
class Stage:
    """One stage folder of the run: its manifest, or why there is none (not run, unreadable)."""

    name: str
    folder: Path
    manifest: dict | None
    error: str | None = None

    @property
    def metrics(self) -> dict:
        return (self.manifest or {}).get("metrics") or {}


def load_stage(run: Path, name: str) -> Stage:
    folder = run / name
    if not (folder / artifacts.MANIFEST).is_file():
        return Stage(name, folder, None)
    try:
        return Stage(name, folder, artifacts.read_manifest(folder))
    except ArtifactError as e:  # one unreadable manifest costs its own section only
        return Stage(name, folder, None, str(e))


def stages_of(run: Path) -> dict[str, Stage]:
    """The pipeline's stages in order, then any other artifact folder in the run (a `data_small` made by hand)."""
    found = {s: load_stage(run, s) for s in STAGES}
    for d in sorted(p for p in run.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in found):
        if (d / artifacts.MANIFEST).is_file():
            found[d.name] = load_stage(run, d.name)
    return found


def _not_run(st: Stage, title: str, sid: str, hint: str = "") -> str:
    why = (f"unreadable: {escape(st.error)}" if st.error else
           f"not run: <code>{escape(st.folder.name)}/{artifacts.MANIFEST}</code> does not exist yet")
    return (f'<section id="{sid}"><h2>{title}</h2><p class="notrun">{why}</p>'
            f'{f"<p class=note>{hint}</p>" if hint else ""}</section>')


def _kv(rows: list[tuple[str, str]]) -> str:
    return '<table class="kv">' + "".join(f'<tr><td>{escape(k)}</td><td class="num">{v}</td></tr>'
                                          for k, v in rows) + "</table>"


def _src(p: Page, st: Stage, *files: str) -> str:
    links = [link(p.href(st.folder / artifacts.MANIFEST), f"{st.name}/{artifacts.MANIFEST}")]
    links += [link(p.href(st.folder / f), f"{st.name}/{f}") for f in files if (st.folder / f).is_file()]
    done = (st.manifest or {}).get("finished_at")
    return f'<div class="src">from {" · ".join(links)}{f" · finished {escape(done)}" if done else ""}</div>'


# -- sections --------------------------------------------------------------------------------------------------

def _stages_table(p: Page, stages: dict[str, Stage]) -> str:
    rows = []
    for st in stages.values():
        m = st.manifest
        if m is None:
            pill = '<span class="pill fail">UNREADABLE</span>' if st.error else '<span class="pill none">NOT RUN</span>'
            rows.append(f'<tr><td><b>{escape(st.name)}</b></td><td>{pill}</td><td colspan="3" class="muted">'
                        f'{escape(st.error or "")}</td></tr>')
            continue
        man = st.folder / artifacts.MANIFEST
        rows.append(f'<tr><td><b>{escape(st.name)}</b></td><td><span class="pill pass">{escape(m.get("status", "?").upper())}'
                    f'</span></td><td>{escape(str(m.get("kind")))}</td><td>{escape(str(m.get("finished_at")))}</td>'
                    f'<td>{link(p.href(man), (m.get("fingerprint") or "")[:12] or "manifest")}</td></tr>')
    return ('<section id="stages"><h2>Stages</h2><div class="src">each stage\'s manifest.json (kind, inputs\' hashes, '
            'config, metrics, timing); a stage not run yet has none</div><table><tr><th>stage</th><th>status</th>'
            '<th>kind</th><th>finished</th><th>fingerprint (its manifest)</th></tr>'
            f'{"".join(rows)}</table></section>')


def _lineage(p: Page, run: Path, registry: list[dict], note: str) -> str:
    try:
        g = runs_.graph(run.parent, run.name)
    except Exception as e:  # noqa: BLE001 -- a damaged manifest must not cost the rest of the page
        return f'<section id="lineage"><h2>Lineage</h2><p class="notrun">cannot draw: {escape(str(e))}</p></section>'
    href = {}
    for n in g["nodes"]:
        if n.get("inside"):  # a stage of this run: named as in the stages table
            n["label"] = Path(n["id"]).relative_to(run).as_posix()
        where = Path(n["id"])
        target = where / artifacts.MANIFEST if n["kind"] != "input" else where
        if target.exists():
            href[n["id"]] = p.href(target)
    ids = {n["id"] for n in g["nodes"] if n["kind"] != "input"}
    for v in registry:  # a registered version hangs off the artifact (or the file inside it) it was made from
        src = Path(v["source_path"]).resolve()
        parent = next((i for i in ids if src == Path(i) or src.parent == Path(i)), None)
        if parent is None:
            continue
        nid = f'registry:{v["name"]}/{v["version"]}'
        aliases = " ".join("@" + a for a in v.get("aliases") or [])
        g["nodes"].append({"id": nid, "label": f'{v["name"]} v{v["version"]}', "kind": "registry",
                           "sub": f'registry {aliases or "(no alias)"}',
                           "detail": f'registered {v["name"]} version {v["version"]} {aliases}\n{v["source_path"]}'})
        g["edges"].append({"from": parent, "to": nid, "name": "registered"})
    chart = lineage_svg.draw(lineage_svg.collapse(g), href)
    legend = "".join(f'<span style="background:{f};border:1px solid {s}"></span>{k}'
                     for k, (f, s) in lineage_svg.COLORS.items())
    return (f'<section id="lineage"><h2>Lineage</h2><div class="src">raw files (their sha256) → the artifacts built '
            f'from them (their fingerprint) → registered versions; click a node for its manifest or file. {note}'
            f'</div><div class="legend">{legend}</div><div class="scroll">{chart}</div></section>')


def _data(p: Page, st: Stage) -> str:
    if st.manifest is None:
        return _not_run(st, "Data", "data", "add a <code>data:</code> section to the recipe")
    c, man = st.metrics, st.folder / artifacts.MANIFEST
    card = st.folder / "data_card.json"
    src = card if card.is_file() else man
    if card.is_file():
        c = json.loads(card.read_text())
    out = c.get("rows_out") or {}
    rows = [("rows read", p.num(c.get("rows_in"), src, "rows_in")),
            ("kept for train", p.num(out.get("train"), src, "rows_out.train")),
            ("kept for val", p.num(out.get("val"), src, "rows_out.val"))]
    rows += [(f"dropped: {k}", p.num(v, src, f"dropped.{k}")) for k, v in (c.get("dropped") or {}).items() if v]
    rows += [(f"added: {k}", p.num(v, src, f"augmented.{k}")) for k, v in (c.get("augmented") or {}).items()]
    rows += [(f"personal data found ({c.get('pii')}): {k}", p.num(v, src, f"pii_found.{k}"))
             for k, v in (c.get("pii_found") or {}).items()]
    t = c.get("tokens") or {}
    rows += [(f"tokens per row: {k}", p.num(t.get(k), src, f"tokens.{k}")) for k in ("min", "p50", "mean", "p95", "max", "total")
             if t.get(k) is not None]
    hist = t.get("histogram") or {}
    dropped = [(k, v, None, None) for k, v in (c.get("dropped") or {}).items()]
    charts = [svg.histogram(hist.get("edges") or [], hist.get("counts") or [], "tokens per kept row (chat template "
                            "applied)")] if hist else []
    if any(v for _, v, _, _ in dropped):
        charts.append(svg.bars_ci(dropped, "rows dropped, by reason", "#dc2626"))
    formats = ", ".join(f"{k}: {v}" for k, v in (c.get("formats") or {}).items())
    return (f'<section id="data"><h2>Data: {escape(str(c.get("name", "")))} <span class="muted">· '
            f'{escape(str(c.get("kind", "")))} · {escape(formats)}</span></h2>'
            f'{_src(p, st, "data_card.json", "data_card.md", "token_lengths.png")}<div class="split">{_kv(rows)}'
            f'<div class="scroll">{"".join(charts)}</div></div></section>')


def _train(p: Page, st: Stage) -> str:
    if st.manifest is None:
        return _not_run(st, "Training", "train", "add a <code>train:</code> section to the recipe")
    m, man = st.metrics, st.folder / artifacts.MANIFEST
    keys = [("steps", "steps"), ("epochs", "epochs"), ("real tokens", "real_tokens"),
            ("real tokens/s", "real_tokens_per_s"), ("train loss, first step", "train_loss_first"),
            ("train loss, last step", "train_loss_last"), ("val loss", "val_loss"), ("seconds", "seconds"),
            ("precision", "precision")]
    rows = [(label, p.num(m.get(k), man, f"metrics.{k}")) for label, k in keys if m.get(k) is not None]
    curve = eval_report.loss_card(st.folder, st.manifest, p.dir) if m.get("losses") else \
        '<p class="muted">no loss history in this manifest (metrics.losses)</p>'
    return (f'<section id="train"><h2>Training</h2>{_src(p, st, "loss.png")}<div class="split">{curve}{_kv(rows)}'
            '</div></section>')


def _compress(p: Page, st: Stage) -> str:
    if st.manifest is None:
        return _not_run(st, "Compress", "compress", "add a <code>compress:</code> section to the recipe")
    m, man = st.metrics, st.folder / artifacts.MANIFEST
    ref = m.get("reference") or "reference"
    name = m.get("file") or st.folder.name
    # (label, reference's key, export's key): the same measurement of both models, run the same way
    pairs = [("size MB", "reference_size_mb", "size_mb"), ("perplexity", "ppl_f16", "ppl"),
             ("decode tok/s", "decode_tok_s_f16", "decode_tok_s")]
    ref_mb = round(m["reference_size_bytes"] / 1e6, 1) if isinstance(m.get("reference_size_bytes"), int) else None
    vals = {**m, "reference_size_mb": ref_mb}
    head = f'<tr><th>measure</th><th class="num">{escape(ref)}</th><th class="num">{escape(name)}</th></tr>'
    field = {"reference_size_mb": "reference_size_bytes"}  # the manifest holds the reference's size in bytes
    body = "".join(f'<tr><td>{escape(label)}</td><td class="num">{p.num(vals.get(a), man, "metrics." + field.get(a, a))}'
                   f'</td><td class="num">{p.num(vals.get(b), man, "metrics." + b)}</td></tr>' for label, a, b in pairs
                   if vals.get(a) is not None or vals.get(b) is not None)
    agree = [("size vs reference", "size_vs_f16"), ("perplexity increase %", "ppl_increase_pct"),
             ("top-1 agreement", "top1_agreement"), ("greedy: same continuations", "greedy_same"),
             ("greedy: prompts", "greedy_prompts"), ("greedy: mean matching prefix", "greedy_prefix_agreement"),
             ("decode threads", "threads"), ("calibration", "calibration")]
    rows = [(label, p.num(m.get(k), man, f"metrics.{k}")) for label, k in agree if m.get(k) is not None]
    panels = [(label, {"reference": vals.get(a), "export": vals.get(b)}) for label, a, b in pairs]
    chart = svg.grouped(panels, {"reference": BASE, "export": TUNED})
    evalset = f'<div class="note">measured on {escape(str(m["eval"]))}</div>' if m.get("eval") else ""
    return (f'<section id="compress"><h2>Compress: {escape(name)}</h2>{_src(p, st, "report.md")}'
            f'<div class="split"><div><table>{head}{body}</table>{_kv(rows)}{evalset}</div>'
            f'<div class="scroll">{chart}</div></div></section>')


def _eval(p: Page, st: Stage) -> str:
    if st.manifest is None:
        return _not_run(st, "Eval", "eval", "add an <code>eval:</code> section to the recipe")
    outputs = st.manifest.get("outputs") or {}
    mpath = st.folder / str(outputs.get("metrics") or "metrics.json")
    if not mpath.is_file():
        return _not_run(Stage(st.name, st.folder, None, f"{mpath} is missing"), "Eval", "eval")
    metrics = json.loads(mpath.read_text())
    here = p.href(st.folder) + "/"
    full = st.folder / Path(str(outputs.get("report") or "report.html")).name
    verdict = ("none", "no gates") if not metrics.get("gates") else \
        ("pass", "gates pass") if metrics.get("passed") else ("fail", "gates fail")
    head = (f'<section id="eval"><h2>Eval <span class="pill {verdict[0]}">{verdict[1].upper()}</span></h2>'
            f'{_src(p, st, "metrics.json", "items.jsonl", "model_card.md")}'
            + (f'<p>The eval\'s own page, with interpretability: {link(p.href(full), f"{st.name}/{full.name}")}</p>'
               if full.is_file() else "") + '</section>')
    inputs = st.manifest.get("inputs") or {}
    return (head + eval_report.gates_section(metrics, here) + eval_report.tasks_section(metrics, inputs, p.dir, here)
            + eval_report.suites_section(metrics, here))


def _rag(p: Page, st: Stage, ev: Stage) -> str:
    if st.manifest is None:
        return _not_run(st, "RAG", "rag", "add a <code>rag:</code> section to the recipe")
    m, man, cfg = st.metrics, st.folder / artifacts.MANIFEST, st.manifest.get("config") or {}
    out = st.manifest.get("outputs") or {}
    keys = [("files", "files"), ("chunks", "chunks"), ("files embedded this run", "embedded_files"),
            ("files unchanged", "unchanged_files"), ("files removed", "removed_files"), ("files failed", "failed_files"),
            ("embedder load s", "load_embedder_s"), ("embed s", "embed_s"), ("store s", "store_s"), ("seconds", "seconds")]
    rows = [(label, p.num(m.get(k), man, f"metrics.{k}")) for label, k in keys if m.get(k) is not None]
    files = [(f, (v or {}).get("chunks"), None, None) for f, v in (out.get("files") or {}).items()]
    chart = svg.bars_ci(files, "chunks per file", "#7c3aed") if files else ""
    facts = " · ".join(f"{k} {escape(str(v))}" for k, v in (("collection", out.get("collection") or cfg.get("collection")),
                       ("store", out.get("store")), ("embedder", cfg.get("embedder")), ("chunk tokens", cfg.get("chunk_tokens")),
                       ("dim", out.get("dim"))) if v is not None)
    failed = "".join(f'<li>{escape(str(f.get("path")))}: {escape(str(f.get("reason")))}</li>' for f in out.get("failed") or [])
    # retrieval quality is measured by the eval's `rag` task (recall@k, MRR, faithfulness), not by the index
    em = {}
    mpath = ev.folder / "metrics.json"
    if ev.manifest is not None and mpath.is_file():
        em = {k: v for k, v in (json.loads(mpath.read_text()).get("model") or {}).items() if k.startswith("rag.")}
    if em:
        quality = ("<h3>Retrieval and answer quality (the eval's rag task)</h3>"
                   + _kv([(k.split(".", 1)[1], p.num(v, mpath, f"model.{k}")) for k, v in em.items()]))
    else:
        quality = ('<p class="note">Retrieval quality not measured in this run: add the <code>rag</code> task to '
                   '<code>eval.tasks</code> (with <code>rag_index</code> and <code>rag_questions</code>) for '
                   'recall@k, MRR and faithfulness, or run <code>llmkit rag eval</code>.</p>')
    return (f'<section id="rag"><h2>RAG index</h2>{_src(p, st)}<div class="note">{facts}</div><div class="split">'
            f'<div>{_kv(rows)}{f"<p>not indexed:</p><ul>{failed}</ul>" if failed else ""}</div>'
            f'<div class="scroll">{chart}</div></div>{quality}</section>')


# -- the page --------------------------------------------------------------------------------------------------

def registry_versions(run: Path, uri: str | None = None) -> tuple[list[dict], str]:
    """Registered versions made from this run's artifacts, and a line saying where they came from (or why none)."""
    from llmkit.track.client import available, tracking_uri
    from llmkit.track.registry import list_versions

    if not available():
        return [], "Registry: MLflow is not installed (pip install 'llmkit[track]')."
    try:
        versions = list_versions(uri)
    except Exception as e:  # noqa: BLE001 -- an unreachable registry is a line on the page, not a failed report
        return [], f"Registry {escape(tracking_uri(uri))}: {escape(type(e).__name__)}: {escape(str(e))}."
    run = run.resolve()
    mine = [v for v in versions if v.get("source_path") and Path(v["source_path"]).resolve().is_relative_to(run)]
    what = f"{len(mine)} version(s) of this run" if mine else "no version registered from this run"
    return mine, f"Registry {escape(tracking_uri(uri))}: {what}."


def render(run: str | Path, out: str | Path, *, request_log: str | Path | None = None,
           bench: str | Path | None = None, registry: list[dict] | None = None, registry_note: str = "") -> str:
    """The page for run folder `run`, to be written at `out` (links are relative to its folder)."""
    run = Path(run).resolve()
    p = Page(Path(out).resolve())
    stages = stages_of(run)
    if not any(s.manifest is not None or s.error for s in stages.values()):
        raise ArtifactError(f"{run}: not a run folder: none of {', '.join(s + '/' + artifacts.MANIFEST for s in STAGES)} "
                            "exists (a run is runs/<name>/ as `llmkit run` writes it)")
    ev = stages["eval"]
    serving_log, serving_bench = run_serving.find(run, request_log, bench)
    body = [_stages_table(p, stages), _lineage(p, run, registry or [], registry_note), _data(p, stages["data"]),
            _train(p, stages["train"]), _compress(p, stages["compress"]), _eval(p, ev), _rag(p, stages["rag"], ev),
            run_serving.section(p, run, serving_log, serving_bench, registry or [])]
    html = "".join(body)
    nav = "".join(f'<a href="#{i}">{t}</a>' for i, t in (
        ("stages", "Stages"), ("lineage", "Lineage"), ("data", "Data"), ("train", "Training"), ("compress", "Compress"),
        ("eval", "Eval"), ("gates", "Gates"), ("tasks", "Quality"), ("suites", "Suites"), ("rag", "RAG"),
        ("serving", "Serving")) if f'id="{i}"' in html)
    metrics = (json.loads((ev.folder / "metrics.json").read_text())
               if ev.manifest is not None and (ev.folder / "metrics.json").is_file() else None)
    verdict = (("none", "NO EVAL") if metrics is None else ("none", "NO GATES") if not metrics.get("gates")
               else ("pass", "GATES PASS") if metrics.get("passed") else ("fail", "GATES FAIL"))
    done = sum(s.manifest is not None for s in stages.values())
    sub = (f"{escape(str(run))} · {done} of {len(stages)} stages finished · {artifacts.now_iso()} · llmkit "
           f"{escape(artifacts.library_versions(('llmkit',)).get('llmkit', '?'))}")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-'
            f'width, initial-scale=1"><title>Run report: {escape(run.name)}</title><style>{CSS}{EXTRA_CSS}</style>'
            f'</head><body><header><span class="verdict {verdict[0]}">{verdict[1]}</span><div class="kicker">llmkit '
            f'run report</div><h1>{escape(run.name)}</h1><div class="sub">{sub}</div></header><nav>{nav}</nav>'
            f'<main>{html}</main><footer>one self-contained file: no script, no network · every number links to '
            f'the manifest or file it was read from</footer></body></html>')


def write(run: str | Path, out: str | Path | None = None, **kw) -> Path:
    """Render and write the page atomically (RUN_DIR/report.html by default); returns its path."""
    out = Path(out) if out else Path(run) / "report.html"
    text = render(run, out, **kw)
    out.parent.mkdir(parents=True, exist_ok=True)
    with artifacts.atomic_file(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out.resolve()
