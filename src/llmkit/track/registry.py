"""The model registry in MLflow: versions of a model's files, the aliases `candidate` and `production`, and
`registry:` model specs that resolve to a version's local files.

    v = register(Path("runs/support/compress"), "support")     # a new version; alias candidate -> it
    set_alias("support", "production", v["version"])           # what `llmkit promote` does once gates pass
    resolve("registry:support@production")                      # -> the local .gguf / adapter / HF folder

A version's files are logged as the artifacts (`model/`) of a run in the experiment `llmkit-registry`, and the
version points at them. Its tags carry the lineage: the content hash of the files, the artifact's fingerprint,
the chain of manifests behind it, and the MLflow run that mirrored the stage that made it. The same files
registered twice under one name give the same version back (keyed by their content hash).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from llmkit import artifacts
from llmkit.errors import ArtifactError, ConfigError, ModelNotFound
from llmkit.models import home
from llmkit.track.client import available, client, experiment_id, local_db, tracking_uri
from llmkit.track.mirror import find_run

EXPERIMENT = "llmkit-registry"
SPEC = re.compile(r"^registry:(?P<name>[A-Za-z0-9][\w.-]*)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))?$")
NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")


def _files(artifact: Path) -> tuple[list[Path], str, str | None, dict | None]:
    """What a version holds: (files or folders to log, format, the model file's name within, the manifest)."""
    if artifact.is_file():
        if artifact.suffix != ".gguf":
            raise ArtifactError(f"{artifact}: a registered model is a .gguf file, an adapter or an HF folder")
        return [artifact], "gguf", artifact.name, None
    if not artifact.is_dir():
        raise ArtifactError(f"{artifact}: no such file or folder")
    m = artifacts.read_manifest(artifact) if (artifact / artifacts.MANIFEST).is_file() else None
    gguf = (m or {}).get("outputs", {}).get("gguf") if m else None
    if gguf:  # a compress artifact: the GGUF it exported, its manifest and report
        g = artifact / Path(gguf).name
        extra = [artifact / n for n in (artifacts.MANIFEST, "report.md") if (artifact / n).is_file()]
        return [g, *extra], "gguf", g.name, m
    if (artifact / "adapter_config.json").is_file():
        return [artifact], "peft-adapter", None, m
    if (artifact / "config.json").is_file():
        return [artifact], "hf-model", None, m
    ggufs = sorted(artifact.glob("*.gguf"))
    if len(ggufs) == 1:
        return [ggufs[0]], "gguf", ggufs[0].name, m
    raise ArtifactError(f"{artifact}: not a model (no .gguf, adapter_config.json or config.json)")


def _lineage_tag(artifact: Path) -> str:
    chain = artifacts.lineage(artifact)
    rows = [{"depth": d, "kind": m["kind"], "path": m.get("_path") or m.get("path"),
             "hash": m.get("fingerprint") or m.get("sha256")} for d, m in chain]
    return json.dumps(rows)[:5000]


def register(artifact: str | Path, name: str, uri: str | None = None, description: str | None = None,
             alias: str = "candidate") -> dict:
    """Make `artifact` (a .gguf, adapter or HF folder, or a compress/train artifact folder) a new version of
    registered model `name` and point `alias` at it. Returns {name, version, source, format, new}."""
    if not NAME.match(name):
        raise ConfigError([f"--name {name!r}: letters, digits, '.', '_' and '-' (starting with a letter or digit)"])
    artifact = Path(artifact).resolve()
    files, fmt, model_file, m = _files(artifact)
    sha = artifacts.sha256_path(artifact if fmt != "gguf" else files[0])
    uri = tracking_uri(uri)
    c = client(uri)
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(name, description=description)
    for mv in c.search_model_versions(f"name = '{name}'"):
        if mv.tags.get("llmkit.sha256") == sha:
            c.set_registered_model_alias(name, alias, mv.version)
            return {"name": name, "version": int(mv.version), "source": mv.source, "format": fmt, "new": False}

    exp = experiment_id(c, EXPERIMENT, uri)
    tags = {"llmkit.format": fmt, "llmkit.sha256": sha, "llmkit.source_path": str(artifact)}
    if model_file:
        tags["llmkit.file"] = model_file
    if m is not None:
        tags.update({"llmkit.fingerprint": m.get("fingerprint", ""), "llmkit.kind": m.get("kind", ""),
                     "llmkit.lineage": _lineage_tag(artifact)})
        base = (m.get("outputs") or {}).get("base")
        if base:
            tags["llmkit.base"] = str(base)
        stage_run = _stage_run(c, m.get("fingerprint", ""))
        if stage_run:
            tags["llmkit.stage_run_id"] = stage_run
    run = c.create_run(exp, tags={"llmkit.registered_model": name, **tags}, run_name=f"register {name}")
    rid = run.info.run_id
    for f in files:
        if f.is_dir():
            c.log_artifacts(rid, str(f), artifact_path="model")
        else:
            c.log_artifact(rid, str(f), artifact_path="model")
    c.set_terminated(rid, "FINISHED")
    source = f"{run.info.artifact_uri.rstrip('/')}/model"
    mv = c.create_model_version(name, source, run_id=rid, tags=tags, description=description)
    c.set_registered_model_alias(name, alias, mv.version)
    return {"name": name, "version": int(mv.version), "source": source, "format": fmt, "new": True}


def _stage_run(c: Any, fingerprint: str) -> str | None:
    """The MLflow run that mirrored the stage with this fingerprint, in any experiment."""
    if not fingerprint:
        return None
    exps = [e.experiment_id for e in c.search_experiments()]
    hit = find_run(c, exps, "llmkit.fingerprint", fingerprint) if exps else None
    return hit.info.run_id if hit else None


def version(name: str, ref: str | int, uri: str | None = None) -> Any:
    """A ModelVersion by number or by alias; ModelNotFound names what exists."""
    from mlflow.exceptions import MlflowException

    c = client(tracking_uri(uri))
    try:
        if isinstance(ref, int) or str(ref).isdigit():
            return c.get_model_version(name, str(ref))
        return c.get_model_version_by_alias(name, str(ref))
    except MlflowException:
        have = ", ".join(f"{m['name']} v{m['version']}{' @' + ','.join(m['aliases']) if m['aliases'] else ''}"
                         for m in list_versions(uri) if m["name"] == name) or "none"
        what = f"version {ref}" if str(ref).isdigit() else f"alias @{ref}"
        raise ModelNotFound(f"registry model {name!r} has no {what} (versions: {have})") from None


def alias_version(name: str, alias: str, uri: str | None = None) -> int | None:
    """The version number `alias` points at, or None."""
    try:
        return int(version(name, alias, uri).version)
    except ModelNotFound:
        return None


def set_alias(name: str, alias: str, v: int, uri: str | None = None, tags: dict[str, str] | None = None) -> None:
    c = client(tracking_uri(uri))
    version(name, v, uri)  # exists, or ModelNotFound
    c.set_registered_model_alias(name, alias, str(v))
    for k, val in (tags or {}).items():
        c.set_model_version_tag(name, str(v), k, val[:5000])


def is_spec(spec: str) -> bool:
    return str(spec).startswith("registry:")


def resolve(spec: str, uri: str | None = None) -> Path:
    """`registry:NAME@ALIAS`, `registry:NAME/VERSION` or `registry:NAME` (= @production) -> the version's local
    model: its .gguf file, adapter folder or HF folder. Files in a local artifact store are used in place; from a
    server they are downloaded once into $LLMKIT_HOME/registry/NAME/VERSION."""
    mt = SPEC.match(str(spec))
    if not mt:
        raise ConfigError([f"{spec!r}: expected registry:NAME@ALIAS or registry:NAME/VERSION"])
    mv = version(mt["name"], mt["version"] or mt["alias"] or "production", uri)
    folder = _local(mv)
    f = mv.tags.get("llmkit.file")
    return folder / f if f else folder


def _local(mv: Any) -> Path:
    from urllib.parse import unquote, urlparse

    src = mv.source
    u = urlparse(src)
    if u.scheme in ("", "file") and Path(unquote(u.path)).is_dir():
        return Path(unquote(u.path))
    dest = home() / "registry" / mv.name / str(mv.version)
    if not dest.is_dir():
        import mlflow.artifacts

        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        mlflow.artifacts.download_artifacts(artifact_uri=src, dst_path=str(tmp))
        inner = tmp / "model"
        artifacts.publish(inner if inner.is_dir() else tmp, dest)
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def list_versions(uri: str | None = None) -> list[dict]:
    """Every version of every registered model: {name, version, aliases, format, created}. Empty (and quick:
    MLflow is not imported) when the default database does not exist or MLflow is not installed."""
    uri = tracking_uri(uri)
    db = local_db(uri)
    if not available() or (db is not None and not db.is_file()):
        return []
    c = client(uri)
    out = []
    for rm in c.search_registered_models():
        aliases: dict[str, list[str]] = {}
        for a, v in (rm.aliases or {}).items():
            aliases.setdefault(str(v), []).append(a)
        for mv in sorted(c.search_model_versions(f"name = '{rm.name}'"), key=lambda x: int(x.version)):
            out.append({"name": rm.name, "version": int(mv.version), "aliases": sorted(aliases.get(str(mv.version), [])),
                        "format": mv.tags.get("llmkit.format", "?"), "created": mv.creation_timestamp,
                        "source_path": mv.tags.get("llmkit.source_path", "")})
    return out
