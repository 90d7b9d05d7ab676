"""A real two-node Ray cluster on 127.0.0.1 for the scale-out tests: `ray start --head` and `ray start --address`,
one CPU each, bounded in time and torn down by the test.

Each node runs `ray start ... --block` in a session of its own: SIGTERM to that process stops its node (Ray's
own shutdown of what it started), and a SIGKILL to the session afterwards leaves nothing behind. `ray stop` is
not used: it stops every Ray on the machine, other people's included. The cluster keeps Ray's token
authentication, with a token of its own passed in the environment (nothing written to ~/.ray).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import llmkit

START_TIMEOUT_S = 90


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _await_started(proc: subprocess.Popen, log: Path, deadline: float) -> None:
    while "Ray runtime started" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray start failed or timed out; its log:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything of that node's session still alive
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


@contextlib.contextmanager
def two_node_cluster(tmp: Path, cpus: int = 1) -> Iterator[tuple[str, dict]]:
    """Yields (address, env): join with `ray.init(address=...)` in a process whose environment has `env`."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0",
           # the actors import llmkit from the same place the tests do
           "PYTHONPATH": os.pathsep.join([str(Path(llmkit.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    full = {**os.environ, **env}
    common = ["--num-cpus", str(cpus), "--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--block"]
    procs: list[subprocess.Popen] = []
    deadline = time.monotonic() + START_TIMEOUT_S
    # Ray's sockets live under its temp dir and an AF_UNIX path is at most 107 bytes: pytest's tmp paths under
    # xdist (`.../popen-gw0/ray20/...`) are too long, so the sessions go to a short folder of their own
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    try:
        for i, args in enumerate([["--head", "--port", str(port), "--include-dashboard", "false",
                                   "--temp-dir", str(ray_tmp)],
                                  ["--address", f"127.0.0.1:{port}"]]):
            log = tmp / f"node{i}.log"
            with open(log, "wb") as f:
                procs.append(subprocess.Popen([ray_bin, "start", *args, *common], env=full, stdout=f,
                                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              start_new_session=True))
            _await_started(procs[-1], log, deadline)
        yield f"127.0.0.1:{port}", env
    finally:
        for p in reversed(procs):
            _stop(p)
        shutil.rmtree(ray_tmp, ignore_errors=True)
