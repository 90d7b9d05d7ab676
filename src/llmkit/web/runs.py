"""The runs folder as the dashboard shows it: each run's stage artifacts (their manifests) and the lineage graph
that their inputs draw, raw files to the model that was served.

    runs/support-assistant/data/manifest.json      a run is a folder of stage folders, each with its manifest
    runs/support-assistant/eval/report.html        an eval report, linked from the page (served as a file)

The graph is what `llmkit lineage` prints, for every stage of a run at once: nodes are artifacts (keyed by
folder) and raw inputs (keyed by path), edges point from an input to the artifact built from it.
"""

from __future__ import annotations

from pathlib import Path

from llmkit import artifacts

# what /ui/files may hand out from the runs folder: reports and figures, never weights or datasets
SERVED_SUFFIXES = {".html", ".png", ".svg", ".md", ".json"}


def _scalars(metrics: dict, limit: int = 8) -> dict:
    """The first few plain-number metrics of a manifest (loss curves and tables stay in the artifact)."""
    out = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        out[k] = v
        if len(out) == limit:
            break
    return out


def _stage(folder: Path, root: Path) -> dict:
    m = artifacts.read_manifest(folder)
    report = (m.get("outputs") or {}).get("report")
    report_path = folder / Path(report).name if isinstance(report, str) else folder / "report.html"
    return {"stage": folder.name, "kind": m.get("kind"), "status": m.get("status"),
            "fingerprint": (m.get("fingerprint") or "")[:12], "finished_at": m.get("finished_at"),
            "seconds": m.get("seconds"), "metrics": _scalars(m.get("metrics") or {}),
            "passed": (m.get("metrics") or {}).get("passed") if m.get("kind") == "eval" else None,
            "report": (report_path.relative_to(root).as_posix()
                       if report_path.suffix == ".html" and report_path.is_file() else None)}


def _run_folders(root: Path) -> list[Path]:
    """Folders under `root` holding stage artifacts (a folder that is itself an artifact counts as a run of one)."""
    if not root.is_dir():
        return []
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (d / artifacts.MANIFEST).is_file() or any((s / artifacts.MANIFEST).is_file() for s in d.iterdir()
                                                      if s.is_dir()):
            out.append(d)
    return out


def _stages(run: Path) -> list[Path]:
    if (run / artifacts.MANIFEST).is_file():
        return [run]
    return [s for s in sorted(run.iterdir()) if s.is_dir() and not s.name.startswith(".")
            and (s / artifacts.MANIFEST).is_file()]


def list_runs(root: str | Path) -> list[dict]:
    """[{name, stages: [...], finished_at}], the most recently finished run first. A stage whose manifest cannot
    be read is listed with its error instead of hiding the run."""
    root = Path(root).resolve()
    runs = []
    for run in _run_folders(root):
        stages = []
        for s in _stages(run):
            try:
                stages.append(_stage(s, root))
            except Exception as e:  # noqa: BLE001 -- one broken manifest must not hide the others; shown as such
                stages.append({"stage": s.name, "kind": None, "error": str(e)})
        ends = [s.get("finished_at") or "" for s in stages]
        runs.append({"name": run.name, "stages": stages, "finished_at": max(ends) if ends else None})
    return sorted(runs, key=lambda r: r["finished_at"] or "", reverse=True)


def graph(root: str | Path, name: str) -> dict:
    """{nodes: [{id, label, kind, hash, detail}], edges: [{from, to, name}]} of run `name`'s lineage (hash: the
    first 12 hex digits of an input's sha256 or of an artifact's fingerprint)."""
    from llmkit.errors import ArtifactError

    root = Path(root).resolve()
    run = (root / name).resolve()
    if not run.is_relative_to(root) or run == root or not run.is_dir():
        raise ArtifactError(f"no run named {name!r} under {root}")
    nodes: dict[str, dict] = {}
    edges: set[tuple[str, str, str]] = set()
    for stage in _stages(run):
        parents: dict[int, str] = {}
        for depth, m in artifacts.lineage(stage):
            if m["kind"] == "input":
                key = str(Path(m["path"]).resolve()) if m.get("path") else m["_name"]
                nodes.setdefault(key, {"id": key, "label": Path(key).name or key, "kind": "input",
                                       "hash": (m.get("sha256") or "")[:12],
                                       "detail": f"{m['_name']}: {m.get('path')}\nsha256 {(m.get('sha256') or '')[:12]}"})
            else:
                key = str(Path(m["_path"]).resolve())
                where = Path(key)
                label = (where.relative_to(root).as_posix() if where.is_relative_to(root) else where.name)
                nodes.setdefault(key, {"id": key, "label": label, "kind": m["kind"], "inside": where.is_relative_to(run),
                                       "hash": (m.get("fingerprint") or "")[:12],
                                       "detail": f"{m['kind']} {label}\nfingerprint {(m.get('fingerprint') or '')[:12]}"
                                                 f"\nfinished {m.get('finished_at')} ({m.get('seconds')} s)"})
                parents[depth] = key
            if depth:
                edges.add((key, parents[depth - 1], m.get("_name") or ""))
    return {"run": name, "nodes": list(nodes.values()),
            "edges": [{"from": a, "to": b, "name": n} for a, b, n in sorted(edges)]}


def served_file(root: str | Path, rel: str) -> Path:
    """The file `rel` under the runs folder, if it is one the page may show (a report or a figure)."""
    from llmkit.errors import ArtifactError

    root = Path(root).resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root) or not path.is_file() or path.suffix.lower() not in SERVED_SUFFIXES:
        raise ArtifactError(f"{rel}: not a report or figure under the runs folder")
    return path
