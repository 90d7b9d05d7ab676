"""Mirror artifact manifests into MLflow: one run per finished stage, nested under a pipeline run.

    t = Tracker("support-assistant", uri, run_dir, echo=print)
    t.stage(run_dir / "data")      # after each stage; never raises
    t.close("FINISHED")

A stage's run holds its flattened config as params, its numeric metrics (the train loss curve as step metrics
`train_loss` and `val_loss`), its small files as artifacts (manifest, data card, loss.png, reports), the datasets
it read as MLflow dataset inputs (digest = the first 32 hex digits of the content hash; the full hash in the
input's tags) and one tag per input with that input's hash (`llmkit.input.NAME.sha256`), plus the MLflow run
of any input that is itself an artifact: lineage, clickable.

A run is keyed by the hash of its manifest (`llmkit.manifest` tag): a stage that was skipped as finished finds
its run and makes none (a local note of what was mirrored, `Mirrored`, spares even the query); a `--force`
re-run wrote a new manifest and gets a new run. The manifests stay the
source of truth: when MLflow cannot be reached the stage has already published its artifact, the tracker warns
once and stops trying, and `llmkit track sync RUN_DIR` (`sync`) mirrors whatever is missing later.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmkit import artifacts
from llmkit.track.client import client, experiment_id

Echo = Callable[[str], None]

# Small files worth seeing beside a run; weights are not copied (`llmkit register` puts a model in the registry).
ARTIFACT_NAMES = {"manifest.json", "data_card.md", "data_card.json", "metrics.json", "report.md", "report.html"}
ARTIFACT_SUFFIXES = {".png", ".html"}
MAX_ARTIFACT_BYTES = 10 << 20
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
PARAM_VALUE_MAX = 6000  # MLflow 3's limit on a param value
TAG_VALUE_MAX = 5000


def manifest_key(m: dict) -> str:
    """Which finished artifact a run mirrors: the manifest's own hash (fingerprint + when it was built)."""
    return artifacts.sha256_json({k: v for k, v in m.items() if not k.startswith("_")})


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and empty mappings stay values."""
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj} if prefix else {}


def _key(name: str) -> str:
    """A param, metric or tag name MLflow accepts on every OS: letters, digits, _ - . / and spaces; ≤ 250."""
    return re.sub(r"[^/\w.\- ]", "_", name)[:250]


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    return None


def find_run(c: Any, exp_id: str | list[str], key: str, value: str) -> Any | None:
    """The newest run whose tag `key` is `value` in one experiment (or several), else None."""
    ids = [exp_id] if isinstance(exp_id, str) else exp_id
    runs = c.search_runs(ids, filter_string=f"tags.`{key}` = '{value}'", max_results=1,
                         order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def _datasets(m: dict) -> list[tuple[dict, str]]:
    """The datasets a stage read, as (Dataset fields, context): raw data files, and a dataset artifact's splits."""
    out = []
    for name, ref in (m.get("inputs") or {}).items():
        path = Path(ref.get("path", ""))
        if ref.get("artifact") == "dataset" and (path / artifacts.MANIFEST).is_file():
            dm = artifacts.read_manifest(path)
            card = dm.get("metrics") or {}
            for split, context in (("train", "training"), ("val", "validation")):
                file = (dm.get("outputs") or {}).get(split)
                sha = (card.get("outputs") or {}).get(file or "")
                if file and sha:
                    rows = (card.get("rows_out") or {}).get(split)
                    out.append(({"name": f"{path.name}/{file}", "digest": sha[:32], "source": str(path / file),
                                 "sha256": sha, "profile": {"num_rows": rows} if rows is not None else None}, context))
        elif not ref.get("artifact") and path.suffix.lower() in DATA_SUFFIXES:
            context = "eval" if m.get("kind") == "eval" else name
            out.append(({"name": path.name, "digest": ref["sha256"][:32], "source": str(path), "sha256": ref["sha256"],
                         "profile": None}, context))
    return out


def _log_stage(c: Any, exp_id: str, m: dict, folder: Path, parent: str | None, stage: str) -> str:
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param

    started = _ms(m.get("started_at"))
    tags = {"mlflow.runName": stage, "llmkit.stage": stage, "llmkit.kind": m.get("kind", "?"),
            "llmkit.fingerprint": m.get("fingerprint", ""), "llmkit.manifest": manifest_key(m),
            "llmkit.path": str(folder), "llmkit.status": m.get("status", ""), "mlflow.source.name": "llmkit",
            "mlflow.source.type": "LOCAL"}
    if parent:
        tags["mlflow.parentRunId"] = parent
    for name, ref in (m.get("inputs") or {}).items():
        name = _key(name)
        tags[f"llmkit.input.{name}.sha256"] = ref.get("sha256", "")
        tags[f"llmkit.input.{name}.path"] = ref.get("path", "")[:TAG_VALUE_MAX]
        if ref.get("artifact"):
            tags[f"llmkit.input.{name}.artifact"] = ref["artifact"]
            up = find_run(c, exp_id, "llmkit.fingerprint", ref.get("sha256", ""))
            if up is not None:
                tags[f"llmkit.input.{name}.run_id"] = up.info.run_id
    tags.update({_key(f"llmkit.version.{k}"): str(v) for k, v in (m.get("versions") or {}).items()})
    run = c.create_run(exp_id, start_time=started, tags=tags, run_name=stage)
    rid = run.info.run_id

    params = [Param(_key(k), json.dumps(v) if not isinstance(v, str) else v)
              for k, v in flatten(m.get("config") or {}).items()]
    params = [Param(p.key, p.value[:PARAM_VALUE_MAX]) for p in params]
    metrics_, ts = [], _ms(m.get("finished_at")) or int(time.time() * 1000)
    mets = dict(m.get("metrics") or {})
    curves = {"train_loss": mets.pop("losses", None), "val_loss": mets.pop("val_losses", None)}
    for k, v in flatten(mets).items():
        # the manifest's final `val_loss` is the last point of the val_loss curve, which MLflow shows as latest
        if (x := _number(v)) is not None and not curves.get(k):
            metrics_.append(Metric(_key(k), x, ts, 0))
    if m.get("seconds") is not None:
        metrics_.append(Metric("stage_seconds", float(m["seconds"]), ts, 0))
    for name, curve in curves.items():
        for step, value in curve or []:  # [[step, loss], ...] as the train stage records them
            metrics_.append(Metric(name, float(value), ts, int(step)))
    # MLflow takes ≤ 100 params and ≤ 1000 metrics in one batch; one batch holds both for most stages
    for i in range(max(-(-len(params) // 100), -(-len(metrics_) // 1000))):
        c.log_batch(rid, params=params[i * 100:(i + 1) * 100], metrics=metrics_[i * 1000:(i + 1) * 1000])
    ds = [DatasetInput(Dataset(name=d["name"], digest=d["digest"], source_type="local",
                               source=json.dumps({"uri": d["source"]}),
                               profile=json.dumps(d["profile"]) if d["profile"] else None),
                       tags=[InputTag("mlflow.data.context", ctx), InputTag("llmkit.sha256", d["sha256"])])
          for d, ctx in _datasets(m)]
    if ds:
        c.log_inputs(rid, datasets=ds)
    for f in sorted(folder.iterdir()):
        if f.is_file() and (f.name in ARTIFACT_NAMES or f.suffix in ARTIFACT_SUFFIXES) \
                and f.stat().st_size <= MAX_ARTIFACT_BYTES:
            c.log_artifact(rid, str(f))
    c.set_terminated(rid, "FINISHED", end_time=_ms(m.get("finished_at")))
    return rid


def _ms(iso: str | None) -> int | None:
    if not iso:
        return None
    import datetime as dt

    return int(dt.datetime.fromisoformat(iso).timestamp() * 1000)


class Mirrored:
    """Which manifests this machine has already mirrored to a URI: {manifest key: run id} in
    $LLMKIT_HOME/track/<hash of the URI>.json. A skipped stage found here costs no MLflow import (~1.2 s) and no
    query, so a `llmkit run` whose stages are all finished stays instant. `track sync` asks MLflow itself."""

    def __init__(self, uri: str):
        from llmkit.models import home

        self.path = home() / "track" / f"{artifacts.sha256_json(uri)[:16]}.json"
        try:
            self.runs: dict[str, str] = json.loads(self.path.read_text())["runs"]
        except (OSError, ValueError, KeyError, TypeError):
            self.runs = {}

    def add(self, key: str, run_id: str) -> None:
        if self.runs.get(key) == run_id:
            return
        self.runs[key] = run_id
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            artifacts.write_json_atomic(self.path, {"runs": self.runs})
        except OSError:
            pass  # only a shortcut: the next run asks MLflow instead


class Tracker:
    """Mirrors the stages of one `llmkit run` (or one `llmkit track sync`) into experiment `experiment`."""

    def __init__(self, experiment: str, uri: str, run_dir: Path, echo: Echo = print, source: str | None = None,
                 run_name: str | None = None, use_cache: bool = True):
        self.experiment, self.uri, self.run_dir, self.echo = experiment, uri, Path(run_dir), echo
        self.cache = Mirrored(uri) if use_cache else None
        self.source, self.run_name = source, run_name or f"{experiment} pipeline"
        self.failed: str | None = None  # the first error: after it nothing more is tried
        self._client: Any = None
        self._exp: str | None = None
        self.parent: str | None = None
        self.mirrored: list[str] = []  # stages given a new run
        self.found: list[str] = []  # stages that already had one

    def _open(self) -> tuple[Any, str]:
        if self._client is None:
            self._client = client(self.uri)
            self._exp = experiment_id(self._client, self.experiment, self.uri)
        assert self._exp is not None
        return self._client, self._exp

    def stage(self, folder: Path) -> str | None:
        """Mirror the finished artifact in `folder`; returns its run id. Never raises: the artifact is already
        safe on disk, and tracking must not fail a stage."""
        if self.failed is not None:
            return None
        folder = Path(folder)
        try:
            m = artifacts.read_manifest(folder)
        except Exception:
            return None  # nothing finished to mirror (the stage failed before publishing)
        if m.get("status") != "finished":
            return None
        key = manifest_key(m)
        known = self.cache.runs.get(key) if self.cache else None
        if known and self.parent is None:
            self.found.append(folder.name)
            return known
        try:
            c, exp = self._open()
            hit = find_run(c, exp, "llmkit.manifest", key)
            if hit is not None:
                self.found.append(folder.name)
                if self.parent:
                    c.set_tag(self.parent, f"llmkit.stage.{folder.name}.run_id", hit.info.run_id)
                if self.cache:
                    self.cache.add(key, hit.info.run_id)
                return hit.info.run_id
            if self.parent is None:
                tags = {"llmkit.run_dir": str(self.run_dir), "llmkit.pipeline": "true",
                        "mlflow.source.name": "llmkit", "mlflow.source.type": "LOCAL"}
                if self.source:
                    tags["llmkit.recipe"] = self.source
                self.parent = c.create_run(exp, tags=tags, run_name=self.run_name).info.run_id
                if self.source and Path(self.source).is_file():
                    c.log_artifact(self.parent, self.source)
            rid = _log_stage(c, exp, m, folder, self.parent, folder.name)
            c.set_tag(self.parent, f"llmkit.stage.{folder.name}.run_id", rid)
            self.mirrored.append(folder.name)
            if self.cache:
                self.cache.add(key, rid)
            return rid
        except Exception as e:  # MLflow unreachable, a full disk, a locked database: warn once, keep going
            self.failed = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            self.echo(f"warning: tracking to {self.uri} failed ({self.failed}); the artifacts are safe on disk. "
                      f"Mirror them later: llmkit track sync {self.run_dir}")
            return None

    def close(self, status: str = "FINISHED") -> None:
        if self.parent is None or self.failed is not None:
            return
        try:
            self._client.set_terminated(self.parent, status)
        except Exception as e:
            self.failed = str(e)


def stage_folders(run_dir: Path) -> list[Path]:
    """The artifact folders of a run directory, in pipeline order (those with a manifest)."""
    from llmkit.config import STAGE_ORDER

    run_dir = Path(run_dir)
    known = [run_dir / s for s in STAGE_ORDER]
    others = sorted(p for p in run_dir.iterdir() if p.is_dir() and p not in known) if run_dir.is_dir() else []
    return [p for p in known + others if (p / artifacts.MANIFEST).is_file()]


def sync(run_dir: Path, experiment: str, uri: str, echo: Echo = print) -> Tracker:
    """Mirror every finished stage of `run_dir` that MLflow does not have yet (what `llmkit track sync` runs)."""
    t = Tracker(experiment, uri, run_dir, echo, run_name=f"{experiment} sync", use_cache=False)
    for folder in stage_folders(run_dir):
        t.stage(folder)
    t.close()
    return t
