"""Artifact folders with a manifest: hashing, atomic writes, skip-if-finished and lineage.

Every stage writes one folder holding its outputs and `manifest.json`:

    {"kind": "model", "fingerprint": "…", "inputs": {"weights": {"path": …, "sha256": …}},
     "config": {…}, "outputs": {…}, "metrics": {…}, "versions": {…}, "started_at": …, "finished_at": …}

The fingerprint hashes the kind, the config and the content hashes of the inputs. A stage whose folder holds
a manifest with the same fingerprint (and whose outputs still exist) is finished and is skipped. A folder is
built under a temporary sibling name and renamed into place, so a crash never leaves a half-written
artifact under the real name: at any moment the name holds the old complete artifact, the new one, or nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import importlib.metadata as md
import json
import os
import platform
import re
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.errors import ArtifactError, DiskFull

MANIFEST = "manifest.json"
_CHUNK = 1 << 20  # 1 MiB reads: hashing a 100 MB file takes ~0.2 s
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full(e: BaseException, where: str | Path) -> DiskFull:
    """The typed error for a write that failed for lack of space, naming the file (or else the artifact folder)."""
    path = Path(e.filename) if isinstance(getattr(e, "filename", None), str) else Path(where)
    probe = path
    while not probe.exists() and probe != probe.parent:  # the nearest folder that still exists
        probe = probe.parent
    free = shutil.disk_usage(probe).free / 2**20
    return DiskFull(f"{path}: no space left on the device ({free:.1f} MiB free there); nothing was published under "
                    f"{where}, and the artifacts written before are intact; free some space and run again")


# Rust writers (safetensors, lance) raise their own exception types; their text carries the OS error. SQLite (the
# MLflow registry's database, through SQLAlchemy) says SQLITE_FULL in words.
_NO_SPACE_TEXT = re.compile(r"No space left on device|Disk quota exceeded|os error (28|122)\b|database or disk is full")


def no_space(e: BaseException | None) -> bool:
    """Whether `e`, or an exception it was raised from, is a write that failed for lack of space."""
    if isinstance(e, DiskFull):
        return False  # already the typed error, naming the path
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            return True
        if not isinstance(e, OSError) and _NO_SPACE_TEXT.search(str(e)):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


_killing: dict[str, Any] = {"stage": "", "passes": {}}


def kill_point(point: str, stage: str | None = None) -> None:
    """Tests: SIGKILL this process at a named point, so a test can prove that a killed run resumes exactly.

    `LLMKIT_TEST_KILL_AT=[STAGE:]POINT[:N]` kills at the Nth pass (default 1) of POINT, within pipeline stage STAGE
    when given; `LLMKIT_TEST_KILL_LOG=FILE` appends every pass as `STAGE:POINT:N` (how a test learns the points a
    run passes, new stages' included). The pipeline passes `stage` as each stage begins, and the counts start
    again there. Without either variable this is one dict lookup.
    """
    spec, log = os.environ.get("LLMKIT_TEST_KILL_AT"), os.environ.get("LLMKIT_TEST_KILL_LOG")
    if not spec and not log:
        return
    if stage is not None:
        _killing["stage"], _killing["passes"] = stage, {}
    passes = _killing["passes"]
    n = passes[point] = passes.get(point, 0) + 1
    if log:
        with open(log, "a") as f:
            f.write(f"{_killing['stage']}:{point}:{n}\n")
    if not spec:
        return
    parts = spec.split(":")
    want_n = int(parts.pop()) if len(parts) > 1 and parts[-1].isdigit() else 1
    want_stage = parts[0] if len(parts) == 2 else None
    if parts[-1] == point and want_n == n and want_stage in (None, _killing["stage"]):
        os.kill(os.getpid(), signal.SIGKILL)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_path(path: str | Path) -> str:
    """Content hash of a file, or of a folder (relative names + file hashes, sorted; manifests excluded)."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    if not p.is_dir():
        raise ArtifactError(f"cannot hash {p}: no such file or folder")
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file() and q.name != MANIFEST):
        h.update(f.relative_to(p).as_posix().encode() + b"\0" + sha256_file(f).encode() + b"\n")
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint(kind: str, config: dict, inputs: dict[str, dict]) -> str:
    """What decides whether a finished artifact can be reused: kind, config and input content hashes."""
    return sha256_json({"kind": kind, "config": config, "inputs": {k: v["sha256"] for k, v in inputs.items()}})


def input_ref(path: str | Path) -> dict:
    """Describe one input: a plain file/folder (hashed) or another artifact (its fingerprint links lineage)."""
    p = Path(path).resolve()
    m = read_manifest(p) if (p / MANIFEST).is_file() else None
    if m is not None:
        return {"path": str(p), "sha256": m["fingerprint"], "artifact": m["kind"]}
    return {"path": str(p), "sha256": sha256_path(p)}


def library_versions(names: tuple[str, ...] = ("llmkit", "torch", "transformers", "llama_cpp_python", "gguf",
                                               "peft", "trl", "accelerate", "optimum_quanto", "pydantic")) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in names:
        with contextlib.suppress(md.PackageNotFoundError):
            out[name] = md.version(name)
    return out


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_manifest(folder: str | Path) -> dict:
    p = Path(folder) / MANIFEST
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{folder} is not an artifact: it has no {MANIFEST}") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{p} line {e.lineno}: not valid JSON ({e.msg})") from None


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON to a temp file in the same folder, fsync, then rename over the target."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:  # a full disk must not leave the half-written temp file behind
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_file(out: str | Path, tag: str = "tmp") -> Iterator[Path]:
    """A temporary path beside `out` to write a file into; on success it is synced and renamed to `out`.

    On an error, or a killed process, nothing is left under `out`'s name (and the temporary file is removed
    unless the process was killed).
    """
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{tag}-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except OSError as e:
        if no_space(e):
            raise disk_full(e, out) from e
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def finished(folder: str | Path, fp: str) -> dict | None:
    """The manifest of a finished artifact with this fingerprint whose outputs still exist, else None."""
    p = Path(folder)
    if not (p / MANIFEST).is_file():
        return None
    try:
        m = read_manifest(p)
    except ArtifactError:
        return None
    if m.get("fingerprint") != fp or m.get("status") != "finished":
        return None
    # Outputs may live outside the folder (e.g. a shared cache); a deleted cache means "not finished".
    for value in (m.get("outputs") or {}).values():
        if isinstance(value, str) and value.startswith("/") and not Path(value).exists():
            return None
    return m


@dataclass
class Building:
    """An artifact under construction: write files into `tmp`, set outputs/metrics, and it is published."""

    kind: str
    out: Path
    tmp: Path
    config: dict
    inputs: dict[str, dict]
    fingerprint: str
    outputs: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def _sweep(out: Path) -> None:
    """Remove leftovers of a killed build of `out` (temp and set-aside siblings)."""
    for sib in out.parent.glob(f".{out.name}.*"):
        if sib.name.startswith((f".{out.name}.tmp-", f".{out.name}.old-")):
            shutil.rmtree(sib, ignore_errors=True)


@contextlib.contextmanager
def build(kind: str, out: str | Path, config: dict, inputs: dict[str, dict]) -> Iterator[Building]:
    """Build an artifact atomically.

        with build("model", out, config, inputs) as b:
            (b.tmp / "weights.bin").write_bytes(...)
            b.metrics["seconds"] = 1.2

    On normal exit the manifest is written into the temp folder, which then replaces `out`. On an exception
    the temp folder is removed and `out` is left exactly as it was; a full disk becomes `DiskFull` naming the path.
    """
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    _sweep(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.mkdir()
    kill_point("build.begun")
    started, t0 = now_iso(), time.perf_counter()
    b = Building(kind, out, tmp, config, inputs, fingerprint(kind, config, inputs))
    try:
        yield b
        kill_point("build.written")  # the payload is complete; no manifest yet
        _finish(b, started, t0)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if no_space(e):
            raise disk_full(e, out) from e
        raise


def _finish(b: Building, started: str, t0: float) -> None:
    manifest = {
        "kind": b.kind,
        "status": "finished",
        "fingerprint": b.fingerprint,
        "inputs": b.inputs,
        "config": b.config,
        "outputs": b.outputs,
        "metrics": b.metrics,
        "versions": library_versions(),
        "started_at": started,
        "finished_at": now_iso(),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json_atomic(b.tmp / MANIFEST, manifest)
    publish(b.tmp, b.out)


def publish(tmp: Path, out: Path) -> None:
    """Move a complete folder into place: set the old one aside, rename the new one in, delete the old."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    kill_point("publish")  # complete, not yet under its name (and the old one, if any, set aside)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:  # put the old one back rather than leave nothing under the name
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def lineage(folder: str | Path) -> list[tuple[int, dict]]:
    """The chain of manifests from `folder` back to raw inputs, depth-first: [(depth, manifest), ...]."""
    chain: list[tuple[int, dict]] = []
    seen: set[str] = set()

    def walk(p: Path, depth: int) -> None:
        m = read_manifest(p)
        m["_path"] = str(p)
        chain.append((depth, m))
        for name, ref in (m.get("inputs") or {}).items():
            ref = {**ref, "_name": name}
            if ref.get("artifact") and (Path(ref["path"]) / MANIFEST).is_file() and ref["path"] not in seen:
                seen.add(ref["path"])
                walk(Path(ref["path"]), depth + 1)
            else:
                chain.append((depth + 1, {"kind": "input", **ref}))

    walk(Path(folder).resolve(), 0)
    return chain
