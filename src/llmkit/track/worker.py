"""The child process of `BackgroundTracker` (background.py): `python -m llmkit.track.worker ARGS_JSON`.

One JSON request per stdin line — {"op": "stage", "folder": ...}, {"op": "flush", "n": N}, {"op": "close",
"status": ...} — answered on stdout: {"echo": ...} for warnings, {"flushed": N}, and at the end {"mirrored": [...],
"found": [...], "failed": ...}. It ends on `close`, or when the parent's end of stdin closes (the parent was
killed): then it finishes what it was sent and marks the pipeline run KILLED.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    """The child's loop: one request per stdin line; ends on `close` or when the parent's end of stdin closes."""
    args = json.loads(argv[0])
    # Lowest CPU priority before MLflow is even imported (~3.4 s of CPU once per run): on a 2-core box the
    # import and the mirroring then use the cores only when the stages leave them idle, instead of taking one
    # from a training step. What is left when the pipeline ends is its final wait, which the bench measures.
    os.nice(19)
    from llmkit.track.mirror import Tracker  # the child's only heavy import

    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # a library's stray print must not land in the protocol

    def send(**msg: Any) -> None:
        try:
            out.write(json.dumps(msg) + "\n")
        except (OSError, ValueError):  # the parent is gone; the work goes on and MLflow still gets it
            pass

    t = Tracker(args["experiment"], args["uri"], Path(args["run_dir"]), echo=lambda s: send(echo=s),
                source=args.get("source"))
    status = "KILLED"  # the parent went away without saying how the run ended
    seconds: dict[str, float] = {}  # each stage's mirroring, off the pipeline's critical path (the bench reads it)
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["op"] == "stage":
            t0 = time.perf_counter()
            t.stage(Path(msg["folder"]))
            name = Path(msg["folder"]).name
            seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - t0, 4)
        elif msg["op"] == "flush":
            send(flushed=msg["n"])
        elif msg["op"] == "close":
            status = msg["status"]
            break
    t.close(status)
    send(mirrored=t.mirrored, found=t.found, failed=t.failed, seconds=seconds)
    out.flush()
    # Everything is committed: skip the interpreter's teardown of MLflow and SQLAlchemy (~0.3-1 s the pipeline
    # would wait for at its very end).
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
