"""Mirror a `llmkit run`'s stages from a child process, so that tracking runs beside the next stage, not in it.

    t = BackgroundTracker("support-assistant", uri, run_dir, echo=print)
    t.stage(run_dir / "data")   # returns at once: the child mirrors it while the pipeline goes on
    t.flush()                   # wait until everything sent so far is in MLflow (before register/promote)
    t.close("FINISHED")         # wait for the rest, end the pipeline run, stop the child

Why a process and not a thread: mirroring is mostly Python (importing MLflow ~1–4 s once, then SQLAlchemy's ORM,
~50 ms a stage), and the stages it would overlap with — the data stage's cleaning and PII scrubbing, the model
stage's conversion — hold the GIL too, so a thread would take its time out of theirs. A child takes it from a
core the stage leaves idle (bench/track_overhead.py measures it: a stage's wall time with tracking on and off).

The child (`python -m llmkit.track.worker`) runs the same `Tracker` that `llmkit track sync` runs; the protocol
is JSON lines: requests on its stdin, replies on its stdout (warnings to echo, flush acknowledgements, a summary at
the end). Tracking still never fails or blocks a stage: when the child cannot start or dies, the pipeline warns
once and goes on, and `llmkit track sync RUN_DIR` mirrors the rest later. When the parent is killed, the child
finishes what it was sent, marks the pipeline run KILLED and exits (its stdin closes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from llmkit import artifacts
from llmkit.track.mirror import Echo, Mirrored, manifest_key

# Test-only variables that must not reach the child: a kill point meant for the pipeline would kill the tracker.
_PARENT_ONLY = ("LLMKIT_TEST_KILL_AT", "LLMKIT_TEST_KILL_LOG")


class BackgroundTracker:
    """The tracker of one `llmkit run`, mirroring in a child process; same calls as `Tracker` plus `flush`."""

    def __init__(self, experiment: str, uri: str, run_dir: Path, echo: Echo = print, source: str | None = None):
        self.experiment, self.uri, self.run_dir, self.echo, self.source = experiment, uri, Path(run_dir), echo, source
        self.cache = Mirrored(uri)
        self.failed: str | None = None
        self.found: list[str] = []  # stages found in the local note without asking MLflow
        self.summary: dict[str, Any] = {}  # the child's last word: mirrored, found, failed
        self._proc: subprocess.Popen | None = None
        self._stderr: Any = None
        self._reader: threading.Thread | None = None
        self._acks = threading.Condition()
        self._acked = self._asked = 0

    def stage(self, folder: Path) -> None:
        """Queue the finished artifact in `folder` for mirroring; never raises, never waits for MLflow."""
        if self.failed is not None:
            return
        folder = Path(folder)
        if self._proc is None:  # nothing sent yet: a stage MLflow already has costs no child and no MLflow import
            try:
                m = artifacts.read_manifest(folder)
            except Exception:
                return
            if m.get("status") != "finished":
                return
            if self.cache.runs.get(manifest_key(m)):
                self.found.append(folder.name)
                return
        self._send({"op": "stage", "folder": str(folder)})

    def flush(self) -> None:
        """Wait until the child has mirrored everything sent so far (a stage that reads MLflow needs its inputs)."""
        if self._proc is None or self.failed is not None:
            return
        with self._acks:
            self._asked += 1
            n = self._asked
        self._send({"op": "flush", "n": n})
        with self._acks:
            self._acks.wait_for(lambda: self._acked >= n or self.failed is not None)

    def close(self, status: str = "FINISHED") -> None:
        """Mirror what is left, end the pipeline run with `status`, and stop the child."""
        if self._proc is None:
            return
        self._send({"op": "close", "status": status})
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        rc = self._proc.wait()
        if self._reader is not None:
            self._reader.join()
        if (rc != 0 or "mirrored" not in self.summary) and self.failed is None:
            self._died(f"exit status {rc}")
        if self._stderr is not None:
            self._stderr.close()

    # --- the child process -------------------------------------------------------------------------------------

    def _start(self) -> None:
        import llmkit

        env = {k: v for k, v in os.environ.items() if k not in _PARENT_ONLY}
        # the child imports this same llmkit, also when it was put on sys.path by hand rather than installed
        src = str(Path(llmkit.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
        env.setdefault("OMP_NUM_THREADS", "1")
        args = {"experiment": self.experiment, "uri": self.uri, "run_dir": str(self.run_dir), "source": self.source}
        # MLflow's and alembic's own logging goes here: shown only if the child dies
        self._stderr = tempfile.TemporaryFile(mode="w+", prefix="llmkit-track-")
        self._proc = subprocess.Popen([sys.executable, "-m", "llmkit.track.worker", json.dumps(args)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
                                      env=env, bufsize=1)
        self._reader = threading.Thread(target=self._read, name="llmkit-track-reader", daemon=True)
        self._reader.start()

    def _send(self, msg: dict) -> None:
        try:
            if self._proc is None:
                self._start()
            self._proc.stdin.write(json.dumps(msg) + "\n")
            self._proc.stdin.flush()
        except (OSError, ValueError) as e:  # could not start, or it died: a broken pipe
            self._died(f"{type(e).__name__}: {e}")

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "echo" in msg:
                self.echo(msg["echo"])
            if "flushed" in msg:
                with self._acks:
                    self._acked = max(self._acked, int(msg["flushed"]))
                    self._acks.notify_all()
            if "mirrored" in msg:
                self.summary = msg
                self.failed = msg.get("failed")
        with self._acks:  # the child is gone: nobody waits for it any more
            self._acked = self._asked
            self._acks.notify_all()

    def _died(self, why: str) -> None:
        if self.failed is not None:
            return
        tail = ""
        if self._stderr is not None:
            try:
                self._stderr.seek(0)
                lines = [ln for ln in self._stderr.read().splitlines() if ln.strip()]
                tail = f": {lines[-1][:300]}" if lines else ""
            except (OSError, ValueError):
                pass
        self.failed = why
        self.echo(f"warning: the tracking process stopped ({why}{tail}); the artifacts are safe on disk. "
                  f"Mirror them later: llmkit track sync {self.run_dir}")
